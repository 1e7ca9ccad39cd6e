# test_orders.py
from resilience.testing import configure

from orders.tasks import charge, export, notify


def test_a_charge_runs_once(resilience_worker, resilience_jobs):
    job = charge.delay("order-1", 1000)
    assert job.get(timeout=10) == "charged order-1"
    resilience_jobs.assert_ran_once(job)


def test_a_charge_of_nothing_is_dead_lettered_at_once(resilience_worker, resilience_jobs):
    job = charge.delay("order-2", 0)
    resilience_jobs.assert_dead_lettered(job, "nothing to charge", error_type="PermanentError")
    resilience_jobs.assert_ran_once(job)


def test_a_notification_is_retried_with_backoff_then_dead_lettered(resilience_worker, resilience_jobs):
    job = notify.delay("order-3")
    resilience_jobs.assert_retried(job, 2, delays=[0.2, 0.4])
    resilience_jobs.assert_dead_lettered(job, "retries exhausted after 2 retries")
    assert resilience_jobs.runs(job) == 3


def test_an_export_survives_a_redis_crash_mid_job(resilience_redis, resilience_worker, resilience_jobs):
    job = export.delay("order-4", 1.0)
    resilience_jobs.wait_started(job)
    resilience_redis.crash()  # SIGKILL, then start again on the same port with its data
    resilience_jobs.assert_ran_once(job, timeout=60)
    assert job.get(timeout=30) == "exported order-4"


def test_the_export_of_a_killed_worker_runs_again(resilience_subprocess_worker, resilience_jobs):
    # A worker counts as dead after 3 s without a heartbeat (the default is 120 s).
    with configure(worker_heartbeat_timeout_sec=3, worker_heartbeat_interval_sec=0.5):
        doomed = resilience_subprocess_worker(name="doomed@orders")
        job = export.delay("order-5", 2.0)
        resilience_jobs.wait_started(job)
        doomed.kill()  # SIGKILL mid-job
        resilience_subprocess_worker(name="survivor@orders")
        resilience_jobs.wait_finished(job, timeout=90, sweep=True)  # the sweep requeues it, as beat would
    assert resilience_jobs.runs(job) == 2
    assert job.get(timeout=10) == "exported order-5"
