"""The notebook entry point ``models.create_family`` and the registry behind it."""

from __future__ import annotations

import pytest

import config
import models
from misc.errors import UserError
from models.fullnet.family import FullNetFamily
from models.hovernet.family import HoVerNetFamily


def test_create_family_resolves_the_profile_and_overrides_as_train_py_does():
    overrides = ["infer.tta=false", "train.seed=7"]
    family = models.create_family("hovernet", profile="cpu", overrides=overrides)
    assert isinstance(family, HoVerNetFamily) and family.norm_stats is None
    assert family.cfg == config.load_config("hovernet", "cpu", overrides=overrides)
    assert family.cfg["profile"] == "cpu" and family.cfg["infer"]["tta"] is False and family.cfg["train"]["seed"] == 7


def test_create_family_without_a_profile_takes_the_default_one():
    family = models.create_family("fullnet")
    assert isinstance(family, FullNetFamily)
    assert family.cfg["profile"] == config.DEFAULT_PROFILE


def test_create_family_builds_a_network_of_the_configured_layout():
    family = models.create_family("fullnet", "cpu")
    net = family.build_network()
    assert net(family.example_input()).shape[1] == 3


@pytest.mark.parametrize("name, profile, overrides, message", [
    ("hovernt", None, (), "unknown model family 'hovernt'.*did you mean 'hovernet'"),
    ("hovernet", "gpu-huge", (), "gpu-huge"),
    ("hovernet", None, ("infer.tta",), "infer.tta"),
])
def test_bad_arguments_are_user_errors(name, profile, overrides, message):
    with pytest.raises(UserError, match=message):
        models.create_family(name, profile, overrides)
