"""The page to try a model in a browser (``GET /ui`` of ``distilsent serve``): one static, self-contained
HTML file shipped inside the package (``page.html``: inline style and script, nothing fetched from the web,
no build step). It calls the service's ``POST /`` to classify and ``POST /explain`` for word highlights.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from importlib.resources import files


@cache
def page() -> str:
    return files("distilsent.serving").joinpath("page.html").read_text(encoding="utf-8")


@cache
def content_security_policy() -> str:
    """The page's Content-Security-Policy: its one inline script and one inline style, allowed by their
    SHA-256 (no 'unsafe-inline': text injected into the page could not run or restyle it), requests to
    this server only, and no framing by any site (clickjacking)."""
    digests = {}
    for tag in ("script", "style"):
        [inline] = re.findall(rf"<{tag}>(.*?)</{tag}>", page(), flags=re.DOTALL)
        digest = base64.b64encode(hashlib.sha256(inline.encode("utf-8")).digest()).decode()
        digests[tag] = f"'sha256-{digest}'"
    return (f"default-src 'none'; script-src {digests['script']}; style-src {digests['style']}; "
            "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
