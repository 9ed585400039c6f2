"""The service's settings: what it loads, where it listens and every limit it enforces, in one place.

``distilsent serve`` builds its options from these fields (flag, type, default and help), the service
and its batcher read them from here, so a default is written once. No server dependency is imported:
the command line reads this module to build ``--help`` even where the ``serve`` extra is absent.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field

from ..errors import InputError
from ..runtime.long_text import check_strategy


def option(default, help: str, **more):
    """A setting that ``distilsent serve`` offers as ``--name-with-dashes``."""
    return field(default=default, metadata={"help": help, **more})


@dataclass(frozen=True)
class ServiceSettings:
    """Run-time options of the HTTP service (not saved with a model)."""

    model: str | None = option(None, "checkpoint directory or Hub id (default: the embedded model)", type=str)
    backend: str | None = option(None, "inference backend (default: the library's default)", type=str)
    threads: int | None = option(None, "CPU threads per worker (default: cores / workers)", type=int)
    host: str = option("127.0.0.1", "address to listen on")
    port: int = option(8000, "port to listen on (1-65535)")
    workers: int = option(1, "processes, each with its own model and batcher; CPU threads are split between them")
    # Batching
    max_batch_tokens: int = option(8192, "padded tokens per batch")
    max_batch_size: int = option(64, "texts per batch")
    max_wait_ms: float = option(5.0, "how long a queued text waits for others to join its batch")
    # Admission: what may be held in memory at once
    max_queue_texts: int = option(2048, "texts queued or computing before new requests get 429")
    # 8 full batches: a one-text request behind a full queue waits seconds, not minutes (8k tokens take
    # about 1 s with the default model on 2 cores), and the token ids and activations held stay small.
    max_queue_tokens: int = option(65536, "tokens queued or computing before new requests get 429")
    max_request_texts: int = option(256, "texts in one request before 413")
    # Long texts: a request may ask for head_tail or windows (distilsent's long_text, stride, aggregate
    # fields); without them an over-long text is a 422, unless --long-text sets the server's default.
    long_text: str | None = option(
        None, "default for requests that do not say: truncate, head_tail or window (default: none, over-long "
        "texts get 422 unless the request asks for truncation or a long_text)", type=str,
    )
    stride: int | None = option(None, "default window stride in tokens (default: half a window)", type=int)
    window: int | None = option(None, "default window width in tokens (default: the model's maximum length)",
                                type=int)
    aggregate: str | None = option(None, "default way to combine a text's windows: mean or max (default: mean)",
                                   type=str)
    # A 5,000-word review is about 26 windows at the default stride: this admits a few such reviews per request.
    max_request_windows: int = option(
        128, "windows of the texts read as several windows, in one request, before 413 (a text read whole is "
        "not counted: --max-request-texts limits those)"
    )
    max_concurrent_requests: int = option(512, "requests whose body is in and that are being served, before 429")
    max_body_bytes: int = option(1 << 20, "request body size before 413")
    tokenize_threads: int = option(1, "threads that tokenize large requests (at most this many at once)")
    # Explanations (POST /explain): occlusion classifies a text once more per word, so a 256-word text is the
    # work of hundreds of requests; they are admitted apart, their work counted in tokens x occlusions.
    max_concurrent_explains: int = option(
        1, "explanations computed at once, each on a thread of its own beside the batcher's"
    )
    max_explain_work: int = option(
        262144, "tokens x occlusions of the explanations admitted (waiting or computing) before /explain gets 429; "
        "a 256-word text of 258 tokens is 66,306; one over the limit on its own gets 413"
    )
    # Under the 60 s a client is commonly let wait, with room for a 256-word text on 2 busy cores (25-40 s).
    explain_timeout: float = option(45.0, "seconds an explanation may wait and compute before 503; one that would "
                                    "not finish in time at the current pace gets 429 at once")
    # Connections
    body_timeout: float = option(10.0, "seconds to receive a request body before 408")
    header_timeout: float = option(10.0, "seconds to receive a request's headers before the connection is closed")
    max_header_bytes: int = option(65536, "size of a request's headers before 431")
    keep_alive_timeout: float = option(5.0, "seconds an idle keep-alive connection stays open")
    allowed_hosts: tuple[str, ...] = option(
        (), "Host header values to accept besides localhost, IP addresses and --host ('*': any)", multiple=True
    )
    forwarded_allow_ips: str | None = option(
        None, "proxy addresses whose X-Forwarded-For/-Proto to trust, comma-separated ('*': any; default: none)",
        type=str,
    )
    shutdown_timeout: float = option(30.0, "seconds to finish in-flight requests after SIGTERM; later ones get 503")

    def __post_init__(self) -> None:
        positive = [
            f.name for f in dataclasses.fields(self)
            if f.name.startswith(("max_", "tokenize_", "workers")) and f.name != "max_wait_ms"
        ]
        bad = [name for name in positive if not getattr(self, name) > 0]
        timeouts = ("body_timeout", "header_timeout", "keep_alive_timeout", "explain_timeout")
        bad += [name for name in timeouts if not getattr(self, name) > 0]
        if self.threads is not None and self.threads < 1:
            bad.append("threads")
        if bad:
            raise InputError(f"{', '.join(bad)} must be positive")
        for name in ("max_wait_ms", "shutdown_timeout"):
            if not getattr(self, name) >= 0:
                raise InputError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if not (isinstance(self.port, int) and 1 <= self.port <= 65535):
            raise InputError(f"port must be between 1 and 65535, got {self.port}")
        check_strategy(self.long_text or "truncate", self.aggregate or "mean")
        if self.stride is not None and self.stride < 1:
            raise InputError(f"stride must be positive, got {self.stride}")
        if self.window is not None and self.window < 3:
            raise InputError(f"window must leave room for [CLS], a token and [SEP], got {self.window}")
        if self.max_request_texts > self.max_queue_texts:
            raise InputError("max_request_texts cannot exceed max_queue_texts: such a request could never run")
        object.__setattr__(self, "allowed_hosts", tuple(self.allowed_hosts))

    def host_allowed(self, host_header: str) -> bool:
        """Whether a request's ``Host`` may be served. A page on another site can make a browser send
        requests to a local server under its own name (DNS rebinding); it cannot make the browser name an
        IP address or localhost, so those are always accepted, with --host and --allowed-hosts."""
        if "*" in self.allowed_hosts:
            return True
        name = host_header.lower()
        if name.startswith("["):  # [::1]:8000
            name = name[1 : name.find("]")]
        elif name.count(":") == 1:  # name:port
            name = name.split(":")[0]
        name = name.rstrip(".")
        if name in ("localhost", self.host.lower()) or name in (h.lower() for h in self.allowed_hosts):
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True


DEFAULTS = ServiceSettings()
