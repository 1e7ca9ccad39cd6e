"""Runs the benchmark: its own Redis, real workers, every configuration interleaved.

Each run of a configuration gets a fresh worker (``celery -A tasks worker
-I benchmarks.jobs``, prefork pool of 2, the project's ``celeryconfig``: late
acks, prefetch 1) and a fresh producer process, both with the configuration's
feature flags in their environment, against an emptied Redis. Only one
configuration's processes exist at a time, so Redis's counters belong to it.
Runs go round the configurations (A B C ... A B C ...), so that a machine
getting busier or quieter affects every configuration alike.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from resilience.embedded import RedisServerProcess, find_redis_binary
from resilience.settings import FEATURES, load_settings
from resilience.testing import SubprocessWorker

__all__ = ["Config", "Plan", "configurations", "run_suite"]

ROOT = Path(__file__).resolve().parent.parent
PRODUCER_TIMEOUT_SEC = 600


@dataclass(frozen=True)
class Config:
    """A named set of feature flags."""

    name: str
    flags: dict[str, bool]

    def env(self) -> dict[str, str]:
        return {FEATURES[f]: "true" if on else "false" for f, on in self.flags.items()}


def configurations(names: list[str] | None = None) -> list[Config]:
    """bare (every flag off), each feature on alone, and everything on."""
    off = {f: False for f in FEATURES}
    configs = [Config("bare", off)]
    configs += [Config(f, {**off, f: True}) for f in FEATURES]
    configs.append(Config("all", {f: True for f in FEATURES}))
    if names:
        wanted = set(names) | {"bare", "all"}
        unknown = wanted - {c.name for c in configs}
        if unknown:
            raise SystemExit(f"unknown configuration(s): {', '.join(sorted(unknown))}")
        configs = [c for c in configs if c.name in wanted]
    return configs


@dataclass
class Plan:
    """What to run: sizes of every phase."""

    runs: int = 3
    jobs: int = 600
    latency_jobs: int = 100
    latency_rate: float = 100.0
    submit_jobs: int = 500
    sweep_entries: int = 10_000
    dead_letters: int = 100_000
    timeline_entries: int = 50_000
    configs: list[Config] = field(default_factory=configurations)
    aof: bool = True
    save: str | None = None


@dataclass
class Results:
    """Raw results, per configuration a list of runs (failed runs hold ``error``)."""

    runs: dict[str, list[dict]] = field(default_factory=dict)
    submit: dict[str, dict] = field(default_factory=dict)
    scale: dict = field(default_factory=dict)
    redis_version: str = ""
    seconds: float = 0.0


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Bench:
    """The benchmark's redis-server, data dir and process environment."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.tmp = Path(tempfile.mkdtemp(prefix="resilience-bench-"))
        self.log_dir = self.tmp / "logs"
        self.server = RedisServerProcess(binary=find_redis_binary(load_settings()), directory=self.tmp / "redis",
                                         appendonly=plan.aof)
        self.client: redis.Redis | None = None

    def __enter__(self) -> Bench:
        self.server.start()
        self.client = redis.Redis(port=self.server.port, decode_responses=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.client is not None:
            self.client.close()
        self.server.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def env(self, config: Config, **extra: str) -> dict[str, str]:
        """The environment of a worker or producer running ``config``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEATURE_")}
        env.update({
            "REDIS_URL": self.server.url,
            "RESILIENCE_DATA_DIR": str(self.tmp / "data"),
            "RESILIENCE_KEY_PREFIX": "",
            "ALERT_WEBHOOK_URL": "",
            "SENTRY_DSN": "",
            "HEALTH_PORT": "0",
            # a machine shared with other work can stall a process for seconds:
            # a stall should show as a slow run, not end it with a socket timeout
            "REDIS_SOCKET_TIMEOUT_SEC": "30",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        })
        env.update(config.env())
        env.update(extra)
        return env

    def python(self, module: str, args: list[str], env: dict[str, str]) -> dict:
        """Run ``python -m module args`` and return the JSON it prints last."""
        done = subprocess.run([sys.executable, "-m", module, *args], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=PRODUCER_TIMEOUT_SEC, stdin=subprocess.DEVNULL)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        reported = json.loads(lines[-1]) if lines else {}
        if done.returncode != 0 or not lines or "error" in reported:
            raise RuntimeError(f"{module} exited {done.returncode}: {reported.get('error', '')}\n{done.stderr[-3000:]}")
        return reported

    def measure(self, config: Config, index: int) -> dict:
        """One run of ``config``: fresh Redis contents, worker and producer."""
        plan = self.plan
        self.client.flushall()
        env = self.env(config)
        worker = SubprocessWorker(self.log_dir, name=f"bench{index}-{config.name}@bench", concurrency=2,
                                  pool="prefork", include=["benchmarks.jobs"], env=env, cwd=str(ROOT))
        worker.start()
        try:
            worker.wait_ready(timeout=120)
            return self.python("benchmarks.producer", [
                "run", "--run-id", str(index), "--jobs", str(plan.jobs), "--latency-jobs", str(plan.latency_jobs),
                "--rate", str(plan.latency_rate), "--worker-pid", str(worker.pid),
                "--redis-pid", str(self.server.pid),
            ], env)
        except Exception as err:  # one failed run is reported, the suite goes on
            return {"error": f"{err}\nworker log tail:\n{worker.log()[-1500:]}"}
        finally:
            worker.stop()

    def submit_cost(self, config: Config, idempotency_key: bool) -> dict:
        self.client.flushall()
        args = ["submit", "--jobs", str(self.plan.submit_jobs)] + (["--idempotency-key"] if idempotency_key else [])
        try:
            return self.python("benchmarks.producer", args, self.env(config))
        except Exception as err:
            return {"error": str(err)}

    def scale(self) -> dict:
        self.client.flushall()
        plan = self.plan
        everything = configurations()[-1]
        env = self.env(everything, DEAD_LETTER_MAX_ENTRIES=str(plan.dead_letters),
                       ERROR_TIMELINE_MAX_ENTRIES=str(plan.timeline_entries))
        try:
            return self.python("benchmarks.scale", ["--sweep-entries", str(plan.sweep_entries),
                                                    "--dead-letters", str(plan.dead_letters),
                                                    "--timeline-entries", str(plan.timeline_entries)], env)
        except Exception as err:
            return {"error": str(err)}


def run_suite(plan: Plan) -> Results:
    """Every run of every configuration, the submit costs and the scale figures."""
    results = Results(runs={c.name: [] for c in plan.configs})
    started = time.monotonic()
    with Bench(plan) as bench:
        results.redis_version = bench.client.info("server").get("redis_version", "")
        for run in range(plan.runs):
            for config in plan.configs:
                outcome = bench.measure(config, run)
                results.runs[config.name].append(outcome)
                if "error" in outcome:
                    _progress(f"run {run + 1}/{plan.runs} {config.name}: FAILED {outcome['error'][:300]}")
                else:
                    _progress(f"run {run + 1}/{plan.runs} {config.name}: "
                              f"{outcome['jobs'] / outcome['end_to_end_sec']:.0f} jobs/s")
        bare, everything = plan.configs[0], plan.configs[-1]
        results.submit = {
            "bare": bench.submit_cost(bare, False),
            "all": bench.submit_cost(everything, False),
            "all + idempotency key": bench.submit_cost(everything, True),
        }
        _progress("submit costs measured")
        results.scale = bench.scale()
        _progress("scale figures measured")
    results.seconds = time.monotonic() - started
    return results
