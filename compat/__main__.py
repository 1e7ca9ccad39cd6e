"""``python -m compat``: Celery's integration tests, plain app vs the platform, side by side.

Steps: download Celery's source distribution (``pip download``, the version
installed here by default) into ``.compat/`` (kept between runs, never
committed), take its ``t/`` tree, start a private redis-server, run
``t/integration/test_tasks.py`` and ``t/integration/test_canvas.py`` once on
plain apps and once with the platform installed (:mod:`compat.celery_platform`),
and print passed/failed/skipped per file and run, then every test that fails
only with the platform. Such a test is accepted only when the README names it
as a deliberate change (section "Celery's semantics", list "Deliberate
changes"); otherwise the command exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".compat"
FILES = ("t/integration/test_tasks.py", "t/integration/test_canvas.py")
MODES = ("plain", "platform")


def fetch_tests(celery_version: str) -> Path:
    """Celery's ``t/`` tree and pytest configuration of ``celery_version``, in ``.compat/``."""
    tree = CACHE / f"celery-{celery_version}"
    if (tree / "t" / "integration" / "conftest.py").exists():
        return tree
    CACHE.mkdir(exist_ok=True)
    sdist = CACHE / f"celery-{celery_version}.tar.gz"
    if not sdist.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        "--dest", str(CACHE), f"celery=={celery_version}"], check=True)
    staging = Path(tempfile.mkdtemp(dir=CACHE))
    prefix = f"celery-{celery_version}/"
    with tarfile.open(sdist) as archive:
        # The tests and the pytest configuration only: not Celery's package, which would shadow the installed one.
        members = [m for m in archive.getmembers()
                   if m.name.startswith(prefix + "t/") or m.name == prefix + "pyproject.toml"]
        archive.extractall(staging, members=members, filter="data")
    (staging / prefix).rename(tree)
    shutil.rmtree(staging, ignore_errors=True)
    return tree


def deliberate_changes(readme: Path = ROOT / "README.md") -> dict[str, str]:
    """Test ids the README lists under "Deliberate changes", with their reason.

    The list is the bullets (``- `test id`: reason``) right after the line
    that starts with ``**Deliberate changes**``.
    """
    listed: dict[str, str] = {}
    lines = iter(readme.read_text().splitlines())
    for line in lines:
        if line.startswith("**Deliberate changes**"):
            break
    for line in lines:
        if line and not line.startswith(("-", " ")):
            break
        item = re.match(r"- `([^`]+)`:?\s*(.*)", line)
        if item:
            listed[item.group(1)] = item.group(2).strip()
    return listed


def run_suite(tree: Path, mode: str, redis_url: str, port: int, data_dir: Path, out: Path,
              extra: list[str]) -> dict[str, str]:
    results = out / f"{mode}.jsonl"
    env = {**os.environ,
           "COMPAT_PLATFORM": "1" if mode == "platform" else "0",
           "COMPAT_RESULTS": str(results),
           "TEST_BROKER": redis_url, "TEST_BACKEND": redis_url,
           "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(port),  # Celery's tests' own Redis client
           "REDIS_URL": redis_url, "RESILIENCE_DATA_DIR": str(data_dir / mode), "HEALTH_PORT": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), str(ROOT), os.environ.get("PYTHONPATH")]))}
    env = {k: v for k, v in env.items() if not k.startswith("FEATURE_")}  # the defaults: every feature on
    argv = [sys.executable, "-m", "pytest", *FILES, "-p", "compat.celery_platform", "-p", "no:cacheprovider",
            "-o", "timeout=180", "-q", "-rN", *extra]
    log = out / f"{mode}.log"
    started = time.monotonic()
    print(f"running Celery's integration tests on the {mode} app (log: {log.relative_to(ROOT)}) ...", flush=True)
    with open(log, "w") as stream:
        subprocess.run(argv, cwd=tree, env=env, stdout=stream, stderr=subprocess.STDOUT, check=False)
    print(f"  done in {time.monotonic() - started:.0f} s", flush=True)
    if not results.exists():
        sys.exit(f"the {mode} run recorded no results; see {log}")
    return {row["test"]: row["outcome"] for row in map(json.loads, results.read_text().splitlines())}


def table(outcomes: dict[str, dict[str, str]]) -> str:
    rows = [("file", *(f"{mode}: passed / failed / skipped" for mode in MODES))]
    for name in [*(Path(f).name for f in FILES), "total"]:
        cells = []
        for mode in MODES:
            counts = Counter(outcome for test, outcome in outcomes[mode].items()
                             if name == "total" or test.split("::")[0].endswith(name))
            cells.append(f"{counts['passed']} / {counts['failed']} / {counts['skipped']}")
        rows.append((name, *cells))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compat", description=__doc__.split("\n\n")[0])
    parser.add_argument("--celery-version", default=version("celery"))
    parser.add_argument("--only", choices=MODES, help="run one mode only (no comparison)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --), e.g. -k chord")
    args = parser.parse_args(argv)

    from resilience.embedded import RedisServerProcess, find_redis_binary
    from resilience.settings import load_settings

    tree = fetch_tests(args.celery_version)
    out = CACHE / "runs" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    scratch = Path(tempfile.mkdtemp(prefix="compat-"))
    server = RedisServerProcess(binary=find_redis_binary(load_settings()), directory=scratch / "redis").start()
    outcomes: dict[str, dict[str, str]] = {}
    try:
        import redis

        for mode in ([args.only] if args.only else MODES):
            redis.Redis.from_url(server.url).flushall()
            outcomes[mode] = run_suite(tree, mode, server.url, server.port, scratch, out, args.pytest_args)
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    if args.only:
        counts = Counter(outcomes[args.only].values())
        print(f"{args.only}: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
        return 0
    print(f"\nCelery {args.celery_version} integration tests ({', '.join(FILES)}), same redis-server:\n")
    print(table(outcomes))
    plain, platform = outcomes["plain"], outcomes["platform"]
    regressions = sorted(t for t, o in platform.items() if o == "failed" and plain.get(t) == "passed")
    listed = deliberate_changes()
    unexplained = [t for t in regressions if t not in listed]
    print(f"\nfailing only with the platform: {len(regressions)}")
    for test in regressions:
        reason = listed.get(test)
        print(f"  {test}: " + (f"deliberate change: {reason}" if reason else "NOT a listed deliberate change"))
    flaky_plain = sorted(t for t, o in plain.items() if o == "failed")
    if flaky_plain:
        print(f"\nfailing on the plain app too: {len(flaky_plain)}")
        for test in flaky_plain:
            print(f"  {test} (platform: {platform.get(test, 'not run')})")
    print(f"\nlogs and results: {out.relative_to(ROOT)}")
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
