"""celery-resilience: Celery on Redis that keeps jobs alive.

The public facade. Each concern lives in its own module and is usable from
Python without Celery magic: :mod:`resilience.deadletter`,
:mod:`resilience.idempotency`, :mod:`resilience.breaker`, :mod:`resilience.executions`,
:mod:`resilience.settings`, ...
"""

from resilience.errors import (
    BrokerUnavailable,
    CircuitOpenError,
    ConfigurationError,
    InvalidIdempotencyKey,
    PayloadTooLarge,
    PermanentError,
    ResilienceError,
    SettingsError,
    SpoolFull,
    UnknownTaskOption,
    UnserializableArgument,
)
from resilience.install import install
from resilience.settings import Settings, get_settings
from resilience.task import ResilientTask

__version__ = "0.1.0"

__all__ = [
    "BrokerUnavailable",
    "CircuitOpenError",
    "ConfigurationError",
    "InvalidIdempotencyKey",
    "PayloadTooLarge",
    "PermanentError",
    "ResilienceError",
    "ResilientTask",
    "Settings",
    "SettingsError",
    "SpoolFull",
    "UnknownTaskOption",
    "UnserializableArgument",
    "get_settings",
    "install",
    "__version__",
]
