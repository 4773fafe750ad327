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
from models.histosegnet.family import HistoSegNetFamily, class_weights, classifier_input, weighted_bce


def demo_family() -> HistoSegNetFamily:
    return get_family("histosegnet")(config.load_config("histosegnet", "demo"))


@pytest.mark.parametrize("profile, passes, output", [
    ("paper", ["morph", "func"], ("Background", "Other", "G.O", "G.N", "T")),
    ("cpu", ["tissue"], ("background", "epithelium", "stroma", "lymphoid", "adipose")),
    ("demo", ["tissue"], ("background", "epithelium", "stroma", "lymphoid", "adipose")),
    ("consep", ["consep"], ("tissue", "other", "inflammatory", "epithelial", "spindle-shaped", "background")),
])
def test_profiles_resolve_and_build(profile: str, passes: list[str], output: tuple[str, ...]) -> None:
    family = get_family("histosegnet")(config.load_config("histosegnet", profile))
    assert family.name == "histosegnet"
    assert family.task_for("train") == "patch" and family.task_for("infer") == "semantic" and family.needs_grad
    assert [p.spec.name for p in family.resolved_passes()] == passes
    assert tuple(name for name, _ in family.class_info().values()) == output  # the last pass's classes
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


def test_patches_smaller_than_the_input_are_mirror_padded_as_published() -> None:
    rows = np.arange(60, dtype=np.uint8)[:, None, None]
    image = np.broadcast_to(rows, (60, 100, 3)).copy()  # a vertical ramp, 60 x 100 px
    out = classifier_input(image, 224, 224)  # same scale: pasted in the middle, mirrored around it
    top = (224 - 60) // 2
    assert out.shape == (224, 224, 3)
    assert (out[top : top + 60, 62] == image[:, 0]).all()
    assert (out[top - 1, 62] == image[0, 0]).all() and (out[top - 2, 62] == image[1, 0]).all()  # c b a | a b c
    assert (out[:, 0] == out[:, 223]).all() and (out[:, 10] == out[:, 200]).all()  # columns: one value per row
    half = classifier_input(np.full((112, 112, 3), 90, np.uint8), 112, 224)  # window 224 px -> 112 px input
    assert half.shape == (112, 112, 3) and (half == 90).all()
    assert classifier_input(np.zeros((300, 250, 3), np.uint8), 224, 224).shape == (224, 224, 3)  # >= window: resized


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


def test_prediction_maps_postprocess_and_patch_scores() -> None:
    family = demo_family()
    family.norm_stats = {"mean": [128.0], "std": [50.0]}
    net = family.build_network().eval()
    windows = torch.rand(2, 3, 112, 112) * 255  # windows resized to the input, maps back to the window
    out = family.predict(net, windows)
    assert out["gradcam"].shape == (2, 4, 112, 112) and out["class_prob"].shape == (2, 4)
    assert torch.equal(out["rgb"], windows)
    family.extra_state = {"thresholds": [1.1, 0.0, 1.1, 0.0]}  # classes 0 and 2 never pass: zero maps
    out = family.predict(net, windows)
    assert float(out["gradcam"][:, [0, 2]].abs().max()) == 0.0 and float(out["gradcam"][:, [1, 3]].max()) > 0.0
    family.extra_state = {"thresholds": [0.5, 0.5, 0.5, 0.15]}
    rng = np.random.default_rng(0)
    raw = {"class_prob": np.tile(np.array([0.9, 0.2, 0.6, 0.1], np.float32), (2, 2, 1)),
           "gradcam": rng.random((40, 50, 4), dtype=np.float32), "rgb": rng.integers(0, 256, (40, 50, 3)).astype(np.float32)}
    result = family.postprocess(raw, mag=40)
    assert result["labels"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert list(result["stages"]) == ["gradcam", "adjusted", "crf"] and result["class_map"] is result["stages"]["crf"]
    assert all(m.shape == (40, 50) and m.dtype == np.int32 and m.max() < 5 for m in result["stages"].values())
    assert (result["stages"]["gradcam"] != 0).all()  # background is not a Grad-CAM class
    scores = family.evaluate(result, {"labels": np.array([1, 0, 0, 0])})
    assert scores["f1"] == pytest.approx(2 / 3) and scores["exact_match"] == 0.0
    assert scores == family.evaluate(result, {"type_map": np.array([[0, 1], [0, 0]])})  # labels from a type map
    with pytest.raises(UserError, match=r"raw maps \['gradcam', 'rgb'\]"):
        family.postprocess({"class_prob": raw["class_prob"]})
    maps_only = family.postprocess({"gradcam": raw["gradcam"], "rgb": raw["rgb"]})  # e.g. a slide tile's dense maps
    assert np.array_equal(maps_only["class_map"], result["class_map"]) and "labels" not in maps_only
    with pytest.raises(UserError, match="postproc.crf.iterations"):
        family.postprocess(raw, crf={"iterations": 1000})


def test_calibrate_sets_roc_optimal_thresholds_in_the_family_state() -> None:
    family = demo_family()
    probs = [[0.9, 0.3, 0.2, 0.5], [0.4, 0.8, 0.1, 0.5], [0.7, 0.2, 0.6, 0.5]]
    truth = [[1, 0, 0, 1], [0, 1, 0, 1], [1, 0, 1, 1]]
    family.calibrate([{"class_prob": np.array(p)} for p in probs], [{"labels": np.array(t)} for t in truth])
    assert family.extra_state["thresholds"] == pytest.approx([0.7, 0.8, 0.6, 0.5])  # class 3: all positive, keeps 0.5
    assert family.thresholds().dtype == np.float32
    family.extra_state["thresholds"] = [0.5]
    with pytest.raises(UserError, match="stored thresholds name 1 classes"):
        family.thresholds()


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
    ("infer.output_size=200", "infer.output_size"),
    ("segmentation.output=func", "segmentation.output"),
])
def test_bad_settings_stop_before_training(override: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        run(RunRequest(model="histosegnet", profile="demo", overrides=[override], summary=True))
