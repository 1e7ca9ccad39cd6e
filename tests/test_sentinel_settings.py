"""Sentinel settings: kombu's URL form, the master name, replica acknowledgement (issue 16)."""

from __future__ import annotations

import pytest
from celery import Celery

from resilience import sentinel
from resilience.connection import is_outage
from resilience.errors import ReplicasBehind, SettingsError
from resilience.settings import load_settings, masked_url

SENTINELS = "sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26380;sentinel://10.0.0.3"
PASSWORD = "pr1mary-s3cret"


def test_a_sentinel_url_with_its_master_name_is_accepted():
    settings = load_settings({"REDIS_URL": SENTINELS, "REDIS_SENTINEL_MASTER": "mymaster"})
    assert settings.redis_url == SENTINELS
    assert settings.redis_sentinel_master == "mymaster"


def test_a_sentinel_url_without_a_master_name_stops_start_up_naming_the_setting():
    with pytest.raises(SettingsError) as err:
        load_settings({"REDIS_URL": SENTINELS})
    assert err.value.name == "REDIS_SENTINEL_MASTER"


@pytest.mark.parametrize("raw", [
    "sentinel://10.0.0.1:26379;redis://10.0.0.2:6379",
    "sentinel://10.0.0.1:notaport",
    "sentinel://:26379",
    "sentinel://10.0.0.1:26379/db0",
    "sentinel://10.0.0.1:26379;;sentinel://10.0.0.2",
])
def test_a_malformed_sentinel_url_is_refused_naming_redis_url(raw):
    with pytest.raises(SettingsError) as err:
        load_settings({"REDIS_URL": raw, "REDIS_SENTINEL_MASTER": "mymaster"})
    assert err.value.name == "REDIS_URL"


def test_a_master_name_with_spaces_is_refused():
    with pytest.raises(SettingsError) as err:
        load_settings({"REDIS_URL": SENTINELS, "REDIS_SENTINEL_MASTER": "my master"})
    assert err.value.name == "REDIS_SENTINEL_MASTER"


@pytest.mark.parametrize("name, raw", [("REDIS_MIN_REPLICAS_ACK", "-1"), ("REDIS_MIN_REPLICAS_ACK", "one"),
                                       ("REDIS_REPLICA_ACK_TIMEOUT_MS", "0"),
                                       ("REDIS_REPLICA_ACK_TIMEOUT_MS", "1.5")])
def test_a_bad_replica_acknowledgement_setting_is_refused_naming_it(name, raw):
    with pytest.raises(SettingsError) as err:
        load_settings({name: raw})
    assert err.value.name == name


def test_replica_acknowledgement_is_off_by_default():
    settings = load_settings({})
    assert settings.redis_min_replicas_ack == 0
    assert settings.redis_replica_ack_timeout_ms > 0


def test_the_sentinel_password_is_never_shown():
    with pytest.raises(SettingsError) as err:
        load_settings({"REDIS_SENTINEL_PASSWORD": PASSWORD, "REDIS_URL": SENTINELS})
    assert PASSWORD not in str(err.value)


def test_every_password_of_a_sentinel_url_is_masked():
    url = f"sentinel://:{PASSWORD}@10.0.0.1:26379;sentinel://:{PASSWORD}@10.0.0.2:26379"
    shown = masked_url(url)
    assert PASSWORD not in shown
    assert shown == "sentinel://***@10.0.0.1:26379;sentinel://***@10.0.0.2:26379"


def test_the_sentinel_url_names_the_sentinels_and_the_primarys_credentials():
    target = sentinel.parse(f"sentinel://:{PASSWORD}@10.0.0.1:26379/2;sentinel://10.0.0.2:26380;sentinel://h3")
    assert target.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("h3", 26379))
    assert target.password == PASSWORD
    assert target.db == 2


def test_install_gives_the_broker_and_result_backend_the_master_name(monkeypatch):
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", "mymaster")
    monkeypatch.setenv("REDIS_SENTINEL_PASSWORD", PASSWORD)
    app = Celery("sentinel-settings", set_as_current=False)
    app.conf.broker_url = SENTINELS
    app.conf.result_backend = SENTINELS
    app.conf.broker_transport_options = {"visibility_timeout": 60}
    sentinel.install(app, load_settings())
    options = app.conf.broker_transport_options
    assert options["master_name"] == "mymaster" and options["visibility_timeout"] == 60
    assert options["sentinel_kwargs"]["password"] == PASSWORD
    assert app.conf.result_backend_transport_options["master_name"] == "mymaster"


def test_an_app_that_names_its_master_keeps_it(monkeypatch):
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", "mymaster")
    app = Celery("sentinel-own", set_as_current=False)
    app.conf.broker_url = SENTINELS
    app.conf.broker_transport_options = {"master_name": "theirs"}
    sentinel.install(app, load_settings())
    assert app.conf.broker_transport_options["master_name"] == "theirs"


def test_a_readonly_reply_and_unconfirmed_replicas_count_as_outages():
    from redis.exceptions import ReadOnlyError

    assert is_outage(ReadOnlyError("You can't write against a read only replica."))
    assert is_outage(ReplicasBehind("publish", 0, 1, 500))
    assert not isinstance(ReplicasBehind("publish", 0, 1, 500), OSError)


def test_a_sentinel_broker_keeps_its_transport_when_a_connection_attempt_fails(monkeypatch):
    from kombu import Connection

    monkeypatch.setenv("REDIS_SENTINEL_MASTER", "mymaster")
    app = Celery("sentinel-failover-strategy", set_as_current=False)
    app.conf.broker_url = SENTINELS
    sentinel.install(app, load_settings())
    conn = Connection(SENTINELS, transport="resilience.replication:SentinelTransport",
                      failover_strategy=app.conf.broker_failover_strategy)
    conn.maybe_switch_next()  # what kombu does after a failed attempt
    assert conn.transport_cls == "resilience.replication:SentinelTransport"
    assert len(conn.alt) == 3  # the sentinel transport still finds every sentinel
