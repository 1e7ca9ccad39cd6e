"""``resilience health``: probes for operators and container health checks.

``resilience health beat`` checks beat (see :mod:`resilience.probes.beatprobe`);
``resilience health workers`` asks every registered worker's ``/health``.
Both exit 0 when healthy and 1 otherwise; ``--json`` prints JSON only.
"""

from __future__ import annotations

import json
import sys

import click

from resilience.core.display import visible
from resilience.core.quarantine import TEXT, Shape, decode, describe

#: A ``workers:health`` registration, as far as this probe reads it.
_REGISTRATION = Shape({"url": TEXT}, required=("url",))


@click.group(name="health", help="Health probes: beat, and every worker's /health.")
def command() -> None:
    """Health probes."""


def _fail_unreachable(err: Exception) -> None:
    click.echo(f"error: Redis is unreachable: {err}", err=True)
    sys.exit(1)


@command.command(name="beat", help="Is beat's schedule ticking and every periodic entry published on time?")
@click.option("--json", "as_json", is_flag=True, help="Print JSON only.")
def beat(as_json: bool) -> None:
    import redis

    from resilience.cli.context import use_app
    from resilience.probes.beatprobe import check

    app = use_app()

    try:
        report = check(app)
    except (redis.ConnectionError, redis.TimeoutError) as err:
        _fail_unreachable(err)
        return
    if as_json:
        click.echo(json.dumps(report))
    else:
        for name, result in report["checks"].items():
            mark = "ok  " if result["ok"] else "FAIL"
            click.echo(visible(f"{mark} {name}: {result.get('error') or result}"))
        click.echo(f"beat: {report['status']}")
    sys.exit(0 if report["status"] == "ok" else 1)


@command.command(name="workers", help="GET /health of every worker registered in workers:health.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON only.")
@click.option("--timeout", default=1.0, show_default=True, help="Seconds to wait for each worker.")
def workers(as_json: bool, timeout: float) -> None:
    import httpx
    import redis

    from resilience.cli.context import use_app
    from resilience.core.keys import keys
    from resilience.core.store import get_redis

    use_app()
    try:
        registered = get_redis().hgetall(keys().worker_health)
    except (redis.ConnectionError, redis.TimeoutError) as err:
        _fail_unreachable(err)
        return
    results: dict[str, dict[str, object]] = {}
    for worker, raw in sorted((str(name), value) for name, value in registered.items()):
        registration, problem = decode(raw, _REGISTRATION)
        if problem:
            results[worker] = {"status": "malformed registration", "problem": problem}
            continue
        url = registration["url"]
        try:
            response = httpx.get(f"{url}/health", timeout=timeout)
            reply = response.json()
            if not isinstance(reply, dict):
                raise ValueError(f"/health replied with {describe(reply)}, not an object")
            results[worker] = {"url": url, "code": response.status_code, **reply}
        except Exception as exc:  # unreachable worker: report, keep going
            results[worker] = {"url": url, "status": "unreachable", "error": f"{type(exc).__name__}: {exc}"}
    healthy = bool(results) and all(r.get("status") == "ok" for r in results.values())
    if as_json:
        click.echo(json.dumps({"healthy": healthy, "workers": results}, default=str))
    else:
        if not results:
            click.echo("no worker has registered a health server")
        for worker, result in results.items():
            failed = result.get("failed")
            failed = ", ".join(map(str, failed)) if isinstance(failed, list) else str(failed or "")
            detail = failed or result.get("error") or result.get("problem") or ""
            click.echo(visible(f"{result.get('status', '?')!s:10} {worker!s}  {result.get('url', '')}  {detail}"))
    sys.exit(0 if healthy else 1)
