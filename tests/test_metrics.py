"""GET /metrics: Prometheus text whose counters match a run of known jobs (issue 8).

The worker runs the prefork pool as a subprocess: jobs run in pool processes,
and their counts must reach the main process's /metrics. Counts are kept in
memory and flushed in batches (issue 14), without touching prometheus-client's
globals (issue 17).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import uuid
from multiprocessing.synchronize import Event

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


@contextlib.contextmanager
def _prefork_worker(log_dir, r, concurrency: int = 2, **settings):
    """A prefork worker subprocess running tests.jobs, and the URL of its health server."""
    env = settings_env(HEALTH_PORT=0, HEALTH_REFRESH_INTERVAL_SEC=0.2, **settings)
    with SubprocessWorker(log_dir, env=env, concurrency=concurrency, pool="prefork",
                          include=["tests.jobs"]) as worker, \
            _log_on_failure(worker):
        yield worker, worker_health_url(r, worker)


@pytest.mark.slow
def test_metrics_counters_match_a_run_of_known_jobs_on_prefork(app, log_dir, r):
    from tests.jobs import add, fail_permanent, fail_transient

    # The execution guard is off here: until the retries feature closes a run's record before its
    # retry is delivered, the guard refuses the retry as "busy" (the first run still holds it).
    with _prefork_worker(log_dir, r, METRICS_CACHE_SEC=0, FEATURE_IDEMPOTENCY=False) as (worker, url):
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
    from tests.jobs import add

    with _prefork_worker(log_dir, r) as (worker, url):
        for n in range(4):
            add.delay(n, n).get(timeout=60)
        # A pool process's counts reach the main process at its next flush; SIGKILL loses at most the
        # counts of its last flush interval (documented), so the kill comes once they were flushed.
        wait_for(lambda: value(scrape(url), "resilience_jobs_succeeded_total", task="tests.add") == 4,
                 timeout=30, message="the four successes to be flushed")
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


@pytest.mark.slow
def test_a_count_made_in_a_pool_process_reaches_metrics_while_the_process_lives_on(app, log_dir, r):
    """Batching (issue 14): the pool process does not exit, its periodic flush brings the count."""
    from resilience import metrics
    from tests.jobs import add

    with _prefork_worker(log_dir, r, concurrency=1) as (worker, url):
        pool = worker.pool_pids()
        assert add.delay(1, 2).get(timeout=60) == 3

        def counted():
            samples = scrape(url)
            return samples if value(samples, "resilience_jobs_succeeded_total", task="tests.add") == 1 else None

        samples = wait_for(counted, timeout=10 * metrics.FLUSH_INTERVAL_SEC + 20, message="the pool process's count")
        assert worker.pool_pids() == pool  # the same pool process: counted by its flush, not at its exit
    assert value(samples, "resilience_jobs_started_total", task="tests.add") == 1
    assert value(samples, "resilience_job_runtime_seconds_count", task="tests.add") == 1


# -- the flushing mechanism, with real forked processes ----------------------------------------------

@pytest.fixture
def counts_dir(tmp_path):
    """This test process reads a directory of flushed counts, as a worker's main process does."""
    from resilience import metrics

    metrics.use_multiprocess_dir(tmp_path / "counts")
    yield tmp_path / "counts"
    metrics.remove_multiprocess_dir()


def _alerts(rule: str) -> float:
    from resilience import metrics

    samples = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return value(samples, "resilience_alerts_sent_total", rule=rule, level="info")


def _count(rule: str, times: int, interval: float | None, stay: Event, shutdown: bool) -> None:
    """In a forked child: count ``times`` alerts, then wait; at the end, exit as a pool process does."""
    from celery import signals

    from resilience import metrics

    if interval is not None:
        metrics.FLUSH_INTERVAL_SEC = interval
    for _ in range(times):
        metrics.alerts_sent.labels(rule=rule, level="info").inc()
    stay.wait(120)
    if shutdown:  # what billiard runs in a pool process before os._exit
        signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)
    os._exit(0)


def _child(rule: str, times: int, *, interval: float | None = None, shutdown: bool = False):
    from resilience import metrics

    metrics.connect_signals()
    context = multiprocessing.get_context("fork")
    stay = context.Event()
    child = context.Process(target=_count, args=(rule, times, interval, stay, shutdown), daemon=True)
    child.start()
    return child, stay


def test_a_count_in_a_forked_process_is_served_by_the_reader_after_a_flush(counts_dir):
    rule = f"rule-{uuid.uuid4().hex[:8]}"
    child, stay = _child(rule, 3)
    try:
        wait_for(lambda: _alerts(rule) == 3, timeout=30, message="the child's three counts")
        assert child.is_alive()  # flushed by its periodic flush, not at its exit
    finally:
        stay.set()
        child.join(30)


def test_counts_of_a_killed_process_stay_counted_up_to_its_last_flush(counts_dir):
    rule = f"rule-{uuid.uuid4().hex[:8]}"
    child, _ = _child(rule, 2)
    wait_for(lambda: _alerts(rule) == 2, timeout=30, message="the child's counts to be flushed")
    os.kill(child.pid, signal.SIGKILL)
    child.join(30)

    assert _alerts(rule) == 2


def test_a_pool_process_that_exits_flushes_what_it_counted_since_its_last_flush(counts_dir):
    rule = f"rule-{uuid.uuid4().hex[:8]}"
    child, stay = _child(rule, 5, interval=3600, shutdown=True)  # no periodic flush would come in time
    stay.set()
    child.join(30)

    assert child.exitcode == 0
    assert _alerts(rule) == 5


def test_counts_of_a_parent_are_not_counted_again_by_its_forked_children(counts_dir):
    from resilience import metrics

    rule = f"rule-{uuid.uuid4().hex[:8]}"
    metrics.alerts_sent.labels(rule=rule, level="info").inc(4)  # the reader's own count, in memory
    child, stay = _child(rule, 1)
    try:
        wait_for(lambda: _alerts(rule) == 5, timeout=30, message="the child's count")
    finally:
        stay.set()
        child.join(30)
    assert _alerts(rule) == 5


def test_metrics_leave_prometheus_client_globals_and_the_host_metrics_alone(counts_dir):
    """Regression (issue 17): the platform rewrote prometheus-client's global value class."""
    import prometheus_client
    from prometheus_client import values

    from resilience import metrics

    value_class = values.ValueClass
    host = prometheus_client.Counter(f"host_app_orders_{uuid.uuid4().hex[:8]}", "The host application's counter")
    try:
        host.inc(3)
        metrics.jobs_started.labels(task="tests.add").inc()

        assert values.ValueClass is value_class
        assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
        assert host._value.get() == 3 and not host._value._multiprocess
        host_text = prometheus_client.generate_latest().decode()
        assert host._name in host_text and "resilience_jobs_started" not in host_text
        assert host._name not in metrics.exposition().decode()
    finally:
        prometheus_client.REGISTRY.unregister(host)
