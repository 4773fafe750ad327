"""Property tests (hypothesis) of the readers and writers: random instance maps written as
HoVer-Net ``.mat`` (MATLAB 5), as MATLAB 7.3 ``.mat`` (HDF5) and as QuPath GeoJSON, then read
back by the readers, come back as they went in (GeoJSON: every nucleus whose contour has three
vertices or more, renumbered 1..N in id order; thinner ones are not written)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import h5py
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from loader.readers.annotations import read_geojson
from misc.io import read_label
from postproc.formats import write_geojson, write_mat
from postproc.instances import instance_info

SHAPE = (16, 20)
FEW = settings(max_examples=20, deadline=None)


@st.composite
def instance_maps(draw) -> np.ndarray:
    """(16, 20) int32 maps of disjoint rectangles (they may touch) with distinct random ids."""
    labels = np.zeros(SHAPE, np.int32)
    boxes = draw(st.lists(st.tuples(st.integers(0, SHAPE[0] - 1), st.integers(0, SHAPE[1] - 1),
                                    st.integers(1, 6), st.integers(1, 6)), max_size=8))
    ids = draw(st.lists(st.integers(1, 2**31 - 1), min_size=len(boxes), max_size=len(boxes), unique=True))
    for (top, left, height, width), value in zip(boxes, ids):
        window = labels[top:top + height, left:left + width]
        if not window.any():
            window[...] = value
    return labels


def _ranked(labels: np.ndarray) -> np.ndarray:
    """``labels`` renumbered 1..N in increasing order of the original ids (0 stays 0)."""
    ids, inverse = np.unique(labels, return_inverse=True)
    ranks = np.arange(len(ids)) if ids[0] == 0 else np.arange(1, len(ids) + 1)
    return ranks[inverse].reshape(labels.shape).astype(np.int32)


@FEW
@given(instance_maps(), st.integers(0, 5))
def test_mat_round_trip_keeps_instance_and_type_maps(labels: np.ndarray, nr_types: int) -> None:
    types = (labels % (nr_types + 1)).astype(np.int32) if nr_types else None
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "a.mat"
        write_mat(path, labels, types, instance_info(labels))
        assert np.array_equal(read_label(path, "inst_map"), labels)
        if types is not None:
            assert np.array_equal(read_label(path, "type_map"), types)


@FEW
@given(instance_maps())
def test_matlab_7_3_hdf5_round_trip_keeps_the_instance_map(labels: np.ndarray) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "a.mat"
        with h5py.File(path, "w", userblock_size=512) as handle:  # MATLAB 7.3: HDF5 after a 512-byte header
            handle.create_dataset("inst_map", data=labels.T.astype(np.float64))  # MATLAB stores columns first
        with open(path, "r+b") as handle:  # the header: text, subsystem offset, version 0x0200, 'IM'
            handle.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(116) + bytes(8) + b"\x00\x02IM")
        assert np.array_equal(read_label(path, "inst_map"), labels)


@FEW
@given(instance_maps())
def test_geojson_round_trip_keeps_every_nucleus_pixel(labels: np.ndarray) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "a.geojson"
        write_geojson(path, instance_info(labels))
        back, types = read_geojson(path, SHAPE)
    assert types is None
    info = instance_info(labels)
    thin = [i for i, entry in info.items() if len(entry["contour"]) < 3]  # not written (documented)
    assert np.array_equal(back, _ranked(np.where(np.isin(labels, thin), 0, labels)))  # features get ids 1..N in id order
