"""Runs the benchmark: its own Redis, real workers, every configuration interleaved.

Configurations: plain Celery (``benchmarks.plain_app``: ``celery.Celery``
only, none of this project) without and with the Redis result backend, the
platform with every flag off, each feature on alone, and everything on.

Each run of a configuration gets a fresh worker (``celery -A <app> worker
-I benchmarks.jobs``, prefork pool of 2, late acks, prefetch 1; the platform
with the project's ``celeryconfig``) and a fresh producer process, both with
the configuration's environment, against an emptied Redis. Only one
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

__all__ = ["BASELINE", "EVERYTHING", "FLAGS_OFF", "PLAIN", "REQUIRED", "Config", "Plan", "configurations",
           "run_suite"]

ROOT = Path(__file__).resolve().parent.parent
PRODUCER_TIMEOUT_SEC = 600

PLAIN = "plain"                 # plain Celery, no result backend
BASELINE = "plain-results"      # plain Celery with the Redis result backend: every ratio's denominator
FLAGS_OFF = "flags-off"         # the platform with every FEATURE_* flag false
EVERYTHING = "all"              # the platform with every flag on (its defaults)
#: Configurations every invocation runs (``--configs`` adds single features).
REQUIRED = (PLAIN, BASELINE, FLAGS_OFF, EVERYTHING)
PLAIN_APP = "benchmarks.plain_app"


@dataclass(frozen=True)
class Config:
    """A named configuration: the platform with a set of feature flags, or plain Celery."""

    name: str
    flags: dict[str, bool] = field(default_factory=dict)
    plain: bool = False      # plain Celery (benchmarks.plain_app), none of this project
    results: bool = True     # plain Celery only: with the Redis result backend

    @property
    def app(self) -> str:
        """The module given to ``celery -A`` and imported by the producer."""
        return PLAIN_APP if self.plain else "tasks"

    def env(self) -> dict[str, str]:
        if self.plain:
            return {"PLAIN_CELERY_RESULTS": "true" if self.results else "false"}
        return {FEATURES[f]: "true" if on else "false" for f, on in self.flags.items()}


def configurations(names: list[str] | None = None) -> list[Config]:
    """Plain Celery without and with results, flags-off, each feature on alone, and everything on."""
    off = {f: False for f in FEATURES}
    configs = [Config(PLAIN, plain=True, results=False), Config(BASELINE, plain=True, results=True),
               Config(FLAGS_OFF, off)]
    configs += [Config(f, {**off, f: True}) for f in FEATURES]
    configs.append(Config(EVERYTHING, {f: True for f in FEATURES}))
    if names:
        wanted = set(names) | set(REQUIRED)
        unknown = wanted - {c.name for c in configs}
        if unknown:
            raise SystemExit(f"unknown configuration(s): {', '.join(sorted(unknown))}")
        configs = [c for c in configs if c.name in wanted]
    return configs


def by_name(configs: list[Config]) -> dict[str, Config]:
    return {c.name: c for c in configs}


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
        # 60 s: redis-py's default socket timeout (5 s) is short for FLUSHALL of the scale phase on a busy machine
        self.client = redis.Redis(port=self.server.port, decode_responses=True, socket_timeout=60)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.client is not None:
            self.client.close()
        self.server.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def env(self, config: Config, **extra: str) -> dict[str, str]:
        """The environment of a worker or producer running ``config``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FEATURE_", "PLAIN_CELERY_"))}
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

    def spawn(self, module: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        """Start ``python -m module args`` (collect its result with :meth:`collect`)."""
        return subprocess.Popen([sys.executable, "-m", module, *args], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)

    def collect(self, process: subprocess.Popen, module: str) -> dict:
        """Wait for a spawned ``python -m module`` and return the JSON it printed last."""
        try:
            stdout, stderr = process.communicate(timeout=PRODUCER_TIMEOUT_SEC)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        reported = json.loads(lines[-1]) if lines else {}
        if process.returncode != 0 or not lines or "error" in reported:
            raise RuntimeError(f"{module} exited {process.returncode}: {reported.get('error', '')}\n{stderr[-3000:]}")
        return reported

    def python(self, module: str, args: list[str], env: dict[str, str]) -> dict:
        """Run ``python -m module args`` and return the JSON it prints last."""
        return self.collect(self.spawn(module, args, env), module)

    def worker(self, config: Config, name: str) -> SubprocessWorker:
        """A worker of ``config`` (not started): the same command line for every configuration, its app."""
        worker = SubprocessWorker(self.log_dir, name=name, concurrency=2, pool="prefork", include=["benchmarks.jobs"],
                                  env=self.env(config), cwd=str(ROOT))
        worker.argv[worker.argv.index("-A") + 1] = config.app
        return worker

    def measure(self, config: Config, index: int) -> dict:
        """One run of ``config``: fresh Redis contents, worker and producer."""
        plan = self.plan
        self.client.flushall()
        env = self.env(config)
        worker = self.worker(config, f"bench{index}-{config.name}@bench")
        worker.start()
        try:
            worker.wait_ready(timeout=120)
            return self.python("benchmarks.producer", [
                "run", "--app", config.app, "--run-id", str(index), "--jobs", str(plan.jobs),
                "--latency-jobs", str(plan.latency_jobs), "--rate", str(plan.latency_rate),
                "--worker-pid", str(worker.pid), "--redis-pid", str(self.server.pid),
            ], env)
        except Exception as err:  # one failed run is reported, the suite goes on
            return {"error": f"{err}\nworker log tail:\n{worker.log()[-1500:]}"}
        finally:
            worker.stop()

    def submit_cost(self, config: Config, idempotency_key: bool) -> dict:
        self.client.flushall()
        args = ["submit", "--app", config.app, "--jobs", str(self.plan.submit_jobs)]
        args += ["--idempotency-key"] if idempotency_key else []
        try:
            return self.python("benchmarks.producer", args, self.env(config))
        except Exception as err:
            return {"error": str(err)}

    def scale(self) -> dict:
        self.client.flushall()
        plan = self.plan
        everything = by_name(configurations())[EVERYTHING]
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
        named = by_name(plan.configs)
        results.submit = {name: bench.submit_cost(named[name], False) for name in REQUIRED}
        results.submit[f"{EVERYTHING} + idempotency key"] = bench.submit_cost(named[EVERYTHING], True)
        _progress("submit costs measured")
        results.scale = bench.scale()
        _progress("scale figures measured")
    results.seconds = time.monotonic() - started
    return results
