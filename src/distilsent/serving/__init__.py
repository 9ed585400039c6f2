"""Serving: the HTTP service. :mod:`.settings` (every option and limit), :mod:`.bodies` (the request and answer
bodies and their OpenAPI description), :mod:`.admission` (what a request must pass before the app), :mod:`.protocol`
(the guarded HTTP/1.1 protocol), :mod:`.metrics` (metrics, the access log and the marks of every answer),
:mod:`.batcher` (cross-request batches), :mod:`.explanations` (``/explain`` under admission), :mod:`.app` (the
service's state, its prediction path and the routes), :mod:`.server` (the socket, uvicorn and its workers) and
:mod:`.page` (``/ui``).

May import the runtime, insight (for ``/explain``), the model and the foundation; never training, bulk or the
command line. Needs the ``serve`` extra (FastAPI, uvicorn) except for :mod:`.settings`.
"""

from __future__ import annotations

from ..errors import MissingDependencyError


def missing_extra(error: ImportError) -> MissingDependencyError:
    """What importing a server module without the ``serve`` extra raises: one line saying what to install."""
    return MissingDependencyError(
        f"the HTTP service needs FastAPI, uvicorn[standard], prometheus_client and fastapi-offline "
        f"({error.name} is missing): pip install 'distilsent[serve]'"
    )
