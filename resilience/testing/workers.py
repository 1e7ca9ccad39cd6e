"""Real Celery workers for tests: in a thread of this process, or a child process to kill."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from resilience.testing.waiting import wait_for

__all__ = ["SubprocessWorker", "in_process_worker", "worker_health_url"]


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
    """A real ``celery -A <app> worker`` child process that a test can kill.

    ``app`` names the Celery app as ``celery -A`` does (``proj.celery:app``);
    the default is the bundled app, run from the checkout (``cwd`` and the
    import path default to it, so ``include=["tests.jobs"]`` works). With an
    ``app`` of your own, ``cwd`` defaults to the current directory, which is
    put on the worker's import path together with ``pythonpath``.
    ``queues`` become ``-Q`` (default: the app's default queue).
    ``env`` is added to this process's environment (use :func:`settings_env`).
    Output goes to ``log_path``; :meth:`wait_ready` waits for Celery's "ready." line.
    """

    def __init__(self, log_dir: Path, *, app: str | None = None, name: str | None = None, concurrency: int = 1,
                 pool: str = "prefork", include: list[str] | None = None, queues: list[str] | None = None,
                 env: Mapping[str, str] | None = None, extra_args: list[str] | None = None,
                 cwd: str | None = None, pythonpath: list[str] | None = None) -> None:
        from resilience.core.runtime import BUNDLED_APP

        self.app = app or BUNDLED_APP
        self.name = name or f"sub-{uuid.uuid4().hex[:6]}@test"
        self.log_path = Path(log_dir) / f"{self.name.replace('@', '_')}.log"
        argv = [sys.executable, "-m", "celery", "-A", self.app, "worker", "-n", self.name,
                "-c", str(concurrency), "-P", pool, "-l", "INFO", "--without-mingle", "--without-gossip"]
        for module in include or ():
            argv += ["-I", module]
        if queues:
            argv += ["-Q", ",".join(queues)]
        self.argv = argv + list(extra_args or ())
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        checkout = str(Path(__file__).resolve().parents[2]) if app is None else None
        self.cwd = cwd or checkout or os.getcwd()
        path = [*(pythonpath or ()), self.cwd, checkout, self.env.get("PYTHONPATH")]
        self.env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(filter(None, path)))
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
            if sig == signal.SIGKILL and self.process is not None:
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


def worker_health_url(r, worker: SubprocessWorker, timeout: float = 60.0) -> str:
    """The health server URL a subprocess worker registered in ``workers:health``."""
    from resilience.core.keys import keys

    def registered():
        for wid, raw in r.hgetall(keys().worker_health).items():
            if wid.startswith(worker.name + "|"):
                return json.loads(raw)["url"]
        return None

    return wait_for(registered, timeout=timeout, message=f"the health registration of {worker.name}")
