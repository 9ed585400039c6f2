"""Do attributions mean something? The deletion test on SST-2 dev, and explain's latency per text.

For each sentence (more than ``--max-k`` words, so something is left), remove its k most attributed
words (k = 1..max-k) and measure the probability of the originally predicted label; compare with
removing k random words (``--random-draws`` draws, seed 0). Attributions that point at the words
that decide the label make the probability fall much faster than random deletion.

Occlusion (ONNX Runtime) runs on every sentence; integrated gradients (PyTorch) on every
``--ig-every``-th one (its cost is ~steps forward/backward passes per text). Prints both curves, the
ratio of the mean drop at each k against random, label-flip rates, and the ms per text of each method.

    python benchmarks/explain_deletion.py ../shared/data/sst2/dev.tsv --ig-every 4
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from distilsent import Classifier
from distilsent.data.examples import read_examples
from distilsent.insight.explain import GradientExplainer, occlusion


def without(text: str, spans: list[tuple[int, int]]) -> str:
    for start, end in sorted(spans, reverse=True):
        text = text[:start] + text[end:]
    return text


def curves(clf: Classifier, explanations, max_k: int, draws: int, seed: int = 0):
    """Mean P(predicted label) after removing the top-k words and k random words, k = 0..max_k."""
    rng = np.random.default_rng(seed)
    label_index = {label: i for i, label in enumerate(clf.labels)}
    top_texts, random_texts = [], []
    for e in explanations:
        spans = [(w.start, w.end) for w in e.words]
        ranked = [spans[i] for i in np.argsort([-w.attribution for w in e.words], kind="stable")]
        for k in range(1, max_k + 1):
            top_texts.append(without(e.text, ranked[:k]))
            for _ in range(draws):
                random_texts.append(without(e.text, [spans[i] for i in rng.choice(len(spans), k, replace=False)]))
    labels = np.array([label_index[e.label] for e in explanations])
    top = clf.scores(clf.logits(top_texts), "softmax").reshape(len(explanations), max_k, -1)
    rand = clf.scores(clf.logits(random_texts), "softmax").reshape(len(explanations), max_k, draws, -1).mean(2)
    rows = np.arange(len(explanations))
    full = np.array([e.score for e in explanations])
    top_p = np.column_stack([full, top[rows, :, labels]])
    rand_p = np.column_stack([full, rand[rows, :, labels]])
    top_flip = (top.argmax(-1) != labels[:, None]).mean(0)
    return top_p.mean(0), rand_p.mean(0), top_flip


def report(name: str, n: int, top, rand, flips) -> None:
    print(f"\n{name}: {n} sentences; mean P(originally predicted label) after removing k words")
    print("k    top-k     random    drop ratio (top / random)   label flips (top-k)")
    for k in range(len(top)):
        ratio = (top[0] - top[k]) / (rand[0] - rand[k]) if k else float("nan")
        flip = f"{flips[k - 1]:.3f}" if k else ""
        print(f"{k}    {top[k]:.4f}    {rand[k]:.4f}    {ratio:8.2f}                    {flip}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", help="SST-2 dev (TSV with sentence, label)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--max-k", type=int, default=5)
    parser.add_argument("--random-draws", type=int, default=3)
    parser.add_argument("--ig-every", type=int, default=4, help="integrated gradients on every n-th sentence (0: none)")
    parser.add_argument("--ig-steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    texts = [e.text for e in read_examples(args.file)]
    from distilsent.insight.explain import split_words

    texts = [t for t in texts if len(split_words(t)) > args.max_k]
    clf = Classifier.load(args.model, threads=args.threads)
    occlusion(clf, texts[0])  # warm-up: session start-up is not explain's cost
    start = time.perf_counter()
    occluded = [occlusion(clf, t) for t in texts]
    occlusion_ms = 1000 * (time.perf_counter() - start) / len(texts)
    words = np.mean([len(e.words) for e in occluded])
    report("occlusion (ONNX)", len(texts), *curves(clf, occluded, args.max_k, args.random_draws))

    if args.ig_every:
        explainer = GradientExplainer.load(args.model, threads=args.threads, steps=args.ig_steps)
        subset = texts[:: args.ig_every]
        explainer(subset[0])
        start = time.perf_counter()
        integrated = [explainer(t) for t in subset]
        ig_ms = 1000 * (time.perf_counter() - start) / len(subset)
        report(f"integrated gradients (torch, {args.ig_steps} steps)", len(subset),
               *curves(clf, integrated, args.max_k, args.random_draws))
        occluded_subset = occluded[:: args.ig_every]
        report("occlusion on the same subset", len(subset),
               *curves(clf, occluded_subset, args.max_k, args.random_draws))
        deltas = np.abs([e.delta for e in integrated])
        print(f"\nig completeness |sum - (P(text) - P(baseline))|: median {np.median(deltas):.4f}, "
              f"max {deltas.max():.4f}")
        agree = np.mean([a.label == b.label for a, b in zip(integrated, occluded_subset)])
        print(f"torch and ONNX predicted labels agree on {agree:.3f} of the subset")
    print(f"\nlatency per text (mean {words:.1f} words, SST-2 dev): occlusion {occlusion_ms:.1f} ms", end="")
    if args.ig_every:
        print(f", integrated gradients {ig_ms:.1f} ms; ratio ig / occlusion {ig_ms / occlusion_ms:.1f}")
    else:
        print()


if __name__ == "__main__":
    main()
