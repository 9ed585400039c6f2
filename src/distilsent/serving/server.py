"""Starting the service: the listening socket (:func:`listen`, bound before anything else so that a port in use
is one clear error), uvicorn's logging with the access log as JSON lines (:func:`log_config`), and
:func:`serve`, which loads the model, then runs one process or ``--workers N`` (each worker builds its app with
:func:`app_from_environment`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket

from . import missing_extra

try:
    import uvicorn
    from fastapi import FastAPI
except ImportError as e:
    raise missing_extra(e) from None

from ..errors import CheckpointError, DistilsentError, InputError
from .app import create_app, load_classifier
from .protocol import GuardedHttp
from .settings import ServiceSettings

log = logging.getLogger("distilsent.serving.server")

SETTINGS_ENV = "DISTILSENT_SERVE_SETTINGS"  # how `serve --workers N` hands its settings to each worker


def app_from_environment() -> FastAPI:
    """The app of one ``--workers N`` worker process, configured by :data:`SETTINGS_ENV`."""
    return create_app(ServiceSettings(**json.loads(os.environ[SETTINGS_ENV])))


def log_config(level: str) -> dict:
    """uvicorn's logging, plus the access log as bare JSON lines on stdout."""
    config = json.loads(json.dumps(uvicorn.config.LOGGING_CONFIG))
    config["formatters"]["json"] = {"format": "%(message)s"}
    config["handlers"]["json"] = {"formatter": "json", "class": "logging.StreamHandler", "stream": "ext://sys.stdout"}
    config["loggers"]["distilsent.access"] = {"handlers": ["json"], "level": "INFO", "propagate": False}
    config["loggers"]["distilsent"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound now, so that a port in use is one clear error before anything starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        reason = "the port is in use" if e.errno in (98, 48) else e.strerror or str(e)
        raise InputError(f"cannot listen on {host}:{port}: {reason}") from None
    sock.set_inheritable(True)
    return sock


def serve(settings: ServiceSettings, *, log_level: str = "info") -> None:
    """Run the service until SIGINT/SIGTERM, then stop accepting, finish in-flight requests and exit.

    The model is loaded (or fails to, as one error) before the port opens. With ``settings.workers`` > 1
    each worker process loads its own model and batcher, and the CPU threads are split between them
    unless ``settings.threads`` says otherwise.
    """
    from uvicorn.supervisors import Multiprocess

    if settings.workers > 1 and settings.threads is None:
        settings = dataclasses.replace(settings, threads=max(1, (os.cpu_count() or 1) // settings.workers))
    try:
        classifier = load_classifier(settings)
    except DistilsentError:
        raise
    except Exception as e:  # noqa: BLE001 - a backend's own error: one line, not a traceback
        raise CheckpointError(f"cannot load the model: {e}") from None
    sock = listen(settings.host, settings.port)
    options = dict(
        host=settings.host,
        port=settings.port,
        http=GuardedHttp,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        timeout_keep_alive=settings.keep_alive_timeout,
        log_level=log_level,
        log_config=log_config(log_level),
        access_log=False,  # replaced by AccessLog's structured lines
        timeout_graceful_shutdown=settings.shutdown_timeout,
        proxy_headers=settings.forwarded_allow_ips is not None,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )
    if settings.workers == 1:
        config = uvicorn.Config(create_app(settings, load=lambda: classifier), **options)
    else:
        del classifier  # checked; each worker loads its own
        os.environ[SETTINGS_ENV] = json.dumps(dataclasses.asdict(settings))
        config = uvicorn.Config(
            "distilsent.serving.server:app_from_environment", factory=True, workers=settings.workers, **options
        )
    config.header_timeout = settings.header_timeout
    address = f"[{settings.host}]" if ":" in settings.host else settings.host
    log.info("listening on http://%s:%d (%d worker%s)", address, settings.port, settings.workers,
             "s"[: settings.workers - 1])
    server = uvicorn.Server(config)
    if settings.workers == 1:
        server.run(sockets=[sock])
    else:
        Multiprocess(config, sockets=[sock]).run()
