"""The pytest plugin for users' own tasks (resilience.testing.pytest_plugin, entry point pytest11).

Each scenario is a pytest of its own, in a fresh directory, with an
environment that names no Redis: as in a user's project.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = Path(__file__).resolve().parent / "plugin_example"
README = ROOT / "README.md"


def user_env() -> dict[str, str]:
    """This environment without what the harness set: no Redis, no settings, no pytest state."""
    from resilience.settings import env_fields

    ours = {f.metadata["env"] for f in env_fields()}
    return {k: v for k, v in os.environ.items()
            if k not in ours and not k.startswith(("CELERY_", "PYTEST_", "FEATURE_"))}


def run_pytest(directory: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
                          cwd=directory, env=user_env(), capture_output=True, text=True, timeout=timeout)


def example_files() -> dict[str, str]:
    return {str(p.relative_to(EXAMPLE)): p.read_text() for p in sorted(EXAMPLE.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts}


def readme_example_blocks() -> dict[str, str]:
    """The code blocks of the README's plugin section, by the file their first line names."""
    text = README.read_text()
    start = text.index("### Testing your tasks: the pytest plugin")
    section = text[start:text.index("\n## ", start)]
    blocks = [m.group(1) for m in re.finditer(r"^```[a-z]*\n(.*?)^```$", section, re.M | re.S)]
    return {block.splitlines()[0].removeprefix("# "): block for block in blocks}


def test_the_plugin_is_registered_under_pytest11():
    (plugin,) = [ep for ep in entry_points(group="pytest11") if ep.name == "resilience"]
    assert plugin.value == "resilience.testing.pytest_plugin"


def test_the_readme_shows_the_example_project_as_it_is():
    files = example_files()
    assert files.pop("orders/__init__.py") == ""  # the README says it is empty
    assert readme_example_blocks() == files


@pytest.mark.slow
def test_the_readme_example_passes(tmp_path):
    project = tmp_path / "project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__"))
    result = run_pytest(project)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0 and re.search(r"\b5 passed\b", summary), result.stdout[-6000:] + result.stderr[-3000:]
    # The tests used their private Redis only: nothing was started in the project's directory.
    assert not (project / ".resilience").exists()


INERT = '''
import os


def test_loading_the_plugin_starts_nothing_and_changes_no_environment(request):
    assert request.config.pluginmanager.has_plugin("resilience")
    assert not {"REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "HEALTH_PORT"} & set(os.environ)
    children = open(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read().split()
    assert children == []
'''

OWN_APP = '''
import pytest
from celery import Celery

from resilience import ResilientTask

app = Celery("inline", task_cls=ResilientTask)  # no install(app): the plugin installs the platform


@app.task
def double(x):
    return 2 * x


@pytest.fixture(scope="session")
def resilience_celery_app():
    return app
'''

OWN_APP_TESTS = '''
import pytest

from conftest import double


def test_an_app_the_project_builds_itself_runs_on_the_private_redis(resilience_app, resilience_redis,
                                                                    resilience_worker, resilience_jobs):
    assert resilience_app._resilience_installed
    assert resilience_app.conf.broker_url == resilience_redis.url
    job = double.delay(21)
    assert job.get(timeout=30) == 42
    resilience_jobs.assert_ran_once(job)


def test_each_test_starts_with_an_empty_redis(resilience_app, resilience_jobs):
    from resilience.store import get_redis

    assert get_redis().dbsize() == 0


def test_a_subprocess_worker_needs_the_apps_name(resilience_subprocess_worker):
    pass
'''


def test_the_plugin_is_inert_until_used_and_takes_an_app_the_project_builds(tmp_path):
    (tmp_path / "test_a_inert.py").write_text(INERT)
    (tmp_path / "conftest.py").write_text(OWN_APP)
    (tmp_path / "test_b_own_app.py").write_text(OWN_APP_TESTS)
    result = run_pytest(tmp_path)
    out = result.stdout
    assert re.search(r"\b3 passed, 1 error\b", out.strip().splitlines()[-1]), out[-6000:] + result.stderr[-3000:]
    assert "a subprocess worker needs the app's name" in out
