"""Published HoVer-Net checkpoints: state-dict name mapping, official checkpoint and ImageNet loading.

The official PyTorch checkpoints (vqdang/hover_net) are ``torch.save`` files holding a dict
whose ``'desc'`` entry is the state dict of the published ``HoVerNet`` (names like
``conv0./.weight``, ``d0.units.0.conv1/bn.weight``, ``decoder.np.u3.dense.units.0.
preact_bna/bn.weight``), entries sometimes prefixed ``module.`` (DataParallel); the files
converted from TensorFlow lack the batch-norm ``num_batches_tracked`` counters. Our module
names are cleaner; :data:`NAME_RULES` is the one table mapping both ways.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from misc.errors import UserError
from models.hovernet.net import HoVerNet, geometry_for

TYPE_INFO_DIR = Path(__file__).resolve().parents[2] / "opt" / "hovernet_type_info"
UNPOOL_NAME = "upsample2x.unpool_mat"
MODULE_PREFIX = "module."
MODE_PROBE_NAME = "decoder.np.u3.conva.weight"
TYPES_PROBE_NAME = "decoder.tp.u0.conv.weight"
DECODER_KSIZE_TO_MODE = {5: "original", 3: "fast"}
OFFICIAL_DATASETS = {("fast", 6): "pannuke", ("fast", 5): "monusac", ("original", 5): "consep"}
ENCODER_PREFIXES = ("conv0.", "d0.", "d1.", "d2.", "d3.")

# (published template, our template); {g} {u} {i} {s}: integers, {b}: branch, {p}: tensor name.
NAME_RULES: tuple[tuple[str, str], ...] = (
    ("conv0./.{p}", "stem.conv.{p}"),
    ("conv0.bn.{p}", "stem.bn.{p}"),
    ("d{g}.units.{u}.preact/bn.{p}", "encoder.{g}.units.{u}.preact_bn.{p}"),
    ("d{g}.units.{u}.conv{i}.{p}", "encoder.{g}.units.{u}.conv{i}.{p}"),
    ("d{g}.units.{u}.conv{i}/bn.{p}", "encoder.{g}.units.{u}.bn{i}.{p}"),
    ("d{g}.shortcut.{p}", "encoder.{g}.shortcut.{p}"),
    ("d{g}.blk_bna.bn.{p}", "encoder.{g}.out_bn.{p}"),
    ("conv_bot.{p}", "bottleneck.{p}"),
    ("decoder.{b}.u{s}.conva.{p}", "decoders.{b}.up{s}.conv_in.{p}"),
    ("decoder.{b}.u{s}.dense.units.{u}.preact_bna/bn.{p}", "decoders.{b}.up{s}.dense.units.{u}.preact_bn.{p}"),
    ("decoder.{b}.u{s}.dense.units.{u}.conv{i}.{p}", "decoders.{b}.up{s}.dense.units.{u}.conv{i}.{p}"),
    ("decoder.{b}.u{s}.dense.units.{u}.conv{i}/bn.{p}", "decoders.{b}.up{s}.dense.units.{u}.bn{i}.{p}"),
    ("decoder.{b}.u{s}.dense.blk_bna.bn.{p}", "decoders.{b}.up{s}.dense.out_bn.{p}"),
    ("decoder.{b}.u{s}.convf.{p}", "decoders.{b}.up{s}.conv_out.{p}"),
    ("decoder.{b}.u0.bn.{p}", "decoders.{b}.head.bn.{p}"),
    ("decoder.{b}.u0.conv.{p}", "decoders.{b}.head.conv.{p}"),
)
_FIELD_PATTERNS = {"g": r"\d+", "u": r"\d+", "i": r"\d+", "s": r"[123]", "b": r"np|hv|tp", "p": r"[a-z_]+"}


def _template_regex(template: str) -> re.Pattern[str]:
    """Compile a name template into a full-match regex with one named group per field."""
    parts = re.split(r"\{(\w)\}", template)
    pattern = "".join(
        re.escape(part) if idx % 2 == 0 else f"(?P<{part}>{_FIELD_PATTERNS[part]})" for idx, part in enumerate(parts)
    )
    return re.compile(pattern)


_TO_OURS = tuple((_template_regex(published), ours) for published, ours in NAME_RULES)
_TO_PUBLISHED = tuple((_template_regex(ours), published) for published, ours in NAME_RULES)


def _translate(name: str, rules: tuple[tuple[re.Pattern[str], str], ...]) -> str | None:
    """Apply the first rule whose pattern matches the whole name; None when none does."""
    for pattern, target in rules:
        match = pattern.fullmatch(name)
        if match:
            return target.format(**match.groupdict())
    return None


def published_to_ours(name: str) -> str | None:
    """Our state-dict name for a published one; None for ``upsample2x.unpool_mat`` (a constant).

    Raises:
        UserError: the name is not a published HoVer-Net name.
    """
    if name == UNPOOL_NAME:
        return None
    ours = _translate(name, _TO_OURS)
    if ours is None:
        raise UserError(f"'{name}' is not a state-dict name of the published HoVer-Net")
    return ours


def ours_to_published(name: str) -> str:
    """The published state-dict name for one of ours.

    Raises:
        UserError: the name is not one of :class:`HoVerNet`'s.
    """
    published = _translate(name, _TO_PUBLISHED)
    if published is None:
        raise UserError(f"'{name}' is not a state-dict name of models.hovernet.HoVerNet")
    return published


def strip_module_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict without DataParallel's ``module.`` prefix on its names."""
    return {name.removeprefix(MODULE_PREFIX): tensor for name, tensor in state.items()}


def from_published_state(state: Mapping[str, torch.Tensor], source: str = "state dict") -> dict[str, torch.Tensor]:
    """A published-layout state dict renamed to ours (``module.`` stripped, unpool constant dropped).

    Raises:
        UserError: a name is not a published HoVer-Net name (``source`` names the file).
    """
    renamed = {}
    for name, tensor in strip_module_prefix(state).items():
        try:
            ours = published_to_ours(name)
        except UserError as err:
            raise UserError(f"{source}: {err}") from err
        if ours is not None:
            renamed[ours] = tensor
    return renamed


def to_published_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict renamed to the published layout, with the published ``upsample2x.unpool_mat``."""
    published = {ours_to_published(name): tensor for name, tensor in state.items()}
    published[UNPOOL_NAME] = torch.ones(2, 2)
    return published


def detect_config(state: Mapping[str, torch.Tensor], source: str = "state dict") -> tuple[str, int]:
    """Mode and ``nr_types`` of a published-layout state dict, from its tensor shapes.

    The mode comes from the decoder kernel (``decoder.np.u3.conva.weight``: 5x5 original,
    3x3 fast); ``nr_types`` from the TP head's output channels (0 when there is no TP branch).

    Raises:
        UserError: the state dict is not a published HoVer-Net one.
    """
    state = strip_module_prefix(state)
    if MODE_PROBE_NAME not in state:
        examples = ", ".join(sorted(state)[:3]) or "nothing"
        raise UserError(
            f"{source} is not a HoVer-Net state dict: expected published names such as "
            f"'conv0./.weight' and '{MODE_PROBE_NAME}', found {examples}"
        )
    ksize = state[MODE_PROBE_NAME].shape[-1]
    if ksize not in DECODER_KSIZE_TO_MODE:
        raise UserError(
            f"{source}: '{MODE_PROBE_NAME}' has kernel {ksize}x{ksize}; HoVer-Net has 5x5 (original) or 3x3 (fast)"
        )
    nr_types = state[TYPES_PROBE_NAME].shape[0] if TYPES_PROBE_NAME in state else 0
    return DECODER_KSIZE_TO_MODE[ksize], nr_types


def read_type_info(path: str | Path) -> dict[int, tuple[str, tuple[int, int, int]]]:
    """Read a ``type_info.json`` in the official layout ``{"id": [name, [r, g, b]]}``.

    Returns:
        ``{type_id: (name, (r, g, b))}`` with 0 = background, colours 0-255.

    Raises:
        UserError: missing file or an entry not of that layout.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"type-info file '{path}' does not exist")
    try:
        raw = json.loads(path.read_text())
        return {int(key): (str(name), tuple(int(c) for c in colour)) for key, (name, colour) in raw.items()}
    except (ValueError, TypeError, AttributeError) as err:
        raise UserError(
            f"type-info file '{path}' must map type ids to [name, [r, g, b]] like the official "
            f"type_info.json ({err})"
        ) from err


def bundled_type_info(dataset: str) -> dict[int, tuple[str, tuple[int, int, int]]]:
    """Type names and colours shipped in ``opt/hovernet_type_info/<dataset>.json``.

    Raises:
        UserError: no such bundled file (the message lists the available ones).
    """
    path = TYPE_INFO_DIR / f"{dataset}.json"
    if not path.is_file():
        have = sorted(p.stem for p in TYPE_INFO_DIR.glob("*.json"))
        raise UserError(f"no bundled type info '{dataset}' in {TYPE_INFO_DIR} (have {have})")
    return read_type_info(path)


def read_checkpoint_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an official checkpoint file (``'desc'`` entry, or a bare state dict).

    Read with ``torch.load(weights_only=True)`` on the CPU.

    Raises:
        UserError: missing or unreadable file, or no state dict in it.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types for a file that is not a checkpoint
        raise UserError(
            f"'{path}' is not a readable PyTorch checkpoint ({type(err).__name__}); expected a HoVer-Net "
            f"checkpoint: a torch.save dict whose 'desc' entry is the state dict"
        ) from err
    return _state_from_payload(payload, f"checkpoint '{path}'")


def _state_from_payload(payload: object, source: str) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint: its ``'desc'`` entry, or the payload itself."""
    state = payload.get("desc", payload) if isinstance(payload, Mapping) else None
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(
            f"{source} holds no state dict: expected a dict whose 'desc' entry maps names to tensors "
            f"(the official HoVer-Net checkpoint layout)"
        )
    return dict(state)


def _fill_batch_counters(state: dict[str, torch.Tensor], net: HoVerNet) -> dict[str, torch.Tensor]:
    """Add the ``num_batches_tracked`` counters TensorFlow-converted checkpoints lack (as 0)."""
    missing = {
        name: torch.zeros((), dtype=torch.long)
        for name in net.state_dict()
        if name.endswith("num_batches_tracked") and name not in state
    }
    return {**state, **missing}


def state_mismatches(
    expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], require_all: bool = True
) -> list[str]:
    """Problems of ``state`` against ``expected`` names and shapes, up to five names per kind.

    Kinds: ``missing`` (only with ``require_all``), ``unexpected``, ``wrong shape``; empty = fits.
    """
    missing = [name for name in expected if name not in state] if require_all else []
    unexpected = [name for name in state if name not in expected]
    wrong = [
        f"{name} {tuple(tensor.shape)} (expected {tuple(expected[name].shape)})"
        for name, tensor in state.items()
        if name in expected and tensor.shape != expected[name].shape
    ]
    return [
        f"{label}: {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
        if items
    ]


def load_official_checkpoint(
    path_or_state: str | Path | Mapping, type_info: str | Path | None = None
) -> tuple[HoVerNet, dict]:
    """Build a :class:`HoVerNet` from an official checkpoint, detecting its mode and types.

    Args:
        path_or_state: a checkpoint file, or a loaded checkpoint (``{'desc': state}`` or the
            state dict), in the published layout (``module.`` prefixes allowed).
        type_info: a ``type_info.json`` overriding the bundled one.

    Returns:
        ``(net, info)``: the network in eval mode on the CPU, and ``{'mode', 'nr_types',
        'dataset', 'type_info'}`` where ``dataset`` is ``'pannuke'`` (fast, 6 types),
        ``'monusac'`` (fast, 5) or ``'consep'`` (original, 5) for the official typed
        checkpoints and None otherwise, and ``type_info`` is ``{id: (name, (r, g, b))}`` from
        ``type_info`` or ``opt/hovernet_type_info/<dataset>.json`` (None when neither applies).

    Raises:
        UserError: unreadable file, or not a HoVer-Net state dict (names the file and what was
            expected).
    """
    if isinstance(path_or_state, Mapping):
        source = "checkpoint state"
        state = _state_from_payload(path_or_state, source)
    else:
        source = f"checkpoint '{path_or_state}'"
        state = read_checkpoint_state(path_or_state)
    mode, nr_types = detect_config(state, source)
    net = HoVerNet(nr_types=nr_types, mode=mode)
    ours = _fill_batch_counters(from_published_state(state, source), net)
    problems = state_mismatches(net.state_dict(), ours)
    if problems:
        raise UserError(f"{source} does not match HoVer-Net(mode='{mode}', nr_types={nr_types}): {'; '.join(problems)}")
    net.load_state_dict(ours, strict=True)
    dataset = OFFICIAL_DATASETS.get((mode, nr_types))
    if type_info is not None:
        types = read_type_info(type_info)
    else:
        types = bundled_type_info(dataset) if dataset else None
    return net.eval(), {"mode": mode, "nr_types": nr_types, "dataset": dataset, "type_info": types}


def load_encoder_weights(net: HoVerNet, path: str | Path) -> list[str]:
    """Load ImageNet pre-activation ResNet-50 weights into ``net.stem`` and ``net.encoder``.

    The file is laid out as the official ``ImageNet-ResNet50-Preact_pytorch.tar``: a dict whose
    ``'desc'`` is a state dict with the published encoder names (``conv0./.weight``,
    ``d0.units.0.conv1.weight``, ...); other entries (classifier, decoder) are ignored.

    Returns:
        Our names of stem/encoder entries the file did not provide (left as initialised).

    Raises:
        UserError: unreadable file, no encoder weights in it, or a shape that does not fit
            (e.g. ``width`` or ``units`` differ from the published ones).
    """
    source = f"pretrained encoder '{path}'"
    state = read_checkpoint_state(path)
    encoder_published = {
        name: tensor for name, tensor in strip_module_prefix(state).items() if name.startswith(ENCODER_PREFIXES)
    }
    encoder_state = from_published_state(encoder_published, source)
    if not encoder_state:
        raise UserError(f"{source} holds no encoder weights: expected published names such as 'conv0./.weight'")
    expected = {name: tensor for name, tensor in net.state_dict().items() if name.startswith(("stem.", "encoder."))}
    problems = state_mismatches(expected, encoder_state, require_all=False)
    if problems:
        raise UserError(
            f"{source} does not fit the encoder (model.units and model.width must be the published ones): "
            + "; ".join(problems)
        )
    net.load_state_dict(encoder_state, strict=False)
    return [name for name in expected if name not in encoder_state]


def adopt_published_checkpoint(payload: object, source: str) -> tuple[list[str], dict[str, torch.Tensor]] | None:
    """Config overrides and our-named state dict for a loaded official checkpoint.

    Args:
        payload: what ``torch.load(weights_only=True)`` returned for the file.
        source: the file, for messages.

    Returns:
        ``(overrides, state)`` — ``model.mode``, ``model.nr_types`` and the published window
        geometry as ``--set`` strings, and the state dict in our names — or None when the
        payload is not a published HoVer-Net state dict.
    """
    if not isinstance(payload, Mapping):
        return None
    state = payload.get("desc", payload)
    if not isinstance(state, Mapping) or MODE_PROBE_NAME not in strip_module_prefix(state):
        return None
    mode, nr_types = detect_config(state, source)
    geometry = geometry_for(mode)
    ours = from_published_state(state, source)
    counters = {
        name.replace("running_mean", "num_batches_tracked"): torch.zeros((), dtype=torch.long)
        for name in ours
        if name.endswith("running_mean")
    }
    overrides = [
        f"model.mode={mode}",
        f"model.nr_types={nr_types}",
        f"infer.input_size={geometry.input_size}",
        f"infer.output_size={geometry.output_size}",
    ]
    return overrides, {**counters, **ours}
