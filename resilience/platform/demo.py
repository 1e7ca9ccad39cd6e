"""The live demonstration behind ``resilience demo``.

It starts the platform (:class:`~resilience.platform.supervisor.Platform`, logs to
``<data dir>/logs/``), submits a mixed workload, and draws the status view with
what the workload has seen so far. Each feature adds its part of the workload
here as it lands.
"""

from __future__ import annotations

import itertools
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from resilience.core.runtime import BUNDLED_APP, load_app
from resilience.core.settings import masked_url
from resilience.platform.supervisor import Platform

#: Hash of the demo jobs' run counts (``demo:executions``, under the key prefix).
DEMO_COUNTS = "demo:executions"


class _DemoJobs:
    """The demo's jobs, by name, on the app that runs them (the bundled app's ``demo.*``)."""

    def __init__(self, app: Any) -> None:
        self._app = app

    def __getattr__(self, name: str) -> Any:
        return self._app.tasks[f"demo.{name}"]


def hot_path_line(app: Any) -> str:
    """How a job's state writes, result subscription and Flower events reach Redis (the hot path)."""
    from resilience.core.settings import settings_for
    from resilience.transport.resultbackend import TrackedRedisBackend

    settings = settings_for(app)
    ours = isinstance(app.backend, TrackedRedisBackend)
    folded = ours and (settings.feature_idempotency or settings.feature_stuck_jobs)
    interval = settings.worker_event_flush_interval_sec
    events = ("task events off" if not app.conf.worker_send_task_events
              else f"task events for Flower batched every {interval:g}s" if interval
              else "task events published every loop tick")
    return "  |  ".join([
        "hot path: STARTED and results stored by the execution guard's steps" if folded
        else "hot path: Celery stores STARTED and results",
        "result subscription when a caller waits" if ours else "result subscription at every submit",
        events,
        f"task-sent events {'on' if app.conf.task_send_sent_event else 'off'}",
    ])


@dataclass
class Demo:
    duration: float | None = None
    rate: float = 4.0
    flower: bool = True
    submitted: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    outage_after: float | None = None
    outage_note: str = ""
    ha: bool = False
    failover_after: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    alert_receiver: Any = None
    app_spec: str = BUNDLED_APP
    app: Any = None

    def workload(self) -> None:
        """Submit the mix until stopped: each kind shows a feature."""
        demo = _DemoJobs(self.app)
        interval = 1.0 / max(self.rate, 0.1)
        from resilience.testing.flakyapi import FlakyAPI

        api = FlakyAPI().start()  # the "external API": fails for a while, then recovers
        api.fail_between(time.time() + 15, time.time() + 40)
        for n in itertools.count(1):
            if self._stop.is_set():
                return
            try:
                demo.ok.delay(n)
                self.submitted["ok"] += 1
                if n % 3 == 0:
                    demo.flaky.delay(n, 0.5)
                    self.submitted["flaky (retries with backoff)"] += 1
                if n % 5 == 0:
                    order = f"order-{n // 5}"
                    for _ in range(3):  # the same payment submitted three times
                        demo.charge.delay(order, 1000 + n)
                    self.submitted["charge x3 (duplicates absorbed)"] += 1
                if n % 10 == 0:
                    demo.permanent.delay(n)
                    self.submitted["permanent (dead-lettered)"] += 1
                if n % 8 == 0:  # waits durably in jobs:scheduled ("waiting retries") until due
                    demo.ok.apply_async((n,), countdown=20)
                    self.submitted["ok in 20 s (durable countdown)"] += 1
                if n % 240 == 0:
                    demo.stuck.delay(n)
                    self.submitted["stuck (stopped by the sweep)"] += 1
                if n % 2 == 0:
                    demo.call_api.delay(api.url, n)
                    self.submitted["call_api (breaker opens, closes)"] += 1
            except Exception as exc:  # keep the demo going through outages
                self.errors[type(exc).__name__] += 1
            self._stop.wait(interval)

    def executions(self) -> dict[str, int]:
        from resilience.core.keys import keys
        from resilience.core.store import get_redis

        return {str(k): int(v) for k, v in get_redis().hgetall(keys().custom(DEMO_COUNTS)).items()}

    def producer_line(self) -> str:
        """This process's side of a Redis outage: broker connection and the publish spool."""
        from resilience.core import connection
        from resilience.outages import spool

        broker = connection.state().get("broker", {})
        state = "up" if broker.get("up", True) else "DOWN"
        lost = sum(self.errors.values())
        return (f"producer: broker {state} (reconnects {broker.get('reconnects', 0)})  |  "
                f"spooled jobs waiting for Redis: {spool.count()}  |  submit errors: {lost}"
                + (f"  |  {self.outage_note}" if self.outage_note else ""))

    def outage(self, platform: Platform, after: float, down_for: float = 5.0) -> None:
        """Stop the embedded Redis for ``down_for`` seconds: jobs spool, workers reconnect."""
        if self._stop.wait(after) or platform.settings.redis_url:
            return
        self.outage_note = f"Redis stopped for {down_for:.0f}s (--outage-after)"
        platform.bounce_embedded_redis(down_for, wait=self._stop.wait)
        self.outage_note = "Redis back: spool flushing, workers reconnecting"

    def failover(self, platform: Platform, after: float) -> None:
        """SIGKILL the primary of the local Sentinel topology; Sentinel promotes a replica."""
        if self._stop.wait(after) or platform.topology is None:
            return
        self.outage_note = f"primary {platform.topology.primary().address} killed (--failover-after)"
        try:
            old, new, took = platform.fail_over()
        except Exception as exc:  # noqa: BLE001 - the demo goes on; the status view shows the topology
            self.outage_note = f"failover not completed: {exc}"
            return
        self.outage_note = (f"failover: {new} promoted {took:.1f}s after {old} was killed; "
                            f"{old} is back as a replica")

    def view(self, platform: Platform, started: float):
        from resilience.probes.status import collect, render

        runs = self.executions()
        table = Table(title="Demo workload")
        table.add_column("submitted")
        table.add_column("count", justify="right")
        for kind, count in sorted(self.submitted.items()):
            table.add_row(kind, str(count))
        done = Table(title="Job bodies run")
        done.add_column("job")
        done.add_column("runs", justify="right")
        for kind, count in sorted(runs.items()):
            done.add_row(kind, str(count))
        from resilience.jobs import idempotency

        for counter, count in idempotency.counters().items():  # duplicates absorbed by the guards
            if count:
                done.add_row(f"idempotency: {counter.replace('_', ' ')}", str(count))
        header = (f"celery-resilience demo  |  up {time.monotonic() - started:.0f}s  |  "
                  f"Redis {masked_url(platform.redis_url or '')}"
                  + (f"  |  Flower http://127.0.0.1:{platform.settings.flower_port} "
                     f"({platform.flower_login_hint()})" if platform.flower_credentials else "")
                  + "  |  Ctrl-C stops")
        parts: list[Any] = [Panel(header), Panel(self.producer_line() + "\n" + hot_path_line(self.app)), table,
                            done, render(collect(self.app))]
        if self.alert_receiver is not None:
            from resilience.testing.webhook_receiver import render_alerts

            parts.append(render_alerts(self.alert_receiver))
        return Group(*parts)

    def run(self) -> None:
        from resilience.testing.webhook_receiver import start_demo_receiver

        self.alert_receiver = start_demo_receiver()  # alerts shown live when no webhook is configured
        platform = Platform(app_spec=self.app_spec, flower=self.flower, log_to_files=True, ha=self.ha).start()
        # Import the app and its job modules before the workload thread uses them: two
        # threads importing one module at once deadlock on the module lock.
        self.app = load_app(self.app_spec)
        self.app.loader.import_default_modules()

        console = Console()
        started = time.monotonic()
        feeder = threading.Thread(target=self.workload, name="demo-workload", daemon=True)
        previous = {sig: signal.signal(sig, lambda *_: self._stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            feeder.start()
            if self.outage_after is not None:
                threading.Thread(target=self.outage, args=(platform, self.outage_after), name="demo-outage",
                                 daemon=True).start()
            if self.failover_after is not None:
                threading.Thread(target=self.failover, args=(platform, self.failover_after), name="demo-failover",
                                 daemon=True).start()
            with Live(self.view(platform, started), console=console, refresh_per_second=2) as live:
                while not self._stop.is_set():
                    platform.supervise_once()
                    if self.duration is not None and time.monotonic() - started >= self.duration:
                        break
                    self._stop.wait(1.0)
                    try:
                        live.update(self.view(platform, started))
                    except Exception as exc:  # Redis briefly away: keep the last view
                        console.log(f"status unavailable: {exc}")
        finally:
            self._stop.set()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            runs = {}
            try:
                runs = self.executions()
            except Exception:
                pass
            console.print("stopping the platform ...")
            platform.stop()
            total = sum(v for k, v in runs.items() if k in ("ok", "flaky_ok", "charge"))
            console.print(f"demo finished: {total} jobs completed; bodies run: {dict(sorted(runs.items()))}")
