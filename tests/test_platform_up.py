"""`resilience up` and `resilience demo` run the platform and leave nothing behind.

These start real processes (embedded Redis, worker, beat, Flower) in a fresh
data dir, as a newcomer's machine would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from resilience.embedded import free_port
from resilience.testing import wait_for

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _children(pid: int) -> set[int]:
    """All live descendants of ``pid``."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def _platform_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(RESILIENCE_DATA_DIR=str(tmp_path / "data"), FLOWER_PORT=str(free_port()), HEALTH_PORT="0",
               PYTHONUNBUFFERED="1")
    return env


def _embedded_client(tmp_path: Path) -> redis.Redis:
    record = json.loads((tmp_path / "data" / "redis.json").read_text())
    return redis.Redis.from_url(record["url"], decode_responses=True)


def test_up_runs_worker_beat_and_flower_and_sigint_stops_them_all(tmp_path):
    env = _platform_env(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "resilience.cli", "up"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: (tmp_path / "data" / "redis.json").exists(), timeout=60, message="embedded Redis")
        client = _embedded_client(tmp_path)
        wait_for(lambda: client.zcard("workers:heartbeats") > 0, timeout=90, message="a worker heartbeat")
        pids = wait_for(lambda: (p := _children(proc.pid)) and len(p) >= 4 and p, timeout=60,
                        message="worker, its pool, beat and flower")
        redis_pid = json.loads((tmp_path / "data" / "redis.json").read_text())["pid"]
        pids.add(redis_pid)
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = proc.stdout.read()
    assert proc.returncode == 0, output
    survivors = wait_for(lambda: not [p for p in pids if _alive(p)] or None, timeout=30,
                         message=lambda: f"platform processes to exit: {[p for p in pids if _alive(p)]}")
    assert survivors is True


def test_demo_shows_jobs_completing(tmp_path):
    env = _platform_env(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "resilience.cli", "demo", "--duration", "30", "--no-flower"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("demo finished:")]
    assert line, proc.stdout[-3000:]
    completed = int(line[0].split(":")[1].split()[0])
    assert completed > 0


@pytest.mark.parametrize("argv, ready", [
    (["worker", "-l", "INFO", "-c", "1"], " ready."),
    (["beat", "-l", "INFO"], "beat: Starting..."),
])
def test_celery_commands_run_against_redis_url(tmp_path, redis_server, argv, ready):
    env = {**os.environ, "REDIS_URL": redis_server.url, "RESILIENCE_DATA_DIR": str(tmp_path / "data"),
           "HEALTH_PORT": "0"}
    if argv[0] == "beat":
        argv = argv + ["-s", str(tmp_path / "beat-schedule")]
    log = tmp_path / "out.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tasks", *argv], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: ready in log.read_text(errors="replace"), timeout=60,
                 message=lambda: f"{argv[0]} to start:\n{log.read_text(errors='replace')[-2000:]}")
        assert redis_server.url.rsplit("/", 1)[0].replace("redis://", "") in log.read_text() or argv[0] == "beat"
    finally:
        proc.terminate()
        proc.wait(30)


def test_flower_runs_against_redis_url_and_requires_credentials(tmp_path, redis_server):
    import urllib.error
    import urllib.request

    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_server.url, "RESILIENCE_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tasks", "flower", f"--port={port}",
                             "--address=127.0.0.1", "--basic-auth=admin:s3cret"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def status(auth: bool) -> int:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/workers")
            if auth:
                import base64
                request.add_header("Authorization", "Basic " + base64.b64encode(b"admin:s3cret").decode())
            try:
                return urllib.request.urlopen(request, timeout=5).status
            except urllib.error.HTTPError as err:
                return err.code

        assert wait_for(lambda: status(True) == 200, timeout=60, message="flower to answer")
        assert status(False) == 401
    finally:
        proc.terminate()
        proc.wait(30)
