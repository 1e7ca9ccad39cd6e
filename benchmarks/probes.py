"""What a measured window reads: Redis counters and the CPU time of processes.

Commands come from ``INFO commandstats`` (per command; commands run inside a
Lua script are counted there too, under their own names). Round trips are
``total_reads_processed`` from ``INFO stats``: the number of read events
Redis handled on client sockets. A client waiting for a reply sends its
request, then reads; each request or pipeline the server reads in one go is
one event, so the counter counts round trips, whatever the number of commands
in the pipeline or script. (A request larger than Redis's read buffer, 16 KiB,
takes more than one read; the benchmark's messages are far smaller.)

CPU time comes from ``/proc/<pid>/stat`` (utime + stime) of a process and its
live children, plus the children it already reaped (cutime + cstime), so a
pool process replaced during the window is not lost. Memory is the resident
set (``VmRSS`` of ``/proc/<pid>/status``) of a process and its live children,
added up: pages a pool process still shares with its parent after the fork
count in both, alike for every configuration.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Snapshot", "snapshot", "delta", "cpu_seconds", "process_tree", "rss_bytes"]

#: Commands the measuring itself issues; left out of the per-job figures.
MEASUREMENT_COMMANDS = frozenset({"info", "config|resetstat", "blpop"})

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name may contain spaces: fields start after the last ")"
    return text[text.rindex(")") + 2:].split()


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live children (one level: a prefork worker's pool)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid, *(int(c) for c in children)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid``, its live children and its reaped children."""
    total = 0
    for index, member in enumerate(process_tree(pid)):
        fields = _stat_fields(member)
        if fields is None:
            continue
        # after the name: state(0) ... utime(11) stime(12) cutime(13) cstime(14)
        total += int(fields[11]) + int(fields[12])
        if index == 0:
            total += int(fields[13]) + int(fields[14])
    return total / _TICKS


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its live children, added up."""
    total = 0
    for member in process_tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024  # kB
                break
    return total


@dataclass
class Snapshot:
    """Counters at one moment."""

    calls: dict[str, int] = field(default_factory=dict)
    reads: int = 0
    cpu: dict[str, float] = field(default_factory=dict)


def snapshot(client, pids: dict[str, int]) -> Snapshot:
    """Read Redis's counters and the CPU of each named process tree."""
    info = client.info("everything")  # one request: one read on the server
    calls = {name.removeprefix("cmdstat_"): int(value["calls"])
             for name, value in info.items() if name.startswith("cmdstat_")}
    reads = int(info["total_reads_processed"])
    return Snapshot(calls=calls, reads=reads, cpu={name: cpu_seconds(pid) for name, pid in pids.items()})


def delta(before: Snapshot, after: Snapshot, *, measuring_reads: int = 0) -> Snapshot:
    """What happened between two snapshots (measurement commands removed).

    The INFO request that reads ``after`` is itself read by Redis before it
    reports the counter, so one read is taken off the round trips, plus
    ``measuring_reads`` for the requests the measuring made in between (the
    producer's one blocking wait for the "done" marker).
    """
    names = set(before.calls) | set(after.calls)
    calls = {n: after.calls.get(n, 0) - before.calls.get(n, 0) for n in names}
    calls = {n: c for n, c in calls.items() if c and n not in MEASUREMENT_COMMANDS}
    cpu = {n: after.cpu.get(n, 0.0) - before.cpu.get(n, 0.0) for n in after.cpu}
    return Snapshot(calls=calls, reads=after.reads - before.reads - 1 - measuring_reads, cpu=cpu)
