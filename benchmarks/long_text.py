"""Long reviews: accuracy and speed of each ``long_text`` strategy, and the cost of windowing.

    python benchmarks/long_text.py                   # the default model, IMDb validation split + reviews/*.csv
    python benchmarks/long_text.py --fraction 0.05   # a smaller split when time is short
    python benchmarks/long_text.py --cost-only       # only the cost of windowing (a couple of minutes)
    python benchmarks/long_text.py --heads 0,64,256  # also other head_tail splits on the long IMDb texts

The validation split is carved out of ``../shared/data/imdb/train.csv`` (the model never saw IMDb) with
``distilsent.data.examples.split_examples(examples, fraction, seed)``; fraction 0.1 and seed 9 by default.
For each data set: accuracy and texts/s with truncate, head_tail, window + mean and window + max, and
windows of ``--windows`` tokens (128 by default) + mean and + max, on the texts longer than 512 tokens
and on all of them.

Texts that fit in 512 tokens give the same single sequence under truncate, head_tail and 512-token windows,
so they are run once and their time is shared by those; the texts over 512 tokens are run once per
strategy (mean and max aggregate the same windows, so they share one run). A strategy's "all" figure is
its long-text run plus the shared short-text run. Narrower windows split the shorter texts too, so they
are run apart for each width.

Windowing cost: the ideal is texts/s in proportion to the tokens run, so ``efficiency`` =
(window tokens / truncate tokens) / (window seconds / truncate seconds); 1.0 is ideal. It is measured on
the first ``--cost-texts`` IMDb texts over 512 tokens, truncate and window alternating ``--repeats`` times,
best time of each kept, so that other work on the machine disturbs it less than the one-off runs above.
Writes its section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from results import cpu_flags, cpu_name, write_section  # benchmarks/results.py

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"


def timed(clf, texts, strategy, stride, window=None):
    """Per-text probabilities of both aggregations, seconds, sequences and tokens run (the library's path:
    encode, plan windows, run them under the token budget, aggregate)."""
    from distilsent.runtime.long_text import aggregate

    start = time.perf_counter()
    window_plan = clf.windows(texts, long_text=strategy, stride=stride, window=window)
    probs = clf.scores(clf.run(window_plan.sequences), "softmax")
    out = {how: aggregate(probs, window_plan, len(texts), how) for how in ("mean", "max")}
    seconds = time.perf_counter() - start
    return out, seconds, len(window_plan.sequences), sum(len(s) for s in window_plan.sequences)


def cost(clf, texts, stride, repeats, widths=()):
    """Best seconds and tokens run of truncate, 512-token windows and windows of each of ``widths`` over
    ``texts``, runs alternating; keyed "truncate", "window" and "window N"."""
    runs = {"truncate": ("truncate", stride, None), "window": ("window", stride, None)}
    runs.update({f"window {w}": ("window", w // 2, w) for w in widths})
    best = {name: float("inf") for name in runs}
    tokens = {}
    for _ in range(repeats):
        for name, (strategy, step, width) in runs.items():
            _, seconds, _, tokens[name] = timed(clf, texts, strategy, step, width)
            best[name] = min(best[name], seconds)
    return best, tokens


def measure(clf, name, examples, stride, widths=()):
    """Rows of accuracy and texts/s per strategy; ``widths``: also windows of these many tokens (stride half
    of one), which split the texts shorter than the model's limit too, so those are run for them as well."""
    from distilsent.training.evaluate import metrics

    texts = [e.text for e in examples]
    labels = np.array([e.label for e in examples])
    lengths = np.array([len(ids) for ids in clf.tokenizer.encode(texts, 10**9)])
    long = np.flatnonzero(lengths > clf.max_length)
    short = np.flatnonzero(lengths <= clf.max_length)
    shared = timed(clf, [texts[i] for i in short], "truncate", stride)
    runs = [("truncate", None, ""), ("head_tail", None, ""), ("window", None, "")]
    runs += [("window", width, f" {width}") for width in widths]
    rows = []
    for strategy, width, suffix in runs:
        probs, seconds, sequences, tokens = timed(clf, [texts[i] for i in long], strategy,
                                                  stride if width is None else width // 2, width)
        short_probs, short_seconds = shared[:2] if width is None else timed(
            clf, [texts[i] for i in short], strategy, width // 2, width)[:2]
        for how in ("mean", "max") if strategy == "window" else ("mean",):
            right_long = probs[how].argmax(1) == labels[long]
            right_short = short_probs[how].argmax(1) == labels[short]
            every = np.empty((len(texts), len(clf.labels)))
            every[long], every[short] = probs[how], short_probs[how]
            rows.append({
                "data": name, "strategy": strategy + suffix + (f" {how}" if strategy == "window" else ""),
                "long": len(long), "all": len(texts),
                "acc_long": float(right_long.mean()) if len(long) else float("nan"),
                "acc_all": float((right_long.sum() + right_short.sum()) / len(texts)),
                "tps_long": len(long) / seconds if len(long) else float("nan"),
                "tps_all": len(texts) / (seconds + short_seconds),
                "ece_all": metrics(labels, every, clf.labels)["ece"],
                "sequences": sequences, "tokens": tokens, "seconds": seconds,
            })
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: the embedded model)")
    parser.add_argument("--fraction", type=float, default=0.1, help="IMDb validation share (default 0.1)")
    parser.add_argument("--seed", type=int, default=9, help="seed of the IMDb validation split (default 9)")
    parser.add_argument("--stride", type=int, default=None, help="window stride (default: the library's)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cost-texts", type=int, default=48, help="long texts in the windowing-cost runs")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of the windowing cost")
    parser.add_argument("--cost-only", action="store_true", help="only the windowing cost")
    parser.add_argument("--windows", default="128", metavar="N,N", help="also windows of these many tokens, stride "
                        "half a window, on every text (default: 128, the length the default model was trained at)")
    parser.add_argument("--heads", default="", metavar="N,N", help="also head_tail with these head sizes, on the "
                        "IMDb texts over 512 tokens (e.g. 0,64,256)")
    args = parser.parse_args()

    from distilsent import Classifier
    from distilsent.data.examples import read_examples, split_examples

    if not (DATA / "imdb" / "train.csv").is_file():
        raise SystemExit(f"no IMDb data at {DATA / 'imdb' / 'train.csv'}")
    clf = Classifier.load(args.model, threads=args.threads)
    _, validation = split_examples(read_examples(DATA / "imdb" / "train.csv"), args.fraction, args.seed)
    long_examples = [e for e in validation if len(clf.tokenizer.encode([e.text], 10**9)[0]) > clf.max_length]
    long_texts = [e.text for e in long_examples]
    widths = [int(w) for w in args.windows.split(",") if w.strip()]
    best, tokens = cost(clf, long_texts[: args.cost_texts], args.stride, args.repeats, widths)
    cost_lines = [
        f"Windowing cost, {min(len(long_texts), args.cost_texts)} IMDb texts over {clf.max_length} tokens, "
        f"best of {args.repeats} alternating runs (ideal: seconds in proportion to tokens run; efficiency = "
        f"tokens ratio / seconds ratio, against truncation). CPU: {cpu_name()} ({cpu_flags()}), "
        f"{os.cpu_count()} cores.", "",
        "| reading | tokens | tokens ratio | seconds | seconds ratio | efficiency |",
        "|---|---|---|---|---|---|",
    ]
    for name in best:
        token_ratio, time_ratio = tokens[name] / tokens["truncate"], best[name] / best["truncate"]
        cost_lines.append(f"| {name} | {tokens[name]} | {token_ratio:.2f} | {best[name]:.2f} | {time_ratio:.2f} "
                          f"| {token_ratio / time_ratio:.2f} |")
    print("\n".join(cost_lines), flush=True)
    write_section("long_text_cost", "## Cost of windowing (benchmarks/long_text.py)\n\n" + "\n".join(cost_lines))
    if args.cost_only:
        return 0

    sets = [(f"IMDb validation ({args.fraction:g}, seed {args.seed})", validation)]
    sets += [(f"reviews/{p.name}", read_examples(p)) for p in sorted((DATA / "reviews").glob("*.csv"))]

    rows = []
    for name, examples in sets:
        measured = measure(clf, name, examples, args.stride, widths)
        rows += measured
        for row in measured:
            print(f"{row['data']:<32} {row['strategy']:<16} acc>512 {row['acc_long']:.4f} ({row['long']})  "
                  f"acc all {row['acc_all']:.4f} ({row['all']})  texts/s >512 {row['tps_long']:.2f}  "
                  f"all {row['tps_all']:.2f}  ECE {row['ece_all']:.4f}", flush=True)

    lines = [
        f"Model: {clf.name}; window stride {args.stride or (clf.max_length - 2) // 2} tokens; head_tail "
        f"128 + {clf.max_length - 2 - 128}. CPU: {cpu_name()} ({cpu_flags()}), "
        f"{os.cpu_count()} cores. Texts <= {clf.max_length} tokens are "
        "the same single sequence under truncate, head_tail and window: run once, their time shared; "
        "`window N` reads every text in windows of N tokens (stride N/2), the short ones included.",
        "",
        "| data | strategy | accuracy > 512 tokens (n) | accuracy all (n) | ECE all | texts/s > 512 | texts/s all |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['data']} | {r['strategy']} | {r['acc_long']:.4f} ({r['long']}) | {r['acc_all']:.4f} ({r['all']}) "
        f"| {r['ece_all']:.4f} | {r['tps_long']:.2f} | {r['tps_all']:.2f} |"
        for r in rows
    ]
    labels = np.array([e.label for e in long_examples])
    for head in [int(h) for h in args.heads.split(",") if h.strip()]:
        probs = clf.scores(clf.logits(long_texts, long_text="head_tail", head=head), "softmax")
        lines.append(f"\nhead_tail {head} + {clf.max_length - 2 - head} on the {len(long_texts)} IMDb texts over "
                     f"{clf.max_length} tokens: accuracy {(probs.argmax(1) == labels).mean():.4f}")
    print("\n".join(lines))
    write_section("long_text", "## Long texts (benchmarks/long_text.py)\n\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
