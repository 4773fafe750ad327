"""Tests of the synthetic H&E generator: determinism, label validity and realism."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy import ndimage
from skimage.color import rgb2hed
from skimage.filters import threshold_otsu
from skimage.measure import label, regionprops

from misc.errors import UserError
from misc.io import read_image, read_label
from loader.synthetic import (
    HE_STAIN_MATRIX,
    NUCLEUS_TYPES,
    NucleusLayout,
    generate_dataset,
    generate_tile,
    main,
    rasterise_layout,
    sample_layout,
    tile_seed,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
SHAPE = (160, 160)


@pytest.fixture(scope="module")
def tiles() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Three default-parameter tiles of 192 x 192 pixels."""
    return generate_dataset(3, seed=11, shape=(192, 192))


def touching_ids(inst_map: np.ndarray) -> set[int]:
    """Ids of instances with a pixel 8-adjacent to a pixel of another instance."""
    height, width = inst_map.shape
    padded = np.pad(inst_map, 1)
    found: set[int] = set()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            neighbour = padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
            contact = (inst_map > 0) & (neighbour > 0) & (neighbour != inst_map)
            found.update(np.unique(inst_map[contact]).tolist())
    return found


def optical_density(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) float64 natural-log optical density of a uint8 RGB image."""
    return -np.log((image.astype(np.float64) + 1.0) / 256.0)


def test_touching_ids_sees_diagonal_contact_only_between_instances():
    inst_map = np.array([[1, 0, 0, 0], [0, 2, 0, 3], [0, 0, 0, 3]], dtype=np.int32)
    assert touching_ids(inst_map) == {1, 2}


def test_same_seed_gives_byte_identical_tiles():
    first = generate_tile(3, SHAPE)
    second = generate_tile(3, SHAPE)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(first, second))


def test_other_seed_gives_other_tile():
    assert not np.array_equal(generate_tile(3, SHAPE)[0], generate_tile(4, SHAPE)[0])


def test_opencv_thread_count_does_not_change_tile():
    threads = cv2.getNumThreads()
    reference = generate_tile(5, SHAPE)
    try:
        cv2.setNumThreads(1)
        single = generate_tile(5, SHAPE)
    finally:
        cv2.setNumThreads(threads)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(reference, single))


def test_dtypes_and_shapes():
    image, inst_map, type_map = generate_tile(0, (96, 128))
    assert (image.shape, image.dtype) == ((96, 128, 3), np.uint8)
    assert (inst_map.shape, inst_map.dtype) == ((96, 128), np.int32)
    assert (type_map.shape, type_map.dtype) == ((96, 128), np.int32)


def test_instance_ids_are_contiguous(tiles):
    for _, inst_map, _ in tiles:
        assert inst_map.max() > 10
        np.testing.assert_array_equal(np.unique(inst_map), np.arange(inst_map.max() + 1))


def test_each_instance_is_one_8_connected_piece(tiles):
    for _, inst_map, _ in tiles:
        assert label(inst_map, background=0, connectivity=2).max() == inst_map.max()


def test_type_map_types_every_instance_pixel_and_nothing_else(tiles):
    for _, inst_map, type_map in tiles:
        np.testing.assert_array_equal(type_map > 0, inst_map > 0)
        assert set(np.unique(type_map)) <= {0, *NUCLEUS_TYPES}


def test_each_instance_has_one_type(tiles):
    for _, inst_map, type_map in tiles:
        pairs = np.unique(np.stack([inst_map, type_map])[:, inst_map > 0], axis=1)
        assert pairs.shape[1] == inst_map.max()


def test_three_types_differ_in_size_intensity_and_elongation(tiles):
    area, haematoxylin, elongation = {}, {}, {}
    for type_id in (1, 2, 3):
        props = [(p.area, p.intensity_mean, p.axis_major_length / max(p.axis_minor_length, 1.0))
                 for image, inst_map, type_map in tiles
                 for p in regionprops(np.where(type_map == type_id, inst_map, 0), rgb2hed(image)[..., 0])]
        assert len(props) >= 5, f"type {type_id} has only {len(props)} nuclei"
        area[type_id], haematoxylin[type_id], elongation[type_id] = np.mean(props, axis=0)
    epithelial, inflammatory, spindle = 1, 2, 3
    assert area[epithelial] > area[spindle] > area[inflammatory]
    assert haematoxylin[inflammatory] > haematoxylin[spindle] > haematoxylin[epithelial]
    assert elongation[spindle] > 2 * max(elongation[epithelial], elongation[inflammatory])


def test_at_least_30_percent_of_nuclei_touch_another(tiles):
    touching = sum(len(touching_ids(inst_map)) for _, inst_map, _ in tiles)
    total = sum(int(inst_map.max()) for _, inst_map, _ in tiles)
    assert touching / total >= 0.30


def test_thresholding_merges_touching_nuclei(tiles):
    components = 0
    for image, _, _ in tiles:
        haematoxylin = rgb2hed(image)[..., 0]
        components += label(haematoxylin > threshold_otsu(haematoxylin), connectivity=2).max()
    assert components < 0.8 * sum(int(inst_map.max()) for _, inst_map, _ in tiles)


def test_later_nucleus_owns_overlapping_pixels():
    layout = sample_layout(np.random.default_rng(2), (192, 192))
    drawn = rasterise_layout(layout, (192, 192))
    occluded = 0
    for i in range(len(layout.types)):
        alone = rasterise_layout(NucleusLayout(*(field[i : i + 1] for field in layout)), (192, 192)) > 0
        owners = drawn[alone & (drawn != i + 1)]
        assert np.all((owners == 0) | (owners > i + 1)), f"nucleus {i + 1} lost pixels to an earlier one"
        occluded += int(np.count_nonzero(owners > i + 1) >= 3)
    assert occluded >= 3


def test_nuclei_are_darker_bluer_and_richer_in_haematoxylin_than_stroma(tiles):
    for image, inst_map, _ in tiles:
        nucleus = inst_map > 0
        stroma = ~ndimage.binary_dilation(nucleus, iterations=3)
        haematoxylin = rgb2hed(image)[..., 0]
        rgb = image.astype(np.float64)
        assert haematoxylin[nucleus].mean() > 3 * haematoxylin[stroma].mean()
        assert rgb[nucleus].sum(axis=1).mean() < rgb[stroma].sum(axis=1).mean() - 60
        blueness = rgb[..., 2] - rgb[..., 0]
        assert blueness[nucleus].mean() > blueness[stroma].mean() + 20


def test_without_jitter_optical_density_lies_in_the_he_stain_plane():
    image, _, _ = generate_tile(1, SHAPE, stain_jitter=0.0, noise_std=0.0)
    normal = np.cross(HE_STAIN_MATRIX[0], HE_STAIN_MATRIX[1])
    normal /= np.linalg.norm(normal)
    od = optical_density(image).reshape(-1, 3)
    off_plane = np.abs(od @ normal)
    assert np.median(np.linalg.norm(od, axis=1)) > 0.2
    assert np.percentile(off_plane, 95) < 0.03


def stain_plane_normal(image: np.ndarray) -> np.ndarray:
    """Unit normal of the plane through the origin that best fits the pixels' optical densities."""
    _, _, vt = np.linalg.svd(optical_density(image).reshape(-1, 3), full_matrices=False)
    return vt[2]


def largest_angle_between_stain_planes(stain_jitter: float) -> float:
    """Largest angle in degrees between the fitted stain planes of six small tiles."""
    normals = [stain_plane_normal(generate_tile(seed, (96, 96), stain_jitter=stain_jitter, noise_std=0.0)[0])
               for seed in range(6)]
    return max(np.degrees(np.arccos(min(1.0, abs(float(a @ b))))) for a in normals for b in normals)


def test_stain_jitter_tilts_the_stain_plane_differently_per_tile():
    assert largest_angle_between_stain_planes(0.03) > 4.0


def test_without_stain_jitter_every_tile_has_the_same_stain_plane():
    assert largest_angle_between_stain_planes(0.0) < 1.0


def test_stroma_eosin_is_textured():
    image, inst_map, _ = generate_tile(4, SHAPE, noise_std=0.0)
    eosin = rgb2hed(image)[..., 1]
    stroma = ~ndimage.binary_dilation(inst_map > 0, iterations=3)
    fine_detail = eosin - ndimage.gaussian_filter(eosin, 3.0)
    assert eosin[stroma].std() > 0.15 * eosin[stroma].mean()
    assert fine_detail[stroma].std() > 0.05 * eosin[stroma].mean()


def test_nuclei_have_chromatin_texture():
    image, _, type_map = generate_tile(4, (256, 256), noise_std=0.0)
    haematoxylin = rgb2hed(image)[..., 0]
    core = ndimage.binary_erosion(type_map == 1, iterations=2)
    assert core.sum() > 200
    assert haematoxylin[core].std() > 0.1 * haematoxylin[core].mean()


def test_noise_has_the_requested_standard_deviation():
    noisy = generate_tile(6, SHAPE, noise_std=2.0)[0].astype(np.float64)
    clean = generate_tile(6, SHAPE, noise_std=0.0)[0].astype(np.float64)
    assert 1.8 < (noisy - clean).std() < 2.2


def test_nucleus_edges_are_blurred():
    image, inst_map, _ = generate_tile(7, SHAPE, noise_std=0.0)
    grey = image.astype(np.float64).mean(axis=2)
    edge_step = np.abs(np.diff(grey, axis=1))[np.diff(inst_map > 0, axis=1)]
    inside = (inst_map > 0).astype(np.float64)
    assert np.median(edge_step) < 0.7 * abs(grey[inside == 1].mean() - grey[inside == 0].mean())


def test_dataset_tile_i_uses_the_derived_seed():
    dataset = generate_dataset(2, seed=9, shape=(64, 64))
    assert len(dataset) == 2
    np.testing.assert_array_equal(dataset[1][0], generate_tile(tile_seed(9, 1), (64, 64))[0])
    assert not np.array_equal(dataset[0][0], dataset[1][0])


@pytest.mark.parametrize(
    "kwargs", [{"shape": (8, 64)}, {"shape": (64, 20000)}, {"shape": (64, 64, 3)}, {"nuclei_density": -1.0}]
)
def test_bad_tile_arguments_raise_user_error(kwargs):
    kwargs = {"shape": (64, 64), **kwargs}
    with pytest.raises(UserError):
        generate_tile(0, **kwargs)


def test_negative_seed_raises_user_error():
    with pytest.raises(UserError, match="seed -1 is negative"):
        generate_tile(-1, (64, 64))


def test_cli_writes_the_folder_layout(tmp_path):
    assert main([str(tmp_path), "--n", "2", "--seed", "3", "--size", "48x64"]) == 0
    image, inst_map, type_map = generate_tile(tile_seed(3, 1), (48, 64))
    np.testing.assert_array_equal(read_image(tmp_path / "images" / "tile_0001.png"), image)
    np.testing.assert_array_equal(read_label(tmp_path / "inst" / "tile_0001.npy"), inst_map)
    np.testing.assert_array_equal(read_label(tmp_path / "types" / "tile_0001.png"), type_map)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["tile_0000.png", "tile_0001.png"]


@pytest.mark.parametrize("argv", [["--n", "0"], ["--size", "big"], ["--bogus"], ["--size", "8"], ["--seed", "-1"]])
def test_cli_bad_arguments_exit_2_with_one_line(tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "out"), *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_cli_runs_as_module(tmp_path):
    result = subprocess.run([sys.executable, "-m", "loader.synthetic", str(tmp_path), "--n", "1", "--size", "32"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "inst" / "tile_0000.npy").is_file()
