"""The worker's health HTTP server: ``/health``, ``/ready``, ``/metrics``.

A ``ThreadingHTTPServer`` on a daemon thread of the worker's main process:
it never runs on the consumer's event loop, so a wedged loop cannot silence
it and a slow client cannot block the worker. Each connection gets its own
thread; the handlers only read cached state (see :mod:`resilience.probes.health`).

Slow or idle clients cannot pile up threads: a connection must deliver a
complete request within :attr:`HealthServer.request_timeout_sec` (2 s) of
being accepted, or of its previous reply, however it trickles its bytes, or
it is closed; and at most :attr:`HealthServer.max_handlers` (32) connections
are served at once. Beyond that a new connection is closed unread at once, so
a probe retried after the request timeout is answered again.

Port rule: with ``HEALTH_PORT=0`` the OS picks a free port. Otherwise the
server binds the first free port of ``HEALTH_PORT``, ``HEALTH_PORT+1``, ...,
``HEALTH_PORT+HEALTH_PORT_TRIES-1``, so several workers on one host do not
collide; the chosen port is logged and recorded in ``workers:health``. When
none is free the worker runs without a health server (logged as an error).
It binds ``HEALTH_HOST`` (``127.0.0.1`` by default: the endpoints expose
queue and task names; bind ``0.0.0.0`` only inside a container or a private
network).
"""

from __future__ import annotations

import errno
import io
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from resilience.core.settings import Settings

__all__ = ["HealthServer", "bind", "serve"]

log = logging.getLogger(__name__)


class HealthServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False  # a port held by another worker must fail to bind, not be shared
    request_queue_size = 64  # a burst of probes waits in the kernel's backlog, not refused there

    #: Seconds a connection has to deliver a complete request (line and headers), from
    #: its acceptance or its previous reply; then it is closed.
    request_timeout_sec: float = 2.0
    #: Connections served at once (one thread each); a connection beyond them is closed unread.
    max_handlers: int = 32

    def __init__(self, address, probe, state) -> None:
        self.probe = probe
        self.state = state
        self.refused = 0  # connections closed unread because every handler was busy
        self._slots = threading.BoundedSemaphore(self.max_handlers)
        self._thread: threading.Thread | None = None
        super().__init__(address, _Handler)

    def process_request(self, request, client_address) -> None:
        """Serve the connection on a thread of its own, if one of ``max_handlers`` is free."""
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            log.debug("health server busy (%d connections): closed one from %s", self.max_handlers, client_address)
            self.shutdown_request(request)
            return
        try:
            threading.Thread(target=self.process_request_thread, args=(request, client_address),
                             name="resilience-health-request", daemon=True).start()
        except BaseException:
            self._slots.release()
            self.shutdown_request(request)
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        """A client that hung up or reset is its own business: no traceback on stderr."""
        log.debug("health request from %s failed", client_address, exc_info=True)

    def start(self) -> HealthServer:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="resilience-health-http", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(5)

    @property
    def port(self) -> int:
        return self.server_address[1]


class _DeadlineReader(io.RawIOBase):
    """The connection's bytes, each read bounded by what is left of the handler's deadline.

    A per-read timeout alone lets a client that sends a byte a second hold its
    thread for ever; this ends the request at the deadline, raising
    ``TimeoutError`` (which ``BaseHTTPRequestHandler`` answers by closing).
    """

    def __init__(self, handler: _Handler) -> None:
        self._handler = handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        remaining = self._handler.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no complete request in time")
        self._handler.connection.settimeout(remaining)
        return self._handler.connection.recv_into(buffer)


class _Handler(BaseHTTPRequestHandler):
    server: HealthServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall
    server_version = "resilience-health"
    deadline = 0.0

    def setup(self) -> None:
        self.timeout = self.server.request_timeout_sec  # type: ignore[misc]  # also bounds each write of a reply
        super().setup()
        self.rfile.close()
        self.rfile = io.BufferedReader(_DeadlineReader(self))

    def handle_one_request(self) -> None:
        self.deadline = time.monotonic() + self.server.request_timeout_sec
        super().handle_one_request()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.connection.settimeout(self.server.request_timeout_sec)  # the reply gets its own time
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        try:
            if path == "/health":
                self._json(*self.server.probe.report())
            elif path == "/ready":
                self._json(*self.server.probe.readiness())
            elif path == "/metrics":
                from resilience.observability import metrics

                self._send(200, metrics.exposition(self.server.state), metrics.CONTENT_TYPE_LATEST)
            elif path == "/":
                self._json(200, {"endpoints": ["/health", "/ready", "/metrics"]})
            else:
                self._json(404, {"error": f"no such endpoint: {path}"})
        except Exception as exc:  # a probe must answer, even about its own failure
            log.exception("health endpoint %s failed", path)
            self._json(500, {"status": "error", "error": f"{type(exc).__name__}: {exc}"})

    def _json(self, code: int, body: dict[str, Any]) -> None:
        self._send(code, json.dumps(body, default=str).encode(), "application/json")

    def _send(self, code: int, payload: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: keep logs quiet
        log.debug("health %s - %s", self.address_string(), format % args)


def candidate_ports(settings: Settings) -> list[int]:
    """Ports tried in order (the port rule in the module docstring)."""
    if settings.health_port == 0:
        return [0]
    last = min(65535, settings.health_port + settings.health_port_tries - 1)
    return list(range(settings.health_port, last + 1))


def bind(probe, state, settings: Settings) -> HealthServer | None:
    """A server bound by the port rule, or None when every candidate port is taken."""
    for port in candidate_ports(settings):
        try:
            return HealthServer((settings.health_host, port), probe, state)
        except OSError as exc:
            if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                log.error("health server cannot bind %s:%s: %s", settings.health_host, port, exc)
                return None
    return None


def serve(probe, state, settings: Settings, *, label: str = "worker") -> HealthServer | None:
    """Bind and start; never raises (a worker runs without its probe rather than not at all)."""
    try:
        server = bind(probe, state, settings)
    except Exception as exc:
        log.error("health server of %s not started: %s", label, exc)
        return None
    if server is None:
        ports = candidate_ports(settings)
        log.error("health server of %s not started: ports %s-%s on %s are all taken (HEALTH_PORT, HEALTH_PORT_TRIES)",
                  label, ports[0], ports[-1], settings.health_host)
        return None
    server.start()
    log.info("health server of %s listening on http://%s:%s (/health, /ready, /metrics)",
                label, settings.health_host, server.port)
    return server
