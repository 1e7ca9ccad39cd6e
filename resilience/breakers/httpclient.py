"""An HTTP client whose calls go through a named circuit breaker.

Built on httpx: timeouts are on by default (connect ``HTTP_CONNECT_TIMEOUT_SEC``,
read/write ``HTTP_READ_TIMEOUT_SEC``), its sync ``Client`` pools connections,
and it is already a dependency of the platform.

What counts against the breaker: transport errors (refused connections,
timeouts, resets) and 5xx responses, which raise ``httpx.HTTPStatusError``.
A 4xx response is the caller's business: it is returned as is, and a 4xx
``HTTPStatusError`` raised by the caller inside the same breaker (a job with
``breaker=`` that calls ``raise_for_status()``) does not trip it either.

::

    with BreakerClient("payments-api", base_url="https://payments.example") as api:
        api.post("/charges", json={...})   # CircuitOpenError while the breaker is open
"""

from __future__ import annotations

from typing import Any

import httpx

from resilience.breakers.breaker import Breaker, get_breaker
from resilience.core.settings import get_settings

__all__ = ["BreakerClient", "is_client_error"]


def is_client_error(exc: BaseException) -> bool:
    """A 4xx ``HTTPStatusError``: a business error that must not trip a breaker."""
    return isinstance(exc, httpx.HTTPStatusError) and 400 <= exc.response.status_code < 500


class BreakerClient:
    """A pooled ``httpx.Client`` whose requests go through breaker ``breaker``.

    Timeouts resolve call (``timeout=``) > client (``connect_timeout_sec``,
    ``read_timeout_sec``) > settings. Other keyword arguments go to
    ``httpx.Client``.
    """

    def __init__(self, breaker: str | Breaker, *, base_url: str = "", connect_timeout_sec: float | None = None,
                 read_timeout_sec: float | None = None, **client_options: Any) -> None:
        settings = get_settings()
        self.breaker = get_breaker(breaker) if isinstance(breaker, str) else breaker
        self.breaker.configure(exclude=[is_client_error])
        read = read_timeout_sec or settings.http_read_timeout_sec
        timeout = httpx.Timeout(read, connect=connect_timeout_sec or settings.http_connect_timeout_sec)
        self.client = httpx.Client(base_url=base_url, timeout=timeout, **client_options)

    def request(self, method: str, url: str, **options: Any) -> httpx.Response:
        """Send a request through the breaker; 5xx raises ``httpx.HTTPStatusError``."""

        def send() -> httpx.Response:
            response = self.client.request(method, url, **options)
            if response.status_code >= 500:
                response.raise_for_status()
            return response

        return self.breaker.call(send)

    def get(self, url: str, **options: Any) -> httpx.Response:
        return self.request("GET", url, **options)

    def post(self, url: str, **options: Any) -> httpx.Response:
        return self.request("POST", url, **options)

    def put(self, url: str, **options: Any) -> httpx.Response:
        return self.request("PUT", url, **options)

    def patch(self, url: str, **options: Any) -> httpx.Response:
        return self.request("PATCH", url, **options)

    def delete(self, url: str, **options: Any) -> httpx.Response:
        return self.request("DELETE", url, **options)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> BreakerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
