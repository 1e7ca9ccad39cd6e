"""Issue 13: any Celery project adopts the platform, as a library.

A project of its own (``proj/celery.py``, its own ``celeryconfig.py`` and
``tasks.py``, module names that collide with the repository's bundled app)
installs the platform with three lines and gets every feature on its own
worker and beat; the ``resilience`` command acts on it with ``-A``.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from celery import Celery

from resilience import ResilientTask, SettingsError, install, runtime
from resilience.settings import load_settings, reset_settings, settings_for
from resilience.testing import wait_for

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

PLATFORM_TASKS = {"resilience.sweep_stuck_jobs", "resilience.trim_dead_letters", "resilience.promote_delayed_runs",
                  "resilience.evaluate_alerts", "resilience.beat_pulse"}


@pytest.fixture
def rebind(app):
    """Tests that install apps of their own leave the bundled app bound, as they found it."""
    yield
    runtime.bind(app)
    reset_settings()


def write_project(root: Path, *, data_dir: Path, extra_config: str = "") -> Path:
    """A user's Celery project: its own app module, config module and ``tasks.py``."""
    files = {
        "proj/__init__.py": "",
        "proj/celery.py": """
            from celery import Celery
            from resilience import ResilientTask, install

            app = Celery("proj", task_cls=ResilientTask, include=["tasks"])
            app.config_from_object("celeryconfig")
            install(app)
        """,
        "celeryconfig.py": f"""
            import os

            broker_url = os.environ["PROJ_REDIS_URL"]
            result_backend = broker_url
            task_default_queue = "proj-default"
            task_routes = {{"tasks.send_email": {{"queue": "proj-emails"}}}}
            task_acks_late = True
            task_reject_on_worker_lost = True
            worker_prefetch_multiplier = 1
            worker_hijack_root_logger = False

            # the platform's settings, in the app's own configuration
            resilience_data_dir = {str(data_dir)!r}
            health_port = 0
        """,
        "tasks.py": """
            import os

            import redis

            from proj.celery import app

            r = redis.Redis.from_url(os.environ["PROJ_REDIS_URL"])


            @app.task(bind=True, name="tasks.slow")
            def slow(self, seconds):
                r.rpush("proj:started", self.request.id)
                r.blpop(["proj:release"], timeout=seconds)  # runs until the test releases it
                r.rpush("proj:done", self.request.id)


            @app.task(name="tasks.fail", max_retries=0)
            def fail(order):
                r.incr("proj:fail_runs")
                raise ValueError(f"order {order} cannot be charged")


            @app.task(name="tasks.send_email")
            def send_email(to):
                return to
        """,
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        text = textwrap.dedent(text).lstrip()
        if name == "celeryconfig.py":
            text += textwrap.dedent(extra_config).lstrip()
        path.write_text(text)
    return root


def project_env(redis_url: str, **extra: str) -> dict[str, str]:
    """The environment of a project's processes: its Redis, no REDIS_URL, no repository on the path."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"REDIS_URL", "RESILIENCE_DATA_DIR", "PYTHONPATH", "RESILIENCE_APP"}}
    env.update({"PROJ_REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1", **extra})
    return env


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


# -- the library: install(app) ------------------------------------------------------------


def test_install_registers_the_platform_tasks_and_their_beat_entries_on_the_given_app(rebind):
    app = Celery("adopter", task_cls=ResilientTask, set_as_current=False)
    install(app)
    assert PLATFORM_TASKS <= set(app.tasks)
    schedule = app.conf.beat_schedule
    for name in ("resilience.sweep_stuck_jobs", "resilience.trim_dead_letters", "resilience.evaluate_alerts",
                 "resilience.promote_delayed_runs", "resilience.beat_pulse"):
        assert schedule[name]["task"] == name  # one naming style: the entry is named after its task


def test_install_before_the_configuration_is_loaded_wires_features_with_the_apps_settings(rebind):
    app = Celery("adopter", task_cls=ResilientTask, set_as_current=False)
    install(app)  # before config_from_object, as many projects write it
    app.config_from_object({"stuck_sweep_interval_sec": 7, "feature_alerting": False,
                            "platform_task_queue": "maintenance"})
    entry = app.conf.beat_schedule["resilience.sweep_stuck_jobs"]
    assert entry["schedule"] == 7.0
    assert entry["options"]["queue"] == "maintenance"
    assert "resilience.evaluate_alerts" not in app.conf.beat_schedule  # the app's flag turned it off
    assert settings_for(app).stuck_sweep_interval_sec == 7


def test_the_environment_wins_over_the_apps_configuration(monkeypatch, rebind):
    app = Celery("adopter", task_cls=ResilientTask, set_as_current=False)
    app.conf.update(retry_max=2, FEATURE_DEAD_LETTER=False, RETRY_BACKOFF_BASE_SEC=1.5)
    assert (settings_for(app).retry_max, settings_for(app).feature_dead_letter) == (2, False)
    assert settings_for(app).retry_backoff_base_sec == 1.5
    monkeypatch.setenv("RETRY_MAX", "4")
    reset_settings()
    assert settings_for(app).retry_max == 4


def test_django_style_settings_are_found_under_the_celery_namespace(rebind):
    class DjangoSettings:
        CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
        CELERY_RETRY_MAX = 7
        CELERY_FEATURE_IDEMPOTENCY = False

    app = Celery("adopter", task_cls=ResilientTask, set_as_current=False)
    app.config_from_object(DjangoSettings, namespace="CELERY")
    settings = settings_for(app)
    assert (settings.retry_max, settings.feature_idempotency) == (7, False)


def test_a_bad_value_in_the_apps_configuration_names_the_setting_and_where_it_was_set(rebind):
    app = Celery("adopter", task_cls=ResilientTask, set_as_current=False)
    install(app)
    app.conf.update(worker_heartbeat_timeout_sec="soon")
    reset_settings()
    with pytest.raises(SettingsError) as caught:
        settings_for(app)
    assert caught.value.name == "WORKER_HEARTBEAT_TIMEOUT_SEC"
    assert "worker_heartbeat_timeout_sec" in str(caught.value)


def test_every_new_app_is_installed_even_one_that_reuses_a_dead_apps_id(rebind):
    """Issue 18: install() once remembered apps by id(), and a new app at a recycled address was skipped."""
    seen: set[int] = set()
    reused = False
    for _ in range(30):
        app = Celery(f"adopter-{uuid.uuid4().hex[:6]}", task_cls=ResilientTask, set_as_current=False)
        reused = reused or id(app) in seen
        seen.add(id(app))
        install(app)
        assert PLATFORM_TASKS <= set(app.tasks)
        del app
        gc.collect()
        if reused:
            break
    assert reused  # an address was reused, and every app was installed all the same


def test_settings_of_an_app_do_not_leak_into_the_environments_defaults(rebind):
    app = Celery("adopter", task_cls=ResilientTask, set_as_current=False)
    app.conf.update(retry_max=1)
    assert settings_for(app).retry_max == 1
    assert load_settings().retry_max == 5


# -- the command: -A, the celery plugin, no surprise servers --------------------------------


@pytest.fixture
def project(tmp_path, redis_server):
    root = write_project(tmp_path / "project", data_dir=tmp_path / "data")
    return root, project_env(redis_server.url)


def test_status_names_the_apps_own_queues(project):
    root, env = project
    done = run([str(BIN / "resilience"), "-A", "proj.celery:app", "status", "--json"], root, env)
    assert done.returncode == 0, done.stderr
    depths = json.loads(done.stdout)["queues"]
    assert {"proj-default", "proj-emails"} <= set(depths)


def test_the_app_can_be_named_in_the_environment_and_through_celerys_own_command(project):
    root, env = project
    by_env = run([str(BIN / "resilience"), "status", "--json"], root, {**env, "RESILIENCE_APP": "proj.celery:app"})
    assert by_env.returncode == 0, by_env.stderr
    assert "proj-emails" in json.loads(by_env.stdout)["queues"]
    by_celery = run([str(BIN / "celery"), "-A", "proj.celery:app", "resilience", "status", "--json"], root, env)
    assert by_celery.returncode == 0, by_celery.stderr
    assert "proj-emails" in json.loads(by_celery.stdout)["queues"]


def test_an_app_that_cannot_be_imported_is_a_one_line_error_naming_it(tmp_path):
    done = run([str(BIN / "resilience"), "-A", "nosuch.module:app", "status"], tmp_path, project_env("redis://x"))
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "nosuch.module:app" in lines[0], done.stderr


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if text in cmdline or cwd.startswith(text):
            found.append(f"{proc.name}: {cmdline}")
    return found


@pytest.mark.parametrize("command", [["status"], ["dlq", "list"], ["breakers"], ["errors"], ["sweep"],
                                     ["health", "beat"], ["quarantine"]])
def test_read_only_commands_with_no_redis_say_so_in_one_line_and_leave_nothing_behind(tmp_path, command):
    empty = tmp_path / "empty"
    empty.mkdir()
    env = project_env("unused")
    done = run([str(BIN / "resilience"), *command], empty, env)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no Redis" in lines[0], done.stderr
    assert list(empty.iterdir()) == []  # no data dir, no server started on this command's behalf
    assert _processes_mentioning(str(empty)) == []


# -- packaging: the wheel ships the library only ---------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The distribution built from a copy of the sources (the checkout is left untouched)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "resilience", src / "resilience", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(src)], check=True, capture_output=True, timeout=300)
    return next(out.glob("celery_resilience-*.whl"))


@pytest.fixture(scope="module")
def fresh_venv(wheel, tmp_path_factory) -> Path:
    """A new virtualenv with the wheel installed; its dependencies come from the test
    environment's site-packages (added as a path, so this checkout's editable install is not)."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True, timeout=300)
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
               Path("/"), dict(os.environ)).stdout.strip()
    deps = [p for p in sys.path if p.endswith("site-packages")]
    Path(site, "zz-test-dependencies.pth").write_text("\n".join(deps) + "\n")
    return venv


def test_the_wheel_holds_the_resilience_package_only(wheel):
    import zipfile

    tops = {name.split("/", 1)[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"resilience"}


def test_installing_the_wheel_puts_no_tasks_or_celeryconfig_module_on_the_path(fresh_venv, tmp_path):
    code = ("import importlib.util as u, resilience; "
            "print(u.find_spec('tasks'), u.find_spec('celeryconfig'), resilience.__file__)")
    done = run([str(fresh_venv / "bin" / "python"), "-c", code], tmp_path, project_env("unused"))
    tasks_spec, config_spec, location = done.stdout.split()
    assert (tasks_spec, config_spec) == ("None", "None"), done.stderr
    assert str(fresh_venv) in location  # the installed copy, not this checkout


# -- acceptance: a project of its own, installed next to the platform from the wheel ---------------


class Proc:
    """A project process (worker or beat) with its output in a log file."""

    def __init__(self, name: str, argv: list[str], cwd: Path, env: dict[str, str], logs: Path) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        self.log_path = logs / f"{name}.log"
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


@pytest.mark.slow
def test_a_project_of_its_own_gets_every_feature_on_its_own_worker_and_beat(fresh_venv, tmp_path, redis_server, r):
    root = write_project(tmp_path / "project", data_dir=tmp_path / "data", extra_config="""
        worker_heartbeat_timeout_sec = 3
        worker_heartbeat_interval_sec = 0.5
        stuck_sweep_interval_sec = 1
        dead_letter_trim_interval_sec = 1
        alert_evaluate_interval_sec = 1
    """)
    env = project_env(redis_server.url)
    venv_bin = fresh_venv / "bin"
    celery = [str(venv_bin / "python"), "-m", "celery", "-A", "proj.celery:app"]
    queues = "proj-default,proj-emails"
    logs = tmp_path / "logs"
    procs: list[Proc] = []

    def worker(name: str) -> Proc:
        proc = Proc(name, celery + ["worker", "-n", f"{name}@test", "-c", "1", "-P", "prefork", "-Q", queues,
                                    "-l", "INFO", "--without-mingle", "--without-gossip"], root, env, logs)
        procs.append(proc)
        wait_for(lambda: " ready." in proc.log(), 60, message=lambda: f"{name} to start:\n{proc.log()[-2000:]}")
        return proc

    def submit(code: str) -> str:
        done = run([str(venv_bin / "python"), "-c", f"import tasks; print({code}.id)"], root, env)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    try:
        first = worker("first")
        beat = Proc("beat", celery + ["beat", "-l", "INFO", "-s", str(tmp_path / "beat-schedule")], root, env, logs)
        procs.append(beat)

        # A job killed with kill -9 mid-run is recovered by the sweep on the project's own beat.
        job = submit("tasks.slow.delay(120)")
        wait_for(lambda: job in r.lrange("proj:started", 0, -1), 60, message="the slow job to start")
        first.kill()
        worker("second")
        r.rpush("proj:release", "go")  # the run the sweep recovers may finish
        wait_for(lambda: job in r.lrange("proj:done", 0, -1), 90,
                 message=lambda: f"the killed job to run again:\n{beat.log()[-2000:]}")

        # A failing job is dead-lettered under the platform's key names ...
        failed = submit("tasks.fail.delay('o-1')")
        wait_for(lambda: any(json.loads(raw).get("job_id") == failed for raw in r.lrange("jobs:dead_letter", 0, -1)),
                 60, message="the failed job in jobs:dead_letter")
        # ... and `resilience -A ... dlq replay` re-runs it on the project's worker.
        resilience = [str(venv_bin / "resilience"), "-A", "proj.celery:app"]
        replayed = run(resilience + ["dlq", "replay", failed, "--json"], root, env)
        assert replayed.returncode == 0, replayed.stderr
        assert json.loads(replayed.stdout)["done"] == [failed]
        wait_for(lambda: int(r.get("proj:fail_runs") or 0) == 2, 60, message="the replayed job to run")

        status = run(resilience + ["status", "--json"], root, env)
        assert status.returncode == 0, status.stderr
        assert {"proj-default", "proj-emails"} <= set(json.loads(status.stdout)["queues"])

        # The dead-letter trim and the alert rules run on the project's beat and worker.
        for task in ("resilience.trim_dead_letters", "resilience.evaluate_alerts"):
            wait_for(lambda task=task: any(f"Task {task}[" in p.log() and "succeeded" in p.log()
                                           for p in procs[2:]), 60, message=f"{task} to run on the worker")
        assert {"resilience.trim_dead_letters", "resilience.evaluate_alerts"} <= set(r.hkeys("beat:published"))
    finally:
        for proc in procs:
            proc.stop()
