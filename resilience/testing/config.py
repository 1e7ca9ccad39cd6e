"""Setting overrides for a test: for this process and the workers it starts."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

from resilience.core.settings import current_override, env_fields, load_settings, reset_settings
from resilience.core.store import reset_redis

__all__ = ["configure", "patched_environ", "settings_env"]

_FIELD_BY_ENV = {f.metadata["env"]: f.name for f in env_fields()}
_ENV_BY_FIELD = {v: k for k, v in _FIELD_BY_ENV.items()}


def settings_env(**overrides: Any) -> dict[str, str]:
    """Environment variables for setting overrides given by field name
    (``worker_heartbeat_timeout_sec=5``) or variable name (``FEATURE_IDEMPOTENCY="false"``)."""
    env = {}
    for name, value in overrides.items():
        var = _ENV_BY_FIELD.get(name, name)
        if var not in _FIELD_BY_ENV:
            raise KeyError(f"unknown setting {name!r}")
        env[var] = ("true" if value else "false") if isinstance(value, bool) else ("" if value is None else str(value))
    return env


@contextlib.contextmanager
def configure(redis_url: str | None = None, **overrides: Any) -> Iterator[None]:
    """Point this process at ``redis_url`` with setting overrides, then restore.

    The environment is changed too, so subprocess workers started inside the
    block see the same settings.
    """
    env = settings_env(**overrides)
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    forced = current_override()
    try:
        with patched_environ(env):
            reset_settings(None if forced is None else load_settings())
            reset_redis()
            yield
    finally:
        reset_settings(forced)
        reset_redis()


@contextlib.contextmanager
def patched_environ(env: Mapping[str, str]) -> Iterator[None]:
    """Set ``env`` in ``os.environ`` for the block, then put back what was there."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
