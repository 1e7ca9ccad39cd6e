"""The former flat module paths (``resilience.store``, ``resilience.deadletter``, ...) keep working.

Each module lives in the subpackage of its concern (``resilience.core.store``,
``resilience.jobs.deadletter``, ...). The old name is an alias of the same
module object, not a copy: ``resilience.store is resilience.core.store``, so
patching a name through either path patches the one module. Modules already
imported when the package loads are registered under their old names at once
(:func:`register_loaded`); any other is found on first import by
:class:`AliasFinder`. ``resilience.install`` stays the function, as before.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

__all__ = ["ALIASES", "AliasFinder", "install_finder", "register_loaded"]

#: Old name (under ``resilience.``) -> module path (under ``resilience.``).
ALIASES: dict[str, str] = {
    "alert_rules": "observability.alert_rules", "alerts": "observability.alerts", "backoff": "core.backoff",
    "beatprobe": "probes.beatprobe", "bounded": "core.bounded", "breaker": "breakers.breaker",
    "connection": "core.connection", "cutproxy": "testing.cutproxy", "deadletter": "jobs.deadletter",
    "demo": "platform.demo", "display": "core.display", "embedded": "core.embedded", "errors": "core.errors",
    "events": "observability.events", "executions": "jobs.executions", "features": "platform.features",
    "flakyapi": "testing.flakyapi", "handover": "transport.handover", "health": "probes.health",
    "healthmonitor": "probes.healthmonitor", "healthserver": "probes.healthserver", "heartbeat": "recovery.heartbeat",
    "httpclient": "breakers.httpclient", "idempotency": "jobs.idempotency", "identity": "core.identity",
    "install": "platform.install", "keys": "core.keys", "localfiles": "core.localfiles",
    "localserver": "testing.localserver", "locks": "core.locks", "logconfig": "core.logconfig",
    "logredact": "core.logredact", "metrics": "observability.metrics", "observe": "core.observe",
    "outage": "outages.outage", "pending_writes": "outages.pending_writes", "platform_tasks": "core.platform_tasks",
    "quarantine": "core.quarantine", "queues": "core.queues", "reconnect": "transport.reconnect",
    "redact": "core.redact", "replication": "core.replication", "republish": "jobs.republish",
    "request": "jobs.request", "resultbackend": "transport.resultbackend", "retrying": "jobs.retrying",
    "runtime": "core.runtime", "scheduler": "jobs.scheduler", "sentinel": "core.sentinel",
    "sentry": "observability.sentry", "settings": "core.settings", "spool": "outages.spool",
    "status": "probes.status", "store": "core.store", "submission": "jobs.submission",
    "supervisor": "platform.supervisor", "sweeper": "recovery.sweeper", "task": "jobs.task",
    "tracking": "observability.tracking", "unacked": "transport.unacked",
    "webhook_receiver": "testing.webhook_receiver",
}

#: Package attributes that are not the module of the same name (``resilience.install`` is the function).
_NOT_ATTRIBUTES = frozenset({"install"})


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self.spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self.spec  # the import system set the alias's spec on it: the module keeps its own


class AliasFinder(importlib.abc.MetaPathFinder):
    """Finds ``resilience.<old name>`` as the module it moved to."""

    def find_spec(self, fullname: str, path: object = None, target: object = None
                  ) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != "resilience" or name not in ALIASES:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(f"resilience.{ALIASES[name]}"))


def install_finder() -> None:
    if not any(isinstance(finder, AliasFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, AliasFinder())


def register_loaded(package: ModuleType) -> None:
    """Register the old names of the modules already imported (and set them on ``package``)."""
    for old, new in ALIASES.items():
        module = sys.modules.get(f"resilience.{new}")
        if module is None:
            continue
        sys.modules.setdefault(f"resilience.{old}", module)
        if old not in _NOT_ATTRIBUTES:
            setattr(package, old, module)
