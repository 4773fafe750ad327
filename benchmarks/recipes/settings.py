"""The benchmark recipes' settings (``benchmarks/recipes/recipes.yaml``), read by the shell recipes
and by ``python -m benchmarks.families``.

    python -m benchmarks.recipes.settings RECIPE FIELD

prints one field of a recipe for a shell recipe, one word per line: ``train-options`` (the
recipe's own ``--set`` options for any profile; the shell recipes add their data set's split
themselves), ``cpu-options`` (those of the ``cpu`` profile only),
``cpu-ceiling``, ``win``, ``step``, ``family`` or ``split`` (its data set's split file).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import yaml

from misc.errors import UserError, cli_main

SETTINGS = Path(__file__).with_name("recipes.yaml")
FIELDS = ("train-options", "cpu-options", "process-options", "cpu-ceiling", "win", "step", "family", "split")


@dataclass(frozen=True)
class Dataset:
    """One data set of the recipes (see the comments of ``recipes.yaml``)."""

    name: str
    folder: str | None = None
    split: str | None = None
    suffix: str = ".png"
    extract: str | None = None
    train_data: str = "{root}"
    train_set: tuple[str, ...] = ()
    gt: str | None = None
    cohort: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    """One family on one data set: ``set`` for any profile, ``cpu`` for the cpu profile only;
    ``profiles`` the family's own profile for a benchmark profile (e.g. ``{cpu: consep}``),
    ``checkpoint`` the file of ``run/checkpoints/`` to infer with, ``process`` further
    ``process.py`` options (e.g. a ``--sweep``), ``score`` a scoring command run after
    ``process.py`` whose JSON lines replace ``metrics.json`` (see ``recipes.yaml``)."""

    name: str
    family: str
    dataset: Dataset
    win: int | None = None
    step: int | None = None
    set: tuple[str, ...] = ()
    cpu: tuple[str, ...] = ()
    cpu_ceiling: int | None = None
    profiles: dict = field(default_factory=dict)
    checkpoint: str | None = None
    process: tuple[str, ...] = ()
    score: str | None = None

    def profile(self, profile: str) -> str:
        """The family's profile for the benchmark's ``profile`` (``profiles`` maps them; default the same name)."""
        return str(self.profiles.get(profile, profile))

    def overrides(self, profile: str | None, planned: bool) -> list[str]:
        """``KEY=VALUE`` train.py overrides: the data set's, the recipe's, then the cpu profile's
        (``cpu_ceiling`` when ``planned``: the epochs the budget planner may keep at most)."""
        sets = [*self.dataset.train_set, *self.set]
        if profile == "cpu":
            sets += list(self.cpu)
            if planned and self.cpu_ceiling is not None:
                sets.append(f"train.phases.0.epochs={self.cpu_ceiling}")
        return sets


@dataclass(frozen=True)
class Task:
    """One table of ``benchmarks.families``: recipes on one data set, their scores and overlay.

    Attributes:
        scores: column name -> ``section.key...`` path into process.py's ``metrics.json``
            (``*`` matches several keys: one column per match).
        formats, type_info: ``process.py --formats`` and ``--type-info`` (None: the default, the family's).
        per: unit of the inference seconds, ``image`` (per 1000x1000 px) or ``mm2`` (per mm² of slide).
    """

    name: str
    title: str
    recipes: tuple[Recipe, ...]
    scores: dict[str, str]
    formats: str | None = None
    type_info: str | None = None
    overlay: str | None = None
    per: str = "image"


@dataclass(frozen=True)
class Settings:
    datasets: dict[str, Dataset]
    recipes: dict[str, Recipe]
    tasks: dict[str, Task]


def _section(raw: dict, key: str, source: Path) -> dict:
    value = raw.get(key)
    if not isinstance(value, dict) or not value:
        raise UserError(f"{source}: '{key}' must be a non-empty mapping")
    return value


def _build(cls: type, name: str, entry: object, source: Path, **fixed: object) -> object:
    """``cls(name=name, **entry, **fixed)``; lists become tuples; unknown keys name the entry."""
    if not isinstance(entry, dict):
        raise UserError(f"{source}: '{name}' must be a mapping, got {entry!r}")
    values = {key: tuple(value) if isinstance(value, list) else value for key, value in entry.items()}
    try:
        return cls(name=name, **{**values, **fixed})
    except TypeError as err:
        raise UserError(f"{source}: '{name}': {err}") from None


def load_settings(path: str | Path = SETTINGS) -> Settings:
    """Read and check a settings file (``recipes.yaml`` by default).

    Raises:
        UserError: unreadable YAML, a missing section, an unknown key, or a recipe or task naming
            a data set or recipe that does not exist.
    """
    source = Path(path)
    try:
        raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{source}: cannot read the recipe settings ({err})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{source}: expected a mapping with datasets, recipes and tasks")
    datasets = {name: _build(Dataset, name, entry, source) for name, entry in _section(raw, "datasets", source).items()}
    recipes = {}
    for name, entry in _section(raw, "recipes", source).items():
        dataset = (entry or {}).get("dataset") if isinstance(entry, dict) else None
        if dataset not in datasets:
            raise UserError(f"{source}: recipe '{name}' names data set {dataset!r}; have {sorted(datasets)}")
        recipes[name] = _build(Recipe, name, entry, source, dataset=datasets[dataset])
    tasks = {}
    for name, entry in _section(raw, "tasks", source).items():
        names = (entry or {}).get("recipes") if isinstance(entry, dict) else None
        unknown = [r for r in names or [None] if r not in recipes]
        if unknown:
            raise UserError(f"{source}: task '{name}' names recipes {unknown}; have {sorted(recipes)}")
        if len({recipes[r].dataset.name for r in names}) != 1:
            raise UserError(f"{source}: task '{name}' mixes data sets; a task compares families on one data set")
        tasks[name] = _build(Task, name, entry, source, recipes=tuple(recipes[r] for r in names))
    return Settings(datasets, recipes, tasks)


def field_words(recipe: Recipe, name: str) -> list[str]:
    """The words ``python -m benchmarks.recipes.settings RECIPE FIELD`` prints."""
    if name in ("train-options", "cpu-options"):
        sets = recipe.set if name == "train-options" else recipe.cpu
        return [word for text in sets for word in ("--set", text)]
    if name == "process-options":
        return list(recipe.process)
    value = {"cpu-ceiling": recipe.cpu_ceiling, "win": recipe.win, "step": recipe.step, "family": recipe.family,
             "split": recipe.dataset.split}[name]
    if value is None:
        raise UserError(f"recipe '{recipe.name}' has no {name}")
    return [str(value)]


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    """Print one field of a recipe, one word per line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recipes.settings", description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="a recipe of benchmarks/recipes/recipes.yaml, e.g. consep_hovernet")
    parser.add_argument("field", choices=FIELDS)
    args = parser.parse_args(argv)
    recipes = load_settings().recipes
    if args.recipe not in recipes:
        raise UserError(f"unknown recipe '{args.recipe}'; have {sorted(recipes)}")
    print("\n".join(field_words(recipes[args.recipe], args.field)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
