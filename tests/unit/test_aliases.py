"""The former flat module paths name the same modules as the subpackages they moved to."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import resilience
from resilience._aliases import ALIASES


@pytest.mark.parametrize("old", sorted(ALIASES))
def test_a_former_path_is_the_same_module_object(old):
    assert importlib.import_module(f"resilience.{old}") is importlib.import_module(f"resilience.{ALIASES[old]}")


def test_patching_through_the_former_path_patches_the_module(monkeypatch):
    from resilience.core import keys as new

    monkeypatch.setattr("resilience.keys.keys", lambda: "patched")
    assert new.keys() == "patched"


def test_the_package_keeps_install_as_the_function_and_the_former_names_as_modules():
    from resilience.platform.install import install

    assert resilience.install is install
    assert resilience.deadletter is importlib.import_module("resilience.jobs.deadletter")


def test_a_fresh_process_reaches_a_helper_by_its_former_path_before_anything_else():
    code = ("import resilience.webhook_receiver as old, resilience.testing.webhook_receiver as new; "
            "from resilience.store import get_redis; import resilience.core.store as store; "
            "assert old is new and get_redis is store.get_redis and old.__spec__.name == new.__name__")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                   env={"PATH": "/usr/bin:/bin", "REDIS_URL": "redis://127.0.0.1:1/0"})
