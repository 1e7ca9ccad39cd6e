"""Where a job's cost goes: worker CPU per job by component, Redis round trips per job by step.

    .venv/bin/pip install py-spy          # the sampling profiler; not a dependency of the project
    .venv/bin/python -m benchmarks.profile_job [--configs plain-results,all] [--jobs 2000] [--rounds 3]
        [--monitor-jobs 300] [--rate 200] [--save raw.json] [--keep DIR]

For each configuration (the names of ``make bench``), on the suite's own
redis-server (AOF on) and a real worker with the suite's command line
(``-c 2 -P prefork``, late acks, prefetch 1), three kinds of window run, each
a producer submitting jobs as fast as it can (``benchmarks.producer run``: 20
warm-up jobs, the jobs, one latency job). CPU windows go round the
configurations ``--rounds`` times (A B A B ...), a fresh worker each, so a
machine getting busier or quieter affects each alike; the figures are the
medians. Then each configuration gets one worker for its sampling and its
MONITOR window:

1. **CPU per job** (the CPU windows), nothing attached: user and system CPU of the worker's main
   process and of its pool processes from ``/proc/<pid>/stat``, divided by the
   jobs of the window.
2. **CPU by component**: ``py-spy record --subprocesses --gil`` samples the main
   and pool processes. Only samples of threads holding the GIL count, which
   is what a thread running Python (or C code called from it) looks like; a
   thread waiting on a socket, a pipe, a lock or ``epoll`` has released it.
   Each sample goes to the first component in :data:`COMPONENTS` whose rule
   matches a frame of its stack, so work is charged to what caused it (a JSON
   encoding inside the result write is the result write; JSON elsewhere is
   "json"). A component's share of a process's samples times that process's
   *user* CPU per job (the CPU windows) gives its microseconds per job. The kernel
   time (system CPU: socket and pipe I/O, ``epoll``) runs with the GIL
   released, so it is reported on its own line per process, and divided by
   the round trips the process makes, as a rough cost of one request.
3. **Round trips by step**: ``MONITOR`` records every command. A client's
   ``MULTI`` ... ``EXEC`` is one request (redis-py and kombu send a
   transaction in one write); commands run by Lua scripts are not requests.
   Each request is assigned to the process that sent it (the client port
   matched to the socket inodes of the producer, the worker's main process and
   its pool processes) and to a step by :func:`step_of`. MONITOR slows Redis,
   which is why this window is separate.

Sampling is statistical (about ``--rate`` samples per second per busy
thread) and py-spy pauses the processes it samples, so the sampling window runs slower
than the CPU windows; its shares are used, not its times. Figures are for a no-op
job on a machine that may be shared: compare configurations measured in the
same invocation. Output: the tables on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import select
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import redis

from benchmarks.probes import process_tree
from benchmarks.report import table
from benchmarks.suite import BASELINE, EVERYTHING, ROOT, Bench, Config, Plan, by_name, configurations

__all__ = ["COMPONENTS", "component_of", "step_of", "Request", "main"]

WARMUP_JOBS, LATENCY_JOBS = 20, 1

#: (component, rule): the first rule that matches any frame of a sample's stack
#: names its component. A rule is a substring of py-spy's frame text,
#: ``function (path:line)``. Order matters: what causes work comes before the
#: generic pieces it uses (json, redis-py, kombu), and the wrappers every
#: stack passes through (the event loop, kombu's read of a message, billiard's
#: work loop, Celery's trace) come last. Platform code not named here is
#: charged to its module (``platform: <module>``, the innermost one).
COMPONENTS: list[tuple[str, tuple[str, ...]]] = [
    ("the job body (INCR)", ("(benchmarks/jobs.py",)),
    ("execution guard scripts", ("(resilience/jobs/executions.py",)),
    ("result: SUCCESS write", ("mark_as_done (",)),
    ("result: failure or retry write", ("mark_as_failure (", "mark_as_retry (")),
    # Celery's trace calls store_result directly for the STARTED state only
    ("result: STARTED write", ("store_result (",)),
    ("metrics", ("(resilience/observability/metrics.py",)),
    ("error tracking", ("(resilience/observability/tracking.py", "(resilience/observability/sentry.py")),
    ("breakers", ("(resilience/breakers/breaker.py",)),
    ("heartbeat", ("(resilience/recovery/heartbeat.py",)),
    ("health probe and server", ("(resilience/probes/health.py", "(resilience/probes/healthmonitor.py",
                                 "(resilience/probes/healthserver.py")),
    ("scheduler poll", ("(resilience/jobs/scheduler.py",)),
    ("kombu: a new redis-py client per operation", ("Channel._create_client (",)),
    ("delivery bookkeeping (unacked)", ("QoS.append (",)),
    ("ack", ("QoS.ack (", "Message.ack (", "basic_ack (")),
    ("task events", ("(celery/events/",)),
    (PLATFORM := "platform", ("(resilience/", "(tasks/")),
    ("logging", ("(logging/",)),
    ("json", ("(json/", "(kombu/utils/json.py")),
    ("Celery: request handling", ("(celery/worker/strategy.py", "(celery/worker/request.py",
                                  "on_task_received (", "(celery/app/amqp.py", "(celery/worker/state.py")),
    ("billiard IPC (job to pool, result back)", ("(celery/concurrency/", "(billiard/connection.py",
                                                 "(billiard/queues.py", "(billiard/common.py", "send_offset (",
                                                 "(billiard/reduction.py", "(pickle")),
    ("Celery: trace in the pool", ("(celery/app/trace.py", "(celery/utils/dispatch/", "(celery/app/task.py")),
    ("event loop tick: kombu's poll set-up", ("on_poll_start (",)),
    ("kombu: fetch (BRPOP) and parse", ("_brpop_read (", "_brpop_start (", "Channel._deliver (",
                                        "MultiChannelPoller", "(kombu/message.py", "(kombu/messaging.py")),
    ("event loop", ("(kombu/asynchronous/", "(kombu/utils/eventio.py")),
    ("redis-py (other)", ("(redis/",)),
    ("kombu (other)", ("(kombu/",)),
    ("celery (other)", ("(celery/",)),
    ("billiard (other)", ("(billiard/",)),
]
OTHER = "other"

#: The loop a process's stacks start from: the frames above it (the pool
#: process's fork inside the main process's start-up, the worker's boot) are
#: in every stack and say nothing of where the time goes.
LOOPS = ("Worker.workloop (", "asynloop (", "synloop (")


def component_of(frames: list[str]) -> str:
    """The component a sample's stack (outermost frame first) belongs to (see :data:`COMPONENTS`)."""
    loops = [i for i, frame in enumerate(frames) if frame.startswith(LOOPS)]
    if loops:
        frames = frames[loops[-1]:]
    for component, rules in COMPONENTS:
        matching = [frame for frame in frames if any(rule in frame for rule in rules)]
        if matching:
            if component == PLATFORM:
                module = matching[-1].rsplit("(", 1)[1].split(":", 1)[0]
                return f"platform: {module}"
            return component
    return OTHER


@dataclass
class Request:
    """One request a client sent: a command, or a MULTI ... EXEC transaction of commands."""

    role: str                       # producer, main, pool, or other
    commands: list[list[str]]       # each command: name (upper case) then its first arguments

    @property
    def names(self) -> list[str]:
        return [c[0] for c in self.commands if c[0] not in ("MULTI", "EXEC")]


def _key(command: list[str]) -> str:
    return command[1] if len(command) > 1 else ""


def step_of(request: Request, scripts: dict[str, str]) -> str:
    """The step of a job's life (or the background activity) a request belongs to."""
    names = request.names
    first = next((c for c in request.commands if c[0] not in ("MULTI", "EXEC")), request.commands[0])
    name, key = first[0], _key(first)
    if name == "EVALSHA":
        script = scripts.get(key, f"script {key[:8]}")
        if script.startswith("kombu"):
            return "kombu: periodic binding and restore scripts"
        return {"job_start": "execution guard: job_start.lua", "job_finish": "execution guard: job_finish.lua",
                "idempotency_claim": "submit: idempotency claim script"}.get(script, f"script {script}")
    if name == "LPUSH" and request.role == "producer":
        return "submit: LPUSH the message"
    if name == "PUBLISH" and key.endswith("/task.sent"):
        return "submit: task-sent event (PUBLISH)"
    if name in ("SUBSCRIBE", "UNSUBSCRIBE") and key.startswith("celery-task-meta-"):
        return f"submit: result {name.lower()} (per delay())"
    if name == "BRPOP":
        return "fetch: BRPOP"
    if names[:2] == ["ZADD", "HSET"] and key == "unacked_index":
        return "delivery: unacked bookkeeping (MULTI ZADD HSET EXEC)"
    if names[:2] == ["ZREM", "HDEL"] and key == "unacked_index":
        return "ack: MULTI ZREM HDEL EXEC"
    if name == "PUBLISH" and "/task." in key:
        return "task events for Flower (PUBLISH, batched)"
    if name == "PUBLISH" and key.endswith("/worker.heartbeat"):
        return "worker-heartbeat event (every 2 s)"
    if name == "GET" and key.startswith("celery-task-meta-"):
        return "result: GET before each state write"
    if names[:2] == ["SETEX", "PUBLISH"] and key.startswith("celery-task-meta-"):
        status = " ".join(first[2:])
        for state in ("STARTED", "SUCCESS", "FAILURE", "RETRY"):
            if f'"{state}"' in status:
                return f"result: {state} write (MULTI SETEX PUBLISH EXEC)"
        return "result: write (MULTI SETEX PUBLISH EXEC)"
    if name in ("INCRBY", "RPUSH") and key.startswith("bench:"):
        return "the job body (INCRBY)"
    if key.startswith(("workers:", "worker:")) or "heartbeat" in key:
        return "platform worker heartbeat"
    if key.startswith("jobs:scheduled"):
        return "scheduler poll"
    return f"{request.role}: {' '.join(names) or name}"


# -- collecting ------------------------------------------------------------------------------------

def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = fd.readlink().as_posix()
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def _local_ports() -> dict[str, int]:
    """Socket inode -> local TCP port, from /proc/net/tcp{,6}."""
    ports = {}
    for table_path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table_path).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            ports[fields[9]] = int(fields[1].rsplit(":", 1)[1], 16)
    return ports


class Roles(threading.Thread):
    """Keeps a map of client port -> role (producer, main, pool) while a window runs."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.pids: dict[str, list[int]] = {}
        self.ports: dict[int, str] = {}
        self.done = threading.Event()

    def scan(self) -> None:
        by_inode = _local_ports()
        for role, pids in list(self.pids.items()):
            for pid in pids:
                for inode in _socket_inodes(pid):
                    if inode in by_inode:
                        self.ports[by_inode[inode]] = role

    def run(self) -> None:
        while not self.done.wait(0.2):
            self.scan()


class Monitor(threading.Thread):
    """Every request clients send, as MONITOR reports it (Lua's commands left out)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.raw: list[tuple[int, list[str]]] = []
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.own_port = 0

    def run(self) -> None:
        client = redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=None)
        with client.monitor() as monitor:
            self.own_port = monitor.connection._sock.getsockname()[1]
            self.ready.set()
            for event in monitor.listen():
                if self.stopping.is_set():
                    return
                if event.get("client_type") == "lua" or not event.get("client_port"):
                    continue
                self.raw.append((int(event["client_port"]), _split(event.get("command", ""))))

    def stop(self, client: redis.Redis) -> None:
        self.stopping.set()
        client.ping()  # one more command wakes the listener up, and it leaves
        self.join(10)


def _split(text: str, limit: int = 4) -> list[str]:
    parts = text.split(" ", limit)
    parts[0] = parts[0].upper()
    return parts


def requests_of(raw: list[tuple[int, list[str]]], roles: dict[int, str], ignore: set[int]) -> list[Request]:
    """Group MULTI ... EXEC per connection into one request; name each sender's role."""
    open_multi: dict[int, list[list[str]]] = {}
    found = []
    for port, command in raw:
        if port in ignore:
            continue
        role = roles.get(port, "other")
        if command[0] == "MULTI":
            open_multi[port] = [command]
        elif port in open_multi:
            open_multi[port].append(command)
            if command[0] in ("EXEC", "DISCARD"):
                found.append(Request(role, open_multi.pop(port)))
        else:
            found.append(Request(role, [command]))
    return found


def script_names() -> dict[str, str]:
    """sha1 -> name of the platform's Lua scripts (kombu's own are named ``kombu ...``)."""
    from resilience.store import script_source

    names = {}
    for path in (ROOT / "resilience" / "core" / "lua").glob("[!_]*.lua"):  # _<name>.lua: fragments, not scripts
        names[hashlib.sha1(script_source(path.stem).encode()).hexdigest()] = path.stem
    return names


def _cpu(pid: int) -> tuple[float, float]:
    from benchmarks.probes import _TICKS, _stat_fields

    fields = _stat_fields(pid)
    return (int(fields[11]) / _TICKS, int(fields[12]) / _TICKS) if fields else (0.0, 0.0)


def cpu_by_role(worker_pid: int) -> dict[str, list[float]]:
    """{"main": [user, system], "pool": [user, system]} CPU seconds so far."""
    main_user, main_sys = _cpu(worker_pid)
    pool = [0.0, 0.0]
    for pid in process_tree(worker_pid)[1:]:
        user, system = _cpu(pid)
        pool[0] += user
        pool[1] += system
    return {"main": [main_user, main_sys], "pool": pool}


@dataclass
class Profile:
    """What one configuration's three windows measured."""

    name: str
    jobs: int = 0
    cpu_rounds: list[dict[str, list[float]]] = field(default_factory=list)  # per round: role -> [user, system]
    cpu_us: dict[str, list[float]] = field(default_factory=dict)       # role -> median [user, system] us per job
    samples: dict[str, dict[str, int]] = field(default_factory=dict)   # role -> component -> samples
    round_trips: dict[str, float] = field(default_factory=dict)        # step -> per job
    round_trips_by_role: dict[str, float] = field(default_factory=dict)
    error: str = ""


class Profiler:
    def __init__(self, bench: Bench, options: argparse.Namespace) -> None:
        self.bench, self.options = bench, options
        self.scripts = script_names()

    def _producer(self, config: Config, worker, run_id: str, jobs: int) -> subprocess.Popen:
        return self.bench.spawn("benchmarks.producer", [
            "run", "--app", config.app, "--run-id", run_id, "--jobs", str(jobs), "--latency-jobs", str(LATENCY_JOBS),
            "--warmup", str(WARMUP_JOBS), "--worker-pid", str(worker.pid)], self.bench.env(config))

    def _with_worker(self, config: Config, name: str, result: Profile, windows) -> None:
        self.bench.client.flushall()
        worker = self.bench.worker(config, f"{name}-{config.name}@bench")
        worker.start()
        try:
            worker.wait_ready(timeout=120)
            for window in windows:
                window(config, worker, result)
        except Exception as err:  # reported, the other configurations go on
            result.error = f"{err}\nworker log tail:\n{worker.log()[-1500:]}"
        finally:
            worker.stop()

    def run(self, configs: list[Config]) -> list[Profile]:
        """CPU windows interleaved over ``--rounds`` (A B A B ...), then sampling and MONITOR per configuration."""
        profiles = {c.name: Profile(c.name) for c in configs}
        for round_ in range(self.options.rounds):
            for config in configs:
                self._with_worker(config, f"cpu{round_}", profiles[config.name], [self._cpu_window])
        for config in configs:
            self._with_worker(config, "profile", profiles[config.name], [self._sample_window, self._monitor_window])
        for profile in profiles.values():
            rounds = profile.cpu_rounds
            if rounds:
                profile.cpu_us = {role: [statistics.median(r[role][i] for r in rounds) for i in (0, 1)]
                                  for role in rounds[0]}
        return list(profiles.values())

    def _cpu_window(self, config: Config, worker, result: Profile) -> None:
        jobs = self.options.jobs
        before = cpu_by_role(worker.pid)
        self.bench.collect(self._producer(config, worker, "cpu", jobs), "benchmarks.producer")
        after = cpu_by_role(worker.pid)
        total = jobs + WARMUP_JOBS + LATENCY_JOBS
        result.jobs = total
        result.cpu_rounds.append({role: [(after[role][i] - before[role][i]) / total * 1e6 for i in (0, 1)]
                                  for role in after})
        _progress(f"{config.name}: CPU window {len(result.cpu_rounds)} done ({total} jobs)")

    def _sample_window(self, config: Config, worker, result: Profile) -> None:
        out = self.bench.tmp / f"py-spy-{config.name}.txt"
        spy = subprocess.Popen([py_spy(), "record", "--pid", str(worker.pid), "--subprocesses", "--gil", "--rate",
                                str(self.options.rate), "--format", "raw", "--output", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            self._wait_for_first_sample(spy)
            self.bench.collect(self._producer(config, worker, "spy", self.options.jobs), "benchmarks.producer")
        finally:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file when interrupted
            try:
                said, _ = spy.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                spy.kill()
                said, _ = spy.communicate()
        if not out.exists():
            raise RuntimeError(f"py-spy wrote nothing: {said[-500:]}")
        result.samples = samples_by_component(out.read_text())
        if self.options.keep:
            Path(self.options.keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(out, Path(self.options.keep) / out.name)
        _progress(f"{config.name}: sampling window done")

    @staticmethod
    def _wait_for_first_sample(spy: subprocess.Popen, timeout: float = 60.0) -> None:
        """Wait until py-spy says it samples ("py-spy> Sampling process ..." on its output)."""
        deadline = time.monotonic() + timeout
        seen = ""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([spy.stdout], [], [], 0.5)
            if ready:
                line = spy.stdout.readline()
                seen += line
                if "Sampling process" in line:
                    return
                if not line:  # py-spy exited
                    break
        raise RuntimeError(f"py-spy did not start sampling: {seen[-500:]}")

    def _monitor_window(self, config: Config, worker, result: Profile) -> None:
        monitor = Monitor(self.bench.server.url)
        monitor.start()
        if not monitor.ready.wait(30):
            raise RuntimeError("MONITOR did not start")
        roles = Roles()
        roles.pids = {"main": [worker.pid], "pool": process_tree(worker.pid)[1:]}
        roles.scan()
        roles.start()
        jobs = self.options.monitor_jobs
        producer = self._producer(config, worker, "monitor", jobs)
        roles.pids["producer"] = [producer.pid]
        try:
            self.bench.collect(producer, "benchmarks.producer")
        finally:
            roles.done.set()
            roles.join(5)
            monitor.stop(self.bench.client)
        # the producer's measuring connection (INFO) and its waits are the measuring's, not the job's
        found = requests_of(monitor.raw, roles.ports, {monitor.own_port})
        found = [r for r in found if not (r.role == "producer" and r.names[:1] in (["INFO"], ["BLPOP"], ["LRANGE"]))]
        total = jobs + WARMUP_JOBS + LATENCY_JOBS
        steps: collections.Counter[str] = collections.Counter(step_of(r, self.scripts) for r in found)
        result.round_trips = {step: n / total for step, n in steps.items()}
        by_role: collections.Counter[str] = collections.Counter(r.role for r in found)
        result.round_trips_by_role = {role: n / total for role, n in by_role.items()}
        _progress(f"{config.name}: MONITOR window done ({len(found)} requests)")


def py_spy() -> str:
    """The py-spy executable: on PATH, or next to this interpreter (a virtualenv's bin)."""
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy not found: install it with `.venv/bin/pip install py-spy` (it needs ptrace: root, "
                         "or kernel.yama.ptrace_scope=0)")
    return found


def samples_by_component(raw: str) -> dict[str, dict[str, int]]:
    """py-spy's raw output (one ``frame;frame;... count`` line per stack) -> role -> component -> samples."""
    counts: dict[str, collections.Counter[str]] = {"main": collections.Counter(), "pool": collections.Counter()}
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        processes = [f for f in frames if f.startswith("process ")]
        role = "main" if len(processes) <= 1 else "pool"
        counts[role][component_of([f for f in frames if not f.startswith(("process ", "thread "))])] += int(n)
    return {role: dict(c) for role, c in counts.items()}


# -- report ----------------------------------------------------------------------------------------

def _us(value: float) -> str:
    return f"{value:,.0f}"


def component_us(profile: Profile) -> dict[str, float]:
    """Microseconds of CPU per job by component: user CPU split by samples, plus kernel time per process."""
    spent: dict[str, float] = collections.defaultdict(float)
    for role, (user, system) in profile.cpu_us.items():
        samples = profile.samples.get(role, {})
        total = sum(samples.values())
        for component, n in samples.items():
            spent[f"{role}: {component}"] += user * n / total if total else 0.0
        if not total:
            spent[f"{role}: (not sampled)"] += user
        spent[f"{role}: kernel (system CPU: sockets, pipes, epoll)"] += system
    return dict(spent)


def render(profiles: list[Profile]) -> str:
    ok = [p for p in profiles if not p.error]
    out = []
    out.append("Worker CPU per job by process (CPU windows, nothing attached; medians), us")
    rows = []
    for p in ok:
        main_user, main_sys = p.cpu_us["main"]
        pool_user, pool_sys = p.cpu_us["pool"]
        rows.append([p.name, _us(main_user), _us(main_sys), _us(pool_user), _us(pool_sys),
                     _us(main_user + main_sys + pool_user + pool_sys)])
    out += [table(["config", "main user", "main system", "pool user", "pool system", "total"], rows), ""]

    spent = {p.name: component_us(p) for p in ok}
    names = sorted({c for s in spent.values() for c in s},
                   key=lambda c: (c.split(":")[0], -max(s.get(c, 0.0) for s in spent.values())))
    header = ["component (process: what)", *[p.name for p in ok]]
    if len(ok) >= 2:
        header.append(f"{ok[-1].name} - {ok[0].name}")
    rows = []
    for component in names:
        values = [spent[p.name].get(component, 0.0) for p in ok]
        if max(values) < 5:
            continue
        row = [component, *[_us(v) for v in values]]
        if len(ok) >= 2:
            row.append(f"{values[-1] - values[0]:+,.0f}")
        rows.append(row)
    totals = [sum(spent[p.name].values()) for p in ok]
    rows.append(["total", *[_us(v) for v in totals]] + ([f"{totals[-1] - totals[0]:+,.0f}"] if len(ok) >= 2 else []))
    out += ["Worker CPU per job by component, us (user CPU split by py-spy's GIL-holding samples; "
            "components under 5 us left out)", table(header, rows), ""]

    steps = sorted({s for p in ok for s in p.round_trips}, key=lambda s: -max(p.round_trips.get(s, 0) for p in ok))
    header = ["step", *[p.name for p in ok]] + ([f"{ok[-1].name} - {ok[0].name}"] if len(ok) >= 2 else [])
    rows = []
    for step in steps:
        values = [p.round_trips.get(step, 0.0) for p in ok]
        if max(values) < 0.005:
            continue
        rows.append([step, *[f"{v:.2f}" for v in values]] + ([f"{values[-1] - values[0]:+.2f}"] if len(ok) >= 2
                                                            else []))
    totals = [sum(p.round_trips.values()) for p in ok]
    rows.append(["total", *[f"{v:.2f}" for v in totals]] + ([f"{totals[-1] - totals[0]:+.2f}"] if len(ok) >= 2
                                                           else []))
    out += ["Redis round trips per job by step (MONITOR window; a MULTI ... EXEC is one)", table(header, rows), ""]

    rows = []
    for p in ok:
        for role in ("main", "pool"):
            trips = p.round_trips_by_role.get(role, 0.0)
            system = p.cpu_us[role][1]
            rows.append([p.name, role, f"{trips:.2f}", _us(system), _us(system / trips) if trips else "n/a"])
    out += ["Kernel CPU per request (system CPU per job / round trips per job of the process)",
            table(["config", "process", "round trips/job", "system us/job", "us per round trip"], rows), ""]
    for p in profiles:
        if p.error:
            out.append(f"{p.name}: FAILED {p.error[:500]}")
    return "\n".join(out)


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_job", description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=f"{BASELINE},{EVERYTHING}",
                        help="configurations to profile, in order (the last is compared with the first)")
    parser.add_argument("--jobs", type=int, default=2000, help="jobs of the CPU and the sampling windows")
    parser.add_argument("--rounds", type=int, default=3, help="CPU windows per configuration, interleaved (median)")
    parser.add_argument("--monitor-jobs", type=int, default=300, help="jobs of the MONITOR window")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--no-aof", dest="aof", action="store_false")
    parser.add_argument("--save", metavar="PATH", help="also write the raw figures as JSON to PATH")
    parser.add_argument("--keep", metavar="DIR",
                        help="keep py-spy's raw stacks (py-spy-<config>.txt, flamegraph.pl input) in DIR")
    options = parser.parse_args(argv)
    known = by_name(configurations())
    names = [n.strip() for n in options.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown configuration(s): {', '.join(unknown)}")
    plan = Plan(configs=[known[n] for n in names], aof=options.aof)
    py_spy()
    with Bench(plan) as bench:
        profiles = Profiler(bench, options).run(plan.configs)
    if options.save:
        Path(options.save).write_text(json.dumps([asdict(p) for p in profiles], indent=1))
    print(render(profiles))
    return 0 if all(not p.error for p in profiles) else 1


if __name__ == "__main__":
    sys.exit(main())
