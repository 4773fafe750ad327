"""Patch extraction: window grid, HoVer-Net patch layout, resumable outputs, exact reassembly."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

import extract_patches
from loader import reassemble
from loader.extract import ExtractOptions, extract_samples, load_manifest, stack_channels, window_origins
from misc.errors import UserError
from loader.synthetic import generate_tile, write_dataset


@dataclass
class CountingSample:
    """A reader-like sample that counts how often its pixels are read."""

    name: str
    arrays: tuple
    source: str = "memory"
    mpp: float | None = None
    reads: int = 0
    broken: bool = False

    @property
    def image(self) -> np.ndarray:
        if self.broken:
            raise RuntimeError("disk error")
        self.reads += 1
        return self.arrays[0]

    @property
    def inst_map(self) -> np.ndarray:
        return self.arrays[1]

    @property
    def type_map(self) -> np.ndarray | None:
        return self.arrays[2]


def make_samples(typed: bool = True) -> list[CountingSample]:
    shapes = [(150, 130), (97, 211)]
    samples = []
    for i, shape in enumerate(shapes):
        image, inst_map, type_map = generate_tile(i, shape)
        samples.append(CountingSample(f"tile{i}", (image, inst_map, type_map if typed else None), source=f"mem/{i}"))
    return samples


OPTIONS = dict(win=(64, 48), step=(24, 20))


def test_mirror_origins_match_hovernet_grid_for_monuseg_sizes():
    options = ExtractOptions(win=(540, 540), step=(164, 164), mode="mirror")
    origins = window_origins((1000, 1000), options)
    rows = sorted({r for r, _ in origins})
    # padded 1376: starts 0, 164, ..., 820, then the flush start 836; minus the 188 pad
    assert rows == [-188, -24, 140, 304, 468, 632, 648]
    assert len(origins) == 49


def test_valid_origins_add_flush_bottom_and_right_windows():
    options = ExtractOptions(win=(96, 96), step=(40, 40), mode="valid")
    origins = window_origins((300, 136), options)
    assert sorted({r for r, _ in origins}) == [0, 40, 80, 120, 160, 200, 204]
    assert sorted({c for _, c in origins}) == [0, 40]


def test_valid_mode_refuses_image_smaller_than_window():
    with pytest.raises(UserError, match="smaller than the window"):
        window_origins((50, 300), ExtractOptions(win=(64, 64), step=(32, 32), mode="valid"))


@pytest.mark.parametrize("mode", ["mirror", "valid"])
@pytest.mark.parametrize("fmt", ["npy", "h5"])
def test_reassembly_is_byte_identical_on_synthetic_tiles(tmp_path, mode, fmt):
    samples = make_samples()
    extract_samples(samples, tmp_path, ExtractOptions(**OPTIONS, mode=mode, fmt=fmt), progress=False)
    rebuilt = reassemble(tmp_path)
    for sample in samples:
        expected = stack_channels(*sample.arrays)
        assert rebuilt[sample.name].dtype == np.int32
        assert rebuilt[sample.name].tobytes() == expected.tobytes()


def test_npy_patch_is_reflect_padded_window_in_hovernet_layout(tmp_path):
    sample = make_samples()[0]
    manifest = extract_samples([sample], tmp_path, ExtractOptions(**OPTIONS), progress=False)
    first = manifest["groups"]["all"][0]["patches"][0]
    patch = np.load(tmp_path / first["file"])
    assert first["origin"] == [-20, -14]  # (64 - 24) // 2, (48 - 20) // 2
    padded = np.pad(stack_channels(*sample.arrays), ((20, 20), (14, 14), (0, 0)), mode="reflect")
    assert patch.shape == (64, 48, 5) and patch.dtype == np.int32
    np.testing.assert_array_equal(patch, padded[:64, :48])


def test_untyped_sources_give_four_channels(tmp_path):
    manifest = extract_samples(make_samples(typed=False), tmp_path, ExtractOptions(**OPTIONS), progress=False)
    patch = np.load(tmp_path / manifest["groups"]["all"][0]["patches"][0]["file"])
    assert patch.shape[-1] == 4


def test_manifest_records_options_hash_and_origins(tmp_path):
    samples = make_samples()
    extract_samples(samples, tmp_path, ExtractOptions(**OPTIONS), progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["options"]["win"] == [64, 48] and manifest["options"]["mode"] == "mirror"
    entry = manifest["groups"]["all"][1]
    assert entry["name"] == "tile1" and entry["source"] == "mem/1" and entry["shape"] == [97, 211]
    assert len(entry["sha256"]) == 64
    assert all(len(p["origin"]) == 2 for p in entry["patches"])


@pytest.mark.parametrize("fmt", ["npy", "h5"])
def test_rerun_with_same_options_reads_no_finished_source(tmp_path, fmt):
    samples = make_samples()
    options = ExtractOptions(**OPTIONS, fmt=fmt)
    extract_samples(samples, tmp_path, options, progress=False)
    extract_samples(samples, tmp_path, options, progress=False)
    assert [s.reads for s in samples] == [1, 1]


def test_npy_rerun_redoes_only_the_source_with_a_missing_patch(tmp_path):
    samples = make_samples()
    options = ExtractOptions(**OPTIONS)
    manifest = extract_samples(samples, tmp_path, options, progress=False)
    (tmp_path / manifest["groups"]["all"][1]["patches"][3]["file"]).unlink()
    extract_samples(samples, tmp_path, options, progress=False)
    assert [s.reads for s in samples] == [1, 2]
    assert reassemble(tmp_path)["tile1"].tobytes() == stack_channels(*samples[1].arrays).tobytes()


def test_h5_interrupted_run_resumes_and_finishes_atomically(tmp_path):
    samples = make_samples()
    samples[1].broken = True
    options = ExtractOptions(**OPTIONS, fmt="h5")
    with pytest.raises(RuntimeError, match="disk error"):
        extract_samples(samples, tmp_path, options, progress=False)
    assert not (tmp_path / "all.h5").exists() and (tmp_path / "all.h5.partial").exists()
    samples[1].broken = False
    extract_samples(samples, tmp_path, options, progress=False)
    assert samples[0].reads == 1
    assert not (tmp_path / "all.h5.partial").exists()
    rebuilt = reassemble(tmp_path / "all.h5")
    assert rebuilt["tile1"].tobytes() == stack_channels(*samples[1].arrays).tobytes()


def test_h5_unreadable_unfinished_file_is_extracted_again(tmp_path):
    samples = make_samples()
    samples[1].broken = True
    options = ExtractOptions(**OPTIONS, fmt="h5")
    with pytest.raises(RuntimeError):
        extract_samples(samples, tmp_path, options, progress=False)
    (tmp_path / "all.h5.partial").write_bytes(b"not hdf5")
    samples[1].broken = False
    extract_samples(samples, tmp_path, options, progress=False)
    assert samples[0].reads == 2
    assert reassemble(tmp_path)["tile0"].tobytes() == stack_channels(*samples[0].arrays).tobytes()


def test_other_options_into_same_folder_is_an_error(tmp_path):
    samples = make_samples()
    extract_samples(samples, tmp_path, ExtractOptions(**OPTIONS), progress=False)
    with pytest.raises(UserError, match="other options.*'step'"):
        extract_samples(samples, tmp_path, ExtractOptions(win=(64, 48), step=(32, 20)), progress=False)


def test_overwrite_replaces_outputs_of_other_options(tmp_path):
    samples = make_samples()
    extract_samples(samples, tmp_path, ExtractOptions(**OPTIONS), progress=False)
    extract_samples(samples, tmp_path, ExtractOptions(**OPTIONS, fmt="h5"), overwrite=True, progress=False)
    assert not (tmp_path / "all").exists()
    assert load_manifest(tmp_path)["options"]["format"] == "h5"


def test_mixing_typed_and_untyped_images_in_a_split_is_an_error(tmp_path):
    typed, untyped = make_samples()[0], make_samples(typed=False)[1]
    with pytest.raises(UserError, match="all typed or all untyped"):
        extract_samples([typed, untyped], tmp_path, ExtractOptions(**OPTIONS), progress=False)


def test_two_images_with_one_name_is_an_error(tmp_path):
    first, second = make_samples()
    second.name = first.name
    with pytest.raises(UserError, match="second image named 'tile0'"):
        extract_samples([first, second], tmp_path, ExtractOptions(**OPTIONS), progress=False)


def test_reassemble_detects_a_corrupted_patch(tmp_path):
    samples = make_samples()
    manifest = extract_samples(samples, tmp_path, ExtractOptions(**OPTIONS), progress=False)
    path = tmp_path / manifest["groups"]["all"][0]["patches"][5]["file"]
    patch = np.load(path)
    patch[30, 20, 0] ^= 1
    np.save(path, patch)
    with pytest.raises(RuntimeError, match="differs"):
        reassemble(tmp_path)


def test_cli_extracts_folder_dataset_splits(tmp_path, capsys):
    write_dataset(tmp_path / "data", n=2, seed=0, shape=(96, 96))
    names = tmp_path / "train.txt"
    names.write_text("tile_0000\n")
    out = tmp_path / "out"
    code = extract_patches.main(["folder", str(tmp_path / "data"), str(out), "--win", "64", "--step", "32",
                                 "--split", str(names), "--format", "h5", "--no-progress"])
    assert code == 0
    # 96 + (64 - 32) padded = 128: starts 0, 32, 64 per axis -> 9 windows
    assert "train: 1 images, 9 patches" in capsys.readouterr().out
    assert set(reassemble(out / "train.h5")) == {"tile_0000"}


def test_cli_reports_options_clash_in_one_line(tmp_path, capsys):
    write_dataset(tmp_path / "data", n=1, seed=0, shape=(64, 64))
    args = ["folder", str(tmp_path / "data"), str(tmp_path / "out"), "--win", "64", "--step", "32", "--no-progress"]
    extract_patches.main(args)
    with pytest.raises(SystemExit) as exit_info:
        extract_patches.main(args[:-3] + ["--step", "16", "--no-progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--overwrite" in err and err.count("\n") == 1


@pytest.mark.realdata
@pytest.mark.slow
def test_monuseg_reassembly_is_byte_identical(data_root, tmp_path):
    from loader.readers import read_dataset

    out = tmp_path / "monuseg"
    extract_patches.main(["monuseg", str(data_root / "monuseg"), str(out), "--win", "540", "--step", "164",
                          "--limit", "2", "--format", "h5", "--compression", "1", "--no-progress"])
    rebuilt = reassemble(out)
    samples = read_dataset("monuseg", data_root / "monuseg")[:2]
    assert len(rebuilt) == 2
    for sample in samples:
        assert rebuilt[sample.name].shape == (1000, 1000, 4)
        assert rebuilt[sample.name].tobytes() == stack_channels(sample.image, sample.inst_map, None).tobytes()
