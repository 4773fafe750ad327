"""Training datasets: patch sources, per-item seeding across workers, validation, target cache."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from loader.augment import build_augment
from loader.datasets import PatchSource, SampleDataset, open_patches, seed_worker
from loader.extract import ExtractOptions, extract_samples
from misc.errors import UserError
from loader.synthetic import generate_tile

WINDOW = ExtractOptions(win=(48, 48), step=(32, 32))


def samples(n: int = 2, size: int = 64) -> list[SimpleNamespace]:
    out = []
    for i in range(n):
        image, inst_map, type_map = generate_tile(i, (size, size))
        out.append(SimpleNamespace(name=f"t{i}", image=image, inst_map=inst_map, type_map=type_map, source=f"mem/{i}"))
    return out


@pytest.fixture(scope="module", params=["npy", "h5"])
def patch_dir(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    options = ExtractOptions(win=WINDOW.win, step=WINDOW.step, fmt=request.param)
    extract_samples(samples(), out, options, progress=False)
    return out


class CountingBuilder:
    """Toy family target builder: foreground mask; precompute = a 'weight' map, counted."""

    cache_key = "toy-v1"

    def __init__(self) -> None:
        self.precomputed = 0

    def precompute(self, sample: dict) -> dict:
        self.precomputed += 1
        return {"weight_map": (sample["inst_map"] > 0).astype(np.float32) * 3 + 1}

    def __call__(self, sample: dict) -> dict:
        return {"np_map": (sample["inst_map"] > 0).astype(np.int64), "weight_map": sample["weight_map"]}


def test_open_patches_reads_folder_split_folder_and_h5_alike(patch_dir):
    source = open_patches(patch_dir)
    assert len(source) == 2 * 4  # 64 + 16 padded = 80: starts 0, 32 per axis
    patch = source[1]
    assert patch.name == "t0_001" and patch.source == "mem/0" and patch.origin == (-8, 24)
    assert patch.image.shape == (48, 48, 3) and patch.image.dtype == np.uint8
    assert patch.inst_map.dtype == np.int32 and patch.type_map.shape == (48, 48)
    target = patch_dir / "all.h5" if (patch_dir / "all.h5").exists() else patch_dir / "all"
    again = open_patches(target)[1]
    np.testing.assert_array_equal(again.inst_map, patch.inst_map)


def test_open_patches_reads_a_bare_hovernet_npy_folder(tmp_path):
    extract_samples(samples(1), tmp_path / "out", WINDOW, progress=False)
    shutil.copytree(tmp_path / "out" / "all", tmp_path / "bare")
    source = open_patches(tmp_path / "bare")
    assert source.names[:2] == ["t0_000", "t0_001"] and source[0].origin is None


def test_open_patches_needs_a_split_when_several_exist(tmp_path):
    extract_samples(samples(1), tmp_path, WINDOW, group="train", progress=False)
    extract_samples(samples(1), tmp_path, WINDOW, group="valid", progress=False)
    with pytest.raises(UserError, match=r"holds splits \['train', 'valid'\]"):
        open_patches(tmp_path)
    assert len(open_patches(tmp_path, split="valid")) == 4


def test_open_patches_reports_missing_patch_files(tmp_path):
    manifest = extract_samples(samples(1), tmp_path, WINDOW, progress=False)
    (tmp_path / manifest["groups"]["all"][0]["patches"][2]["file"]).unlink()
    with pytest.raises(UserError, match="1 patch file.*missing.*re-run extract_patches.py"):
        open_patches(tmp_path)


def batches(dataset: SampleDataset, workers: int) -> list[dict]:
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=workers, worker_init_fn=seed_worker)
    return list(loader)


def test_same_items_with_zero_and_two_workers(patch_dir):
    augment = build_augment("hovernet", input_shape=(32, 32))
    dataset = SampleDataset(patch_dir, augment=augment, seed=7)
    dataset.set_epoch(3)
    single, double = batches(dataset, 0), batches(dataset, 2)
    assert len(single) == len(double) == 3
    for one, two in zip(single, double):
        assert one.keys() == two.keys() == {"image", "inst_map", "type_map"}
        for key in one:
            assert torch.equal(one[key], two[key])


def test_items_depend_on_seed_and_epoch_and_repeat_exactly(patch_dir):
    augment = build_augment("hovernet", input_shape=(32, 32))
    dataset = SampleDataset(patch_dir, augment=augment, seed=1)
    first = dataset[2]["image"]
    dataset.set_epoch(1)
    next_epoch = dataset[2]["image"]
    dataset.set_epoch(0)
    assert np.array_equal(dataset[2]["image"], first)
    assert not np.array_equal(next_epoch, first)
    assert not np.array_equal(SampleDataset(patch_dir, augment=augment, seed=2)[2]["image"], first)


def test_set_epoch_reaches_persistent_workers(patch_dir):
    augment = build_augment("hovernet", input_shape=(32, 32))
    dataset = SampleDataset(patch_dir, augment=augment, seed=1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, num_workers=1, persistent_workers=True)
    next(iter(loader))
    dataset.set_epoch(5)
    image = next(iter(loader))["image"][2].numpy()
    np.testing.assert_array_equal(image, dataset[2]["image"])


def test_target_builder_decides_the_outputs_and_image_is_added(patch_dir):
    dataset = SampleDataset(patch_dir, target_builder=CountingBuilder())
    item = dataset[0]
    assert set(item) == {"np_map", "weight_map", "image"}
    np.testing.assert_array_equal(item["np_map"], open_patches(patch_dir)[0].inst_map > 0)


def test_precomputed_maps_are_cached_and_move_with_the_labels(patch_dir, tmp_path):
    flip = build_augment([{"op": "flip", "axis": "horizontal"}])
    builder = CountingBuilder()
    first = SampleDataset(patch_dir, augment=flip, target_builder=builder, cache_dir=tmp_path)
    items = [first[i] for i in range(len(first))]
    again = SampleDataset(patch_dir, augment=flip, target_builder=builder, cache_dir=tmp_path)
    cached = [again[i] for i in range(len(again))]
    assert builder.precomputed == len(first)
    assert len(list((tmp_path / "toy-v1").glob("*.npz"))) == len(first)
    for item, repeat in zip(items, cached):
        np.testing.assert_array_equal(item["weight_map"], repeat["weight_map"])
        np.testing.assert_array_equal(item["weight_map"], item["np_map"] * 3 + 1)


def test_other_cache_key_recomputes(patch_dir, tmp_path):
    builder = CountingBuilder()
    SampleDataset(patch_dir, target_builder=builder, cache_dir=tmp_path, cache_key="a")[0]
    SampleDataset(patch_dir, target_builder=builder, cache_dir=tmp_path, cache_key="b")[0]
    assert builder.precomputed == 2


def test_cache_without_a_key_is_refused(patch_dir, tmp_path):
    def builder(sample):
        return {}

    builder.precompute = lambda sample: {}
    with pytest.raises(UserError, match="without cache_key"):
        SampleDataset(patch_dir, target_builder=builder, cache_dir=tmp_path)


def test_a_bad_source_sample_is_named_in_the_error():
    bad = samples(1)[0]
    bad.inst_map = bad.inst_map[:10]
    with pytest.raises(UserError, match=r"mem/0 \('t0', item 0\): inst_map is \(10, 64\)"):
        SampleDataset([bad])[0]


def test_reader_datasets_work_as_sources(tmp_path):
    from loader.readers import read_dataset
    from loader.synthetic import write_dataset

    write_dataset(tmp_path, n=2, seed=0, shape=(40, 40))
    dataset = SampleDataset(read_dataset("folder", tmp_path), augment=build_augment([{"op": "transpose"}]))
    item = dataset[1]
    np.testing.assert_array_equal(item["inst_map"], read_dataset("folder", tmp_path)[1].inst_map.T)


def test_patch_source_pickles_without_an_open_h5_handle(patch_dir):
    import pickle

    source = open_patches(patch_dir)
    source[0]
    clone = pickle.loads(pickle.dumps(source))
    assert isinstance(clone, PatchSource)
    np.testing.assert_array_equal(clone[0].image, source[0].image)
