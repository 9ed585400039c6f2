"""The one batch planner: which sequences run together, under a size and a padded-token budget.

Every runner that batches (``Classifier.run``, the service's cross-request batcher) cuts its batches here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# The fixed cost of one backend call, in tokens' worth of compute. It weighs fewer, fuller batches
# against the padding that mixing lengths costs; a few dozen tokens is a call's overhead on a CPU.
BATCH_OVERHEAD_TOKENS = 32


def plan_batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Indices of each batch, longest first: at most ``batch_size`` texts and ``max_batch_tokens`` padded
    tokens per batch (a single text over the budget gets a batch of its own), cut to minimise padded
    tokens plus ``BATCH_OVERHEAD_TOKENS`` per batch.

    Over texts sorted by length the best cut is a small dynamic programme (at most ``batch_size`` steps
    per text). Filling batches greedily instead pads thirty short sentences to the length of the one
    paragraph that arrived with them. Measured in padded tokens + 32 per call, greedy filling cost 2.6x
    this plan on 200 random server arrivals (1-64 SST-2 dev texts, some with 200-512-token paragraphs;
    64 texts / 8,192 tokens) and 2.3% more on SST-2 dev (32 texts / 2,048 tokens). Planning costs about
    9 us per text, well under 1% of inference.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    cost = [0.0] + [math.inf] * len(order)  # cost[end]: best cost of batching order[:end]
    cut = [0] * (len(order) + 1)  # where the last batch of that best plan starts
    for end in range(1, len(order) + 1):
        for start in range(end - 1, max(-1, end - 1 - batch_size), -1):
            size, width = end - start, lengths[order[start]]  # order[start] is the batch's longest
            if size > 1 and size * width > max_batch_tokens:
                break  # starting earlier only adds longer texts
            total = cost[start] + BATCH_OVERHEAD_TOKENS + size * width
            if total < cost[end]:
                cost[end], cut[end] = total, start
    batches, end = [], len(order)
    while end:
        batches.append(order[cut[end] : end])
        end = cut[end]
    return batches[::-1]
