"""Flower with basic auth shows our workers; without the credentials it refuses (issue 8).

A real headless browser (Debian's chromium) loads Flower. The set-up installs
chromium with apt-get when it is missing and this runs as root; elsewhere the
browser test is skipped with a message saying how to enable it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from resilience.testing import SubprocessWorker, free_port, settings_env, wait_for

ROOT = Path(__file__).resolve().parent.parent
USER, PASSWORD = "operator", "flower-test-pass"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def _which_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a chromium binary, installed with apt-get when missing (root only)."""
    path = _which_chromium()
    if path is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (["apt-get", "install", "-y", "chromium"], ["apt-get", "update"],
                     ["apt-get", "install", "-y", "chromium"]):
            try:
                subprocess.run(argv, env=env, capture_output=True, timeout=900, check=False)
            except (OSError, subprocess.TimeoutExpired):
                break
            path = _which_chromium()
            if path:
                break
    if path is None:
        pytest.skip("chromium is not installed and could not be installed here "
                    "(run as root with apt-get available, or `apt-get install -y chromium`)")
    return path


def dump_dom(chromium: str, url: str, profile: Path) -> str:
    proc = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000",
                           "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture
def flower(log_dir):
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / "flower.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tasks", "flower", f"--port={port}",
                                "--address=127.0.0.1", f"--basic-auth={USER}:{PASSWORD}"],
                               cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(url + "/", timeout=2).status_code == 401, timeout=60,
                 message=lambda: "Flower to listen: " + (log_dir / "flower.log").read_text())
        yield url
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


@pytest.mark.slow
def test_a_browser_with_the_credentials_sees_the_worker_in_flower(chromium, flower, log_dir, tmp_path):
    with SubprocessWorker(log_dir, env=settings_env(HEALTH_PORT=0), extra_args=["-E"]) as worker:
        wait_for(lambda: worker.name in httpx.get(flower + "/workers", auth=(USER, PASSWORD), timeout=5).text,
                 timeout=60, message="Flower to learn about the worker")
        with_credentials = flower.replace("http://", f"http://{USER}:{PASSWORD}@") + "/workers"
        page = dump_dom(chromium, with_credentials, tmp_path / "profile-1")
        assert worker.name in page

        refused = dump_dom(chromium, flower + "/workers", tmp_path / "profile-2")
        assert worker.name not in refused
    assert httpx.get(flower + "/workers", timeout=5).status_code == 401
    assert httpx.get(flower + "/workers", auth=(USER, "wrong"), timeout=5).status_code == 401


def test_resilience_up_runs_flower_with_basic_auth_and_workers_with_events(tmp_path):
    from resilience.settings import load_settings
    from resilience.supervisor import Platform

    settings = load_settings({"FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}", "RESILIENCE_DATA_DIR": str(tmp_path)})
    children = {child.name: child for child in Platform(settings=settings)._plan()}
    plan = {name: child.argv for name, child in children.items()}
    assert children["flower"].env["FLOWER_BASIC_AUTH"] == f"{USER}:{PASSWORD}"
    assert not any(PASSWORD in arg for arg in plan["flower"]), "never on the command line (issue 15)"
    assert "--address=127.0.0.1" in plan["flower"]
    assert "-E" in plan["worker"]


def _flower_pid(parent: int) -> int | None:
    """The pid of a `celery ... flower` process started by ``parent`` (its direct child)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != parent:
                continue
            argv = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if b"flower" in argv:
            return int(stat.parent.name)
    return None


@pytest.mark.slow
def test_resilience_up_never_shows_flowers_password_on_its_command_line_or_in_its_output(tmp_path):
    """Issue 15: the password was on Flower's command line (visible in ps) and printed by `up`."""
    data = tmp_path / "data"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "FLOWER_BASIC_AUTH")}
    env.update(RESILIENCE_DATA_DIR=str(data), FLOWER_PORT=str(port), HEALTH_PORT="0", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "resilience.cli", "up", "--no-beat", "-c", "1"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        credentials = data / "flower-credentials"
        wait_for(credentials.exists, timeout=60, message="the generated credentials file")
        user, password = credentials.read_text().strip().split(":", 1)
        assert oct(credentials.stat().st_mode & 0o777) == oct(0o600)
        url = f"http://127.0.0.1:{port}/workers"
        wait_for(lambda: httpx.get(url, timeout=2).status_code == 401, timeout=90, message="Flower to ask for a login")
        assert httpx.get(url, auth=(user, password), timeout=10).status_code == 200
        flower = _flower_pid(proc.pid)
        assert flower is not None
        assert password.encode() not in Path(f"/proc/{flower}/cmdline").read_bytes()
        assert f"FLOWER_BASIC_AUTH={user}:{password}".encode() in Path(f"/proc/{flower}/environ").read_bytes()
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert password not in output
    assert str(credentials) in output, output[-2000:]


@pytest.mark.slow
def test_flower_shows_the_outcome_of_a_job_from_the_batched_task_events(app, flower, log_dir):
    """Issue 14: task events are published on a timer (WORKER_EVENT_FLUSH_INTERVAL_SEC), not every loop tick."""
    with SubprocessWorker(log_dir, env=settings_env(HEALTH_PORT=0), extra_args=["-E"], include=["tests.jobs"]):
        jobs = [app.tasks["tests.add"].delay(i, 1) for i in range(3)]
        for job in jobs:
            assert job.get(timeout=60) is not None

        def state(job_id: str) -> str | None:
            reply = httpx.get(f"{flower}/api/task/info/{job_id}", auth=(USER, PASSWORD), timeout=5)
            return reply.json().get("state") if reply.status_code == 200 else None

        for job in jobs:
            wait_for(lambda: state(job.id) == "SUCCESS", timeout=60,  # noqa: B023 - called in this iteration
                     message=lambda: f"Flower to show job {job.id} done ({state(job.id)})")  # noqa: B023
