"""The foundation: settings, the app's safe defaults, the task class, the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest

from resilience.errors import SettingsError, UnknownTaskOption
from resilience.settings import FEATURES, Settings, load_settings
from resilience.testing import wait_for


def test_defaults_match_the_contract():
    s = load_settings({})
    assert s.worker_heartbeat_timeout_sec == 120
    assert s.job_progress_timeout_sec == 300
    assert s.retry_backoff_base_sec == 30
    assert s.dead_letter_ttl_days == 30
    assert s.idempotency_ttl_sec == 86400
    assert s.error_retention_days == 7
    assert s.breaker_fail_max == 5
    assert s.breaker_reset_timeout_sec == 60
    assert all(s.enabled(feature) for feature in FEATURES)


@pytest.mark.parametrize("name, value", [
    ("WORKER_HEARTBEAT_TIMEOUT_SEC", "soon"),
    ("JOB_PROGRESS_TIMEOUT_SEC", "-5"),
    ("RETRY_MAX", "1.5"),
    ("FEATURE_DEAD_LETTER", "maybe"),
    ("REDIS_URL", "http://localhost"),
    ("HEALTH_PORT", "70000"),
    ("RESILIENCE_KEY_PREFIX", "has space"),
    ("FLOWER_BASIC_AUTH", "nopassword"),
])
def test_a_malformed_setting_names_its_variable(name, value):
    with pytest.raises(SettingsError) as err:
        load_settings({name: value})
    assert err.value.name == name
    assert name in str(err.value)


def test_a_bad_setting_stops_the_app_at_start_up():
    env = {"PATH": "/usr/bin:/bin", "WORKER_HEARTBEAT_TIMEOUT_SEC": "two minutes"}
    proc = subprocess.run([sys.executable, "-c", "import tasks.app"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0
    assert "WORKER_HEARTBEAT_TIMEOUT_SEC" in proc.stderr


def test_flags_turn_features_off():
    s = load_settings({"FEATURE_IDEMPOTENCY": "false", "FEATURE_HEALTH": "0"})
    assert not s.enabled("idempotency") and not s.enabled("health")
    assert s.enabled("dead_letter")


def test_env_example_lists_every_setting():
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / ".env.example").read_text()
    for f in Settings.__dataclass_fields__.values():
        assert f"{f.metadata['env']}=" in text, f.metadata["env"]


def test_celery_config_is_json_only_with_late_acks(app):
    conf = app.conf
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert conf.result_accept_content == ["json"]
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["socket_timeout"] > 0
    assert conf.broker_connection_max_retries is None
    assert conf.result_expires


def test_resilient_task_is_the_default_task_class(app):
    from resilience import ResilientTask
    from tests.jobs import add

    assert isinstance(add, ResilientTask)


def test_an_unknown_task_option_fails_at_declaration(app):
    with pytest.raises(UnknownTaskOption) as err:
        @app.task(retyr_for=(ValueError,))
        def typo():
            pass
    assert err.value.option == "retyr_for"


def test_a_job_runs_on_a_real_worker(app, worker):
    from tests.jobs import add, runs

    result = add.delay(2, 3)
    assert result.get(timeout=20) == 5
    assert runs(result.id) == 1


def test_cli_help_lists_the_commands():
    proc = subprocess.run([sys.executable, "-m", "resilience.cli", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    for name in ("up", "demo", "status", "dlq", "breakers", "errors", "sweep"):
        assert name in proc.stdout


def test_status_json_prints_only_json(app, worker):
    import json

    from tests.jobs import add

    add.delay(1, 1).get(timeout=20)
    proc = subprocess.run([sys.executable, "-m", "resilience.cli", "status", "--json"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    snapshot = json.loads(proc.stdout)
    assert snapshot["dead_letter"] == 0 and "queues" in snapshot


def test_wait_for_reports_the_condition_on_timeout():
    with pytest.raises(AssertionError, match="never true"):
        wait_for(lambda: False, timeout=0.2, message="never true")


def test_a_running_worker_records_its_heartbeat(app, worker, r):
    from resilience.keys import keys

    beats = wait_for(lambda: r.zrange(keys().worker_heartbeats, 0, -1), timeout=20, message="a heartbeat")
    assert any(b.startswith(worker.hostname + "|") for b in beats)


def test_a_retried_job_runs_again_with_the_guard_on(app, worker):
    """Regression: the retry's delivery must not be refused as a duplicate of the first run."""
    from tests.jobs import fail_transient, runs

    result = fail_transient.delay(1)  # fails once, then succeeds
    assert result.get(timeout=30) == "recovered"
    assert runs(result.id) == 2


def test_a_job_knows_the_worker_id_its_worker_heartbeats_under(app, worker, r):
    """The guard tells live runs by this id, so it must match the heartbeat's."""
    from resilience.keys import keys
    from tests.jobs import whoami

    seen = whoami.delay().get(timeout=20)
    assert seen["worker"].startswith(worker.hostname + "|")
    assert r.zscore(keys().worker_heartbeats, seen["worker"]) is not None
