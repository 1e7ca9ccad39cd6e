"""Circuit breakers shared by the whole cluster.

pybreaker's breaker is per process and holds a process-wide lock around the
protected call; its Redis storage updates counters without atomicity. Here a
:class:`Breaker` keeps pybreaker's interface (decorator, ``calling()`` context,
excluded business errors, listeners) but its state is one JSON record in the
public hash ``circuit_breakers:status``, changed only by Lua scripts:

* ``breaker_admit.lua`` before a call: closed passes (a read only), open
  refuses until the reset timeout has passed, then half-open admits at most
  ``BREAKER_HALF_OPEN_MAX_CALLS`` trial calls across every process and host;
* ``breaker_settle.lua`` after it: ``fail_max`` consecutive failures open the
  breaker, a trial success closes it, a trial failure opens it again. A
  success in a closed breaker that had no failures skips this round trip.

No lock is held around the call, so concurrent calls through one breaker run
concurrently. The process that performs a transition reports it, so each
state change is logged, counted (``stats:breakers``) and alerted once.

Jobs: a task declared with ``breaker="name"`` runs its body through that
breaker, and a job refused by an open breaker (its own or one called in its
body) is *parked*: re-published under the same id and retries count to run
when the breaker is due to half-open, plus jitter. It is neither failed nor
charged a retry. ``FEATURE_CIRCUIT_BREAKERS=false``: calls pass straight
through and jobs are never parked.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import pybreaker
import redis
from celery.exceptions import Ignore, Reject, Retry

from resilience.core.errors import CircuitOpenError
from resilience.core.keys import keys
from resilience.core.observe import guarded
from resilience.core.quarantine import INTEGER, NUMBER, TEXT, Shape, decode
from resilience.core.settings import get_settings
from resilience.core.store import get_redis, load_script
from resilience.jobs.submission import republishing
from resilience.observability import alert_rules

__all__ = [
    "Breaker", "get_breaker", "circuit", "status", "reset", "run_job", "park",
    "STATE_CLOSED", "STATE_OPEN", "STATE_HALF_OPEN",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

STATE_CLOSED = pybreaker.STATE_CLOSED
STATE_OPEN = pybreaker.STATE_OPEN
STATE_HALF_OPEN = pybreaker.STATE_HALF_OPEN

#: A ``circuit_breakers:status`` record as the breaker scripts write it. A
#: record of another shape reads as "malformed" in :func:`status` and as a
#: closed breaker to calls (as ``breaker_admit.lua`` treats it); the next
#: failure through the breaker writes a good one over it.
RECORD = Shape({"state": TEXT, "failures": INTEGER, "opened_at": NUMBER, "half_open_at": NUMBER,
                "trials": INTEGER, "fail_max": INTEGER, "reset_timeout_sec": NUMBER, "changed_at": NUMBER})

#: Per-thread names of the breakers whose protected call is running, so a call
#: through the same breaker nested inside it (a task-level breaker and the HTTP
#: client in its body) is counted once, by the outer call.
_inside = threading.local()


@dataclass(frozen=True)
class _Ticket:
    """What the admit script decided for one call."""

    trial: bool
    failures: int


@dataclass(frozen=True)
class _StateView:
    """The ``name`` pybreaker listeners read from the states they are given."""

    name: str


def _stats_key() -> str:
    return keys().stats("breakers")


def _entered() -> set[str]:
    names = getattr(_inside, "names", None)
    if names is None:
        names = _inside.names = set()
    return names


@contextlib.contextmanager
def _scope(name: str) -> Iterator[None]:
    names = _entered()
    names.add(name)
    try:
        yield
    finally:
        names.discard(name)


def _failure_of(exc: BaseException) -> BaseException | None:
    """The error a raised exception stands for, or None for control flow.

    A body that catches an error and calls ``self.retry(exc=...)`` raises
    Celery's ``Retry``: the error it carries is what the call did. A
    ``CircuitOpenError`` from another breaker inside the call is no verdict on
    this one's dependency.
    """
    if isinstance(exc, Retry):
        return exc.exc if isinstance(exc.exc, Exception) else None
    if isinstance(exc, (Ignore, Reject, CircuitOpenError)) or not isinstance(exc, Exception):
        return None  # control flow, or another breaker refusing: nothing about this dependency
    return exc


class Breaker(pybreaker.CircuitBreaker):
    """A named pybreaker circuit breaker whose state lives in Redis.

    Options left at ``None`` take ``BREAKER_FAIL_MAX``,
    ``BREAKER_RESET_TIMEOUT_SEC`` and ``BREAKER_HALF_OPEN_MAX_CALLS`` when a
    call is made. ``exclude`` lists business errors (types, or predicates
    taking the exception) that do not trip the breaker: like pybreaker, they
    count as a success of the dependency. ``clock`` returns epoch seconds;
    ``None`` uses the Redis server's clock, the one clock every host shares.
    """

    def __init__(self, name: str, *, fail_max: int | None = None, reset_timeout_sec: float | None = None,
                 half_open_max_calls: int | None = None,
                 exclude: Iterable[type[BaseException] | Callable[[BaseException], bool]] = (),
                 listeners: Iterable[pybreaker.CircuitBreakerListener] = (),
                 clock: Callable[[], float] | None = None) -> None:
        super().__init__(exclude=list(exclude), listeners=list(listeners), name=name)
        self._fail_max_option = fail_max
        self._reset_timeout_option = reset_timeout_sec
        self.half_open_max_calls_option = half_open_max_calls
        self.clock = clock

    # -- options (call time: settings may change) ----------------------------------
    @property
    def fail_max(self) -> int:
        return self._fail_max_option or get_settings().breaker_fail_max

    @fail_max.setter
    def fail_max(self, number: int | None) -> None:
        self._fail_max_option = number

    @property
    def reset_timeout(self) -> float:
        return self._reset_timeout_option or get_settings().breaker_reset_timeout_sec

    @reset_timeout.setter
    def reset_timeout(self, seconds: float | None) -> None:
        self._reset_timeout_option = seconds

    @property
    def half_open_max_calls(self) -> int:
        return self.half_open_max_calls_option or get_settings().breaker_half_open_max_calls

    def configure(self, *, fail_max: int | None = None, reset_timeout_sec: float | None = None,
                  half_open_max_calls: int | None = None,
                  exclude: Iterable[type[BaseException] | Callable[[BaseException], bool]] = ()) -> Breaker:
        """Apply per-breaker overrides (those given); returns the breaker."""
        if fail_max is not None:
            self.fail_max = fail_max
        if reset_timeout_sec is not None:
            self.reset_timeout = reset_timeout_sec
        if half_open_max_calls is not None:
            self.half_open_max_calls_option = half_open_max_calls
        for exclusion in exclude:
            if exclusion not in self._excluded_exceptions:
                self._excluded_exceptions.append(exclusion)  # type: ignore[arg-type]  # pybreaker's alias
        return self

    # -- state -----------------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        """This breaker's status record (``closed`` with no failures when it has none or a malformed one)."""
        record = status(self.name).get(self.name)
        if not record or record.get("malformed"):
            return {"state": STATE_CLOSED, "failures": 0}
        return record

    @property
    def name(self) -> str:
        """The breaker's name (every breaker here has one)."""
        return str(self._name)

    @name.setter
    def name(self, name: str) -> None:
        self._name = name

    @property
    def current_state(self) -> str:
        if not hasattr(self, "clock"):  # pybreaker's __init__ asks before the name is set
            return STATE_CLOSED
        return self.record()["state"]

    @property  # type: ignore[misc]  # read-only here: the state lives in Redis
    def state(self) -> _StateView:  # type: ignore[override]
        """The shared state (pybreaker's per-process state objects are not used)."""
        return _StateView(self.current_state)

    @property
    def fail_counter(self) -> int:
        return int(self.record().get("failures") or 0)

    def open(self) -> bool:
        """Trip the breaker by hand, for every process."""
        self._force(STATE_OPEN)
        return True

    def close(self) -> None:
        """Close the breaker by hand, for every process."""
        self._force(STATE_CLOSED)

    def half_open(self) -> None:
        raise NotImplementedError("a shared breaker half-opens by itself when its reset timeout has passed")

    def _force(self, target: str) -> str:
        before = load_script("breaker_force")(
            keys=[keys().breakers_status, _stats_key()],
            args=[self.name, self._now(), target, self.fail_max, self.reset_timeout])
        if before != target:
            self._report(before, target, {"reason": "set by hand"})
        return before

    def _now(self) -> str:
        return repr(self.clock()) if self.clock else ""

    # -- calls -------------------------------------------------------------------
    def _passes_through(self) -> bool:
        return not get_settings().feature_circuit_breakers or self.name in _entered()

    def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``func`` through the breaker; raises CircuitOpenError when it is open."""
        if self._passes_through():
            return func(*args, **kwargs)
        ticket = self._admit()
        for listener in self.listeners:
            with guarded(f"circuit breaker listener {listener!r}"):
                listener.before_call(self, func, *args, **kwargs)
        try:
            with _scope(self.name):
                result = func(*args, **kwargs)
        except BaseException as exc:
            self._settle(ticket, exc)
            raise
        self._settle(ticket, None)
        return result

    @contextlib.contextmanager
    def calling(self) -> Iterator[None]:
        """``with breaker.calling(): ...``: the block is the protected call."""
        if self._passes_through():
            yield
            return
        ticket = self._admit()
        try:
            with _scope(self.name):
                yield
        except BaseException as exc:
            self._settle(ticket, exc)
            raise
        self._settle(ticket, None)

    def call_async(self, func, *args, **kwargs):  # pragma: no cover - tornado only
        raise NotImplementedError("use call() or calling()")

    def _admit(self) -> _Ticket | None:
        try:
            verdict, state, failures, wait, transition = load_script("breaker_admit")(
                keys=[keys().breakers_status, _stats_key()],
                args=[self.name, self._now(), self.fail_max, self.reset_timeout, self.half_open_max_calls])
        except redis.RedisError as err:
            # Without its shared state the breaker cannot decide: let the call
            # through rather than turn a Redis hiccup into a dependency outage.
            log.warning("breaker %s: state unavailable, call let through: %s", self.name, err)
            return None
        if transition:
            self._report(STATE_OPEN, transition, {"failures": int(failures)})
        if verdict == "reject":
            raise CircuitOpenError(self.name, retry_after_sec=float(wait))
        return _Ticket(trial=verdict == "trial", failures=int(failures))

    def _settle(self, ticket: _Ticket | None, exc: BaseException | None) -> None:
        error = _failure_of(exc) if exc is not None else None
        if exc is not None and error is None:
            return  # says nothing about the dependency (a trial's slot frees after one reset timeout)
        failed = error is not None and self.is_system_error(error)
        for listener in self.listeners:
            with guarded(f"circuit breaker listener {listener!r}"):
                if failed and error is not None:
                    listener.failure(self, error)
                else:
                    listener.success(self)
        if ticket is None:
            return
        if not failed and not ticket.trial and ticket.failures == 0:
            return  # a closed breaker with nothing to reset: no round trip
        try:
            state, failures, transition, before = load_script("breaker_settle")(
                keys=[keys().breakers_status, _stats_key()],
                args=[self.name, self._now(), "failure" if failed else "success", "1" if ticket.trial else "0",
                      self.fail_max, self.reset_timeout])
        except redis.RedisError as err:
            log.warning("breaker %s: outcome not recorded: %s", self.name, err)
            return
        if transition:
            detail: dict[str, Any] = {"failures": int(failures)}
            if failed:
                detail["error"] = f"{type(error).__name__}: {error}"
            self._report(before, transition, detail)

    # -- transitions ---------------------------------------------------------------
    def _report(self, old: str, new: str, detail: dict[str, Any]) -> None:
        """Log, alert and tell the listeners about a transition this process made."""
        level = logging.WARNING if new == STATE_OPEN else logging.INFO
        log.log(level, "circuit breaker %s: %s -> %s %s", self.name, old, new, detail)
        for listener in self.listeners:
            with guarded(f"circuit breaker listener {listener!r}"):
                listener.state_change(self, _StateView(old), _StateView(new))  # type: ignore[arg-type]  # a view of it
        # one window per transition, so "closed" is not folded into the "opened" window
        alert_rules.breaker_state_changed(self.name, new, previous=old, failures=detail.get("failures"),
                                          reset_timeout_sec=self.reset_timeout, error=detail.get("error"))


# -- the process's breakers ---------------------------------------------------------
_registry: dict[str, Breaker] = {}
_registry_lock = threading.Lock()


def get_breaker(name: str, *, fail_max: int | None = None, reset_timeout_sec: float | None = None,
                half_open_max_calls: int | None = None,
                exclude: Iterable[type[BaseException] | Callable[[BaseException], bool]] = ()) -> Breaker:
    """The process's breaker called ``name``, created on first use; overrides given are applied.

    Every process that uses the name shares its state through Redis, so the
    overrides should be the same everywhere (declare them next to the code
    that calls the dependency).
    """
    with _registry_lock:
        breaker = _registry.get(name)
        if breaker is None:
            breaker = _registry[name] = Breaker(name)
    return breaker.configure(fail_max=fail_max, reset_timeout_sec=reset_timeout_sec,
                             half_open_max_calls=half_open_max_calls, exclude=exclude)


def circuit(name: str, **overrides: Any) -> Breaker:
    """Decorator and context factory: ``@circuit("payments-api")`` or ``with circuit("x").calling():``."""
    return get_breaker(name, **overrides)


def read_record(text: Any) -> dict[str, Any]:
    """A stored status record, or ``{"state": "malformed", "malformed": True, "problem", "raw"}``."""
    record, problem = decode(text, RECORD)
    if record is None:
        return {"state": "malformed", "malformed": True, "problem": problem, "raw": str(text)[:200]}
    return record


def status(name: str | None = None, *, client: redis.Redis | None = None) -> dict[str, dict[str, Any]]:
    """Breaker name -> status record, with ``half_open_in_sec`` for open breakers.

    A malformed record is ``{"state": "malformed", "malformed": True, "problem", "raw"}``.
    """
    client = client or get_redis()
    k = keys()
    if name is None:
        raw = client.hgetall(k.breakers_status)
    else:
        value = client.hget(k.breakers_status, name)
        raw = {name: value} if value is not None else {}
    now = time.time()
    records: dict[str, dict[str, Any]] = {}
    for breaker_name, text in sorted(raw.items()):
        record = read_record(text)
        if record.get("malformed"):
            records[str(breaker_name)] = record
            continue
        if record.get("state") == STATE_OPEN and record.get("opened_at") is not None:
            due = float(record["opened_at"]) + float(record.get("reset_timeout_sec") or 0)
            record["half_open_in_sec"] = round(max(0.0, due - now), 3)
        records[str(breaker_name)] = record
    return records


def stats(*, client: redis.Redis | None = None) -> dict[str, int]:
    """Counters of ``stats:breakers``: ``<name>:<event>`` -> count (a count that is not a number is left out)."""
    client = client or get_redis()
    counts: dict[str, int] = {}
    for name, value in client.hgetall(_stats_key()).items():
        count, problem = decode(value, INTEGER)
        if problem is None:
            counts[str(name)] = count
    return counts


def reset(name: str) -> str:
    """Close breaker ``name`` for the whole cluster; returns its previous state."""
    return get_breaker(name)._force(STATE_CLOSED)


# -- jobs --------------------------------------------------------------------------
def run_job(task, args, kwargs) -> Any:
    """Run a job's body: through its ``breaker`` when it has one; park it when refused."""
    if not get_settings().feature_circuit_breakers:
        return task.run(*args, **kwargs)
    try:
        if task.breaker:
            return get_breaker(task.breaker).call(task.run, *args, **kwargs)
        return task.run(*args, **kwargs)
    except CircuitOpenError as exc:
        park(task, args, kwargs, exc)


def park(task, args, kwargs, exc: CircuitOpenError) -> NoReturn:
    """Re-publish the running job to run when its breaker is due to half-open; raise ``Ignore``.

    The job keeps its id and retries count: an outage spends no retry and
    sends nothing to the dead-letter queue.
    """
    wait = exc.retry_after_sec if exc.retry_after_sec is not None else get_breaker(exc.breaker).reset_timeout
    delay = max(0.2, wait) + random.uniform(0, get_settings().breaker_park_jitter_sec)
    request = task.request
    with republishing("park"):  # the same publish, later
        task.signature_from_request(request, args, kwargs, countdown=delay,
                                    retries=request.retries or 0).apply_async()
    try:
        get_redis().hincrby(_stats_key(), f"{exc.breaker}:parked", 1)
    except redis.RedisError:  # the count is for views only
        pass
    log.info("job %s (%s) parked for %.1fs: circuit breaker %s is open",
             request.id, task.name, delay, exc.breaker)
    raise Ignore()
