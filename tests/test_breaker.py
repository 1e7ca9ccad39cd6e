"""Circuit breakers against the session's real Redis: each Breaker instance
stands for another process (they share nothing but Redis)."""

from __future__ import annotations

import json
import threading

import pybreaker
import pytest
from click.testing import CliRunner

from resilience import breaker as breakers
from resilience.breaker import Breaker
from resilience.errors import CircuitOpenError
from resilience.keys import keys
from resilience.testing import configure


class Clock:
    """Epoch seconds a test moves by hand."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class BusinessError(Exception):
    """A 4xx-style error: the dependency answered, the request was wrong."""


def fail() -> None:
    raise ConnectionError("dependency down")


def trip(breaker: Breaker, times: int) -> None:
    for _ in range(times):
        with pytest.raises(ConnectionError):
            breaker.call(fail)


def test_opens_after_fail_max_consecutive_failures_and_refuses_calls(r):
    breaker = Breaker("deps", fail_max=3, reset_timeout_sec=60)
    trip(breaker, 2)
    assert breaker.call(lambda: "ok") == "ok"  # a success resets the count
    trip(breaker, 3)

    with pytest.raises(CircuitOpenError) as refused:
        breaker.call(lambda: "never runs")

    assert 0 < refused.value.retry_after_sec <= 60
    record = json.loads(r.hget(keys().breakers_status, "deps"))
    assert record["state"] == "open" and record["failures"] == 3 and record["opened_at"] > 0


def test_open_breaker_is_open_for_every_process(r):
    here, elsewhere = Breaker("shared", fail_max=2), Breaker("shared", fail_max=2)
    trip(here, 1)
    trip(elsewhere, 1)

    with pytest.raises(CircuitOpenError):
        here.call(lambda: None)
    assert elsewhere.current_state == "open"


def test_business_errors_do_not_trip_the_breaker(r):
    breaker = Breaker("billing", fail_max=2, exclude=[BusinessError, lambda exc: "404" in str(exc)])

    for _ in range(5):
        with pytest.raises(BusinessError):
            breaker.call(lambda: (_ for _ in ()).throw(BusinessError("invalid card")))
        with pytest.raises(ValueError):
            breaker.call(lambda: (_ for _ in ()).throw(ValueError("404 no such order")))

    assert breaker.current_state == "closed"
    assert breaker.fail_counter == 0


def test_half_open_admits_a_bounded_number_of_trials_across_the_cluster(r):
    clock = Clock()
    processes = [Breaker("api", fail_max=1, reset_timeout_sec=30, half_open_max_calls=2, clock=clock)
                 for _ in range(4)]
    trip(processes[0], 1)
    clock.now += 31  # due to half-open

    admitted, refused = [], []
    release = threading.Event()

    def trial(breaker: Breaker) -> None:
        try:
            with breaker.calling():
                admitted.append(breaker)
                release.wait(10)
        except CircuitOpenError:
            refused.append(breaker)

    threads = [threading.Thread(target=trial, args=(b,)) for b in processes]
    for t in threads[:2]:
        t.start()
    from resilience.testing import wait_for

    wait_for(lambda: len(admitted) == 2, 10, message="two trial calls admitted")
    for t in threads[2:]:
        t.start()
        t.join(10)
    assert len(refused) == 2
    release.set()
    for t in threads[:2]:
        t.join(10)
    assert processes[3].current_state == "closed"


def test_a_trial_success_closes_and_a_trial_failure_reopens(r):
    clock = Clock()
    breaker = Breaker("flappy", fail_max=1, reset_timeout_sec=10, clock=clock)
    trip(breaker, 1)
    clock.now += 11
    trip(breaker, 1)  # the trial fails
    assert breaker.current_state == "open"
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: None)

    clock.now += 11
    assert breaker.call(lambda: "trial") == "trial"
    assert breaker.current_state == "closed"


def test_a_lost_trial_frees_its_slot_after_one_reset_timeout(r):
    clock = Clock()
    breaker = Breaker("lost", fail_max=1, reset_timeout_sec=10, half_open_max_calls=1, clock=clock)
    trip(breaker, 1)
    clock.now += 11
    breaker._admit()  # a trial whose caller dies before it reports back
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: None)

    clock.now += 11
    assert breaker.call(lambda: "recovered") == "recovered"
    assert breaker.current_state == "closed"


def test_concurrent_calls_through_one_breaker_are_not_serialised(r):
    breaker = Breaker("parallel")
    barrier = threading.Barrier(8, timeout=20)  # breaks unless all 8 calls run at once
    results = []

    def call() -> None:
        results.append(breaker.call(barrier.wait))

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == list(range(8))


def test_decorator_and_context_manager_go_through_the_named_breaker(r):
    guarded = breakers.circuit("wrapped", fail_max=2)

    @guarded
    def flaky() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        flaky()
    with pytest.raises(ConnectionError):
        with breakers.circuit("wrapped").calling():
            raise ConnectionError("down")

    with pytest.raises(CircuitOpenError):
        flaky()


def test_state_changes_are_counted_and_reported_to_listeners(r):
    seen = []

    class Recorder(pybreaker.CircuitBreakerListener):
        def state_change(self, cb, old_state, new_state):
            seen.append((old_state.name, new_state.name))

    clock = Clock()
    breaker = Breaker("watched", fail_max=1, reset_timeout_sec=5, listeners=[Recorder()], clock=clock)
    trip(breaker, 1)
    clock.now += 6
    breaker.call(lambda: None)

    assert seen == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]
    counts = breakers.stats()
    assert counts["watched:opened"] == 1 and counts["watched:half_opened"] == 1 and counts["watched:closed"] == 1


def test_feature_off_calls_pass_straight_through(r):
    with configure(feature_circuit_breakers=False):
        breaker = Breaker("off", fail_max=1)
        trip(breaker, 3)
        assert breaker.call(lambda: "through") == "through"
    assert r.hget(keys().breakers_status, "off") is None


def test_cli_shows_breakers_and_reset_closes_one(r):
    from resilience.cli import main

    trip(Breaker("payments", fail_max=1, reset_timeout_sec=60), 1)
    runner = CliRunner()

    shown = json.loads(runner.invoke(main, ["breakers", "--json"]).output)
    assert [(row["name"], row["state"], row["failures"]) for row in shown] == [("payments", "open", 1)]
    assert 0 < shown[0]["half_open_in_sec"] <= 60 and shown[0]["opened_at"].endswith("+00:00")
    assert "payments" in runner.invoke(main, ["breakers"]).output

    reset = runner.invoke(main, ["breakers", "reset", "payments", "--json"])
    assert json.loads(reset.output) == {"name": "payments", "previous_state": "open", "state": "closed"}
    assert Breaker("payments").call(lambda: "again") == "again"


# -- the HTTP helper, against a real local HTTP server ------------------------------
def test_http_5xx_and_transport_errors_trip_the_breaker_but_4xx_do_not(r):
    import httpx

    from resilience.httpclient import BreakerClient
    from resilience.testing.flakyapi import FlakyAPI

    with FlakyAPI(mode="failing") as api, BreakerClient("http-api", base_url=api.url) as client:
        client.breaker.configure(fail_max=3)
        for _ in range(5):
            assert client.get("/missing").status_code == 404
        assert client.breaker.fail_counter == 0

        with pytest.raises(httpx.HTTPStatusError):
            client.get("/orders")
        assert client.breaker.fail_counter == 1
    with BreakerClient("http-api", base_url=api.url, connect_timeout_sec=1) as client:
        for _ in range(2):  # the server is gone: connection refused
            with pytest.raises(httpx.TransportError):
                client.get("/orders")
        with pytest.raises(CircuitOpenError):
            client.get("/orders")


def test_http_read_timeout_counts_as_a_failure(r):
    import httpx

    from resilience.httpclient import BreakerClient
    from resilience.testing.flakyapi import FlakyAPI

    with FlakyAPI(mode="slow", slow_sec=3) as api, \
            BreakerClient("slow-api", base_url=api.url, read_timeout_sec=0.3) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.get("/report")
        assert client.breaker.fail_counter == 1


def test_a_refusal_by_another_breaker_inside_the_call_does_not_count(r):
    outer, inner = Breaker("outer", fail_max=1), Breaker("inner", fail_max=1)
    inner.open()

    for _ in range(3):
        with pytest.raises(CircuitOpenError):
            outer.call(inner.call, lambda: None)

    assert outer.current_state == "closed" and outer.fail_counter == 0
