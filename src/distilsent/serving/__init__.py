"""Serving: the HTTP service (settings, request models, admission and limits, the guarded protocol, metrics and
the access log, the batcher, the routes and the page).

May import the runtime, insight (for ``/explain``), the model and the foundation; never training, bulk or the
command line. Needs the ``serve`` extra (FastAPI, uvicorn) except for :mod:`.settings`.
"""
