"""The feature registry: one object per feature, and install(app) walks that list and nothing else."""

from __future__ import annotations

import pytest
from celery import Celery

from resilience import features, install, platform_tasks
from resilience.features import FEATURES, Feature
from resilience.settings import Settings
from resilience.task import RESILIENCE_OPTIONS, ResilientTask


def test_every_feature_flag_of_the_settings_belongs_to_one_feature():
    flags = {f.flag for f in FEATURES if f.flag}
    declared = {name for name in Settings.__dataclass_fields__ if name.startswith("feature_")}
    assert flags == declared


def test_the_task_options_the_features_declare_are_the_options_tasks_accept():
    declared = [option for f in FEATURES for option in f.task_options]
    assert len(declared) == len(set(declared))  # each option has one owner
    assert set(declared) == RESILIENCE_OPTIONS


def test_platform_tasks_follow_one_naming_style_and_beat_entries_are_named_after_them():
    names = [name for f in FEATURES for name in f.platform_tasks if name != platform_tasks.EVALUATE_ALERTS_FORMER_NAME]
    assert len(names) == len(set(names))
    for name in names:
        prefix, _, rest = name.partition(".")
        assert prefix == "resilience" and rest.replace("_", "").isalpha(), name


def test_a_hookless_feature_adds_nothing():
    app = Celery("plain", set_as_current=False)
    before = (dict(app.conf.beat_schedule or {}), len(app.steps["worker"]), len(app.steps["consumer"]))
    features.configure_features(app, Settings(), [Feature("nothing")])
    assert (dict(app.conf.beat_schedule or {}), len(app.steps["worker"]), len(app.steps["consumer"])) == before


@pytest.mark.parametrize("flag", sorted({f.flag for f in FEATURES if f.flag}))
def test_a_feature_whose_flag_is_off_adds_no_beat_entry_and_no_step(flag):
    app = Celery("adopter", task_cls=ResilientTask, set_as_current=False)
    install(app)
    app.config_from_object({flag: False})
    assert app.conf[flag] is False  # loads the configuration: the features are wired now
    off = [f for f in FEATURES if f.flag == flag]
    settings = Settings(**{flag: False})
    for feature in off:
        assert not feature.enabled(settings)
        for entry in feature.beat_entries(settings):
            assert entry.task not in app.conf.beat_schedule
        for step in (*feature.worker_steps(settings), *feature.consumer_steps(settings)):
            assert step not in app.steps["worker"] | app.steps["consumer"]


def test_the_former_name_of_the_alert_evaluation_still_runs_but_is_not_scheduled():
    app = Celery("adopter", task_cls=ResilientTask, set_as_current=False)
    install(app)
    app.config_from_object({})
    assert platform_tasks.EVALUATE_ALERTS_FORMER_NAME in app.tasks
    assert platform_tasks.EVALUATE_ALERTS in app.conf.beat_schedule
    assert all(entry["task"] != platform_tasks.EVALUATE_ALERTS_FORMER_NAME
               for entry in app.conf.beat_schedule.values())

