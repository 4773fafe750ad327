"""Segmentation class sets of HistoSegNet and how each is derived from the classifier's classes.

A *pass* turns the classifier's Grad-CAMs into one class set (SEEDS 4.3, 4.5): the published
ones are ``morph`` (29 ADP morphological types incl. Background), ``func`` (Background,
Other, exocrine gland G.O, endocrine gland G.N, transport vessel T) and ``glas`` (Other,
gland G.O). ``both`` runs ``morph`` then ``func``. A pass names:

- its class-info file (``type_info.json`` layout ``{"id": [name, [r, g, b]]}``, ids 0..K-1;
  bundled ones in ``opt/histosegnet_class_info/``);
- ``background``: the class synthesised from brightness, and the ``background_exceptions``
  whose Grad-CAMs are subtracted from it (tissue that is bright: adipose, gland lumen, vessels);
- ``other``: the class synthesised as ``0.05 (1 - max of the other maps)``, and ``other_from``,
  classes of an earlier pass whose class-subtracted maps also feed it (``func``: the adipose
  types of ``morph``, as published);
- ``forced``: classes that pass their threshold on every patch (GlaS: gland);
- ``gradcam_excluded``: synthesised classes left out of the Grad-CAM-only stage's argmax.

Every other class of the file must be one of the classifier's classes (by name).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from misc.errors import UserError

CLASS_INFO_DIR = Path(__file__).resolve().parents[2] / "opt" / "histosegnet_class_info"
ADIPOSE = ("A.W", "A.B", "A.M")


@dataclass(frozen=True)
class ClassInfo:
    """Names and display colours of a class set; index = label value."""

    names: tuple[str, ...]
    colours: tuple[tuple[int, int, int], ...]
    source: str

    def index(self, name: str) -> int:
        """Label of ``name``; UserError naming the file when it is not in the set."""
        if name not in self.names:
            raise UserError(f"class-info '{self.source}' has no class '{name}' (have {list(self.names)})")
        return self.names.index(name)


def read_class_info(name_or_path: str | Path) -> ClassInfo:
    """A bundled class set (``adp_morph``, ``adp_func``, ``glas``, ``synthetic_tissue``) or a
    ``type_info.json``-layout file.

    Raises:
        UserError: no such file, not that layout, or ids that are not 0..K-1.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = CLASS_INFO_DIR / f"{name_or_path}.json"
    if not path.is_file():
        have = sorted(p.stem for p in CLASS_INFO_DIR.glob("*.json"))
        raise UserError(f"class-info file '{name_or_path}' not found (a path, or one of the bundled {have})")
    try:
        raw = json.loads(path.read_text())
        entries = {int(key): (str(name), tuple(int(c) for c in colour)) for key, (name, colour) in raw.items()}
    except (ValueError, TypeError, AttributeError) as err:
        raise UserError(f"class-info file '{path}' must map ids to [name, [r, g, b]] ({err})") from None
    if sorted(entries) != list(range(len(entries))) or not entries:
        raise UserError(f"class-info file '{path}' has ids {sorted(entries)}; expected 0..K-1")
    if any(len(colour) != 3 or not all(0 <= c <= 255 for c in colour) for _, colour in entries.values()):
        raise UserError(f"class-info file '{path}': every colour must be [r, g, b] in 0..255")
    return ClassInfo(
        names=tuple(entries[i][0] for i in range(len(entries))),
        colours=tuple(entries[i][1] for i in range(len(entries))),  # type: ignore[misc]
        source=str(path),
    )


@dataclass(frozen=True)
class SegmentationPass:
    """One class set and the rules that synthesise its non-classifier classes (see module doc)."""

    name: str
    class_info: str
    background: str | None = None
    background_exceptions: tuple[str, ...] = ()
    other: str | None = None
    other_from: tuple[str, ...] = ()
    forced: tuple[str, ...] = ()
    gradcam_excluded: tuple[str, ...] = field(default=())

    @classmethod
    def from_mapping(cls, spec: Mapping[str, Any], source: str) -> "SegmentationPass":
        """A pass from a YAML mapping of the field names (lists for the tuples)."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(spec) - known)
        if unknown or "name" not in spec or "class_info" not in spec:
            raise UserError(f"{source}: a pass needs 'name' and 'class_info' and takes only {sorted(known)} (got {sorted(spec)})")
        values = {key: (tuple(str(v) for v in value) if isinstance(value, (list, tuple)) else value) for key, value in spec.items()}
        return cls(**values)


MORPH = SegmentationPass(
    name="morph", class_info="adp_morph", background="Background", background_exceptions=ADIPOSE,
    gradcam_excluded=("Background",),
)
FUNC = SegmentationPass(
    name="func", class_info="adp_func", background="Background", background_exceptions=("G.O", "G.N", "T"),
    other="Other", other_from=ADIPOSE, gradcam_excluded=("Background", "Other"),
)
GLAS = SegmentationPass(name="glas", class_info="glas", other="Other", forced=("G.O",))
SYNTHETIC = SegmentationPass(
    name="tissue", class_info="synthetic_tissue", background="background", background_exceptions=("adipose",),
    gradcam_excluded=("background",),
)
#: ``segmentation.mode`` -> passes in the order they run (``func`` reads ``morph``'s adipose maps).
PRESETS: dict[str, tuple[SegmentationPass, ...]] = {
    "morph": (MORPH,),
    "func": (MORPH, FUNC),
    "both": (MORPH, FUNC),
    "glas": (GLAS,),
    "synthetic": (SYNTHETIC,),
}


def passes_for(mode: str, custom: Sequence[Mapping[str, Any]] | None = None) -> tuple[SegmentationPass, ...]:
    """The passes of ``segmentation.mode`` (``custom``: those of ``segmentation.passes``).

    Raises:
        UserError: an unknown mode, or ``custom`` without passes.
    """
    if mode == "custom":
        if not custom:
            raise UserError("segmentation.mode is 'custom' but segmentation.passes is empty")
        return tuple(SegmentationPass.from_mapping(spec, f"segmentation.passes[{i}]") for i, spec in enumerate(custom))
    if mode not in PRESETS:
        raise UserError(f"segmentation.mode '{mode}' is not one of {sorted(PRESETS) + ['custom']}")
    return PRESETS[mode]


@dataclass(frozen=True)
class ResolvedPass:
    """A pass bound to the classifier's classes.

    Attributes:
        spec: the pass.
        info: its class set (K classes).
        source: (K,) classifier index of each class, -1 for synthesised classes.
        background, other: labels of the synthesised classes, or None.
        exceptions: labels of the background-exception classes.
        excluded: labels left out of the Grad-CAM-only argmax.
        forced: classifier indices that always pass.
    """

    spec: SegmentationPass
    info: ClassInfo
    source: tuple[int, ...]
    background: int | None
    other: int | None
    exceptions: tuple[int, ...]
    excluded: tuple[int, ...]
    forced: tuple[int, ...]


def resolve_pass(spec: SegmentationPass, classifier_classes: Sequence[str]) -> ResolvedPass:
    """Bind ``spec`` to the classifier's class names.

    Raises:
        UserError: a class of the set that the classifier does not predict (naming both), or
            synthesised/exception classes missing from the set.
    """
    info = read_class_info(spec.class_info)
    synthesised = {name for name in (spec.background, spec.other) if name is not None}
    classes = list(classifier_classes)
    missing = [name for name in info.names if name not in synthesised and name not in classes]
    if missing:
        raise UserError(
            f"segmentation pass '{spec.name}': classes {missing} of '{info.source}' are not among the "
            f"classifier's classes (model.classes: {classes})"
        )
    absent = [name for name in spec.forced if name not in classes]
    if absent:
        raise UserError(f"segmentation pass '{spec.name}': forced classes {absent} are not in model.classes {classes}")
    return ResolvedPass(
        spec=spec,
        info=info,
        source=tuple(-1 if name in synthesised else classes.index(name) for name in info.names),
        background=info.index(spec.background) if spec.background else None,
        other=info.index(spec.other) if spec.other else None,
        exceptions=tuple(info.index(name) for name in spec.background_exceptions if name in info.names),
        excluded=tuple(info.index(name) for name in spec.gradcam_excluded),
        forced=tuple(classes.index(name) for name in spec.forced),
    )
