"""GET /metrics: Prometheus text whose counters match a run of known jobs (issue 8).

The worker runs the prefork pool as a subprocess: jobs run in pool processes,
and their counts must reach the main process's /metrics.
"""

from __future__ import annotations

import contextlib
import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from resilience.keys import keys
from resilience.testing import SubprocessWorker, settings_env, wait_for, worker_health_url


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Samples of one scrape: (name, sorted labels) -> value."""
    response = httpx.get(f"{url}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@contextlib.contextmanager
def _log_on_failure(worker: SubprocessWorker):
    """Show the worker's log when the test fails."""
    try:
        yield
    except BaseException:
        print(worker.log()[-8000:])
        raise


@pytest.mark.slow
def test_metrics_counters_match_a_run_of_known_jobs_on_prefork(app, log_dir, r):
    from tests.jobs import add, fail_permanent, fail_transient

    # The execution guard is off here: until the retries feature closes a run's record before its
    # retry is delivered, the guard refuses the retry as "busy" (the first run still holds it).
    env = settings_env(HEALTH_PORT=0, METRICS_CACHE_SEC=0, HEALTH_REFRESH_INTERVAL_SEC=0.2,
                       FEATURE_IDEMPOTENCY=False)
    with SubprocessWorker(log_dir, env=env, concurrency=2, pool="prefork", include=["tests.jobs"]) as worker, \
            _log_on_failure(worker):
        url = worker_health_url(r, worker)
        assert f":{url.rsplit(':', 1)[1]}" in worker.log()  # the chosen port is logged too

        for n in range(3):
            assert add.delay(n, 1).get(timeout=60) == n + 1
        assert fail_transient.delay(times=1).get(timeout=60) == "recovered"  # 1 retry, then success
        fail_permanent.delay()                                             # dead letter at once
        fail_transient.delay(times=99)                                     # 2 retries, then dead letter
        wait_for(lambda: r.llen(keys().dead_letter) == 2, timeout=60, message="two dead letters")

        def settled():
            samples = scrape(url)
            return samples if value(samples, "resilience_jobs_dead_lettered_total",
                                    task="tests.fail_transient") == 1 else None

        samples = wait_for(settled, timeout=30, message="the counters of the run")

    assert value(samples, "resilience_jobs_succeeded_total", task="tests.add") == 3
    assert value(samples, "resilience_jobs_succeeded_total", task="tests.fail_transient") == 1
    assert value(samples, "resilience_jobs_retried_total", task="tests.fail_transient") == 3
    assert value(samples, "resilience_jobs_dead_lettered_total", task="tests.fail_permanent") == 1
    assert value(samples, "resilience_jobs_dead_lettered_total", task="tests.fail_transient") == 1
    assert value(samples, "resilience_jobs_failed_total", task="tests.fail_permanent") == 1
    assert value(samples, "resilience_jobs_started_total", task="tests.add") == 3
    assert value(samples, "resilience_jobs_started_total", task="tests.fail_transient") == 5
    assert value(samples, "resilience_job_runtime_seconds_count", task="tests.add") == 3
    assert value(samples, "resilience_dead_letter_entries") == 2
    assert value(samples, "resilience_redis_up") == 1
    assert value(samples, "resilience_worker_healthy") == 1
    assert ("resilience_queue_depth", (("queue", "celery"),)) in samples


def test_gauges_show_breaker_states_and_survive_malformed_entries(app, worker, r):
    from resilience import metrics, status

    r.hset(keys().breakers_status, mapping={"payments-api": json.dumps({"state": "open", "failures": 5}),
                                            "broken": "{not json"})
    r.lpush("celery", "x")  # a pending message as kombu stores it (never consumed: the worker is elsewhere)
    collector = metrics.StateCollector(lambda: status.collect(app), cache_sec=0)
    text = metrics.exposition(collector).decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    assert value(samples, "resilience_breaker_state", breaker="payments-api", state="open") == 1
    assert value(samples, "resilience_breaker_state", breaker="payments-api", state="closed") == 0
    assert value(samples, "resilience_breaker_state", breaker="broken", state="malformed") == 1
    assert value(samples, "resilience_metrics_snapshot_ok") == 1


def test_a_scrape_with_redis_unreachable_serves_the_last_gauges(app, r):
    from resilience import metrics, status

    calls = {"n": 0}

    def snapshot():
        calls["n"] += 1
        if calls["n"] > 1:
            raise ConnectionError("Redis is down")
        return status.collect(app)

    r.lpush(keys().dead_letter, "{}")
    collector = metrics.StateCollector(snapshot, cache_sec=0)
    metrics.exposition(collector)
    text = metrics.exposition(collector).decode()
    assert "resilience_metrics_snapshot_ok 0.0" in text
    assert "resilience_dead_letter_entries 1.0" in text


@pytest.mark.slow
def test_counts_of_a_killed_pool_process_stay_counted(app, log_dir, r):
    import os
    import signal

    from tests.jobs import add

    env = settings_env(HEALTH_PORT=0, HEALTH_REFRESH_INTERVAL_SEC=0.2)
    with SubprocessWorker(log_dir, env=env, concurrency=2, pool="prefork", include=["tests.jobs"]) as worker, \
            _log_on_failure(worker):
        url = worker_health_url(r, worker)
        for n in range(4):
            add.delay(n, n).get(timeout=60)
        # The result is stored before the pool process counts the job: kill it once all four are counted.
        wait_for(lambda: value(scrape(url), "resilience_jobs_succeeded_total", task="tests.add") >= 4,
                 timeout=30, message="four successes to be counted")
        before = worker.pool_pids()
        for pid in before:
            os.kill(pid, signal.SIGKILL)  # the pool replaces them

        def replaced():
            body = httpx.get(f"{url}/health", timeout=5).json()
            pool = body["checks"]["pool"]
            return body if pool["alive"] == 2 and not set(worker.pool_pids()) & set(before) else None

        wait_for(replaced, timeout=60, message="replacement pool processes")
        add.delay(9, 9).get(timeout=60)
        # The result is stored before task_success counts the job: wait for the count, not the result.
        wait_for(lambda: value(scrape(url), "resilience_jobs_succeeded_total", task="tests.add") >= 5,
                 timeout=30, message="the fifth success to be counted")
        samples = scrape(url)
    assert value(samples, "resilience_jobs_succeeded_total", task="tests.add") == 5
