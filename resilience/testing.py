"""Test helpers shipped with the library, so users test their tasks as we test ours.

* :func:`wait_for` waits on a condition with a deadline (never sleep to synchronise);
* :class:`~resilience.embedded.RedisServerProcess` is a private redis-server
  that a test can stop, kill (SIGKILL), freeze (SIGSTOP) and restart;
* :func:`configure` points this process (settings, store, Celery app) at a Redis
  and applies setting overrides;
* :func:`in_process_worker` runs a real Celery worker in a thread (fast);
* :class:`SubprocessWorker` runs a real worker as a child process that a test
  can kill, with its output in a log file.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from resilience.embedded import RedisServerProcess, find_redis_binary, free_port
from resilience.settings import current_override, env_fields, load_settings, reset_settings
from resilience.store import reset_redis

__all__ = [
    "RedisServerProcess", "SubprocessWorker", "configure", "find_redis_binary", "free_port",
    "in_process_worker", "settings_env", "start_private_redis", "wait_for",
]

T = TypeVar("T")


def start_private_redis(directory: Path, *, appendonly: bool = True) -> RedisServerProcess:
    """Start a redis-server of this process's own (free port, data in ``directory``) and
    point this process and its children at it (``REDIS_URL``, settings re-read)."""
    server = RedisServerProcess(binary=find_redis_binary(load_settings()), directory=Path(directory),
                                appendonly=appendonly).start()
    os.environ["REDIS_URL"] = server.url
    reset_settings()
    reset_redis()
    return server


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05,
             message: str | Callable[[], str] = "condition") -> T:
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` s.

    Exceptions raised by the predicate count as "not yet" (the last one is
    reported on timeout), so a check may talk to a Redis that is coming back.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as err:  # noqa: BLE001 - reported below
            last_error = err
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {text}{detail}")
        time.sleep(interval)


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
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    forced = current_override()
    try:
        reset_settings(None if forced is None else load_settings())
        reset_redis()
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        reset_settings(forced)
        reset_redis()


@contextlib.contextmanager
def in_process_worker(app, *, concurrency: int = 4, pool: str = "threads", hostname: str | None = None,
                      queues: list[str] | None = None, **kwargs: Any):
    """A real Celery worker in a thread of this process; yields the WorkController.

    It runs the app's bootsteps and signal handlers like any worker. It cannot
    be killed: use :class:`SubprocessWorker` for crash tests.
    """
    from celery.contrib.testing.worker import start_worker

    hostname = hostname or f"inproc-{uuid.uuid4().hex[:6]}@test"
    options = dict(concurrency=concurrency, pool=pool, perform_ping_check=False, hostname=hostname,
                   shutdown_timeout=30, loglevel="WARNING", **kwargs)
    if queues:
        options["queues"] = queues
    with start_worker(app, **options) as worker:
        yield worker


class SubprocessWorker:
    """A real ``celery -A tasks worker`` child process that a test can kill.

    ``app`` names another app, as ``celery -A`` does (``proj.celery:app``).
    ``env`` is added to this process's environment (use :func:`settings_env`).
    Output goes to ``log_path``; :meth:`wait_ready` waits for Celery's "ready." line.
    """

    def __init__(self, log_dir: Path, *, name: str | None = None, concurrency: int = 1,
                 pool: str = "prefork", include: list[str] | None = None, env: Mapping[str, str] | None = None,
                 extra_args: list[str] | None = None, cwd: str | None = None, app: str = "tasks") -> None:
        self.name = name or f"sub-{uuid.uuid4().hex[:6]}@test"
        self.log_path = Path(log_dir) / f"{self.name.replace('@', '_')}.log"
        argv = [sys.executable, "-m", "celery", "-A", app, "worker", "-n", self.name,
                "-c", str(concurrency), "-P", pool, "-l", "INFO", "--without-mingle", "--without-gossip"]
        for module in include or ():
            argv += ["-I", module]
        self.argv = argv + list(extra_args or ())
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        root = str(Path(__file__).resolve().parent.parent)
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, self.env.get("PYTHONPATH")]))
        self.cwd = cwd or root
        self.process: subprocess.Popen | None = None

    def start(self) -> SubprocessWorker:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout: float = 60.0) -> SubprocessWorker:
        def ready():
            if not self.alive():
                raise AssertionError(f"worker {self.name} exited:\n{self.log()[-3000:]}")
            return " ready." in self.log()

        wait_for(ready, timeout, interval=0.1, message=lambda: f"worker {self.name} to be ready:\n{self.log()[-2000:]}")
        return self

    def pool_pids(self) -> list[int]:
        """Pids of the worker's pool processes (children of the main process)."""
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except OSError:
            return []

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the main process only (SIGKILL: its pool children die with it)."""
        if self.alive():
            os.kill(self.pid, sig)
            if sig == signal.SIGKILL:
                self.process.wait(10)
                self._kill_group()

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def stop(self, timeout: float = 30.0) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL whatever is left."""
        if self.process is None:
            return
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._kill_group()

    def __enter__(self) -> SubprocessWorker:
        return self.start().wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def hold_outage(seconds: float) -> None:
    """Keep Redis away for a scenario's stated duration.

    An outage's length is part of the scenario (a 5 s outage, one longer than
    the clients' retries), not synchronisation: tests wait on conditions with
    :func:`wait_for`, and use this only to say how long Redis stays down.
    """
    time.sleep(seconds)


def worker_health_url(r, worker: SubprocessWorker, timeout: float = 60.0) -> str:
    """The health server URL a subprocess worker registered in ``workers:health``."""
    from resilience.keys import keys

    def registered():
        for wid, raw in r.hgetall(keys().worker_health).items():
            if wid.startswith(worker.name + "|"):
                return json.loads(raw)["url"]
        return None

    return wait_for(registered, timeout=timeout, message=f"the health registration of {worker.name}")
