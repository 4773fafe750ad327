"""Central configuration: family defaults ← profile ← --config FILE ← --set a.b=value.

A family's defaults live in ``opt/<family>.yaml``::

    model: {...}
    train: {...}
    profiles:
      paper: {}          # the default profile
      cpu:   {model: {...}, train: {...}}
      demo:  {...}

Every layer above the defaults may only set keys the defaults define, with a value of the
same type (an int where a float is expected, and null on either side, are accepted). An
unknown key is an error naming it and the closest valid key.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import getpass
import importlib.metadata
import logging
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

import yaml

from misc.errors import UserError
from misc.io import atomic_write

REPO_ROOT = Path(__file__).resolve().parent
OPT_DIR = REPO_ROOT / "opt"
DEFAULT_PROFILE = "paper"
RECORDED_PACKAGES = (
    "torch", "numpy", "scipy", "scikit-image", "opencv-python-headless", "h5py",
    "tifffile", "PyYAML", "tensorboard", "tqdm",
)


def read_yaml(path: str | os.PathLike) -> Any:
    """Read a YAML file with ``yaml.safe_load``; errors name the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such config file")
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{path}:{where} invalid YAML: {problem}") from None


def family_yaml(family: str) -> Path:
    """Path of a family's defaults file ``opt/<family>.yaml``."""
    return OPT_DIR / f"{family}.yaml"


def load_family_defaults(family: str, defaults_path: str | os.PathLike | None = None) -> tuple[dict, dict]:
    """Read ``opt/<family>.yaml`` (or ``defaults_path``) and split it into (defaults, profiles)."""
    path = Path(defaults_path) if defaults_path is not None else family_yaml(family)
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    profiles = data.pop("profiles", None) or {}
    profiles.setdefault(DEFAULT_PROFILE, {})
    return data, profiles


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


#: Keys whose value may also take these types, whatever the default's type: ``data.augment``
#: names a preset of ``opt/augment.yaml`` or lists its ops (:func:`loader.augment.build_augment`);
#: ``infer.tta`` is on/off or lists transform names (:mod:`inference.tta`).
ALTERNATIVE_TYPES: dict[str, tuple[type, ...]] = {"data.augment": (str, list), "infer.tta": (bool, list)}


def _compatible(default: Any, value: Any) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float) and isinstance(value, int):
        return True
    return isinstance(value, type(default))


def merge(base: dict, update: dict, source: str, prefix: str = "") -> dict:
    """Return ``base`` updated by ``update``, refusing unknown keys and type changes.

    Mappings merge key by key; any other value (lists included) replaces the default, except
    a mapping of integer indices onto a list, which updates those items (``--set
    train.phases.0.epochs=3``). A default of ``{}`` or ``null`` accepts any content (free-form
    sections).

    Raises:
        UserError: naming ``source``, the dotted key, and what would be right.
    """
    if not isinstance(update, dict):
        raise UserError(f"{source}: '{prefix or '<top>'}' must be a mapping, got {_type_name(update)}")
    result = copy.deepcopy(base)
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if base and key not in base:
            close = difflib.get_close_matches(str(key), [str(k) for k in base], n=1, cutoff=0.0)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise UserError(f"{source}: unknown key '{dotted}'{hint}")
        default = base.get(key) if base else None
        if isinstance(default, dict) and default and isinstance(value, dict):
            result[key] = merge(default, value, source, f"{dotted}.")
            continue
        if isinstance(default, list) and isinstance(value, dict) and value and all(type(k) is int for k in value):
            result[key] = _merge_items(default, value, source, dotted)
            continue
        if not (_compatible(default, value) or isinstance(value, ALTERNATIVE_TYPES.get(dotted, ()))):
            raise UserError(
                f"{source}: key '{dotted}' expects {_type_name(default)} (default {default!r}), "
                f"got {_type_name(value)} {value!r}"
            )
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        result[key] = copy.deepcopy(value)
    return result


def stage_names(cfg: dict) -> list[str]:
    """The stages of a staged family's config, in training and inference order (the keys of
    its ``stages`` mapping); empty for a single-stage family."""
    stages = cfg.get("stages") or {}
    if not isinstance(stages, dict):
        raise UserError(f"config: 'stages' must be a mapping of stage name -> settings, got {_type_name(stages)}")
    return [str(name) for name in stages]


def _overlay(base: Any, update: Any) -> Any:
    """``base`` with ``update`` laid over it: mappings key by key, anything else replaced."""
    if not (isinstance(base, dict) and isinstance(update, dict)):
        return copy.deepcopy(update)
    result = copy.deepcopy(base)
    for key, value in update.items():
        result[key] = _overlay(base.get(key), value)
    return result


def stage_config(cfg: dict, name: str) -> dict:
    """The config of stage ``name`` of a staged family: the shared sections with the stage's
    own (``stages.<name>.model``, ``.data``, ``.train``, ``.infer``, ``.postproc``, ...) laid
    over them key by key (lists such as ``train.phases`` replaced), without ``stages`` and with
    ``stage: <name>``. A stage's network, data source, patch size, phases and inference window
    are all its own this way.

    Raises:
        UserError: ``name`` is not a stage (names the stages there are).
    """
    names = stage_names(cfg)
    if name not in names:
        raise UserError(f"stage '{name}' is not one of the stages of '{cfg.get('family')}': {names}")
    base = {key: value for key, value in cfg.items() if key != "stages"}
    result = _overlay(base, cfg["stages"][name] or {})
    result["stage"] = name
    return result


def last_stage_config(cfg: dict) -> dict:
    """The config of a staged family's last stage (what post-processes its results), else ``cfg``."""
    names = stage_names(cfg)
    return stage_config(cfg, names[-1]) if names else cfg


def _merge_items(default: list, update: dict, source: str, dotted: str) -> list:
    """``default`` with the items at ``update``'s integer indices merged (see :func:`merge`)."""
    items = copy.deepcopy(default)
    for index, value in update.items():
        if not 0 <= index < len(items):
            raise UserError(f"{source}: index {index} of '{dotted}' is out of range (it has {len(items)} item(s))")
        if isinstance(items[index], dict) and isinstance(value, dict):
            items[index] = merge(items[index], value, source, f"{dotted}.{index}.")
        elif not _compatible(items[index], value):
            raise UserError(f"{source}: item '{dotted}.{index}' expects {_type_name(items[index])} "
                            f"(default {items[index]!r}), got {_type_name(value)} {value!r}")
        else:
            items[index] = copy.deepcopy(value)
    return items


def parse_override(text: str) -> dict:
    """Turn ``a.b.c=value`` into ``{'a': {'b': {'c': value}}}``, the value parsed as YAML."""
    if "=" not in text:
        raise UserError(f"--set '{text}': expected KEY=VALUE, e.g. train.seed=1")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"--set '{text}': empty key part; expected a dotted key like model.mode")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise UserError(f"--set '{text}': value '{raw}' is not valid YAML") from None
    for part in reversed(key.split(".")):
        value = {int(part) if part.isdigit() else part: value}
    return value


def load_config(
    family: str,
    profile: str | None = None,
    config_file: str | os.PathLike | None = None,
    overrides: Iterable[str] = (),
    defaults_path: str | os.PathLike | None = None,
) -> dict:
    """Resolve a run's configuration.

    Order: ``opt/<family>.yaml`` defaults ← profile (default ``paper``) ← ``config_file``
    ← each ``--set`` override in order. ``defaults_path`` replaces ``opt/<family>.yaml``
    (families registered by plugins keep their defaults beside their code).

    Returns:
        The resolved configuration as plain dicts/lists/scalars, with ``family`` and
        ``profile`` keys added at the top level.
    """
    defaults, profiles = load_family_defaults(family, defaults_path)
    source = Path(defaults_path) if defaults_path is not None else family_yaml(family)
    profile = profile or DEFAULT_PROFILE
    if profile not in profiles:
        close = difflib.get_close_matches(profile, list(profiles), n=1, cutoff=0.0)
        raise UserError(
            f"{source}: unknown profile '{profile}' (have {sorted(profiles)}; did you mean '{close[0]}'?)"
        )
    cfg = merge(defaults, profiles[profile] or {}, f"{source} profile '{profile}'")
    if config_file is not None:
        cfg = merge(cfg, read_yaml(config_file) or {}, str(config_file))
    for text in overrides:
        cfg = merge(cfg, parse_override(text), f"--set {text}")
    cfg["family"] = family
    cfg["profile"] = profile
    return cfg


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--profile``, ``--config`` and ``--set`` to a script's parser."""
    parser.add_argument("--profile", default=None, help=f"named profile in opt/<family>.yaml (default {DEFAULT_PROFILE})")
    parser.add_argument("--config", default=None, help="YAML file overriding the profile")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one key, value parsed as YAML (repeatable), e.g. --set train.seed=1",
    )


def add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--quiet`` and ``--verbose``."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quiet", action="store_true", help="only warnings and errors; no progress bars")
    group.add_argument("--verbose", action="store_true", help="debug messages")


#: Libraries whose debug records (e.g. PIL's per-chunk PNG decoding, thousands per epoch) stay
#: out of ``run.log``: they log from INFO up.
QUIET_LIBRARIES = ("PIL", "matplotlib", "h5py", "tifffile", "zarr", "numcodecs", "fsspec", "asyncio")


def setup_logging(run_dir: str | os.PathLike | None = None, quiet: bool = False, verbose: bool = False) -> None:
    """Log to stderr (level from --quiet/--verbose) and, with ``run_dir``, to ``run_dir/run.log``
    (everything of ours from DEBUG up; :data:`QUIET_LIBRARIES` from INFO up)."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    for library in QUIET_LIBRARIES:
        logging.getLogger(library).setLevel(logging.INFO)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.DEBUG)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(level)
    console.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root.addHandler(console)
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(Path(run_dir) / "run.log", encoding="utf-8")
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(file_handler)


def git_state() -> dict:
    """Current commit of the checkout and whether it has uncommitted changes."""

    def run(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = run("rev-parse", "HEAD")
    status = run("status", "--porcelain")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def package_versions(names: Iterable[str] = RECORDED_PACKAGES) -> dict:
    """Installed versions of the packages a run depends on (None when absent)."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write_run_record(run_dir: str | os.PathLike, cfg: dict, argv: list[str] | None = None) -> Path:
    """Write ``run_dir/run.yaml``: resolved config, argv, git state, versions, seed, host."""
    record = {
        "config": cfg,
        "argv": list(sys.argv if argv is None else argv),
        "git": git_state(),
        "versions": package_versions(),
        "seed": (cfg.get("train") or {}).get("seed") if isinstance(cfg.get("train"), dict) else None,
        "host": {"name": socket.gethostname(), "user": getpass.getuser(), "platform": platform.platform()},
    }
    path = Path(run_dir) / "run.yaml"
    with atomic_write(path, "w") as handle:
        yaml.safe_dump(record, handle, sort_keys=False)
    return path
