"""What BentoML's server leaves open, closed from outside it.

BentoML 1.4 runs uvicorn under a circus arbiter. Three of their defaults fail open for a
public service, and none is a setting, so each is fixed here at the one place it is decided:

- **Slow or endless headers hold a connection, and memory, forever.** uvicorn times out idle
  keep-alive connections but not a request whose headers trickle in (slowloris), and its
  httptools parser sets no size limit on them. `HeaderDeadlineProtocol` closes a connection
  whose request line and headers are not complete within `read_timeout_s`, and answers 431
  once they pass `max_header_bytes`; the body's limits are `RequestGuard`'s. `limit_headers`
  makes it the protocol uvicorn picks (`http="auto"`), before BentoML's worker builds its
  uvicorn config.
- **Every 4xx is an ERROR with a traceback.** BentoML logs each exception of an API call the
  same way. `quiet_client_errors` logs a client's mistake (validation error, 4xx) as one
  WARNING line with the path and a capped message; 5xx keep their tracebacks.
- **The process manager's control socket is open to every local user.** circus listens on
  TCP 127.0.0.1 for commands (stop, add a watcher that runs any command) without
  authentication. `private_control_sockets` puts its endpoints on Unix sockets in a folder
  only this user can enter. `python -m shopflow.serving.launch` applies it to `bentoml serve`.

Each check fails loudly if a BentoML or uvicorn upgrade moved what it replaces (a test pins it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from shopflow.core.errors import preview

log = logging.getLogger("shopflow.serving")


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol with a deadline on each request's line and headers."""

    header_timeout_s: float = 10.0
    max_header_bytes: int = 65_536

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._arm()

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.header_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            peer = self.transport.get_extra_info("peername")
            log.warning(
                "closed a connection from %s: its request headers did not arrive within %g s",
                peer,
                self.header_timeout_s,
            )
            self.transport.close()

    def on_message_begin(self) -> None:
        self._arm()
        self._header_bytes = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value))
        super().on_header(name, value)

    def _count(self, size: int) -> None:
        """Answer 431 and close once a request's line and headers pass `max_header_bytes`
        (raising stops the parser; uvicorn's own 400 then finds the connection closed)."""
        self._header_bytes += size
        if self._header_bytes <= self.max_header_bytes:
            return
        if not self.transport.is_closing():
            limit = self.max_header_bytes
            body = json.dumps({"error": f"request line and headers are over {limit} bytes"})
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                b"content-type: application/json\r\nconnection: close\r\n"
                + f"content-length: {len(body)}\r\n\r\n{body}".encode()
            )
            log.warning("431: a request's headers passed %d bytes; connection closed", limit)
            self.transport.close()
        raise ValueError("request headers over the limit")

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def limit_headers(seconds: float, max_bytes: int) -> None:
    """Make uvicorn's `auto` protocol one with a header deadline of `seconds` and a size
    limit of `max_bytes`."""
    import uvicorn.config

    if "auto" not in uvicorn.config.HTTP_PROTOCOLS:
        raise RuntimeError("uvicorn.config.HTTP_PROTOCOLS has no 'auto': uvicorn changed")
    HeaderDeadlineProtocol.header_timeout_s = seconds
    HeaderDeadlineProtocol.max_header_bytes = max_bytes
    uvicorn.config.HTTP_PROTOCOLS["auto"] = f"{__name__}:HeaderDeadlineProtocol"


def client_error_status(exc: BaseException | None) -> int | None:
    """The 4xx status BentoML answers `exc` with, or None for a server error."""
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return 400
    if isinstance(exc, BentoMLException):
        status = int(exc.error_code.value)
        return status if 400 <= status < 500 else None
    return None


def quiet_client_errors() -> None:
    """Log a client's error as one WARNING line; server errors keep BentoML's traceback."""
    import _bentoml_impl.server.app as app

    original = app.log_exception
    if getattr(original, "shopflow", False):
        return

    def log_exception(request: Any, exc_info: Any = True) -> None:
        exc = sys.exc_info()[1]
        status = client_error_status(exc)
        if status is None:
            original(request, exc_info)
            return
        log.warning(
            "%d %s %s: %s",
            status,
            request.method,
            request.url.path,
            preview(str(exc).replace("\n", " "), 300),
        )

    log_exception.shopflow = True  # type: ignore[attr-defined]
    app.log_exception = log_exception


def private_control_sockets() -> Path:
    """Put circus's control and pub/sub endpoints on Unix sockets in a fresh 0700 folder; the
    folder. Applies to arbiters BentoML creates after this call, in this process."""
    import bentoml._internal.utils.circus as circus_utils

    if not hasattr(circus_utils, "create_standalone_arbiter"):
        raise RuntimeError("BentoML has no create_standalone_arbiter: its circus use changed")
    folder = Path(tempfile.mkdtemp(prefix="shopflow-circus-"))  # mode 0700
    folder.chmod(0o700)

    def create_standalone_arbiter(watchers: list, *, threaded: bool = False, **kwargs: Any):
        arbiter_cls = circus_utils.ThreadedArbiter if threaded else circus_utils.Arbiter
        return arbiter_cls(
            watchers,
            endpoint=f"ipc://{folder}/control.sock",
            pubsub_endpoint=f"ipc://{folder}/pubsub.sock",
            check_delay=kwargs.pop("check_delay", 10),  # BentoML's own default
            **kwargs,
        )

    circus_utils.create_standalone_arbiter = create_standalone_arbiter
    return folder
