"""The platform's clients under Sentinel: they follow the primary, reload scripts, and
treat unconfirmed writes as not done (issue 16). Real sentinels and redis-servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resilience import healthmonitor, sentinel, spool
from resilience.errors import ReplicasBehind
from resilience.replication import run_script
from resilience.settings import get_settings
from resilience.store import get_redis, load_script
from resilience.testing import SentinelTopology, configure, flushing_paused, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("sentinel-failover")]

CHECKOUT = Path(__file__).resolve().parents[1]


@pytest.fixture
def ha(tmp_path, app):
    assert app.conf.broker_url.startswith("redis://")  # configured for the session's Redis, not this topology
    with SentinelTopology(tmp_path / "ha").start() as topology:
        with configure(redis_url=topology.url, redis_sentinel_master=topology.master_name,
                       data_dir=str(tmp_path / "data")):
            yield topology


def _port_of_store() -> int:
    return int(get_redis().info("server")["tcp_port"])


def test_the_store_follows_the_primary_through_a_failover(ha):
    get_redis().set("before", "1")
    old = ha.kill_primary()
    new, _ = ha.wait_promoted(old)
    wait_for(lambda: get_redis().set("after", "1"), 30, message="a write to reach the new primary")
    assert _port_of_store() == new.port
    assert get_redis().get("before") == "1"  # replicated before the kill


def test_a_client_of_a_demoted_primary_finds_the_new_one(ha):
    old = ha.primary()
    get_redis().set("k", "1")  # a pooled connection to the current primary
    ha.sentinel_nodes[0].client().execute_command("SENTINEL", "FAILOVER", ha.master_name)
    new, _ = ha.wait_promoted(old)
    wait_for(lambda: old.role() == "slave", 30, message="the old primary to become a replica")
    # The pooled connection still reaches the old primary, which answers READONLY:
    # the client rediscovers the primary instead of failing the write.
    wait_for(lambda: get_redis().set("k", "2"), 30, message="a write to reach the new primary")
    assert _port_of_store() == new.port


def test_scripts_are_loaded_again_on_a_primary_that_does_not_know_them(ha):
    script = load_script("lock_release")
    assert script(keys=["locks:none"], args=["token"]) == 0
    get_redis().script_flush()  # what a promoted replica may look like
    assert script(keys=["locks:none"], args=["token"]) == 0
    assert run_script("lock_release", ["locks:none"], ["token"], what="test") == 0


def test_a_write_the_replicas_do_not_confirm_counts_as_not_done(ha):
    for node in ha.nodes:
        if node.port != ha.primary().port:
            node.kill()
    with configure(redis_min_replicas_ack=1, redis_replica_ack_timeout_ms=100):
        with pytest.raises(ReplicasBehind):
            run_script("lock_release", ["locks:none"], ["token"], what="test")


def test_a_publish_the_replicas_do_not_confirm_stays_in_the_spool_until_they_do(ha, tmp_path):
    replicas = [node for node in ha.nodes if node.port != ha.primary().port]
    for node in replicas:
        node.kill()
    env = {**os.environ, "REDIS_MIN_REPLICAS_ACK": "1", "REDIS_REPLICA_ACK_TIMEOUT_MS": "200",
           "PYTHONPATH": str(CHECKOUT)}
    with flushing_paused():  # no flusher of this process (its settings ask no replica) publishes it meanwhile
        done = subprocess.run([sys.executable, "-m", "tests.jobs.sentinel", str(tmp_path / "marks"),
                               str(tmp_path / "ids"), "1"], env=env, cwd=CHECKOUT, capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        assert spool.count() == 1  # accepted by the caller, not confirmed: kept on disk
    primary = ha.primary().client()
    for node in replicas:
        ha.restart(node)

    def flushed() -> bool:  # `resilience spool flush`, as an operator would run it, until nothing is left
        done = subprocess.run([sys.executable, "-m", "resilience.cli", "spool", "flush", "--json"], env=env,
                              cwd=CHECKOUT, capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        return json.loads(done.stdout)["left"] == 0

    wait_for(flushed, 60, interval=0.5, message="the spool to be published once the replicas are back")
    assert spool.count() == 0
    assert primary.llen("celery") >= 1


def test_the_replication_view_names_the_primary_and_each_replicas_lag(ha):
    view = sentinel.replication(get_settings().redis_url, get_settings())
    assert view["primary"] == ha.primary().address
    assert len(view["replicas"]) == 2
    assert all(r["lag_bytes"] is not None and r["lag_bytes"] >= 0 for r in view["replicas"])
    assert view["sentinels"] == 3


def _failovers_counted() -> float:
    from resilience import metrics

    text = metrics.exposition().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("resilience_redis_failovers_total{"))


def test_a_new_primary_is_logged_counted_and_alerted_once(ha, caplog):
    from resilience import alerts
    from resilience.webhook_receiver import WebhookReceiver

    with WebhookReceiver("failover-secret") as receiver, configure(alert_webhook_url=receiver.url,
                                                                   alert_webhook_secret="failover-secret"):
        watch = healthmonitor.FailoverWatch()
        counted = _failovers_counted()
        assert not watch.observe(ha.primary().address, ha.master_name)  # the starting point
        old = ha.kill_primary()
        new, _ = ha.wait_promoted(old)
        assert watch.observe(new.address, ha.master_name)
        assert not watch.observe(new.address, ha.master_name)
        healthmonitor.FailoverWatch(primary=old.address).observe(new.address, ha.master_name)  # another process
        assert _failovers_counted() == counted + 2
        assert alerts.flush(30)
        sent = [a for a in receiver.alerts if a.payload["context"].get("rule") == "redis_failover"]
        assert len(sent) == 1 and sent[0].verified
        assert sent[0].payload["context"]["primary"] == new.address
    assert any("Redis failover" in r.getMessage() for r in caplog.records)


def test_status_names_the_primary_and_each_replicas_lag(ha):
    from rich.console import Console

    from resilience import status

    snapshot = status.collect()
    assert snapshot["redis"]["primary"] == ha.primary().address
    assert {r["address"] for r in snapshot["redis"]["replicas"]} == {n.address for n in ha.nodes} - {
        ha.primary().address}
    console = Console(record=True, width=160)
    console.print(status.render(snapshot))
    text = console.export_text()
    assert "Redis (Sentinel)" in text and ha.primary().address in text


def test_the_health_check_names_the_primary_and_each_replicas_lag(ha):
    from resilience.healthmonitor import HealthMonitor

    monitor = HealthMonitor(get_settings())
    monitor.refresh()
    check = monitor.replication_check()
    assert check["ok"] and check["primary"] == ha.primary().address
    assert all("lag_bytes" in r for r in check["replicas"])


def test_up_ha_runs_the_platform_on_a_local_topology_that_survives_a_failover(tmp_path, app):
    from resilience.keys import keys
    from resilience.supervisor import Platform

    # The session's app is configured (for the private Redis) before `up` loads it here: its
    # configuration module reads REDIS_URL once, and the topology is gone after this test.
    assert app.conf.broker_url.startswith("redis://")
    with configure(redis_url="", redis_sentinel_master="", data_dir=str(tmp_path / "data"),
                   worker_heartbeat_interval_sec=0.5, health_port=0):
        platform = Platform(beat=False, flower=False, ha=True, log_to_files=True)
        try:
            platform.start()
            assert sentinel.is_sentinel_url(platform.redis_url) and platform.topology is not None
            nodes = list(platform.topology.nodes)

            def beating() -> float | None:
                client = platform.topology.primary().client()
                try:
                    return max((score for _, score in client.zrange(keys().worker_heartbeats, 0, -1,
                                                                     withscores=True)), default=None)
                finally:
                    client.close()

            wait_for(beating, 90, message="the worker's heartbeat on the topology's primary")
            old, new, took = platform.fail_over()  # what `resilience demo --failover-after` does
            assert old != new and took > 0
            killed_at = time.time()
            wait_for(lambda: (beating() or 0) > killed_at, 60, message="the worker's heartbeat on the new primary")
            assert all(child.process.poll() is None for child in platform.children)
        finally:
            platform.stop()
    assert not any(node.ping() for node in nodes)
