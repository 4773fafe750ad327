"""Tiler: window placement, padding, and exact stitching with an identity-like predictor."""

from __future__ import annotations

import numpy as np
import pytest

from misc.errors import UserError
import cv2

from inference.tiling import ArraySink, TileSpec, gather_window, plan_axis, predict_tiled, resize_rows, window_count


def centre_crop_predictor(spec: TileSpec):
    """A predictor whose output window is the centre crop of its input window, as float32."""
    margin = spec.context

    def predict(windows: np.ndarray) -> dict[str, np.ndarray]:
        crop = windows[:, margin : margin + spec.output_size, margin : margin + spec.output_size]
        return {"rgb": crop.astype(np.float32), "red": crop[..., :1].astype(np.float32) * 2}

    return predict


def stitch(image: np.ndarray, spec: TileSpec, batch_size: int = 3) -> dict[str, np.ndarray]:
    sink = ArraySink(image.shape[0])
    predict_tiled(image, centre_crop_predictor(spec), spec, sink, batch_size=batch_size)
    return sink.maps


@pytest.mark.parametrize(
    "spec",
    [
        TileSpec(input_size=26, output_size=8),
        TileSpec(input_size=27, output_size=9, keep_margin=2),
        TileSpec(input_size=20, output_size=20, keep_margin=3, pad_mode="zero"),
        TileSpec(input_size=24, output_size=12, step=5, pad_mode="zero"),
        TileSpec(input_size=24, output_size=12, step=5, pad_mode="reflect"),
    ],
    ids=["hovernet-like", "reflect-keep", "fullnet-like", "zero-small-step", "reflect-small-step"],
)
@pytest.mark.parametrize("shape", [(37, 53), (5, 3), (1, 1), (8, 8)], ids=["odd", "smaller", "one-pixel", "one-window"])
def test_stitched_identity_equals_image(spec: TileSpec, shape: tuple[int, int]) -> None:
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    maps = stitch(image, spec)
    assert maps["rgb"].shape == (*shape, 3) and maps["rgb"].dtype == np.float32
    np.testing.assert_array_equal(maps["rgb"], image.astype(np.float32))
    np.testing.assert_array_equal(maps["red"][..., 0], image[..., 0].astype(np.float32) * 2)


def test_hovernet_original_window_placement() -> None:
    plan = plan_axis(200, TileSpec(input_size=270, output_size=80))
    assert plan.input_starts.tolist() == [0, 80, 160]
    assert plan.keep.tolist() == [[0, 80], [80, 160], [160, 200]]
    assert plan.source.size == 160 + 270  # pad 95 top, 135 bottom
    assert plan.source[:3].tolist() == [95, 94, 93]  # reflect, edge not repeated


def test_fullnet_window_placement_keeps_centres() -> None:
    plan = plan_axis(300, TileSpec(input_size=208, output_size=208, keep_margin=40, pad_mode="zero"))
    assert plan.input_starts.tolist() == [0, 128]
    assert plan.keep.tolist() == [[0, 168], [168, 300]]
    assert plan.source[299] == 299 and plan.source[300] == -1


def test_zero_padding_fills_zeros() -> None:
    image = np.full((4, 6, 3), 7, np.uint8)
    spec = TileSpec(input_size=10, output_size=6, pad_mode="zero")
    rows, cols = plan_axis(4, spec), plan_axis(6, spec)
    window = gather_window(image, rows, cols, 0, 0, spec.input_size)
    expected = np.zeros((10, 10, 3), np.uint8)
    expected[2:6, 2:8] = 7
    np.testing.assert_array_equal(window, expected)


def test_reflect_padding_matches_numpy_pad() -> None:
    image = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    spec = TileSpec(input_size=9, output_size=5)
    rows, cols = plan_axis(5, spec), plan_axis(7, spec)
    padded = np.pad(image, ((2, 2), (2, 7), (0, 0)), mode="reflect")
    np.testing.assert_array_equal(gather_window(image, rows, cols, 0, 1, 9), padded[0:9, 5:14])


def test_window_count() -> None:
    assert window_count((1000, 1000), TileSpec(input_size=270, output_size=80)) == 13 * 13


def test_wrong_output_shape_is_user_error() -> None:
    spec = TileSpec(input_size=10, output_size=4)
    with pytest.raises(UserError, match=r"'bad' has shape \(1, 5, 5, 1\)"):
        predict_tiled(
            np.zeros((4, 4, 3), np.uint8), lambda w: {"bad": np.zeros((len(w), 5, 5, 1), np.float32)}, spec, ArraySink(4)
        )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_size": 10, "output_size": 12}, "output_size <= input_size"),
        ({"input_size": 10, "output_size": 5}, "must be even"),
        ({"input_size": 10, "output_size": 10, "keep_margin": 5}, "keep_margin"),
        ({"input_size": 10, "output_size": 10, "keep_margin": 2, "step": 7}, "step must be in"),
        ({"input_size": 10, "output_size": 10, "pad_mode": "edge"}, "pad_mode"),
        ({"input_size": 10, "output_size": 10, "resize_shorter": 0}, "resize_shorter"),
        ({"input_size": 10, "output_size": 10, "scale": 0}, "scale must be a positive number"),
        ({"input_size": 10, "output_size": 10, "scale": 0.5, "resize_shorter": 8}, "either scale or resize_shorter"),
    ],
)
def test_bad_spec_is_user_error(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        TileSpec(**kwargs)


def test_from_config_reads_optional_keys() -> None:
    spec = TileSpec.from_config({"input_size": 208, "output_size": 208, "keep_margin": 40, "pad_mode": "zero"})
    assert (spec.stride, spec.context, spec.pad_mode) == (128, 0, "zero")


def test_from_config_scales_by_network_over_image_magnification() -> None:
    base = {"input_size": 16, "output_size": 16}
    assert TileSpec.from_config({**base, "net_mag": 20, "mag": 40}).scale == 0.5
    assert TileSpec.from_config({**base, "net_mag": None, "mag": 40}).scale == 1.0
    assert TileSpec.from_config({**base, "net_mag": 40, "mag": 20}).scale == 2.0


def test_resize_rows_bands_equal_a_whole_map_resize() -> None:
    values = np.random.default_rng(1).random((33, 17, 6), dtype=np.float32)
    expected = np.concatenate(
        [cv2.resize(values[..., :3], (40, 65), interpolation=cv2.INTER_LINEAR),
         cv2.resize(values[..., 3:], (40, 65), interpolation=cv2.INTER_LINEAR)], axis=-1
    )
    bands = np.concatenate([resize_rows(values, (65, 40), 0, 30), resize_rows(values, (65, 40), 30, 65)])
    np.testing.assert_allclose(bands, expected, rtol=0, atol=1e-5)


def test_scale_runs_the_windows_on_the_resized_image() -> None:
    spec = TileSpec(input_size=8, output_size=8, scale=0.5)
    seen = []

    def predict(batch: np.ndarray) -> dict[str, np.ndarray]:
        seen.append(batch.shape[0])
        return {"rgb": batch.astype(np.float32)}

    image = np.full((40, 60, 3), 50, np.uint8)
    image[:, 30:] = 150
    sink = ArraySink(40)
    predict_tiled(image, predict, spec, sink, batch_size=100)
    assert seen == [window_count((40, 60), spec)] == [3 * 4]  # a 20 x 30 image in 8 px windows
    assert sink.maps["rgb"].shape == (40, 60, 3)
    np.testing.assert_allclose(sink.maps["rgb"][:, :26], 50.0)
    np.testing.assert_allclose(sink.maps["rgb"][:, 34:], 150.0)


def test_resize_shorter_predicts_the_whole_resized_image_once() -> None:
    spec = TileSpec(input_size=8, output_size=8, resize_shorter=10)
    seen = []

    def predict(batch: np.ndarray) -> dict[str, np.ndarray]:
        seen.append(batch.shape)
        return {"rgb": batch.astype(np.float32)}

    image = np.full((20, 30, 3), 77, np.uint8)
    image[:, 15:] = 200
    sink = ArraySink(20)
    predict_tiled(image, predict, spec, sink)
    assert seen == [(1, 10, 15, 3)] and window_count((20, 30), spec) == 1
    assert sink.maps["rgb"].shape == (20, 30, 3)
    np.testing.assert_allclose(sink.maps["rgb"][:, :12], 77.0)
    np.testing.assert_allclose(sink.maps["rgb"][:, 18:], 200.0)


def test_resize_shorter_rejects_maps_of_another_size() -> None:
    spec = TileSpec(input_size=8, output_size=8, resize_shorter=10)
    with pytest.raises(UserError, match=r"'bad' has shape \(1, 5, 5, 1\)"):
        predict_tiled(np.zeros((20, 30, 3), np.uint8), lambda w: {"bad": np.zeros((1, 5, 5, 1), np.float32)},
                      spec, ArraySink(20))


def _window_means(windows: np.ndarray) -> dict[str, np.ndarray]:
    """A classifier stand-in: (N, I, I, 3) → (N, 1) mean of channel 0 and the dense identity."""
    return {"mean": windows[..., 0].reshape(len(windows), -1).mean(1, keepdims=True).astype(np.float32)}


def test_per_window_vectors_give_a_grid_map_with_its_geometry() -> None:
    from inference.tiling import ArraySink

    image = np.zeros((40, 24, 3), np.uint8)
    image[:, :, 0] = np.arange(40)[:, None] // 8 * 10  # constant within each 8-row band
    spec = TileSpec(input_size=8, output_size=8, pad_mode="zero")
    sink = ArraySink(40)
    predict_tiled(image, _window_means, spec, sink, batch_size=4)
    assert sink.maps["mean"].shape == (5, 3, 1)
    np.testing.assert_allclose(sink.maps["mean"][:, 0, 0], [0, 10, 20, 30, 40])
    geometry = sink.grids["mean"]
    assert (geometry.step, geometry.size, geometry.offset) == (8.0, 8.0, 0.0)


def test_grid_geometry_of_a_scaled_run_is_in_image_pixels() -> None:
    from inference.tiling import ArraySink

    image = np.zeros((64, 64, 3), np.uint8)
    sink = ArraySink(64)
    predict_tiled(image, _window_means, TileSpec(input_size=8, output_size=8, pad_mode="zero", scale=0.5), sink)
    assert sink.maps["mean"].shape == (4, 4, 1)
    assert sink.grids["mean"].step == 16.0 and sink.grids["mean"].size == 16.0


def test_grid_map_into_a_dense_only_sink_is_user_error() -> None:
    def dense_only(row_start: int, row_stop: int, band: dict) -> None:
        pass

    with pytest.raises(UserError, match="per-window vectors"):
        predict_tiled(np.zeros((8, 8, 3), np.uint8), _window_means, TileSpec(8, 8), dense_only)


def test_needs_grad_family_gets_gradients_in_predict() -> None:
    import torch

    from inference.predict import infer_image
    from tests.inference.toy_family import toy_family

    class GradFamily(type(toy_family()[0])):
        needs_grad = True

        def predict(self, net, images):
            images = images.detach().requires_grad_(True)
            score = net(images)[:, :1].sum()
            (grad,) = torch.autograd.grad(score, images)
            return {"grad": grad[:, :1].abs()}

    family, net = toy_family(input_size=16, output_size=16)
    grad_family = GradFamily(family.cfg)
    maps = infer_image(grad_family, net, np.full((20, 20, 3), 100, np.uint8), "cpu")
    np.testing.assert_allclose(maps["grad"], 1 / 765, rtol=1e-5)  # d p / d r of p = 1 - mean / 255
    GradFamily.needs_grad = False
    with pytest.raises(RuntimeError):
        infer_image(grad_family, net, np.full((20, 20, 3), 100, np.uint8), "cpu")
