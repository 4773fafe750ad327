"""The shared Family behaviour: Reinhard colour normalisation from the config or the checkpoint."""

from __future__ import annotations

import numpy as np
import pytest

from loader.colour import lab_statistics
from misc.errors import UserError
from misc.io import write_image
from loader.synthetic import generate_tile
from models.hovernet.family import HoVerNetFamily

TARGET = {"mean": [60.0, 10.0, -5.0], "std": [10.0, 5.0, 5.0]}


def colour_family(reinhard=None, anchor=None) -> HoVerNetFamily:
    """A family whose config has ``model.reinhard`` / ``model.reinhard_anchor`` and nothing else."""
    return HoVerNetFamily({"model": {"reinhard": reinhard, "reinhard_anchor": anchor}})


def tile(seed: int) -> np.ndarray:
    return generate_tile(seed, (64, 64))[0]


def test_target_and_anchor_are_exclusive():
    with pytest.raises(UserError, match="both set"):
        colour_family(TARGET, "anchor.png").reinhard_target


def test_malformed_target_names_the_key():
    with pytest.raises(UserError, match="model.reinhard is"):
        colour_family({"mean": [60, 10]}).reinhard_target


def test_anchor_statistics_become_the_target(tmp_path):
    write_image(tmp_path / "anchor.png", tile(1))
    expected = [float(v) for v in lab_statistics(tile(1))[1]]
    np.testing.assert_allclose(colour_family(anchor=str(tmp_path / "anchor.png")).reinhard_target["std"], expected)


def test_preprocess_is_the_identity_without_a_target():
    image = tile(0)
    assert colour_family().preprocess_image(image) is image
    assert HoVerNetFamily({"model": {}}).preprocess_image(image) is image


def test_preprocess_matches_the_target_statistics():
    mean, std = lab_statistics(colour_family(TARGET).preprocess_image(tile(0)))
    np.testing.assert_allclose(mean, TARGET["mean"], atol=1.0)
    np.testing.assert_allclose(std, TARGET["std"], atol=1.0)


def test_fit_is_the_mean_of_the_training_image_statistics():
    images = [tile(1), tile(2), tile(3)]
    fitted = colour_family("fit").fit_norm_stats(images)["reinhard"]
    stats = [lab_statistics(image) for image in images]
    np.testing.assert_allclose(fitted["mean"], np.mean([m for m, _ in stats], axis=0), rtol=1e-6)
    np.testing.assert_allclose(fitted["std"], np.mean([s for _, s in stats], axis=0), rtol=1e-6)


def test_fit_without_training_images_is_refused():
    with pytest.raises(UserError, match="no training images"):
        colour_family("fit").fit_norm_stats([])


def test_fit_target_applies_only_once_fitted():
    family = colour_family("fit")
    image = tile(0)
    assert family.preprocess_image(image) is image
    family.norm_stats = family.fit_norm_stats([tile(1)])
    assert not np.array_equal(family.preprocess_image(image), image)


def test_norm_stats_without_colour_normalisation_are_none():
    assert colour_family().fit_norm_stats([tile(1)]) is None


def test_checkpoint_target_wins_over_the_config():
    family = colour_family(TARGET)
    family.norm_stats = {"reinhard": {"mean": [50.0, 20.0, -10.0], "std": [15.0, 6.0, 6.0]}}
    assert family.reinhard_target["mean"] == [50.0, 20.0, -10.0]
