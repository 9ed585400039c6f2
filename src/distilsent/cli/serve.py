"""``distilsent serve``: the HTTP service; its flags are ServiceSettings' fields, so the two cannot drift."""

from __future__ import annotations

import argparse
import dataclasses

from ..runtime.backends import BACKENDS
from ..runtime.long_text import AGGREGATIONS, STRATEGIES
from ..serving.settings import ServiceSettings
from .options import add_verb, port

SERVE_EXAMPLES = """examples:
  distilsent serve --port 8000
  curl -s localhost:8000/ -H 'content-type: application/json' \\
       -d '{"inputs": "a gripping film", "parameters": {"top_k": null}}'
  distilsent serve --model ./my-model --host 0.0.0.0 --allowed-hosts api.example.com --workers 2 --max-wait-ms 2"""


def add_serve(verbs) -> None:
    p = add_verb(verbs, "serve", "serve a model over HTTP (Hugging Face Inference API and TEI routes), batching "
                                 "requests", SERVE_EXAMPLES)
    # A value outside a fixed set or range is a usage error (exit 2, listing the choices), told by argparse
    # before anything loads; ServiceSettings checks the same for callers in Python.
    choices = {"backend": tuple(BACKENDS), "long_text": STRATEGIES, "aggregate": AGGREGATIONS}
    for setting in dataclasses.fields(ServiceSettings):  # one source for the service's options and defaults
        flag, help = "--" + setting.name.replace("_", "-"), setting.metadata["help"]
        if setting.metadata.get("multiple"):
            p.add_argument(flag, action="append", metavar="NAME", help=f"{help}; repeat for more")
        else:
            shown = "" if setting.default is None or "(default" in help else f" (default: {setting.default})"
            kind = port if setting.name == "port" else setting.metadata.get("type", type(setting.default))
            p.add_argument(flag, type=kind, choices=choices.get(setting.name), default=setting.default,
                           help=help + shown)
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> None:
    options = {setting.name: getattr(args, setting.name) for setting in dataclasses.fields(ServiceSettings)}
    options["allowed_hosts"] = tuple(options["allowed_hosts"] or ())
    settings = ServiceSettings(**options)
    from ..serving.server import serve  # the server needs fastapi, an extra: imported only to serve

    serve(settings, log_level=args.log_level)
