"""Worker health endpoints: /health, /ready, the port rule and the check registry (issue 8).

Real workers and the harness's private Redis; every port is a free one.
"""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from resilience import health
from resilience.healthserver import candidate_ports
from resilience.keys import keys
from resilience.settings import load_settings
from resilience.testing import (
    SubprocessWorker,
    configure,
    free_port,
    in_process_worker,
    settings_env,
    wait_for,
    worker_health_url,
)

FAST = dict(health_port=0, health_refresh_interval_sec=0.2, health_redis_timeout_sec=0.3)


def probe_url(worker) -> str:
    server = worker.resilience_health.server
    assert server is not None, "the worker started no health server"
    return f"http://127.0.0.1:{server.port}"


def get(url: str, path: str) -> httpx.Response:
    return httpx.get(url + path, timeout=5)


def answers(url: str, path: str, code: int):
    def check():
        response = get(url, path)
        return response.json() if response.status_code == code else None

    return check


def test_a_running_worker_answers_health_200_with_every_check(app):
    with configure(**FAST), in_process_worker(app) as worker:
        url = probe_url(worker)
        body = wait_for(answers(url, "/health", 200), timeout=30, message="/health 200")
        assert body["status"] == "ok"
        assert {"redis", "broker", "consumer", "pool", "heartbeat"} <= set(body["checks"])
        assert body["version"] and body["timestamp"]
        ready = wait_for(answers(url, "/ready", 200), timeout=30, message="/ready 200")
        assert ready["state"] == "serving" and ready["ready"] is True


def test_the_chosen_port_is_recorded_in_workers_health(app, r):
    with configure(**FAST), in_process_worker(app) as worker:
        port = worker.resilience_health.server.port
        raw = wait_for(lambda: r.hget(keys().worker_health, next(
            w for w in r.hkeys(keys().worker_health) if w.startswith(worker.hostname + "|"))),
            timeout=20, message="the worker's health registration")
        assert json.loads(raw)["port"] == port


@pytest.mark.slow
def test_with_redis_stopped_health_is_503_naming_redis_then_200_again(app, redis_server):
    with configure(**FAST), in_process_worker(app) as worker:
        url = probe_url(worker)
        wait_for(answers(url, "/health", 200), timeout=30, message="/health 200 before the outage")
        redis_server.stop()
        try:
            def names_redis():
                body = answers(url, "/health", 503)()
                return body if body and "redis" in body["failed"] else None

            # the broker check usually fails first (the consumer sees the socket close), redis at the next PING
            body = wait_for(names_redis, timeout=15, message="/health 503 naming redis while Redis is down")
            assert body["checks"]["redis"]["error"]
            ready = get(url, "/ready")
            assert ready.status_code == 503
            assert ready.json()["state"] == "broker_unavailable" and ready.json()["restart"] is False
            assert "do not restart me" in ready.json()["reason"]
        finally:
            redis_server.restart()
        wait_for(answers(url, "/health", 200), timeout=90, message="/health 200 after Redis returned")


@pytest.mark.slow
def test_with_redis_frozen_probes_still_answer_and_name_redis(app, redis_server):
    with configure(**FAST), in_process_worker(app) as worker:
        url = probe_url(worker)
        wait_for(answers(url, "/health", 200), timeout=30, message="/health 200 before the freeze")
        redis_server.freeze()  # SIGSTOP: connections hang instead of failing
        try:
            def names_redis():
                body = answers(url, "/health", 503)()
                return body if body and "redis" in body["failed"] else None

            body = wait_for(names_redis, timeout=15, message="/health 503 naming redis while Redis is frozen")
            assert "Timeout" in body["checks"]["redis"]["error"]
            assert get(url, "/ready").status_code == 503
            assert get(url, "/metrics").status_code == 200
        finally:
            redis_server.thaw()
        wait_for(answers(url, "/health", 200), timeout=90, message="/health 200 after Redis thawed")


def test_ready_says_starting_before_the_consumer_runs_and_draining_at_shutdown():
    probe = health.WorkerProbe(load_settings({}))
    code, body = probe.readiness()
    assert code == 503 and body["state"] == "starting" and body["restart"] is False
    probe.consumer_started(object())
    probe.draining()
    code, body = probe.readiness()
    assert code == 503 and body["state"] == "draining" and body["restart"] is False


def test_a_worker_whose_event_loop_is_blocked_answers_503(app):
    release = threading.Event()
    with configure(health_loop_stall_sec=1, **FAST), in_process_worker(app) as worker:
        url = probe_url(worker)
        wait_for(answers(url, "/health", 200), timeout=30, message="/health 200")
        worker.hub.call_soon(lambda: release.wait(60))  # wedge the consumer's event loop
        try:
            body = wait_for(answers(url, "/health", 503), timeout=20, message="/health 503 with a wedged loop")
            assert body["failed"] == ["consumer"]
            assert body["checks"]["consumer"]["state"] == "stalled"
            ready = get(url, "/ready").json()
            assert ready["state"] == "consumer_wedged" and ready["restart"] is True
            assert "restart me" in ready["reason"]
        finally:
            release.set()
        wait_for(answers(url, "/health", 200), timeout=20, message="/health 200 once the loop runs again")


def test_a_worker_that_stops_consuming_answers_503(app):
    with configure(**FAST), in_process_worker(app) as worker:
        url = probe_url(worker)
        wait_for(answers(url, "/health", 200), timeout=30, message="/health 200")
        app.control.cancel_consumer("celery", destination=[worker.hostname], reply=True, timeout=10)
        body = wait_for(answers(url, "/health", 503), timeout=20, message="/health 503 when nothing is consumed")
        assert body["failed"] == ["consumer"]
        assert body["checks"]["consumer"]["state"] == "not consuming"
        app.control.add_consumer("celery", destination=[worker.hostname], reply=True, timeout=10)
        wait_for(answers(url, "/health", 200), timeout=20, message="/health 200 when consuming again")


@pytest.mark.slow
def test_workers_on_one_host_take_successive_ports(r, log_dir):
    # Separate processes, as workers on one host are (in-process workers would share Celery's state).
    base = free_port()
    env = settings_env(health_port=base, health_port_tries=10, health_refresh_interval_sec=0.2)
    with SubprocessWorker(log_dir, env=env) as first, SubprocessWorker(log_dir, env=env) as second:
        urls = [worker_health_url(r, worker) for worker in (first, second)]
        ports = {int(url.rsplit(":", 1)[1]) for url in urls}
        assert len(ports) == 2 and ports <= set(range(base, base + 10))
        for url in urls:
            wait_for(answers(url, "/health", 200), timeout=30, message="both answer")


def test_the_port_rule_tries_upward_or_lets_the_os_choose():
    assert candidate_ports(load_settings({"HEALTH_PORT": "9100", "HEALTH_PORT_TRIES": "3"})) == [9100, 9101, 9102]
    assert candidate_ports(load_settings({"HEALTH_PORT": "0"})) == [0]


def test_a_registered_check_is_reported_and_fails_health_only_when_critical(app):
    state = {"ok": True}
    health.register_check("spool", lambda: {"ok": state["ok"], "size": 3})
    health.register_check("advisory", lambda: False, critical=False)
    try:
        with configure(**FAST), in_process_worker(app) as worker:
            url = probe_url(worker)
            body = wait_for(answers(url, "/health", 200), timeout=30, message="/health 200")
            assert body["checks"]["spool"] == {"ok": True, "size": 3}
            assert body["checks"]["advisory"]["ok"] is False
            state["ok"] = False
            body = get(url, "/health").json()
            assert body["failed"] == ["spool"]
    finally:
        health.unregister_check("spool")
        health.unregister_check("advisory")


@pytest.mark.slow
def test_feature_health_false_starts_no_server(log_dir, r):
    env = settings_env(FEATURE_HEALTH=False, HEALTH_PORT=0)
    with SubprocessWorker(log_dir, env=env, concurrency=1) as worker:
        wait_for(lambda: r.zrange(keys().worker_heartbeats, 0, -1), timeout=30, message="a heartbeat")
        assert r.hlen(keys().worker_health) == 0
        assert "health server" not in worker.log()


def test_health_workers_command_probes_every_registered_worker(app, r):
    import subprocess
    import sys

    with configure(**FAST), in_process_worker(app) as worker:
        url = probe_url(worker)
        wait_for(answers(url, "/health", 200), timeout=30, message="/health 200")
        wait_for(lambda: r.hlen(keys().worker_health), timeout=20, message="the registration")
        proc = subprocess.run([sys.executable, "-m", "resilience.cli", "health", "workers", "--json"],
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["healthy"] is True
    [(wid, result)] = report["workers"].items()
    assert wid.startswith(worker.hostname + "|") and result["url"] == url and result["status"] == "ok"


def test_the_heartbeat_check_fails_when_the_heartbeat_is_older_than_the_timeout():
    from resilience.healthmonitor import HealthMonitor

    now = [1000.0]
    monitor = HealthMonitor(load_settings({"WORKER_HEARTBEAT_TIMEOUT_SEC": "10"}), clock=lambda: now[0])
    assert monitor.heartbeat_check()["ok"] is True  # just started, nothing recorded yet
    monitor.heartbeat_at = 995.0
    assert monitor.heartbeat_check() == {"ok": True, "age_sec": 5.0}
    now[0] = 1011.0
    assert monitor.heartbeat_check()["ok"] is False
    monitor.heartbeat_at = None
    assert "no heartbeat" in monitor.heartbeat_check()["error"]
