"""The h2gnet family: registry, profiles, both stages' forward/loss, inference helpers, clusters,
refinement data and the refine-before-detect error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from config import load_config, stage_config, stage_names
from loader.synthetic_tumour import TumourSlide
from misc.errors import UserError
from models import get_family
from models.h2gnet.family import H2GNet, H2GNetFamily, H2GTargets
from models.h2gnet.patches import DetectPatches, PatchTable
from models.h2gnet.refine_data import RefineExample, RefineSamples, cached_example, make_example

TINY = ["model.detect.width=0.35", "model.refine.widths=[4,8,8]", "model.refine.grid=64",
        "data.detect.mpp=2.0", "data.detect.size=32", "data.detect.points=4", "sampler.embed_size=32",
        "sampler.clusters=3", "infer.batch_size=16"]


def family(*overrides: str, profile: str = "demo") -> H2GNetFamily:
    return H2GNetFamily(load_config("h2gnet", profile, overrides=[*TINY, *overrides]))


@pytest.fixture(scope="module")
def slide() -> TumourSlide:
    return TumourSlide(31, (512, 768))


@pytest.mark.parametrize("profile", ["paper", "cpu", "demo"])
def test_registered_and_every_profile_builds(profile):
    assert get_family("h2gnet") is H2GNetFamily
    cfg = load_config("h2gnet", profile)
    net = H2GNetFamily(cfg).build_network()
    assert isinstance(net, H2GNet)
    assert int(cfg["model"]["refine"]["grid"]) % net.refine.multiple == 0
    assert stage_names(cfg) == ["detect", "refine"]
    assert [stage_config(cfg, name)["train"]["phases"][0]["freeze"] for name in stage_names(cfg)] == [["refine"], ["detect"]]


def test_grid_not_a_multiple_of_the_depth():
    with pytest.raises(UserError, match="model.refine.grid 62 is not a multiple of 4"):
        family("model.refine.grid=62").build_network()


def test_both_stages_forward_and_loss():
    fam = family()
    net = fam.build_network()
    patches = {"image": torch.rand(4, 3, 32, 32) * 255, "label": torch.tensor([0, 1, 0, 1]), "cluster": torch.tensor([0, 0, 1, 2])}
    out = fam.forward(net, patches)
    assert out["detect"].shape == (4, 2)
    loss, terms = fam.loss(out, patches, {"cwce": 2.0})
    assert torch.isclose(loss, 2 * terms["cwce"]) and loss.requires_grad
    grids = {"image": torch.rand(2, 4, 64, 64), "mask": torch.randint(0, 2, (2, 64, 64))}
    out = fam.forward(net, grids)
    assert out["refine"].shape == (2, 2, 64, 64)
    loss, terms = fam.loss(out, grids, {"dice": 1.0})
    assert set(terms) == {"dice"} and 0 < float(loss.detach()) < 1
    with pytest.raises(UserError, match="3-channel"):
        net(torch.rand(1, 2, 8, 8))


def test_targets_predict_postprocess_evaluate():
    fam = family()
    with pytest.raises(UserError, match="whole slides"):
        H2GTargets()({"image": np.zeros((8, 8, 3), np.uint8), "inst_map": np.zeros((8, 8))})
    assert set(H2GTargets()({"image": np.zeros((4, 8, 8)), "mask": np.zeros((8, 8))})) == {"image", "mask"}
    net = fam.build_network().eval()
    probs = fam.predict(net, torch.rand(3, 3, 32, 32) * 255)["tumour_prob"]
    assert probs.shape == (3, 1) and float(probs.min()) >= 0 and float(probs.max()) <= 1
    result = fam.postprocess({"tumour_prob": np.array([[[0.2], [0.7]], [[0.5], [0.1]]])})
    assert result["class_map"].tolist() == [[0, 1], [1, 0]]
    assert fam.postprocess({"tumour_prob": np.array([[0.7]])}, threshold=0.8)["class_map"].tolist() == [[0]]
    scores = fam.evaluate(result, {"mask": np.array([[0, 1], [0, 0]])})
    assert scores == pytest.approx({"dsc": 2 / 3, "precision": 0.5, "recall": 1.0})
    assert fam.overlay(np.zeros((2, 2, 3), np.uint8), result)[0, 1, 0] > 100
    assert fam.example_input().shape == (1, 3, 32, 32)
    refine = H2GNetFamily(stage_config(load_config("h2gnet", "demo", overrides=TINY), "refine"))
    assert refine.example_input().shape == (1, 4, 64, 64)


def test_clusters_recomputed_into_dataset_and_sampler(slide):
    fam = family()
    torch.manual_seed(0)
    net = fam.build_network()
    table = PatchTable.from_fractions(0, slide.masks(64)[1][:8, :12].astype(np.float32), slide.masks(64)[0][:8, :12], 0.5, 0.5)
    data = DetectPatches([slide], table, 2.0, 32)
    sampler = fam.detect_sampler(table, batch_size=8, batches=3, seed=0)
    clusters = fam.update_clusters(net.detect, data, sampler)
    assert clusters.shape == (len(table),) and len(np.unique(clusters)) == 3
    assert np.array_equal(data.clusters, clusters) and net.detect.training
    for batch in sampler:
        assert np.bincount(table.label[batch], minlength=2).tolist() == [4, 4]
    assert [fam.reclusters_at(e) for e in range(3)] == [True, False, False]            # demo: once
    assert [family("sampler.recluster_every=2").reclusters_at(e) for e in range(5)] == [True, False, True, False, True]


def test_detect_and_refine_training_sets(slide, tmp_path):
    from misc.io import write_image

    fam = family()
    net = fam.build_network()
    tumour = slide.masks(16)[1]
    write_image(tmp_path / "t.png", np.repeat((tumour * 255).astype(np.uint8)[..., None], 3, axis=2))
    phase = {"batch_size": 8, "batches_per_epoch": 2}
    data, sampler = fam.detect_data([slide], [tmp_path / "t.png"], phase)
    assert len(sampler) == 2 and set(np.unique(data.table.label)) == {0, 1}
    write_image(tmp_path / "none.png", np.zeros(tumour.shape + (3,), np.uint8))
    with pytest.raises(UserError, match=r"0 tumour patches"):
        fam.detect_data([slide], [tmp_path / "none.png"], phase)
    with pytest.raises(UserError, match="one annotation per training slide"):
        fam.detect_data([slide], [], phase)
    samples = fam.refine_data(net, [slide], [tmp_path / "t.png"], cache=tmp_path / "cache", names=["s0"])
    assert len(samples) == 1 and (tmp_path / "cache" / "s0.npz").is_file() and samples.augment is not None
    assert fam.refine_data(net, [slide], [tmp_path / "t.png"], augment=False).augment is None


def test_refine_needs_a_detect_stage_first():
    with pytest.raises(UserError, match="python train.py --model h2gnet --stage detect"):
        H2GNetFamily.check_refine_prerequisite([], "runs/h2g/checkpoints/latest.pt")
    H2GNetFamily.check_refine_prerequisite(["detect"], "x")


def test_refinement_examples_cache_and_augment(slide, tmp_path):
    fam = family()
    net = fam.build_network().eval()
    tissue, tumour = slide.masks(16)
    from misc.io import write_image

    write_image(tmp_path / "t.png", np.repeat((tumour * 255).astype(np.uint8)[..., None], 3, axis=2))
    settings = fam.cascade_settings()
    example = cached_example(tmp_path / "cache" / "s.npz",
                             lambda: make_example(net.detect, slide, tmp_path / "t.png", tissue, settings))
    assert example.thumbnail.shape == (64, 64, 3) and example.heatmap.shape == (64, 64) and example.mask.dtype == np.uint8
    assert example.mask[43:].sum() == 0 and example.mask.sum() > 0
    again = cached_example(tmp_path / "cache" / "s.npz", lambda: pytest.fail("recomputed"))
    assert np.array_equal(again.mask, example.mask)
    (tmp_path / "bad.npz").write_bytes(b"junk")
    with pytest.raises(UserError, match="not a cached refinement example"):
        RefineExample.load(tmp_path / "bad.npz")
    samples = RefineSamples([example], fam.refine_augment())
    item = samples[0]
    assert item["image"].shape == (4, 64, 64) and item["mask"].shape == (64, 64) and item["mask"].dtype == torch.int64
    assert int(item["mask"].sum()) == int(example.mask.sum())        # rotations and flips keep the tumour area
    plain = RefineSamples([example])[0]
    assert torch.equal(plain["image"][3], torch.from_numpy(example.heatmap))


def test_cascade_through_the_family(slide):
    fam = family()
    result = fam.run_cascade(fam.build_network(), slide)
    assert result.heatmap.shape == (8, 12) and result.refined.shape == (64, 64)
