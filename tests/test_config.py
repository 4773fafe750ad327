"""config.py: layering, unknown keys, type checks, run records."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import config
from misc.errors import UserError


@pytest.fixture()
def family_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A throw-away ``opt/`` with one family ``toy``."""
    opt = tmp_path / "opt"
    opt.mkdir()
    (opt / "toy.yaml").write_text(
        yaml.safe_dump(
            {
                "model": {"width": 1.0, "units": [3, 4], "mode": "original", "pretrained": None},
                "train": {"seed": 10, "amp": True, "phases": [{"epochs": 2}]},
                "data": {"augment": "hovernet"},
                "profiles": {"cpu": {"model": {"width": 0.5}}, "demo": {"train": {"seed": 1}}},
            }
        )
    )
    monkeypatch.setattr(config, "OPT_DIR", opt)
    return opt


def test_defaults_use_paper_profile(family_dir: Path) -> None:
    cfg = config.load_config("toy")
    assert cfg["profile"] == "paper" and cfg["model"]["width"] == 1.0


def test_layer_order_profile_file_then_set(family_dir: Path, tmp_path: Path) -> None:
    override = tmp_path / "run.yaml"
    override.write_text("model: {width: 0.25, mode: fast}\n")
    cfg = config.load_config("toy", "cpu", override, ["model.mode=original"])
    assert (cfg["model"]["width"], cfg["model"]["mode"]) == (0.25, "original")


def test_set_values_are_parsed_as_yaml(family_dir: Path) -> None:
    cfg = config.load_config("toy", overrides=["model.units=[1, 1]", "train.amp=false"])
    assert cfg["model"]["units"] == [1, 1] and cfg["train"]["amp"] is False


def test_int_accepted_for_float_and_converted(family_dir: Path) -> None:
    cfg = config.load_config("toy", overrides=["model.width=2"])
    assert cfg["model"]["width"] == 2.0 and isinstance(cfg["model"]["width"], float)


def test_null_default_accepts_any_value(family_dir: Path) -> None:
    cfg = config.load_config("toy", overrides=["model.pretrained=/weights.pt"])
    assert cfg["model"]["pretrained"] == "/weights.pt"


def test_integer_key_part_updates_one_list_item(family_dir: Path) -> None:
    cfg = config.load_config("toy", overrides=["train.phases.0.epochs=5", "model.units.1=7"])
    assert cfg["train"]["phases"] == [{"epochs": 5}] and cfg["model"]["units"] == [3, 7]


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.phases.1.epochs=5", r"index 1 of 'train.phases' is out of range \(it has 1 item"),
        ("train.phases.0.epoch=5", r"unknown key 'train.phases.0.epoch'; did you mean 'train.phases.0.epochs'"),
        ("model.units.0=x", r"item 'model.units.0' expects int"),
    ],
)
def test_bad_list_item_override_is_named(family_dir: Path, override: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        config.load_config("toy", overrides=[override])


def test_unknown_key_names_closest(family_dir: Path) -> None:
    with pytest.raises(UserError, match=r"unknown key 'model.widht'.*'model.width'"):
        config.load_config("toy", overrides=["model.widht=1.0"])


def test_type_mismatch_names_key_type_and_value(family_dir: Path) -> None:
    with pytest.raises(UserError, match=r"'train.seed' expects int .* got str 'abc'"):
        config.load_config("toy", overrides=["train.seed=abc"])


def test_augment_takes_a_list_of_ops_in_place_of_a_preset(family_dir: Path) -> None:
    cfg = config.load_config("toy", overrides=['data.augment=[{"op":"flip","p":0.5}]'])
    assert cfg["data"]["augment"] == [{"op": "flip", "p": 0.5}]


def test_other_string_keys_refuse_a_list(family_dir: Path) -> None:
    with pytest.raises(UserError, match=r"'model.mode' expects str"):
        config.load_config("toy", overrides=["model.mode=[fast]"])


def test_bool_is_not_an_int(family_dir: Path) -> None:
    with pytest.raises(UserError, match="train.seed"):
        config.load_config("toy", overrides=["train.seed=true"])


def test_unknown_profile_is_an_error(family_dir: Path) -> None:
    with pytest.raises(UserError, match="unknown profile 'dmeo'.*'demo'"):
        config.load_config("toy", "dmeo")


def test_bad_yaml_names_file_and_line(family_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  width: [1\n")
    with pytest.raises(UserError, match=r"bad.yaml:.*line \d+ invalid YAML"):
        config.load_config("toy", config_file=bad)


def test_yaml_tags_are_refused(family_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "tag.yaml"
    bad.write_text("model: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(UserError, match="invalid YAML"):
        config.load_config("toy", config_file=bad)


def test_run_record_has_provenance(family_dir: Path, tmp_path: Path) -> None:
    cfg = config.load_config("toy")
    path = config.write_run_record(tmp_path / "run", cfg, ["train.py", "--model", "toy"])
    record = yaml.safe_load(path.read_text())
    assert record["config"] == cfg
    assert record["argv"] == ["train.py", "--model", "toy"]
    assert record["seed"] == 10
    assert {"commit", "dirty"} <= set(record["git"])
    assert record["versions"]["torch"] and record["host"]["name"]


def test_run_log_keeps_our_debug_records_and_drops_library_chatter(tmp_path: Path) -> None:
    import logging

    config.setup_logging(tmp_path, quiet=True)
    logging.getLogger("engine.loop").debug("ours")
    logging.getLogger("PIL.PngImagePlugin").debug("STREAM b'IDAT'")
    logging.getLogger("PIL.Image").info("library info")
    for handler in logging.getLogger().handlers:
        handler.flush()
    text = (tmp_path / "run.log").read_text()
    assert "ours" in text and "library info" in text and "IDAT" not in text
