"""A TCP proxy in front of a real redis-server that cuts Redis off at a chosen instant.

Killing redis-server shows what happens when Redis dies at a random moment;
some failures need it to die at one exact moment, such as right after it
handed a worker a message and before the worker's next command. Clients (a
worker, say) connect to :attr:`CutProxy.url`; the proxy relays bytes to the
real server until told to cut:

* :meth:`cut` drops every connection at once and refuses new ones until
  :meth:`restore`, as a dead Redis would;
* :meth:`cut_after_next_pop` waits for the next ``BRPOP`` reply that carries
  a message, cuts every other connection first, then relays that reply and
  closes its connection too: the worker holds a message Redis no longer has
  and cannot write anything back;
* :meth:`cut_on_request` waits for a command whose bytes contain every given
  marker (a job id and a script's SHA, say), drops it unsent and cuts: Redis
  never sees that command. With ``reply_lost=True`` the command reaches Redis
  and the cut comes instead of its reply: it ran, and the client never knows.

Used by tests and benchmarks; the server behind it is a real redis-server.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading

log = logging.getLogger(__name__)

__all__ = ["CutProxy"]

_CHUNK = 65536


class _Link:
    """One client connection and its upstream connection."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.awaiting_pop = False
        self.cut_before_reply = False

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class CutProxy:
    """Relay ``127.0.0.1:<port>`` to a real Redis; cut it off on demand."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._down = False
        self._armed = False
        self._markers: tuple[bytes, ...] = ()
        self._reply_lost = False
        self._closed = False
        #: Set when a cut happened (by :meth:`cut` or after a popped message).
        self.cut_done = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="cutproxy-accept", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cut(self) -> None:
        """Drop every connection now and refuse new ones until :meth:`restore`."""
        with self._lock:
            self._down = True
            links, self._links = self._links, set()
        for link in links:
            link.close()
        self.cut_done.set()

    def cut_after_next_pop(self) -> None:
        """Cut right after the next ``BRPOP`` reply carrying a message reaches its client."""
        with self._lock:
            self._armed = True
            self.cut_done.clear()

    def cut_on_request(self, *markers: bytes, reply_lost: bool = False) -> None:
        """Cut when a client sends a command containing every marker.

        The command is never relayed, or with ``reply_lost`` it is relayed and
        the cut replaces its reply.
        """
        with self._lock:
            self._markers = tuple(markers)
            self._reply_lost = reply_lost
            self.cut_done.clear()

    def restore(self) -> None:
        """Accept and relay connections again (the server behind never stopped)."""
        with self._lock:
            self._down = False
            self._armed = False
            self._markers = ()

    def close(self) -> None:
        self._closed = True
        self.cut()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept thread, which then ends
        with contextlib.suppress(OSError):
            self._listener.close()
        self._thread.join(5)

    def __enter__(self) -> CutProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- relaying ------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                down = self._down
            if down:
                client.close()  # a dead Redis: the client sees its connection closed
                continue
            try:
                upstream = socket.create_connection(self._upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            link = _Link(client, upstream)
            with self._lock:
                self._links.add(link)
            threading.Thread(target=self._to_server, args=(link,), daemon=True).start()
            threading.Thread(target=self._to_client, args=(link,), daemon=True).start()

    def _to_server(self, link: _Link) -> None:
        try:
            while data := link.client.recv(_CHUNK):
                if b"BRPOP" in data.upper():
                    link.awaiting_pop = True
                if self._matches(data):
                    if not self._reply_lost:
                        self.cut()
                        return
                    link.cut_before_reply = True
                link.upstream.sendall(data)
        except OSError:
            pass
        self._drop(link)

    def _to_client(self, link: _Link) -> None:
        try:
            while data := link.upstream.recv(_CHUNK):
                if link.cut_before_reply:
                    self.cut()
                    return
                if link.awaiting_pop and data[:1] == b"*":
                    link.awaiting_pop = False
                    if data.startswith(b"*2\r\n") and self._take_arming():
                        self._cut_others_then_relay(link, data)
                        return
                link.client.sendall(data)
        except OSError:
            pass
        self._drop(link)

    def _matches(self, data: bytes) -> bool:
        with self._lock:
            markers = self._markers
            if not markers or not all(m in data for m in markers):
                return False
            self._markers = ()
            return True

    def _take_arming(self) -> bool:
        with self._lock:
            if not self._armed:
                return False
            self._armed = False
            self._down = True
            return True

    def _cut_others_then_relay(self, link: _Link, reply: bytes) -> None:
        with self._lock:
            others, self._links = self._links - {link}, set()
        for other in others:
            other.close()
        with contextlib.suppress(OSError):
            link.client.sendall(reply)
            link.client.shutdown(socket.SHUT_WR)  # the reply, then end of stream
        with contextlib.suppress(OSError):
            link.upstream.close()
        self.cut_done.set()
        log.info("cut Redis off right after a popped message reached its client")

    def _drop(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)
        link.close()
