"""compose.yaml describes a real deployment (no Docker engine here: we parse it)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from resilience.settings import env_fields

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
KNOWN = {f.metadata["env"] for f in env_fields()}


def test_it_has_redis_worker_beat_and_flower():
    assert {"redis", "worker", "beat", "flower"} <= set(COMPOSE["services"])


def test_redis_keeps_an_append_only_file_and_has_a_health_check():
    redis = COMPOSE["services"]["redis"]
    assert "--appendonly" in redis["command"] and "yes" in redis["command"]
    assert "healthcheck" in redis


def test_workers_are_scalable_and_run_the_project_app():
    worker = COMPOSE["services"]["worker"]
    assert "replicas" in worker["deploy"]
    assert worker["command"][:4] == ["celery", "-A", "tasks", "worker"]
    assert COMPOSE["services"]["beat"]["command"][:4] == ["celery", "-A", "tasks", "beat"]


def test_flower_requires_basic_auth_from_the_environment():
    flower = COMPOSE["services"]["flower"]
    assert "FLOWER_BASIC_AUTH" in flower["environment"]
    assert "basic-auth" not in " ".join(flower["command"]), "a password on the command line shows in ps (issue 15)"


def test_every_passed_setting_exists():
    for name, service in COMPOSE["services"].items():
        for var in (service.get("environment") or {}):
            assert var in KNOWN, f"{name} passes unknown setting {var}"


def test_every_setting_is_passed_to_the_platform():
    env = COMPOSE["services"]["worker"]["environment"]
    missing = KNOWN - set(env) - {"RESILIENCE_REDIS_BINARY", "FLOWER_PORT"}
    assert not missing


def test_variables_interpolated_from_the_host_are_settings_or_deployment_knobs():
    text = (ROOT / "compose.yaml").read_text()
    for var in set(re.findall(r"\$\{([A-Z_]+)", text)):
        assert var in KNOWN or var == "WORKER_REPLICAS", var


def test_the_ha_profile_runs_a_primary_two_replicas_and_three_sentinels():
    services = COMPOSE["services"]
    ha = {name for name, service in services.items() if "ha" in (service.get("profiles") or ())}
    assert ha == {"redis-primary", "redis-replica-1", "redis-replica-2", "sentinel-1", "sentinel-2", "sentinel-3"}
    for replica in ("redis-replica-1", "redis-replica-2"):
        command = services[replica]["command"]
        assert command[command.index("--replicaof") + 1] == "redis-primary"
        assert "--appendonly" in command
    for name in ("sentinel-1", "sentinel-2", "sentinel-3"):
        script = " ".join(services[name]["command"])
        assert "--sentinel" in script and "sentinel monitor mymaster redis-primary 6379 2" in script


def test_the_platform_takes_its_sentinel_settings_from_the_host():
    env = COMPOSE["services"]["worker"]["environment"]
    for name in ("REDIS_URL", "REDIS_SENTINEL_MASTER", "REDIS_SENTINEL_PASSWORD", "REDIS_MIN_REPLICAS_ACK"):
        assert env[name].startswith("${" + name)
