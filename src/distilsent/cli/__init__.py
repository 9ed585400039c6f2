"""The command line, ``distilsent <verb>``: each verb parses its arguments, calls one library function and
prints. The top layer: it may import every other package.

One module per verb or small group of verbs declares their flags beside their handlers; :mod:`.options` holds
what several share, :mod:`.program` the parser and ``main``.
"""

from .program import build_parser, main

__all__ = ["build_parser", "main"]
