"""Settings reject non-finite numbers by name and never echo a secret (issue 15)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from resilience.errors import SettingsError
from resilience.settings import load_settings, masked_url

PASSWORD = "hunter2-s3cret"


@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "-1e999"])
@pytest.mark.parametrize("name", ["RETRY_BACKOFF_BASE_SEC", "DEAD_LETTER_TTL_DAYS", "METRICS_CACHE_SEC"])
def test_a_non_finite_number_is_refused_naming_the_setting(name, raw):
    with pytest.raises(SettingsError) as err:
        load_settings({name: raw})
    assert err.value.name == name
    assert str(err.value).startswith(name) and "finite" in str(err.value)


@pytest.mark.parametrize("raw", ["inf", "1e999", "nan"])
def test_a_non_finite_value_for_an_integer_setting_is_refused_naming_it(raw):
    with pytest.raises(SettingsError) as err:
        load_settings({"RETRY_MAX": raw})
    assert err.value.name == "RETRY_MAX"


@pytest.mark.parametrize("raw, shown", [
    (f"http://app:{PASSWORD}@redis.internal:6379/0", "http://app:***@redis.internal:6379/0"),
    (f"redis://:{PASSWORD}@redis.internal:port/0", "redis://***@redis.internal:port/0"),
    (f"redis://{PASSWORD}@redis.internal:99999/0", "redis://***@redis.internal:99999/0"),
    (f"app:{PASSWORD}@redis.internal:6379", "***@redis.internal:6379"),
    (f"ftp://:{PASSWORD[:4]}/{PASSWORD[4:]}@redis.internal", "ftp://***@redis.internal"),
    (f"tcp://redis.internal/0?password={PASSWORD}", "tcp://redis.internal/0?password=***"),
])
def test_a_bad_redis_url_is_shown_with_its_password_masked(raw, shown):
    with pytest.raises(SettingsError) as err:
        load_settings({"REDIS_URL": raw})
    message = str(err.value)
    assert PASSWORD not in message and PASSWORD[:4] not in message
    assert message.startswith(f"REDIS_URL='{shown}': ")
    assert PASSWORD not in repr(err.value) and PASSWORD not in err.value.value


@pytest.mark.parametrize("name, raw", [
    ("ALERT_WEBHOOK_URL", f"ftp://hooks.example/T0/{PASSWORD}?token={PASSWORD}"),
    ("ALERT_WEBHOOK_URL", f"https://hooks.example:bad/{PASSWORD}"),
    ("ALERT_WEBHOOK_URL", f"hooks.example/{PASSWORD}"),
    ("FLOWER_BASIC_AUTH", PASSWORD),
    ("FLOWER_BASIC_AUTH", f"admin:{PASSWORD},{PASSWORD}"),
])
def test_a_bad_secret_setting_is_named_and_its_value_never_shown(name, raw):
    with pytest.raises(SettingsError) as err:
        load_settings({name: raw})
    message = str(err.value)
    assert message.startswith(f"{name} (value <hidden>): ")
    assert PASSWORD not in message and "token" not in message and "hooks.example" not in message


@pytest.mark.parametrize("name", ["ALERT_WEBHOOK_SECRET", "SENTRY_DSN", "FLOWER_BASIC_AUTH", "ALERT_WEBHOOK_URL",
                                  "alert_webhook_url", "resilience_alert_webhook_url", "SOME_API_TOKEN",
                                  "DB_PASSWORD"])
def test_any_error_about_a_secret_setting_hides_its_value(name):
    """The rule lives in SettingsError itself, so no code path that raises it can echo a secret."""
    message = str(SettingsError(name, PASSWORD, "rejected"))
    assert message == f"{name} (value <hidden>): rejected"


def test_a_url_in_any_setting_is_shown_with_its_password_masked():
    message = str(SettingsError("BROKER_SOMETHING", f"rediss://default:{PASSWORD}@h:6380/1?ssl=1", "rejected"))
    assert message == "BROKER_SOMETHING='rediss://default:***@h:6380/1?ssl=1': rejected"


def test_masking_keeps_a_url_without_secrets_as_it_is():
    assert masked_url("redis://redis.internal:6379/0") == "redis://redis.internal:6379/0"
    assert masked_url("unix:///run/redis.sock?db=2") == "unix:///run/redis.sock?db=2"


def test_an_app_started_with_a_bad_redis_url_names_it_and_masks_its_password():
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": f"http://app:{PASSWORD}@redis.internal:6379/0"}
    proc = subprocess.run([sys.executable, "-c", "import tasks.app"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0
    assert "REDIS_URL='http://app:***@redis.internal:6379/0'" in proc.stderr
    assert PASSWORD not in proc.stderr + proc.stdout
