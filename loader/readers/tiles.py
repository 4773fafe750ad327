"""Readers for file-per-image formats: CoNSeP .mat, MoNuSeg, CPM-15, GlaS, CHR-Net RCC, GeoJSON, folder."""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Sequence


from loader.readers.annotations import PIXEL_CORNER_OFFSET, aperio_mpp, read_aperio_xml, read_cpm_mask, read_geojson
from loader.readers.core import Arrays, ClassMap, Record
from loader.readers.files import (
    as_label,
    check_shape,
    child_dir,
    files_with_suffix,
    image_files,
    load_mat,
    match_by_stem,
    require_dir,
    split_roots,
)
from misc.errors import UserError
from misc.io import read_image, read_label

MPP_40X = 0.25
MPP_20X = 0.5
GLAS_MPP = 0.62  # GlaS: scanned at 0.465 µm/px, released rescaled to 0.620 µm/px (20x)

CONSEP_CLASSES = (
    "other",
    "inflammatory",
    "healthy epithelial",
    "dysplastic/malignant epithelial",
    "fibroblast",
    "muscle",
    "endothelial",
)
CONSEP_MERGE = {
    "healthy epithelial": "epithelial",
    "dysplastic/malignant epithelial": "epithelial",
    "fibroblast": "spindle-shaped",
    "muscle": "spindle-shaped",
    "endothelial": "spindle-shaped",
}
RCC_CLASSES = ("grade 1", "grade 2", "grade 3", "endothelial")
CPM15_MAGNIFICATION = {f"image{i:02d}": (20 if i <= 7 else 40) for i in range(1, 16)}


def read_mat_pair(image_path: Path, mat_path: Path, inst_key: str, type_key: str, allow_grey: bool) -> Arrays:
    """An image and its ``.mat`` label file holding an instance map and a type map.

    Raises:
        UserError: a missing variable, a non-integer map, or a shape that differs from the image's.
    """
    image = read_image(image_path, allow_grey)
    mat = load_mat(mat_path, [inst_key, type_key])
    inst_map = as_label(mat[inst_key], mat_path, inst_key)
    type_map = as_label(mat[type_key], mat_path, type_key)
    check_shape(inst_map, image, mat_path, image_path)
    check_shape(type_map, image, mat_path, image_path)
    return Arrays(image, inst_map, type_map)


def _part_name(part: str | None, stem: str) -> str:
    """Sample name: the stem, prefixed with ``<part>_`` when read from a split sub-folder
    whose name the stem does not already start with."""
    return stem if part is None or stem.lower().startswith(part.lower()) else f"{part}_{stem}"


def _images_and_labels_dirs(folder: Path, image_dir: str, label_dir: str) -> tuple[Path, Path]:
    images, labels = child_dir(folder, image_dir), child_dir(folder, label_dir)
    if images is None or labels is None:
        missing = image_dir if images is None else label_dir
        raise UserError(f"{folder}: no '{missing}/' sub-folder (expected '{image_dir}/' and '{label_dir}/')")
    return images, labels


def read_consep_mat(root: Path, split: str | None, *, allow_grey: bool = False, merge_classes: bool = False) -> list[Record]:
    """HoVer-Net/CoNSeP: ``[Train|Test/]Images/*.png`` + ``Labels/*.mat`` (``inst_map``, ``type_map``).

    ``merge_classes`` applies HoVer-Net's 7 -> 4 merge (3,4 -> epithelial; 5,6,7 -> spindle-shaped).
    """
    merge = ClassMap(CONSEP_MERGE, "CoNSeP 7->4 merge") if merge_classes else None
    class_names = merge.class_names(CONSEP_CLASSES) if merge else CONSEP_CLASSES
    records = []
    for part, folder in split_roots(root, split, ("train", "test")):
        images_dir, labels_dir = _images_and_labels_dirs(folder, "Images", "Labels")
        images = image_files(images_dir)
        for image_path, mat_path in zip(images, match_by_stem(images, labels_dir, [".mat"], "label .mat")):

            def load(image_path: Path = image_path, mat_path: Path = mat_path) -> Arrays:
                arrays = read_mat_pair(image_path, mat_path, "inst_map", "type_map", allow_grey)
                return merge.apply(arrays, CONSEP_CLASSES)[0] if merge else arrays

            name = _part_name(part, image_path.stem)
            records.append(Record(name, image_path, load, MPP_40X, class_names=class_names, group=name))
    return records


def read_monuseg(
    root: Path, split: str | None, *, allow_grey: bool = False, images: str = "images", annotations: str = "annotations",
    vertex_offset: float = PIXEL_CORNER_OFFSET,
) -> list[Record]:
    """MoNuSeg: ``images/*.tif`` + ``annotations/*.xml`` (Aperio XML, one ``<Region>`` per nucleus).

    A folder holding both ``.tif`` and ``.xml`` (the official test release) also works.
    ``.mpp`` is the XML's ``MicronsPerPixel`` when set, else 0.25 (40x). ``vertex_offset``
    (pixels subtracted from the XML's vertices before filling) defaults to 0.5, the pixel-corner
    to pixel-centre shift (see :data:`loader.readers.annotations.PIXEL_CORNER_OFFSET`); 0 fills
    the file's coordinates as they are.
    """
    records = []
    for part, folder in split_roots(root, split, ("train", "test")):
        images_dir = child_dir(folder, images) or folder
        xml_dir = child_dir(folder, annotations) or folder
        tiles = files_with_suffix(require_dir(images_dir, "MoNuSeg images"), (".tif", ".tiff", ".png"))
        if not tiles:
            raise UserError(f"{images_dir}: no .tif images (expected '{images}/*.tif' + '{annotations}/*.xml')")
        for image_path, xml_path in zip(tiles, match_by_stem(tiles, xml_dir, [".xml"], "annotation .xml")):

            def load(image_path: Path = image_path, xml_path: Path = xml_path) -> Arrays:
                image = read_image(image_path, allow_grey)
                return Arrays(image, read_aperio_xml(xml_path, image.shape[:2], vertex_offset))

            name = _part_name(part, image_path.stem)
            mpp = aperio_mpp(xml_path) or MPP_40X
            records.append(Record(name, image_path, load, mpp, group=image_path.stem))
    return records


def _cpm15_magnifications(root: Path) -> dict[str, int]:
    """``{imageNN: 20 or 40}`` from ``README_training.txt`` when present, else the official table."""
    readme = root / "README_training.txt"
    if readme.is_file():
        found = re.findall(r"(image\d+)\.png\s+(\d+)\s*x", readme.read_text(errors="replace"))
        if found:
            return {stem: int(power) for stem, power in found}
    return dict(CPM15_MAGNIFICATION)


def read_cpm15(root: Path, split: str | None, *, allow_grey: bool = False) -> list[Record]:
    """MICCAI 2015 nuclei tiles: ``imageNN.png`` (RGBA) + ``imageNN_mask.txt``; ``.mpp`` 0.5 at 20x, 0.25 at 40x."""
    if split is not None:
        raise UserError(f"cpm15 has no native splits; got '{split}' (use a split file)")
    magnifications = _cpm15_magnifications(require_dir(root, "CPM-15 tiles"))
    tiles = image_files(root, exclude="_poly")
    records = []
    for image_path, mask_path in zip(tiles, match_by_stem(tiles, root, ["_mask.txt"], "mask")):

        def load(image_path: Path = image_path, mask_path: Path = mask_path) -> Arrays:
            image = read_image(image_path, allow_grey)
            inst_map = read_cpm_mask(mask_path)
            check_shape(inst_map, image, mask_path, image_path)
            return Arrays(image, inst_map)

        power = magnifications.get(image_path.stem)
        mpp = {20: MPP_20X, 40: MPP_40X}.get(power) if power else None
        records.append(Record(image_path.stem, image_path, load, mpp, meta={"magnification": power}))
    return records


def _glas_grades(root: Path) -> dict[str, str]:
    """``{name: grade}`` from GlaS ``Grade.csv`` (column ' grade (GlaS)') when present."""
    grade_file = root / "Grade.csv"
    if not grade_file.is_file():
        return {}
    with grade_file.open(newline="") as handle:
        rows = list(csv.reader(handle))
    return {row[0].strip(): row[2].strip() for row in rows[1:] if len(row) >= 3}


def read_glas(root: Path, split: str | None, *, allow_grey: bool = False) -> list[Record]:
    """GlaS (Warwick-QU): ``<split>_<n>.bmp`` + ``<split>_<n>_anno.bmp`` gland instance labels.

    Splits ``train``, ``testA``, ``testB`` are the file-name prefixes; ``meta['grade']`` comes
    from ``Grade.csv`` (benign/malignant) when present.
    """
    native = ("train", "testA", "testB")
    require_dir(root, "GlaS .bmp files")
    if split is not None and split not in native:
        raise UserError(f"glas split '{split}' is not one of {list(native)}")
    grades = _glas_grades(root)
    tiles = [p for p in image_files(root, exclude="_anno") if split is None or p.stem.startswith(f"{split}_")]
    if not tiles:
        raise UserError(f"{root}: no GlaS images for split '{split}'")
    records = []
    for image_path, anno_path in zip(tiles, match_by_stem(tiles, root, ["_anno.bmp"], "annotation")):

        def load(image_path: Path = image_path, anno_path: Path = anno_path) -> Arrays:
            image = read_image(image_path, allow_grey)
            inst_map = read_label(anno_path)
            check_shape(inst_map, image, anno_path, image_path)
            return Arrays(image, inst_map)

        meta = {"grade": grades[image_path.stem]} if image_path.stem in grades else {}
        records.append(Record(image_path.stem, image_path, load, GLAS_MPP, meta=meta))
    return records


def _pair_folder(folder: Path, image_dir: str, label_dir: str) -> tuple[Path, Path]:
    """``folder/<image_dir>`` + ``folder/<label_dir>`` when both exist, else ``folder`` for both."""
    images, labels = child_dir(folder, image_dir), child_dir(folder, label_dir)
    return (images, labels) if images is not None and labels is not None else (folder, folder)


def read_rcc(
    root: Path, split: str | None, *, allow_grey: bool = False, images: str = "Images", labels: str = "Labels"
) -> list[Record]:
    """CHR-Net ccRCC grading: ``.png`` + ``.mat`` (``instance_map``, ``class_map``) by stem.

    Pairs live in one folder or in ``Images/`` + ``Labels/``; ``train``/``val``/``test``
    sub-folders are native splits. Types: 1-3 tumour grade, 4 endothelial; 40x (0.25 µm/px).
    """
    records = []
    for part, folder in split_roots(root, split, ("train", "val", "test")):
        images_dir, labels_dir = _pair_folder(folder, images, labels)
        tiles = files_with_suffix(images_dir, (".png",))
        if not tiles:
            raise UserError(f"{images_dir}: no .png images (expected .png + .mat pairs)")
        for image_path, mat_path in zip(tiles, match_by_stem(tiles, labels_dir, [".mat"], "label .mat")):

            def load(image_path: Path = image_path, mat_path: Path = mat_path) -> Arrays:
                return read_mat_pair(image_path, mat_path, "instance_map", "class_map", allow_grey)

            name = _part_name(part, image_path.stem)
            records.append(Record(name, image_path, load, MPP_40X, class_names=RCC_CLASSES))
    return records


def _names_option(class_names: Sequence[str] | str | None) -> tuple[str, ...] | None:
    """Class names from a list or a text/YAML file (one name per line or a YAML list)."""
    if class_names is None:
        return None
    if isinstance(class_names, str | Path) and Path(class_names).is_file():
        import yaml

        loaded = yaml.safe_load(Path(class_names).read_text())
        if isinstance(loaded, str):
            loaded = loaded.split()
        class_names = loaded
    if isinstance(class_names, str) or not all(isinstance(n, str) for n in class_names):
        raise UserError(f"class_names: expected a list of names or a file with one per line, got {class_names!r}")
    return tuple(class_names)


def read_geojson_dataset(
    root: Path,
    split: str | None,
    *,
    allow_grey: bool = False,
    class_names: Sequence[str] | str | None = None,
    images: str = "images",
    annotations: str = "annotations",
    vertex_offset: float = PIXEL_CORNER_OFFSET,
) -> list[Record]:
    """Images + QuPath GeoJSON exports (``<stem>.geojson`` or ``<stem>.json``) matched by stem.

    Files sit together in one folder or in ``images/`` + ``annotations/``. Features'
    ``classification.name`` become types through ``class_names`` (type k = k-th name).
    ``vertex_offset``: see :func:`loader.readers.annotations.read_geojson`.
    """
    names = _names_option(class_names)
    records = []
    for part, folder in split_roots(root, split, ()):
        images_dir, geo_dir = _pair_folder(folder, images, annotations)
        tiles = image_files(images_dir)
        for image_path, geo_path in zip(tiles, match_by_stem(tiles, geo_dir, [".geojson", ".json"], "GeoJSON")):

            def load(image_path: Path = image_path, geo_path: Path = geo_path) -> Arrays:
                image = read_image(image_path, allow_grey)
                inst_map, type_map = read_geojson(geo_path, image.shape[:2], names, vertex_offset)
                return Arrays(image, inst_map, type_map)

            records.append(Record(image_path.stem, image_path, load, class_names=names))
    return records


def read_folder(
    root: Path,
    split: str | None,
    *,
    allow_grey: bool = False,
    images: str = "images",
    inst: str = "inst",
    types: str = "types",
    class_names: Sequence[str] | str | None = None,
) -> list[Record]:
    """Images + instance labels + optional type labels matched by stem across sibling folders.

    Labels may be label images (png/tif/bmp), ``.npy`` or ``.mat`` (``inst_map``/``type_map``).
    Without a ``types/`` folder ``.type_map`` is None.
    """
    names = _names_option(class_names)
    label_suffixes = [".npy", ".png", ".tif", ".tiff", ".bmp", ".mat"]
    records = []
    for part, folder in split_roots(root, split, ()):
        tiles = image_files(require_dir(folder / images, "images"))
        inst_paths = match_by_stem(tiles, require_dir(folder / inst, "instance labels"), label_suffixes, "instance label")
        type_dir = folder / types
        type_paths = match_by_stem(tiles, type_dir, label_suffixes, "type label") if type_dir.is_dir() else [None] * len(tiles)
        for image_path, inst_path, type_path in zip(tiles, inst_paths, type_paths):

            def load(image_path: Path = image_path, inst_path: Path = inst_path, type_path: Path | None = type_path) -> Arrays:
                image = read_image(image_path, allow_grey)
                inst_map = read_label(inst_path, "inst_map")
                check_shape(inst_map, image, inst_path, image_path)
                type_map = None
                if type_path is not None:
                    type_map = read_label(type_path, "type_map")
                    check_shape(type_map, image, type_path, image_path)
                return Arrays(image, inst_map, type_map)

            records.append(Record(image_path.stem, image_path, load, class_names=names))
    return records
