"""The page to try a model in a browser (``GET /ui`` of ``distilsent serve``): one static, self-contained
HTML file shipped inside the package (``ui.html``: inline style and script, nothing fetched from the web,
no build step). It calls the service's ``POST /`` to classify and ``POST /explain`` for word highlights.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from .errors import InputError

# Occlusion costs one classification per word: a page request is capped so one visitor cannot queue
# thousands of texts; the library function itself has no cap.
MAX_EXPLAIN_WORDS = 256


@cache
def page() -> str:
    return files("distilsent").joinpath("ui.html").read_text(encoding="utf-8")


def explain_for_page(classifier, text) -> dict:
    """Occlusion attributions of ``text`` as JSON for the page (words, attributions, spans, prediction)."""
    from .explain import occlusion, split_words

    if isinstance(text, str) and len(split_words(text)) > MAX_EXPLAIN_WORDS:
        raise InputError(f"explain takes texts of at most {MAX_EXPLAIN_WORDS} words")
    return occlusion(classifier, text).to_dict()
