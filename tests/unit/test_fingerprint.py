"""One fingerprint: error tracking, Sentry and the dead-letter statistics group errors the same way."""

from __future__ import annotations

from resilience.core import fingerprint as fp
from resilience.jobs import deadletter
from resilience.observability import tracking


def test_tracking_and_dead_letters_use_the_one_normalisation():
    assert tracking.fingerprint is fp.fingerprint
    assert tracking.normalise_message is fp.normalise_message
    entry = {"error_type": "ValueError", "failure_reason": "order 41 for 'alice' failed at 0x7f3a\nmore"}
    first_line = fp.normalise_message("order 41 for 'alice' failed at 0x7f3a")
    assert deadletter.fingerprint(entry) == f"ValueError: {first_line}"


def test_two_runs_of_one_bug_share_a_label_and_a_fingerprint():
    first, second = "order 41 for 'alice' failed at 0x7f3a", "order 97 for 'bob' failed at 0x11aa"
    expected = "ValueError: order <n> for <str> failed at <hex>"
    assert fp.label("ValueError", first) == fp.label("ValueError", second) == expected
    charge = "billing.charge"
    assert fp.fingerprint(charge, "ValueError", first) == fp.fingerprint(charge, "ValueError", second)
    assert fp.label("KeyError", first) != fp.label("ValueError", first)


def test_a_label_never_shows_a_secret_and_stays_short():
    assert "hunter2" not in fp.label("AuthError", "login failed: password=hunter2")
    assert len(fp.label("E", "x" * 10_000)) <= len("E: ") + fp.LABEL_CHARS
