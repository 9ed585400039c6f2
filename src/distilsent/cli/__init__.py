"""The command line, ``distilsent <verb>``: each verb parses its arguments, calls one library function and
prints. The top layer: it may import every other package.
"""

from .commands import main

__all__ = ["main"]
