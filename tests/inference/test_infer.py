"""infer_image, the folder runner and infer.py, with the toy family."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import infer
from misc.errors import UserError
from inference.folder import run_folder
from inference.predict import infer_image
from inference.rawfile import H5_NAME, find_raw
from misc.io import write_image
from misc.precision import cpu_bf16_supported
from tests.inference.toy_family import expected_np_prob, nuclei_image, toy_family


def image_folder(root: Path, names: tuple[str, ...] = ("a", "b")) -> Path:
    folder = root / "images"
    for k, name in enumerate(names):
        write_image(folder / f"{name}.png", nuclei_image((40 + 7 * k, 33), seed=k))
    return folder


def test_infer_image_equals_direct_prediction() -> None:
    family, net = toy_family()
    net.train()
    image = nuclei_image((37, 53))
    maps = infer_image(family, net, image, "cpu", batch_size=3)
    assert sorted(maps) == ["hv", "np_prob", "tp_prob"]
    assert maps["tp_prob"].shape == (37, 53, 3) and maps["tp_prob"].dtype == np.float32
    np.testing.assert_allclose(maps["np_prob"], expected_np_prob(image), atol=1e-6)
    np.testing.assert_allclose(maps["hv"][..., 1], -maps["np_prob"][..., 0])
    assert net.training  # mode restored


def test_image_smaller_than_window_is_padded() -> None:
    family, net = toy_family()
    image = np.random.default_rng(0).integers(0, 256, (5, 9, 3), dtype=np.uint8)
    maps = infer_image(family, net, image, "cpu")
    np.testing.assert_allclose(maps["np_prob"], expected_np_prob(image), atol=1e-6)


@pytest.mark.parametrize("configured, flag, emitted", [(False, None, False), (False, True, True), (True, False, False)])
def test_tta_flag_overrides_config(configured: bool, flag: bool | None, emitted: bool) -> None:
    family, net = toy_family(tta=configured)
    maps = infer_image(family, net, nuclei_image((20, 20)), "cpu", tta=flag)
    assert ("tta" in maps) is emitted
    assert family.cfg["infer"]["tta"] is configured  # the family itself is untouched


def test_run_folder_writes_named_maps_and_metadata(tmp_path: Path) -> None:
    family, net = toy_family()
    report = run_folder(family, net, image_folder(tmp_path), tmp_path / "out", "cpu", mag=20, tta=True,
                        show_progress=False)
    assert [p.name for p in report.done] == ["a.png", "b.png"] and not report.failed
    with np.load(tmp_path / "out" / "b.npz", allow_pickle=False) as data:
        assert sorted(data.files) == ["config", "family", "hv", "image", "mag", "np_prob", "source", "tp_prob", "tta"]
        assert data["np_prob"].shape == (47, 33, 1) and data["hv"].shape == (47, 33, 2)
        np.testing.assert_allclose(data["np_prob"], expected_np_prob(data["image"]), atol=1e-6)
        assert str(data["family"]) == "toy" and int(data["mag"]) == 20
        config = json.loads(str(data["config"]))
        assert config["infer"]["tta"] is True and config["infer"]["mag"] == 20
        assert str(data["source"]).endswith("b.png")


def test_rerun_skips_images_already_done(tmp_path: Path) -> None:
    family, net = toy_family()
    images, out = image_folder(tmp_path), tmp_path / "out"
    run_folder(family, net, images, out, "cpu", show_progress=False)
    (out / "b.npz").unlink()  # as if killed while predicting b
    before = (out / "a.npz").stat().st_mtime_ns
    report = run_folder(family, net, images, out, "cpu", show_progress=False)
    assert [p.name for p in report.skipped] == ["a.png"] and [p.name for p in report.done] == ["b.png"]
    assert (out / "a.npz").stat().st_mtime_ns == before and (out / "b.npz").is_file()


def test_unreadable_image_is_skipped_and_reported(tmp_path: Path) -> None:
    family, net = toy_family()
    images = image_folder(tmp_path)
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    report = run_folder(family, net, images, tmp_path / "out", "cpu", show_progress=False)
    assert [p.name for p in report.done] == ["a.png", "b.png"]
    assert [p.name for p, _ in report.failed] == ["broken.png"] and "cannot be read" in report.failed[0][1]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.npz", "b.npz"]


def test_full_disk_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def write_then_fail(src, dst, length=0):
        dst.write(src.read(100))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", write_then_fail)
    family, net = toy_family()
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"a\.npz: cannot write \(No space left on device\)"):
        run_folder(family, net, image_folder(tmp_path), out, "cpu", show_progress=False)
    assert list(out.iterdir()) == []  # no final-named file, no temporary file, no buffer folder


def test_h5_output_holds_the_same_maps(tmp_path: Path) -> None:
    family, net = toy_family()
    images = image_folder(tmp_path)
    run_folder(family, net, images, tmp_path / "npz", "cpu", show_progress=False)
    run_folder(family, net, images, tmp_path / "h5", "cpu", output_format="h5", show_progress=False)
    report = run_folder(family, net, images, tmp_path / "h5", "cpu", output_format="h5", show_progress=False)
    assert len(report.skipped) == 2 and not report.done
    from_h5 = {ref.name: ref.load() for ref in find_raw(tmp_path / "h5" / H5_NAME)}
    from_npz = {ref.name: ref.load() for ref in find_raw(tmp_path / "npz")}
    assert sorted(from_h5) == ["a", "b"]
    for name, raw in from_npz.items():
        assert raw.family == from_h5[name].family and raw.config == from_h5[name].config
        np.testing.assert_array_equal(raw.image, from_h5[name].image)
        for key, values in raw.maps.items():
            np.testing.assert_array_equal(values, from_h5[name].maps[key])


@pytest.mark.skipif(not cpu_bf16_supported(), reason="this CPU has no native bf16 (AVX512-BF16/AMX)")
def test_amp_runs_the_network_in_bf16_and_nhwc(tmp_path: Path) -> None:
    family, net = toy_family(channels_last=True)
    run_folder(family, net, image_folder(tmp_path), tmp_path / "out", "cpu", amp=True, show_progress=False)
    assert net.weight.is_contiguous(memory_format=torch.channels_last)
    with np.load(tmp_path / "out" / "a.npz", allow_pickle=False) as data:
        error = np.abs(data["np_prob"] - expected_np_prob(data["image"]))
        assert 0 < error.max() < 1e-2  # bf16 rounding: not float32, still the same map
        assert json.loads(str(data["config"]))["infer"]["amp"] is True


def test_cli_amp_flag_overrides_the_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(infer, "load_checkpoint", lambda path, device: (*toy_family(amp=True), {}))
    argv = ["--model-path", "x.pt", "--input", str(image_folder(tmp_path)), "--output", str(tmp_path / "out"),
            "--device", "cpu", "--quiet", "--no-amp"]
    assert infer.main(argv) == 0
    with np.load(tmp_path / "out" / "a.npz", allow_pickle=False) as data:
        np.testing.assert_allclose(data["np_prob"], expected_np_prob(data["image"]), atol=1e-6)
        assert json.loads(str(data["config"]))["infer"]["amp"] is False


def test_cli_exit_code_1_when_an_image_is_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(infer, "load_checkpoint", lambda path, device: (*toy_family(), {}))
    images = image_folder(tmp_path)
    (images / "broken.tif").write_bytes(b"II*\x00garbage")
    argv = ["--model-path", "x.pt", "--input", str(images), "--output", str(tmp_path / "out"), "--device", "cpu", "--quiet"]
    assert infer.main(argv) == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.npz", "b.npz"]
    (images / "broken.tif").unlink()
    assert infer.main(argv) == 0


@pytest.mark.parametrize("content", ["text", "foreign-dict"])
def test_cli_unknown_checkpoint_format_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                           content: str) -> None:
    checkpoint = tmp_path / "model.pt"
    if content == "text":
        checkpoint.write_bytes(b"this is not a checkpoint")
    else:
        torch.save({"weights": torch.zeros(2)}, checkpoint)
    argv = ["--model-path", str(checkpoint), "--input", str(image_folder(tmp_path)), "--output", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_info:
        infer.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(checkpoint) in err and len(err.splitlines()) == 1


def test_family_preprocess_image_runs_before_tiling():
    from inference.predict import infer_image
    from tests.inference.toy_family import expected_np_prob, nuclei_image, toy_family

    family, net = toy_family()
    family.preprocess_image = lambda image: 255 - image
    image = nuclei_image((40, 36))
    maps = infer_image(family, net, image, "cpu")
    np.testing.assert_allclose(maps["np_prob"], expected_np_prob(255 - image), atol=1e-6)
