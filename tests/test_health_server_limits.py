"""The worker's health server against slow and half-sent requests (issue 15).

Before: 200 connections that sent half a request held 55 threads and kept
them. Now each connection has a deadline for its request and the handlers are
capped. A real in-process worker serves the probes.
"""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from resilience.healthserver import HealthServer
from resilience.testing import configure, in_process_worker, wait_for

FAST = dict(health_port=0, health_refresh_interval_sec=0.2, health_redis_timeout_sec=0.3)
HALF_A_REQUEST = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # no blank line: the headers never end


@pytest.fixture
def health_port(app):
    with configure(**FAST), in_process_worker(app) as worker:
        server = worker.resilience_health.server
        assert server is not None, "the worker started no health server"
        wait_for(lambda: _health(server.port) == 200, timeout=30, message="/health 200")
        yield server.port


def _health(port: int) -> int | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code
    except httpx.TransportError:
        return None


def _handler_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "resilience-health-request")


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed this connection (EOF or reset), waiting at most 10 s."""
    sock.settimeout(10)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_two_hundred_half_sent_requests_hold_a_bounded_number_of_threads_and_health_still_answers(health_port):
    clients = []
    try:
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", health_port), timeout=5)
            sock.sendall(HALF_A_REQUEST)
            clients.append(sock)
        assert _handler_threads() <= HealthServer.max_handlers
        started = time.monotonic()
        wait_for(lambda: _handler_threads() <= HealthServer.max_handlers and _health(health_port) == 200,
                 timeout=HealthServer.request_timeout_sec + 8, message="/health to answer 200 again")
        assert time.monotonic() - started < HealthServer.request_timeout_sec + 3
        assert all(_closed_by_server(sock) for sock in clients), "every half-sent request is dropped"
        wait_for(lambda: _handler_threads() == 0, timeout=10, message="the handler threads to end")
    finally:
        for sock in clients:
            sock.close()


def test_a_client_that_trickles_its_request_is_dropped_at_the_request_timeout(health_port):
    stop = threading.Event()
    with socket.create_connection(("127.0.0.1", health_port), timeout=5) as sock:
        started = time.monotonic()
        try:
            for byte in HALF_A_REQUEST + b"X-Slow: " + b"." * 1000:  # a byte every 0.1 s: each read is quick
                sock.send(bytes([byte]))
                if stop.wait(0.1):
                    break
        except OSError:  # the server closed the connection: what this test wants
            pass
        dropped_after = time.monotonic() - started
        assert _closed_by_server(sock)
    assert dropped_after < HealthServer.request_timeout_sec + 2, f"held for {dropped_after:.1f}s"
    assert _health(health_port) == 200


def test_a_keep_alive_client_is_served_request_after_request(health_port):
    with httpx.Client(base_url=f"http://127.0.0.1:{health_port}", timeout=5) as client:
        for path in ("/health", "/ready", "/metrics", "/health"):
            assert client.get(path).status_code in (200, 503)
