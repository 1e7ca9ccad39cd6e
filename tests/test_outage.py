"""Issue 6: publishing and reconnecting across a Redis outage (spool, bounds, state)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from celery import Celery
from kombu.exceptions import OperationalError

from resilience import connection, spool
from resilience.errors import BrokerUnavailable, SpoolFull
from resilience.reconnect import reconnect_backoff
from resilience.settings import get_settings
from resilience.testing import configure, in_process_worker, settings_env, wait_for
from tests.jobs.outage import mark, marks

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _own_spool(tmp_path):
    """Each test has its own spool and a fresh view of the connections."""
    connection.reset()
    with configure(data_dir=str(tmp_path / "data"), publish_timeout_sec=1.0, redis_reconnect_max_sec=0.5):
        yield
    connection.reset()


@pytest.fixture
def marks_path(tmp_path) -> str:
    return str(tmp_path / "marks.txt")


def test_jobs_submitted_while_redis_is_down_are_spooled_and_run_once_when_it_returns(app, redis_server, marks_path):
    # A publish timeout longer than a refused publish takes, so no publish is left
    # running in the background (that path is the frozen-Redis test's).
    with configure(publish_timeout_sec=5.0), in_process_worker(app):
        redis_server.stop()
        results = [mark.delay(marks_path, i) for i in range(20)]
        assert spool.count() == 20
        assert [r.id for r in results] == [job.job_id for job in spool.oldest()]

        redis_server.restart()
        wait_for(lambda: len(marks(marks_path)) == 20, timeout=60, message="all spooled jobs to run")
        wait_for(lambda: spool.count() == 0, timeout=30, message="the spool to be empty")
    assert set(marks(marks_path)) == {r.id for r in results}
    assert set(marks(marks_path).values()) == {1}


def test_spooled_jobs_are_published_in_submission_order(redis_server, r, marks_path):
    redis_server.stop()
    with configure(publish_timeout_sec=5.0):  # no publish left running in the background
        ids = [mark.delay(marks_path, i).id for i in range(10)]
    redis_server.restart()
    wait_for(lambda: spool.count() == 0, timeout=30, message="the spool to be flushed")
    # kombu LPUSHes and consumers pop from the right: oldest at the right end.
    queued = [json.loads(raw)["headers"]["id"] for raw in reversed(r.lrange("celery", 0, -1))]
    assert queued == ids


def test_raise_mode_raises_broker_unavailable_within_the_publish_timeout(redis_server, marks_path):
    with configure(publish_outage_mode="raise"):
        redis_server.stop()
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            mark.delay(marks_path)
        assert time.monotonic() - started < get_settings().publish_timeout_sec + 2.0
        assert spool.count() == 0


@pytest.mark.slow
def test_delay_returns_within_the_publish_timeout_on_a_frozen_redis(app, redis_server, marks_path):
    with in_process_worker(app):
        redis_server.freeze()
        started = time.monotonic()
        result = mark.delay(marks_path, 1)
        elapsed = time.monotonic() - started
        assert elapsed < get_settings().publish_timeout_sec + 2.0
        assert spool.count() == 1
        assert connection.state()["broker"]["up"] is False

        redis_server.thaw()
        wait_for(lambda: marks(marks_path).get(result.id) == 1, timeout=60, message="the spooled job to run")
        wait_for(lambda: connection.state()["broker"]["up"], timeout=30, message="the broker to be marked up")
    assert marks(marks_path) == {result.id: 1}


def test_a_full_spool_refuses_the_job_loudly(redis_server, marks_path, caplog):
    with configure(spool_max_jobs=3):
        redis_server.stop()
        for i in range(3):
            mark.delay(marks_path, i)
        with pytest.raises(SpoolFull, match="SPOOL_MAX_JOBS=3"):
            mark.delay(marks_path, 99)
    assert spool.count() == 3
    assert any("publish spool full" in rec.getMessage() for rec in caplog.records)


@pytest.mark.slow
def test_a_producer_restarted_during_the_outage_loses_none_of_its_spooled_jobs(app, redis_server, marks_path):
    env = {**settings_env(data_dir=get_settings().data_dir), "PYTHONPATH": str(ROOT)}
    submit = textwrap.dedent(f"""
        import os, tasks
        from tests.jobs.outage import mark
        ids = [mark.delay({marks_path!r}, i).id for i in range(50)]
        print(" ".join(ids), flush=True)
        os._exit(0)  # the producer dies before Redis returns
    """)
    redis_server.stop()
    out = subprocess.run([sys.executable, "-c", submit], env={**_environ(), **env}, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    ids = out.stdout.split()
    assert len(ids) == 50 and spool.count() == 50

    redis_server.restart()
    restart = textwrap.dedent("""
        import tasks
        from resilience import spool
        from resilience.testing import wait_for
        wait_for(lambda: spool.count() == 0, timeout=60, message="the spool to be flushed")
    """)
    out = subprocess.run([sys.executable, "-c", restart], env={**_environ(), **env}, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    with in_process_worker(app):
        wait_for(lambda: len(marks(marks_path)) == 50, timeout=60, message="every spooled job to run")
    assert marks(marks_path) == {job_id: 1 for job_id in ids}


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_with_the_flag_off_publishing_is_celerys_own(redis_server, marks_path):
    with configure(feature_enhanced_redis=False):
        redis_server.stop()
        with pytest.raises((OperationalError, RuntimeError)):  # Celery's own errors, unbounded by us
            mark.delay(marks_path)
        assert spool.count() == 0
        plain = Celery("plain")
        from resilience.features import FEATURES, configure_features

        configure_features(plain, get_settings(), [f for f in FEATURES if f.name == "enhanced_redis"])
        assert plain.conf.worker_consumer == "celery.worker.consumer:Consumer"


def test_the_consumer_reconnect_schedule_is_exponential_and_capped():
    backoff = reconnect_backoff(get_settings().replace(redis_reconnect_base_sec=0.1, redis_reconnect_max_sec=1.0))
    ceilings = [backoff.ceiling(n) for n in range(8)]
    assert ceilings[:4] == [0.1, 0.2, 0.4, 0.8]
    assert max(ceilings) == 1.0
    assert all(0.5 * c <= backoff.compute(n) <= c for n, c in enumerate(ceilings))


class _Unreachable(connection.ConnectionObserver):
    """Records what the connection state tells its observers about outages."""

    told: list[tuple[str, float]] = []

    def on_unreachable(self, component: str, down_for_sec: float, last_error: str | None) -> None:
        self.told.append((component, down_for_sec))


def test_connection_state_counts_transitions_and_alerts_once_when_down_too_long(caplog):
    connection.add_observer(_Unreachable())
    _Unreachable.told.clear()
    with configure(alert_redis_down_sec=30):
        assert connection.mark_down("broker", ConnectionError("refused"), now=1000.0) is True
        assert connection.mark_down("broker", ConnectionError("refused"), now=1001.0) is False
        assert connection.check_alerts(now=1010.0) == []
        assert connection.check_alerts(now=1031.0) == ["broker"]
        assert connection.check_alerts(now=1040.0) == []
        assert connection.mark_up("broker", now=1050.0) is True
    broker = connection.state()["broker"]
    assert broker == {"up": True, "since": 1050.0, "reconnects": 1, "disconnects": 1, "last_error": None}
    assert any("redis_unreachable" in rec.getMessage() or "unreachable" in rec.getMessage()
               for rec in caplog.records)
    assert _Unreachable.told == [("broker", 31.0)]  # once per outage, to every observer


def test_store_and_result_backend_connections_report_their_state(app, redis_server):
    import redis

    from resilience.store import get_redis

    get_redis().ping()
    app.backend.client.ping()
    assert connection.health_check()["ok"] is True
    redis_server.stop()
    for client in (get_redis(), app.backend.client):
        with pytest.raises(redis.ConnectionError):
            client.ping()
    state = connection.state()
    assert not state["store"]["up"] and not state["result_backend"]["up"]
    assert "Connection" in state["store"]["last_error"]
    check = connection.health_check()
    assert check["ok"] is False and check["error"] == "down: result_backend, store"
    redis_server.start()
    wait_for(lambda: get_redis().ping(), timeout=30, message="the store to answer again")
    wait_for(lambda: app.backend.client.ping(), timeout=30, message="the result backend to answer again")
    state = connection.state()
    assert state["store"]["up"] and state["result_backend"]["up"]
    # Other threads of this process use the store too: each outage they saw is one down and one up.
    for name in ("store", "result_backend"):
        assert state[name]["reconnects"] >= 1 and state[name]["reconnects"] == state[name]["disconnects"]


@pytest.mark.slow
def test_keyed_jobs_on_a_frozen_redis_are_spooled_in_bounded_time_and_the_key_still_runs_once(
        app, redis_server, marks_path):
    with in_process_worker(app):
        redis_server.freeze()
        started = time.monotonic()
        first = mark.apply_async((marks_path, 1), idempotency_key="order-7")
        assert time.monotonic() - started < get_settings().publish_timeout_sec + 2.0
        second = mark.apply_async((marks_path, 1), idempotency_key="order-7")
        assert spool.count() == 2 and first.id != second.id

        redis_server.thaw()
        wait_for(lambda: first.id in marks(marks_path), timeout=60, message="the first keyed job to run")
        wait_for(lambda: spool.count() == 0, timeout=30, message="the spool to be empty")
    # The second submission lost the key to the first once Redis answered: never published, never run.
    assert marks(marks_path) == {first.id: 1}
    from resilience import idempotency

    assert idempotency.owner("order-7") == first.id
    # Redis is back: a new submission with the key is a duplicate of the first, as always.
    assert mark.apply_async((marks_path, 1), idempotency_key="order-7").id == first.id


def test_a_spooled_job_keeps_its_callbacks(app, redis_server, marks_path):
    with configure(publish_timeout_sec=5.0), in_process_worker(app):
        redis_server.stop()
        job = mark.apply_async((marks_path, 1), link=mark.si(marks_path, 2))
        assert spool.count() == 1
        redis_server.restart()
        wait_for(lambda: len(marks(marks_path)) == 2, timeout=60,
                 message=lambda: f"the job and its callback to run ({marks(marks_path)})")
    counts = marks(marks_path)
    assert counts[job.id] == 1 and sorted(counts.values()) == [1, 1]


def test_a_delayed_job_submitted_during_an_outage_is_spooled_and_runs_when_due(app, redis_server, marks_path):
    with configure(publish_timeout_sec=5.0), in_process_worker(app):
        redis_server.stop()
        submitted = time.time()
        job = mark.apply_async((marks_path, 1), countdown=3)
        [spooled] = spool.oldest()
        assert spooled.job_id == job.id and "countdown" not in spooled.options
        # Due three seconds after the submission, however long the outage lasts.
        from datetime import datetime

        assert abs(datetime.fromisoformat(spooled.options["eta"]).timestamp() - (submitted + 3)) < 1
        redis_server.restart()
        wait_for(lambda: marks(marks_path).get(job.id) == 1, timeout=60, message="the delayed job to run")
    assert marks(marks_path) == {job.id: 1}
