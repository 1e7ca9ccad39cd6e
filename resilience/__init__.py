"""celery-resilience: Celery on Redis that keeps jobs alive.

The public facade. Each concern lives in its own module, in the subpackage of
its layer (docs/architecture.md), and is usable from Python without Celery
magic: :mod:`resilience.jobs.deadletter`, :mod:`resilience.jobs.idempotency`,
:mod:`resilience.breakers.breaker`, :mod:`resilience.jobs.executions`,
:mod:`resilience.core.settings`, ... The former flat paths
(``resilience.deadletter``, ``resilience.store``, ...) name the same modules
(:mod:`resilience._aliases`).
"""

import sys as _sys

from resilience import _aliases

_aliases.install_finder()  # first: anything imported below may use a former path

from resilience.core.errors import (  # noqa: E402
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
from resilience.core.settings import Settings, get_settings  # noqa: E402
from resilience.jobs.task import ResilientTask  # noqa: E402
from resilience.platform.install import install  # noqa: E402

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

_aliases.register_loaded(_sys.modules[__name__])
