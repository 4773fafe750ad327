"""The histosegnet family: registry and profiles, targets, input statistics, loss, schedule, patch scores."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import config
import loader
from engine.data import sample_dict, synthetic_dataset
from engine.optim import schedule_factor
from engine.run import RunRequest, run
from misc.errors import UserError
from models import get_family
from models.histosegnet.family import HistoSegNetFamily, class_weights, weighted_bce


def demo_family() -> HistoSegNetFamily:
    return get_family("histosegnet")(config.load_config("histosegnet", "demo"))


@pytest.mark.parametrize("profile", ["paper", "cpu", "demo"])
def test_profiles_resolve_and_build(profile: str) -> None:
    family = get_family("histosegnet")(config.load_config("histosegnet", profile))
    assert family.name == "histosegnet"
    passes = family.resolved_passes()
    assert [p.spec.name for p in passes] == (["morph", "func"] if profile == "paper" else ["tissue"])
    assert family.crf_params().bilat_compat == (200.0 if profile == "demo" else 50.0)  # demo: tuned on synthetic tiles
    if profile == "demo":
        net = family.build_network()
        assert net(torch.zeros(1, 3, 224, 224)).shape == (1, 4)


def test_paper_schedule_and_optimiser() -> None:
    phase = config.load_config("histosegnet")["train"]["phases"][0]
    assert phase["optimizer"] == {"name": "sgd", "lr": 1.0e-3, "momentum": 0.9, "nesterov": True}
    assert phase["epochs"] == 80 and phase["batch_size"] == 16
    spec = phase["schedule"]
    lr = [1e-3 * schedule_factor(spec, e, 80) for e in (0.0, 2.5, 5.0, 20.0, 22.5, 40.0, 62.5)]
    assert lr == pytest.approx([1e-3, 2e-2, 1e-3, 5e-4, 1e-2, 2.5e-4, 2.5e-3])


def test_target_builder_resizes_and_checks_labels() -> None:
    builder = demo_family().target_builder()
    sample = {"image": np.full((300, 260, 3), 200, np.uint8), "labels": np.array([1, 0, 0, 1])}
    out = builder(sample)
    assert out["image"].shape == (224, 224, 3) and out["labels"].tolist() == [1.0, 0.0, 0.0, 1.0]
    from_types = builder({"image": sample["image"], "type_map": np.array([[0, 2], [2, 4]])})
    assert from_types["labels"].tolist() == [0.0, 1.0, 0.0, 1.0]
    with pytest.raises(UserError, match="names 4 classes"):
        builder({"image": sample["image"], "labels": np.array([1, 0])})
    with pytest.raises(UserError, match="0 or 1"):
        builder({"image": sample["image"], "labels": np.array([1, 2, 0, 0])})


class View(list):
    """Stand-in for the engine's image view: a list of images with the samples behind it."""

    def __init__(self, samples: list[dict]) -> None:
        super().__init__(s["image"] for s in samples)
        self.samples = samples


def test_scalar_input_statistics_and_class_weights() -> None:
    rng = np.random.default_rng(0)
    samples = [{"image": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "labels": np.array(lab)}
               for lab in ([1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 0, 1])]
    stats = demo_family().fit_norm_stats(View(samples))
    pixels = np.concatenate([s["image"].reshape(-1) for s in samples]).astype(np.float64)
    assert stats["mean"] == pytest.approx([pixels.mean()]) and stats["std"] == pytest.approx([pixels.std()])
    assert stats["class_weights"] == pytest.approx([4 / 3, 2.0, 1.0, 4.0])
    buffer = io.BytesIO()
    torch.save(stats, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True) == stats  # plain Python numbers: checkpoints load with weights_only
    family = demo_family()
    family.cfg = config.load_config("histosegnet", "demo", overrides=["model.input_norm={mean: 193.09203, std: 56.450138}"])
    family.norm_stats = family.fit_norm_stats([samples[0]["image"]])
    assert family.norm_stats["mean"] == [193.09203] and "class_weights" not in family.norm_stats
    x = torch.full((1, 3, 2, 2), 249.54217)
    assert torch.allclose(family.standardise(x), torch.ones_like(x), atol=1e-5)
    family.cfg["model"]["input_norm"] = "per_channel"
    with pytest.raises(UserError, match="input_norm"):
        family.fit_norm_stats([samples[0]["image"]])


def test_class_weighted_bce() -> None:
    assert class_weights(np.array([[1, 0, 0], [1, 1, 0]])).tolist() == [1.0, 2.0, 1.0]
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    terms = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    weights = torch.tensor([1.0, 3.0])
    assert weighted_bce(logits, labels, weights) == pytest.approx(float((terms * weights).mean()))
    assert weighted_bce(logits, labels, weights, "sample_argmax") == pytest.approx(
        float((terms.mean(1) * torch.tensor([1.0, 3.0])).mean()))
    assert weighted_bce(logits, labels, None) == pytest.approx(float(terms.mean()))


def test_patch_prediction_postprocess_and_scores() -> None:
    family = demo_family()
    family.norm_stats = {"mean": [128.0], "std": [50.0]}
    net = family.build_network().eval()
    out = family.predict(net, torch.rand(2, 3, 224, 224) * 255)
    assert out["class_prob"].shape == (2, 4, 224, 224) and "gradcam" not in out
    family.cfg["infer"]["gradcam"] = True
    out = family.predict(net, torch.rand(2, 3, 112, 112) * 255)  # windows resized to the input and back
    assert out["gradcam"].shape == (2, 4, 112, 112)
    raw = {"class_prob": np.tile(np.array([0.9, 0.2, 0.6, 0.1], np.float32), (4, 4, 1))}
    result = family.postprocess(raw, mag=40)
    assert result["labels"].tolist() == [1.0, 0.0, 1.0, 0.0]
    scores = family.evaluate(result, {"labels": np.array([1, 0, 0, 0])})
    assert scores == pytest.approx({"accuracy": 0.75, "exact": 0.0, "f1": 2 / 3})


def test_engine_serves_synthetic_tissue_tiles_with_patch_labels() -> None:
    dataset = synthetic_dataset(2, seed=0, size=64, kind="tissue")
    sample = sample_dict(dataset[1])
    assert sample["image"].shape == (64, 64, 3) and sample["labels"].shape == (4,) and "inst_map" not in sample
    assert dataset.records[0].class_names == ("epithelium", "stroma", "lymphoid", "adipose")
    with pytest.raises(UserError, match="data.synthetic.kind"):
        synthetic_dataset(1, seed=0, size=64, kind="glands")


def test_data_with_other_classes_is_refused(tmp_path) -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    (tmp_path / "images").mkdir()
    from misc.io import write_image

    write_image(tmp_path / "images" / "a.png", image)
    (tmp_path / "labels.csv").write_text("name,epithelium,stroma,muscle,adipose\na,1,0,0,1\n")
    samples = loader.read_dataset("patch_labels", tmp_path)
    with pytest.raises(UserError, match=r"unknown \['muscle'\], missing \['lymphoid'\]"):
        demo_family().fit_norm_stats(View([{"image": s.image, "labels": s.labels, "class_names": s.class_names,
                                            "name": s.name} for s in samples]))
    paper = get_family("histosegnet")(config.load_config("histosegnet"))
    with pytest.raises(UserError, match="model.classes"):
        paper.fit_norm_stats(View([sample_dict(synthetic_dataset(1, 0, 32, kind="tissue")[0])
                                   | {"class_names": ("epithelium", "stroma", "lymphoid", "adipose")}]))


@pytest.mark.parametrize("override, message", [
    ("postproc.crf.bilat_srgb=-2", "bilat_srgb"),
    ("segmentation.mode=morph", "not among the classifier's classes"),
    ("model.width=0", "model.width"),
])
def test_bad_settings_stop_before_training(override: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        run(RunRequest(model="histosegnet", profile="demo", overrides=[override], summary=True))
