"""Beat's probe: ``resilience health beat`` tells a ticking schedule from a stopped one (issue 8)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resilience.beatprobe import PULSE_TASK, check
from resilience.testing import settings_env, wait_for

ROOT = Path(__file__).resolve().parent.parent


def beat_probe(env=None) -> tuple[int, dict]:
    proc = subprocess.run([sys.executable, "-m", "resilience.cli", "health", "beat", "--json"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})
    return proc.returncode, json.loads(proc.stdout)


def test_without_beat_the_probe_fails_saying_so():
    code, report = beat_probe()
    assert code == 1
    assert report["failed"] == ["beat"] and "not started" in report["checks"]["beat"]["error"]


@pytest.mark.slow
def test_a_running_beat_passes_and_a_stopped_one_fails_once_its_pulse_is_late(app, tmp_path):
    env = {**os.environ, **settings_env(HEALTH_BEAT_PULSE_SEC=0.5), "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "beat.log", "wb")
    beat = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tasks", "beat", "-l", "INFO",
                             "-s", str(tmp_path / "schedule")], env=env, cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def healthy():
            code, report = beat_probe(settings_env(HEALTH_BEAT_PULSE_SEC=0.5))
            return report if code == 0 and report["checks"][PULSE_TASK]["age_sec"] is not None else None

        report = wait_for(healthy, timeout=60, message=lambda: "beat's pulse: " + (tmp_path / "beat.log").read_text())
        assert report["status"] == "ok"
    finally:
        beat.terminate()
        beat.wait(30)
        log.close()
    late = check(app, now=time.time() + 3600)  # an hour on, with no beat publishing
    assert late["status"] == "unhealthy" and PULSE_TASK in late["failed"]
    assert "not published" in late["checks"][PULSE_TASK]["error"]
