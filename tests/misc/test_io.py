"""Tests of misc.io: image/label reading rules and atomic writes."""

from __future__ import annotations

import errno
import logging

import numpy as np
import pytest
import scipy.io
import tifffile
from PIL import Image

from misc.errors import UserError
from misc.io import (
    as_rgb,
    atomic_path,
    atomic_write,
    read_image,
    read_label,
    read_label_stack,
    write_image,
    write_label,
)


def test_rgba_with_transparency_warns_and_drops_alpha(tmp_path, caplog):
    rgba = np.array([[[10, 20, 30, 255], [40, 50, 60, 0]]], dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    with caplog.at_level(logging.WARNING, logger="misc.io"):
        image = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(image, [[[10, 20, 30], [40, 50, 60]]])
    assert "alpha" in caplog.text and "a.png" in caplog.text


def test_opaque_rgba_drops_alpha_silently(caplog):
    rgba = np.full((2, 2, 4), 255, dtype=np.uint8)
    with caplog.at_level(logging.WARNING, logger="misc.io"):
        image = as_rgb(rgba)
    assert image.shape == (2, 2, 3)
    assert caplog.text == ""


def test_16_bit_image_becomes_round_x_over_257(tmp_path):
    values = np.array([0, 128, 129, 385, 386, 65535], dtype=np.uint16)
    tifffile.imwrite(tmp_path / "deep.tif", np.repeat(values[None, :, None], 3, axis=2))
    image = read_image(tmp_path / "deep.tif")
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image[0, :, 0], [0, 0, 1, 1, 2, 255])


def test_grey_image_is_refused_naming_the_file(tmp_path):
    Image.fromarray(np.zeros((3, 3), dtype=np.uint8)).save(tmp_path / "grey.png")
    with pytest.raises(UserError, match=r"grey\.png.*greyscale"):
        read_image(tmp_path / "grey.png")


def test_grey_image_is_replicated_when_allowed(tmp_path):
    Image.fromarray(np.array([[7, 9]], dtype=np.uint8)).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_image(tmp_path / "grey.png", allow_grey=True), [[[7, 7, 7], [9, 9, 9]]])


def _palette_png(path, indices: np.ndarray) -> None:
    """Write a mode-P PNG whose palette maps 0 -> (10, 20, 30) and 1 -> (200, 100, 50)."""
    img = Image.new("P", (indices.shape[1], indices.shape[0]))
    img.putdata(indices.ravel().tolist())
    img.putpalette([10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6))
    img.save(path)


def test_palette_image_is_read_through_its_palette(tmp_path):
    _palette_png(tmp_path / "p.png", np.array([[0, 1], [1, 0]]))
    np.testing.assert_array_equal(
        read_image(tmp_path / "p.png"), [[[10, 20, 30], [200, 100, 50]], [[200, 100, 50], [10, 20, 30]]]
    )


def test_palette_label_gives_its_indices(tmp_path):
    _palette_png(tmp_path / "p.png", np.array([[0, 1], [1, 0]]))
    np.testing.assert_array_equal(read_label(tmp_path / "p.png"), [[0, 1], [1, 0]])


def test_cmyk_image_is_converted_to_rgb(tmp_path):
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    image = read_image(tmp_path / "cmyk.jpg")
    assert image.shape == (4, 4, 3)
    assert image[..., 0].min() > 240 and image[..., 1:].max() < 15


@pytest.mark.parametrize("reader", [read_image, read_label])
def test_missing_file_raises_user_error_naming_the_path(tmp_path, reader):
    with pytest.raises(UserError, match="nowhere.png: no such file"):
        reader(tmp_path / "nowhere.png")


def test_undecodable_image_raises_user_error(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"bad\.png: cannot be read"):
        read_image(tmp_path / "bad.png")


def test_atomic_write_leaves_no_file_when_the_body_raises_enospc(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(OSError) as err:
        with atomic_write(target) as handle:
            handle.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert err.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_the_old_file_when_the_body_raises(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(OSError):
        with atomic_write(target) as handle:
            handle.write(b"new")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_atomic_write_replaces_the_file_on_success(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_write(target, "w") as handle:
        handle.write("done")
    assert target.read_text() == "done"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_atomic_path_leaves_no_file_when_the_body_raises(tmp_path):
    with pytest.raises(OSError):
        with atomic_path(tmp_path / "x.png") as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_write_image_round_trips_png(tmp_path):
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    write_image(tmp_path / "i.png", image)
    np.testing.assert_array_equal(read_image(tmp_path / "i.png"), image)


def test_write_image_refuses_unknown_suffix(tmp_path):
    with pytest.raises(UserError, match=r"i\.xyz: unsupported image format"):
        write_image(tmp_path / "i.xyz", np.zeros((2, 2, 3), dtype=np.uint8))


@pytest.mark.parametrize("suffix", [".npy", ".png", ".tif"])
def test_write_label_round_trips_as_int32(tmp_path, suffix):
    label = np.array([[0, 1], [65535, 3]], dtype=np.int64)
    write_label(tmp_path / f"l{suffix}", label)
    read = read_label(tmp_path / f"l{suffix}")
    assert read.dtype == np.int32
    np.testing.assert_array_equal(read, [[0, 1], [65535, 3]])


def test_write_label_refuses_ids_beyond_16_bit_png(tmp_path):
    with pytest.raises(UserError, match="16-bit PNG"):
        write_label(tmp_path / "l.png", np.array([[65536]]))
    assert list(tmp_path.iterdir()) == []


def test_read_label_takes_channel_0_of_a_stack(tmp_path):
    stack = np.array([[[5, 1], [0, 0]], [[2, 3], [5, 1]]], dtype=np.int32)
    np.save(tmp_path / "s.npy", stack)
    np.testing.assert_array_equal(read_label(tmp_path / "s.npy"), [[5, 0], [2, 5]])
    np.testing.assert_array_equal(read_label_stack(tmp_path / "s.npy"), stack)


def test_read_label_accepts_integral_floats(tmp_path):
    np.save(tmp_path / "f.npy", np.array([[0.0, 2.0]]))
    np.testing.assert_array_equal(read_label(tmp_path / "f.npy"), [[0, 2]])


@pytest.mark.parametrize(
    ("array", "message"),
    [(np.array([[0.5, 1.0]]), "non-integer"), (np.array([[-1, 2]]), "negative"), (np.zeros(3), "not \\(H, W\\)")],
)
def test_read_label_refuses_bad_values(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(UserError, match=message):
        read_label(tmp_path / "bad.npy")


def test_read_label_mat_names_the_available_keys(tmp_path):
    scipy.io.savemat(tmp_path / "l.mat", {"inst_map": np.array([[0, 4]]), "type_map": np.array([[0, 1]])})
    np.testing.assert_array_equal(read_label(tmp_path / "l.mat"), [[0, 4]])
    with pytest.raises(UserError, match=r"no variable 'labels'.*\['inst_map', 'type_map'\]"):
        read_label(tmp_path / "l.mat", key="labels")


def test_atomic_write_gives_umask_permissions(tmp_path):
    import os
    import stat

    from misc.io import atomic_write

    target = tmp_path / "perm.txt"
    with atomic_write(target, "w") as handle:
        handle.write("x")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
