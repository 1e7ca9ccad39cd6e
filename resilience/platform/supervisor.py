"""``resilience up``: Redis, a worker, beat and Flower as one foreground process.

It runs the app named by ``-A`` (the bundled app by default) with
``celery -A <app>``. Its Redis is ``REDIS_URL``, else the app's own Redis
broker, else the data dir's embedded Redis, started here and stopped on exit
if this process started it; with ``ha`` (``resilience up --ha``) a local
Sentinel topology of the same binary instead (a primary, two replicas, three
sentinels, in ``<data dir>/ha``), stopped on exit too. Each child runs in its own process group;
SIGINT or SIGTERM stops them all (warm shutdown first, SIGKILL after a grace
period), so no process of the platform is left behind. A child that exits on
its own is restarted with a growing delay.

Flower's credentials never appear on a command line (where ``ps`` shows them to
every user) nor in output: Flower reads them from ``FLOWER_BASIC_AUTH`` in its
environment (Flower takes any option from ``FLOWER_<OPTION>``). Without that
setting a password is generated once and kept in ``<data dir>/flower-credentials``
(``user:password``, mode 0600); later runs reuse it.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resilience.core import embedded
from resilience.core.embedded import ensure_embedded, stop_embedded
from resilience.core.runtime import BUNDLED_APP, load_app
from resilience.core.settings import Settings, get_settings, settings_for
from resilience.core.store import redis_url

log = logging.getLogger(__name__)

STOP_GRACE_SEC = 20.0

#: Sentinel timings of ``up --ha``: a local demonstration fails over within seconds.
HA_DOWN_AFTER_MS = 2000
HA_FAILOVER_TIMEOUT_MS = 10000


#: Where a generated Flower login is kept, in the data dir.
FLOWER_CREDENTIALS_FILE = "flower-credentials"
FLOWER_USER = "admin"


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path | None
    env: dict[str, str] = field(default_factory=dict)  # on top of the platform's environment
    process: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0


@dataclass
class Platform:
    """The processes of one platform instance, started and stopped together."""

    settings: Settings = field(default_factory=get_settings)
    app_spec: str = BUNDLED_APP
    concurrency: int = 2
    beat: bool = True
    flower: bool = True
    log_to_files: bool = False
    worker_name: str = "worker1@%h"
    children: list[Child] = field(default_factory=list)
    redis_url: str | None = None
    flower_credentials: str | None = None  # user:password; never printed or put on a command line
    flower_credentials_file: Path | None = None  # set when the password was generated
    #: ``--ha``: run a local Sentinel topology (a primary, two replicas, three sentinels) instead of one Redis.
    ha: bool = False
    topology: Any = None
    _started_redis_pid: int | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def data_dir(self) -> Path:
        return Path(self.settings.data_dir).expanduser().resolve()

    def _celery(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "celery", "-A", self.app_spec, *args]

    def _plan(self) -> list[Child]:
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)

        def log_path(name: str) -> Path | None:
            return logs / f"{name}.log" if self.log_to_files else None

        plan = [Child("worker", self._celery(
            "worker", "-l", "INFO", "-c", str(self.concurrency), "-n", self.worker_name, "-E"),
            log_path("worker"))]
        if self.beat:
            plan.append(Child("beat", self._celery(
                "beat", "-l", "INFO", "-s", str(self.data_dir / "celerybeat-schedule")), log_path("beat")))
        if self.flower:
            if self.settings.flower_basic_auth:
                self.flower_credentials = self.settings.flower_basic_auth
            else:
                self.flower_credentials_file = self.data_dir / FLOWER_CREDENTIALS_FILE
                self.flower_credentials = generated_credentials(self.flower_credentials_file)
            plan.append(Child("flower", self._celery(
                "flower", f"--port={self.settings.flower_port}", "--address=127.0.0.1"), log_path("flower"),
                env={"FLOWER_BASIC_AUTH": self.flower_credentials}))
        return plan

    def flower_login_hint(self) -> str:
        """Where Flower's login is to be found, without the password."""
        if not self.flower_credentials:
            return "no login"
        user = self.flower_credentials.split(":", 1)[0]
        if self.flower_credentials_file is not None:
            return f"user {user!r}, password in {self.flower_credentials_file}"
        return f"user {user!r}, password from FLOWER_BASIC_AUTH"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["REDIS_URL"] = self.redis_url or ""
        env["RESILIENCE_DATA_DIR"] = str(self.data_dir)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _spawn(self, child: Child) -> None:
        out = open(child.log_path, "ab") if child.log_path else None
        child.process = subprocess.Popen(
            child.argv, env={**self._env(), **child.env}, stdin=subprocess.DEVNULL,
            stdout=out, stderr=subprocess.STDOUT if out else None, start_new_session=True)
        if out:
            out.close()
        log.info("started %s (pid %s)", child.name, child.process.pid)

    def _start_ha(self) -> None:
        """A primary, two replicas and three sentinels of the embedded binary, in ``<data dir>/ha``.

        Every process started from here (and the app loaded next) gets
        ``REDIS_URL``/``REDIS_SENTINEL_MASTER`` naming it.
        """
        from resilience.core.errors import ConfigurationError
        from resilience.core.settings import reset_settings
        from resilience.core.store import reset_redis
        from resilience.testing.topology import SentinelTopology

        if self.settings.redis_url:
            raise ConfigurationError("--ha starts its own primary, replicas and sentinels: unset REDIS_URL")
        self.topology = SentinelTopology(self.data_dir / "ha", down_after_ms=HA_DOWN_AFTER_MS,
                                         failover_timeout_ms=HA_FAILOVER_TIMEOUT_MS).start()
        os.environ.update(self.topology.env())
        reset_settings()
        reset_redis()
        self.settings = get_settings()

    def fail_over(self) -> tuple[str, str, float]:
        """SIGKILL the primary of the ``--ha`` topology, wait for Sentinel to promote a replica and
        start the old primary again as a replica. Returns (old, new, seconds to the promotion)."""
        killed_at = time.time()
        old = self.topology.kill_primary()
        new, promoted_at = self.topology.wait_promoted(old)
        self.topology.restart(old)
        return old.address, new.address, promoted_at - killed_at

    def start(self) -> Platform:
        embedded.stop_on_exit_by_caller()
        if self.ha:
            self._start_ha()
        app = load_app(self.app_spec)  # may start the embedded Redis (the bundled app's config does)
        self.settings = settings_for(app)
        self.redis_url = redis_url(self.settings, app)
        self._started_redis_pid = embedded.started_here()
        self.children = self._plan()
        for child in self.children:
            self._spawn(child)
        return self

    def supervise_once(self) -> None:
        """Restart children that exited on their own (with a growing delay)."""
        now = time.monotonic()
        for child in self.children:
            if child.process is None or child.process.poll() is None or self._stop.is_set():
                continue
            if not child.next_start:
                delay = min(30.0, 2 ** child.restarts)
                child.next_start = now + delay
                log.warning("%s exited with code %s; restarting in %.0fs",
                            child.name, child.process.returncode, delay)
            elif now >= child.next_start:
                child.restarts += 1
                child.next_start = 0.0
                self._spawn(child)

    def run_forever(self, tick=None, interval: float = 0.5) -> None:
        """Block until SIGINT/SIGTERM (or ``stop()``), supervising children."""
        previous = {sig: signal.signal(sig, lambda *_: self._stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not self._stop.is_set():
                self.supervise_once()
                if tick is not None:
                    tick()
                self._stop.wait(interval)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stop()

    def bounce_embedded_redis(self, down_for: float, wait=time.sleep) -> None:
        """Stop the embedded Redis this instance started, wait, start it again (same port and data)."""
        if not self._started_redis_pid:
            return
        stop_embedded(self.settings, pid=self._started_redis_pid)
        wait(down_for)
        _, pid = ensure_embedded(self.settings)
        if pid:
            self._started_redis_pid = pid

    def stop(self, grace: float = STOP_GRACE_SEC) -> None:
        """Stop every child (and the embedded Redis this instance started)."""
        self._stop.set()
        running = [(c.name, c.process) for c in self.children if c.process and c.process.poll() is None]
        for _, process in running:
            process.terminate()  # the main process only: Celery's warm shutdown finishes running jobs
        deadline = time.monotonic() + grace
        for name, process in running:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                process.wait(remaining)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", name, grace)
        for child in self.children:
            if child.process is not None:
                _signal_group(child.process, signal.SIGKILL)  # any grandchildren left behind
                if child.process.poll() is None:
                    child.process.wait(5)
        if self._started_redis_pid:
            stop_embedded(self.settings, pid=self._started_redis_pid)
            self._started_redis_pid = None
        if self.topology is not None:
            self.topology.stop()
            self.topology = None


def generated_credentials(path: Path) -> str:
    """The ``user:password`` kept in ``path``, generated and written (mode 0600) when there is none.

    A file that is no regular file or holds no ``user:password`` is replaced;
    one readable by others is made 0600 again.
    """
    try:
        info = path.lstat()
        if stat.S_ISREG(info.st_mode):
            user, sep, password = path.read_text().strip().partition(":")
            if sep and user and password and "," not in password:
                if info.st_mode & 0o077:
                    path.chmod(0o600)
                return f"{user}:{password}"
    except (OSError, UnicodeDecodeError):
        pass
    credentials = f"{FLOWER_USER}:{secrets.token_urlsafe(18)}"
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, (credentials + "\n").encode())
    finally:
        os.close(fd)
    os.replace(staged, path)
    return credentials


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
