"""Whole-slide images: open a slide, find its pixel size, read regions at any resolution.

Two backends behind one :class:`Slide`:

- OpenSlide for every format it detects (Aperio ``.svs``, Hamamatsu ``.ndpi``, MIRAX ``.mrxs``,
  Leica ``.scn``, Ventana, Philips, tiled pyramidal TIFF, ...);
- tifffile for what OpenSlide does not open: plain (striped) TIFF and OME-TIFF, whose pyramid
  levels are read from SubIFDs or from successive reduced pages. Only the tiles a region
  touches are decoded, so memory stays at one region.

A slide's pixel size (``mpp``, micrometres per level-0 pixel) comes from its metadata:
OpenSlide's ``openslide.mpp-x``, OME ``PhysicalSizeX``, or the TIFF resolution tags when they
give a plausible value (0.01-100 µm/px; the 72 dpi many scanners leave there does not).
A slide without one needs an explicit value (``--slide-mpp``).

:class:`SlideView` presents a slide at another pixel size (the network's): it reads the
pyramid level nearest above that resolution (the coarsest level whose pixels are not larger)
and resizes the rest, so view pixel ``(x, y)`` is centred on level-0 point
``((x + 0.5) * s - 0.5, (y + 0.5) * s - 0.5)`` with ``s = view mpp / slide mpp``. A region that
cannot be read (a corrupt tile) comes back white with its error; reading goes on.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from misc.errors import UserError

log = logging.getLogger(__name__)

#: File suffixes that are always slides (vendor formats OpenSlide reads).
VENDOR_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
TIFF_SUFFIXES = (".tif", ".tiff")
#: A TIFF whose longer side reaches this many pixels is a slide even with one level.
SLIDE_MIN_SIDE = 10000
PLAUSIBLE_MPP = (0.01, 100.0)
WHITE = 255


def _plausible(mpp: float | None) -> float | None:
    """``mpp`` when it lies in :data:`PLAUSIBLE_MPP`, else None."""
    if mpp is None or not math.isfinite(mpp):
        return None
    return float(mpp) if PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1] else None


def mpp_from_resolution(resolution: float | None, unit: str | int | None) -> float | None:
    """µm per pixel from a TIFF ``XResolution`` (pixels per unit) and ``ResolutionUnit``.

    ``unit``: 2 / ``'inch'`` or 3 / ``'centimeter'``; anything else (none) gives None, as does
    an implausible result (e.g. 72 dpi = 353 µm/px).
    """
    if not resolution:
        return None
    per_unit = {"2": 25400.0, "inch": 25400.0, "3": 10000.0, "centimeter": 10000.0}.get(str(unit).lower())
    return None if per_unit is None else _plausible(per_unit / float(resolution))


class SlideBackend:
    """One opened slide file; subclasses read regions of pyramid levels."""

    path: Path
    level_dimensions: list[tuple[int, int]]  # (W, H) per level
    level_downsamples: list[float]
    metadata_mpp: float | None
    description: str

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """(height, width, 3) uint8 RGB of ``level`` starting at level pixel (x, y) (inside the level)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the file."""


class OpenSlideBackend(SlideBackend):
    """Slides OpenSlide detects; transparent pixels (outside scanned areas) become white."""

    def __init__(self, path: Path) -> None:
        import openslide

        self.path = path
        self._slide = openslide.OpenSlide(str(path))
        self._lock = threading.Lock()
        self.level_dimensions = [tuple(map(int, d)) for d in self._slide.level_dimensions]
        self.level_downsamples = [float(d) for d in self._slide.level_downsamples]
        props = self._slide.properties
        self.description = str(props.get("openslide.vendor", "openslide"))
        mpp = props.get("openslide.mpp-x")
        self.metadata_mpp = _plausible(float(mpp)) if mpp else mpp_from_resolution(
            _float(props.get("tiff.XResolution")), props.get("tiff.ResolutionUnit"))

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        import openslide

        downsample = self.level_downsamples[level]
        location = (int(round(x * downsample)), int(round(y * downsample)))
        try:
            rgba = np.asarray(self._slide.read_region(location, level, (int(width), int(height))))
        except openslide.OpenSlideError:
            self._reopen()  # OpenSlide handles stay in an error state after a failed read
            raise
        rgb = rgba[..., :3].copy()
        rgb[rgba[..., 3] == 0] = WHITE
        return rgb

    def _reopen(self) -> None:
        import openslide

        with self._lock:  # the old handle is left to other threads still reading it (freed with them)
            self._slide = openslide.OpenSlide(str(self.path))

    def close(self) -> None:
        self._slide.close()


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class TiffLevel:
    """One pyramid level of a TIFF read with tifffile: whole-page for striped pages, by tile otherwise."""

    def __init__(self, page: Any, lock: threading.Lock) -> None:
        self.page = page
        self.lock = lock
        self.height, self.width = int(page.imagelength), int(page.imagewidth)
        self.samples = int(page.samplesperpixel)
        if self.samples not in (1, 3, 4) or (self.samples > 1 and page.planarconfig != 1):
            raise UserError(f"{page.parent.filehandle.path}: {self.samples}-sample "
                            "planar TIFF is not an RGB slide; expected interleaved RGB(A) or grey")
        self._whole: np.ndarray | None = None

    def read(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        """(height, width, samples) uint8 of the region."""
        if not self.page.is_tiled:
            if self._whole is None:
                with self.lock:
                    self._whole = self.page.asarray(out="memmap" if self.height * self.width > 1 << 26 else None)
            return np.asarray(self._whole[y : y + height, x : x + width]).reshape(height, width, -1)
        tile_h, tile_w = int(self.page.tilelength), int(self.page.tilewidth)
        across = math.ceil(self.width / tile_w)
        out = np.full((height, width, self.samples), WHITE, np.uint8)
        for ty in range(y // tile_h, (y + height - 1) // tile_h + 1):
            for tx in range(x // tile_w, (x + width - 1) // tile_w + 1):
                tile = self._tile(ty * across + tx, tile_h, tile_w)
                top, left = ty * tile_h, tx * tile_w
                r0, c0 = max(y, top), max(x, left)
                r1, c1 = min(y + height, top + tile_h, self.height), min(x + width, left + tile_w, self.width)
                out[r0 - y : r1 - y, c0 - x : c1 - x] = tile[r0 - top : r1 - top, c0 - left : c1 - left]
        return out

    def _tile(self, index: int, tile_h: int, tile_w: int) -> np.ndarray:
        page = self.page
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        if not count:
            return np.full((tile_h, tile_w, self.samples), WHITE, np.uint8)
        handle = page.parent.filehandle
        with self.lock:
            handle.seek(offset)
            data = handle.read(count)
        segment = page.decode(data, index, jpegtables=page.jpegtables, jpegheader=page.jpegheader)[0]
        if segment is None:
            raise OSError(f"tile {index} of level {page.index} cannot be decoded")
        return np.asarray(segment).reshape(tile_h, tile_w, self.samples)


class TiffBackend(SlideBackend):
    """Plain and OME-TIFF files through tifffile."""

    def __init__(self, path: Path) -> None:
        import tifffile

        self.path = path
        self._tif = tifffile.TiffFile(path)
        self._lock = threading.Lock()
        pages = self._level_pages()
        self.levels = [TiffLevel(page, self._lock) for page in pages]
        base = self.levels[0]
        self.level_dimensions = [(lv.width, lv.height) for lv in self.levels]
        self.level_downsamples = [(base.width / lv.width + base.height / lv.height) / 2 for lv in self.levels]
        self.description = "ome-tiff" if self._tif.is_ome else "tiff"
        self.metadata_mpp = self._ome_mpp() or self._tag_mpp(pages[0])

    def _level_pages(self) -> list[Any]:
        series = self._tif.series[0]
        pages = [level.keyframe for level in series.levels]
        if len(pages) == 1:  # a pyramid of successive reduced pages in the main IFD chain
            first = pages[0]
            for page in self._tif.pages[1:]:
                page = page.keyframe if hasattr(page, "keyframe") else page
                if page.samplesperpixel == first.samplesperpixel and page.imagewidth < pages[-1].imagewidth \
                        and page.imagelength < pages[-1].imagelength and not page.is_mask:
                    pages.append(page)
        return pages

    def _ome_mpp(self) -> float | None:
        if not self._tif.is_ome or not self._tif.ome_metadata:
            return None
        match = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', self._tif.ome_metadata)
        unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', self._tif.ome_metadata)
        if not match:
            return None
        scale = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3}.get(unit.group(1) if unit else "µm")
        return None if scale is None else _plausible(float(match.group(1)) * scale)

    @staticmethod
    def _tag_mpp(page: Any) -> float | None:
        tags = page.tags
        if "XResolution" not in tags:
            return None
        numerator, denominator = tags["XResolution"].value
        unit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else None
        return mpp_from_resolution(numerator / denominator if denominator else None, int(unit) if unit else None)

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        region = self.levels[level].read(x, y, width, height)
        if region.shape[2] == 1:
            return np.repeat(region, 3, axis=2)
        return np.ascontiguousarray(region[..., :3])

    def close(self) -> None:
        self._tif.close()


def is_slide_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a whole-slide image rather than an image tile.

    Vendor suffixes (.svs, .ndpi, .mrxs, .scn, ...) always are; a TIFF is when it is tiled and
    pyramidal, or OME-TIFF, or at least :data:`SLIDE_MIN_SIDE` px on its longer side.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in VENDOR_SUFFIXES:
        return True
    if suffix not in TIFF_SUFFIXES or not path.is_file():
        return False
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            pyramid = len(tif.series[0].levels) > 1 or (len(tif.pages) > 1 and page.is_tiled and
                                                         tif.pages[1].imagewidth < page.imagewidth)
            return bool(tif.is_ome or pyramid or max(page.imagewidth, page.imagelength) >= SLIDE_MIN_SIDE)
    except Exception:  # noqa: BLE001 - a TIFF tifffile cannot parse is not a slide here
        return False


def list_slides(input_path: str | os.PathLike) -> list[Path]:
    """The slides of ``input_path``: the file itself when it is a slide, or a folder's slides
    (sorted, not recursive); empty when there are none (a folder of image tiles).

    Raises:
        UserError: no such path, or two slides sharing a stem (their outputs would collide).
    """
    input_path = Path(input_path)
    if input_path.is_file():
        return [input_path] if is_slide_file(input_path) else []
    if not input_path.is_dir():
        raise UserError(f"{input_path}: no such folder or file")
    slides = sorted(p for p in input_path.iterdir() if p.is_file() and is_slide_file(p))
    stems = [p.stem for p in slides]
    shared = sorted({stem for stem in stems if stems.count(stem) > 1})
    if shared:
        raise UserError(f"{input_path}: several slides share the name(s) {shared}; outputs would collide")
    return slides


def _is_ome(path: Path) -> bool:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return bool(tif.is_ome)
    except Exception:  # noqa: BLE001 - not a TIFF tifffile parses
        return False


def _open_backend(path: Path) -> SlideBackend:
    """The OpenSlide backend when OpenSlide detects the file, else tifffile for TIFFs."""
    import openslide

    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except openslide.OpenSlideError:
        vendor = None
    try:
        if vendor == "generic-tiff" and _is_ome(path):
            vendor = None  # OpenSlide sees neither the SubIFD levels nor the OME pixel size
        if vendor is not None:
            return OpenSlideBackend(path)
        if path.suffix.lower() in TIFF_SUFFIXES:
            return TiffBackend(path)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - any decoder failure is the file's fault
        raise UserError(f"{path}: not a readable slide ({type(err).__name__}: {err})") from None
    raise UserError(f"{path}: not a slide OpenSlide or tifffile can open "
                    f"(OpenSlide formats: {', '.join(VENDOR_SUFFIXES)}, tiled TIFF; tifffile: plain or OME-TIFF)")


class Slide:
    """An opened whole-slide image.

    Attributes:
        path: the file.
        mpp: µm per level-0 pixel (metadata, or the explicit value given).
        dimensions: level-0 (width, height) in pixels.
        level_dimensions: (width, height) per pyramid level, level 0 first.
        level_downsamples: level-0 pixels per level pixel, per level.
        backend: ``'openslide:<vendor>'`` or ``'tifffile:<kind>'``.
    """

    def __init__(self, path: str | os.PathLike, mpp: float | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: no such slide file")
        if mpp is not None and not mpp > 0:
            raise UserError(f"--slide-mpp must be > 0 µm per pixel, got {mpp}")
        self._backend = _open_backend(self.path)
        kind = "openslide" if isinstance(self._backend, OpenSlideBackend) else "tifffile"
        self.backend = f"{kind}:{self._backend.description}"
        self.metadata_mpp = self._backend.metadata_mpp
        resolved = mpp if mpp is not None else self.metadata_mpp
        if resolved is None:
            raise UserError(f"{self.path}: the slide's metadata gives no pixel size; "
                            "give it in micrometres per pixel with --slide-mpp (e.g. 0.25 at 40x, 0.5 at 20x)")
        self.mpp = float(resolved)
        self.level_dimensions = self._backend.level_dimensions
        self.level_downsamples = self._backend.level_downsamples
        self.dimensions = self.level_dimensions[0]

    def read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """(height, width, 3) uint8 RGB of pyramid ``level`` from level pixel (x, y); must lie inside it.

        Raises:
            Exception: whatever the backend raises for a region it cannot read.
        """
        return self._backend.read(level, x, y, width, height)

    def level_mpp(self, level: int) -> float:
        """µm per pixel of pyramid ``level``."""
        return self.mpp * self.level_downsamples[level]

    def best_level(self, mpp: float) -> int:
        """The coarsest level whose pixels are no larger than ``mpp`` (0 when the slide is coarser)."""
        fine_enough = [lv for lv in range(len(self.level_downsamples)) if self.level_mpp(lv) <= mpp * (1 + 1e-3)]
        return max(fine_enough, key=self.level_mpp) if fine_enough else 0

    def view(self, mpp: float) -> "SlideView":
        """The slide at ``mpp`` µm per pixel (see :class:`SlideView`)."""
        return SlideView(self, mpp)

    def close(self) -> None:
        """Release the file."""
        self._backend.close()

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_slide(path: str | os.PathLike, mpp: float | None = None) -> Slide:
    """Open a slide; ``mpp`` overrides (or stands in for missing) metadata.

    Raises:
        UserError: not a slide, or no pixel size in its metadata and none given (the message
            names ``--slide-mpp``).
    """
    return Slide(path, mpp)


@dataclass
class RegionError:
    """A region that could not be read: view pixel box ``(x, y, width, height)`` and the reason."""

    box: tuple[int, int, int, int]
    reason: str


class SlideView:
    """A slide resampled to ``mpp`` µm per pixel.

    Attributes:
        slide: the slide.
        mpp: µm per view pixel.
        level: the pyramid level read.
        factor: level pixels per view pixel (1: no resizing; > 1: downsized with anti-aliasing).
        shape: (H, W) of the view in pixels, ``round(level-0 side * slide.mpp / mpp)``.
    """

    def __init__(self, slide: Slide, mpp: float) -> None:
        if not mpp > 0:
            raise UserError(f"view resolution must be > 0 µm per pixel, got {mpp}")
        self.slide = slide
        self.mpp = float(mpp)
        self.level = slide.best_level(mpp)
        self.factor = self.mpp / slide.level_mpp(self.level)
        if self.factor < 1 - 1e-3:
            log.warning("%s: the slide (%.3g µm/px) is coarser than %.3g µm/px; it is upsampled",
                        slide.path, slide.mpp, mpp)
        if abs(self.factor - 1.0) < 1e-3:
            self.factor = 1.0
        width, height = slide.dimensions
        scale = slide.mpp / self.mpp
        self.shape = (max(1, round(height * scale)), max(1, round(width * scale)))

    def read(self, x: int, y: int, width: int, height: int) -> tuple[np.ndarray, RegionError | None]:
        """View region at (x, y) of (width, height) pixels, clipped reads outside the view are white.

        Returns:
            ``((height, width, 3) uint8 RGB, None)``, or a white region and the
            :class:`RegionError` when the backend fails (logged, not raised).
        """
        try:
            return self._read(x, y, width, height), None
        except UserError:
            raise
        except Exception as err:  # noqa: BLE001 - one bad region must not stop a slide
            reason = f"{type(err).__name__}: {err}"
            log.warning("%s: region x=%d y=%d %dx%d unreadable (%s); left white", self.slide.path, x, y, width,
                        height, reason)
            return np.full((height, width, 3), WHITE, np.uint8), RegionError((x, y, width, height), reason)

    def _read(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        level_w, level_h = self.slide.level_dimensions[self.level]
        if self.factor == 1.0:
            return self._read_level(x, y, width, height, level_w, level_h)
        f = self.factor
        sigma = 0.5 * math.sqrt(f * f - 1) if f > 1 else 0.0
        pad = 2 + int(math.ceil(3 * sigma))
        lx0, ly0 = int(math.floor(x * f)) - pad, int(math.floor(y * f)) - pad
        lx1, ly1 = int(math.ceil((x + width) * f)) + pad, int(math.ceil((y + height) * f)) + pad
        source = self._read_level(lx0, ly0, lx1 - lx0, ly1 - ly0, level_w, level_h, replicate=True)
        if sigma > 0:
            source = cv2.GaussianBlur(source, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
        # destination pixel (u, v) samples source ((x + u + 0.5) f - 0.5 - lx0, (y + v + 0.5) f - 0.5 - ly0)
        matrix = np.array([[f, 0, (x + 0.5) * f - 0.5 - lx0], [0, f, (y + 0.5) * f - 0.5 - ly0]], np.float64)
        region = cv2.warpAffine(source, matrix, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_REPLICATE)
        view_h, view_w = self.shape
        region[max(0, view_h - y):] = WHITE  # beyond the view: white, as at level resolution
        region[:, max(0, view_w - x):] = WHITE
        return region

    def _read_level(self, x: int, y: int, width: int, height: int, level_w: int, level_h: int,
                    replicate: bool = False) -> np.ndarray:
        """Level region; parts outside the level are white (or edge-replicated with ``replicate``)."""
        cx0, cy0 = max(x, 0), max(y, 0)
        cx1, cy1 = min(x + width, level_w), min(y + height, level_h)
        if cx0 >= cx1 or cy0 >= cy1:
            return np.full((height, width, 3), WHITE, np.uint8)
        inner = self.slide.read_level(self.level, cx0, cy0, cx1 - cx0, cy1 - cy0)
        if (cx0, cy0, cx1, cy1) == (x, y, x + width, y + height):
            return inner
        pads = ((cy0 - y, y + height - cy1), (cx0 - x, x + width - cx1), (0, 0))
        if replicate:
            return np.pad(inner, pads, mode="edge")
        return np.pad(inner, pads, mode="constant", constant_values=WHITE)

    def read_downsampled(self, block: int = 512) -> tuple[np.ndarray, list[RegionError]]:
        """The whole view as one (H, W, 3) uint8 array, read block by block (for low resolutions).

        Returns:
            The image and the errors of its unreadable blocks.
        """
        height, width = self.shape
        image = np.empty((height, width, 3), np.uint8)
        errors = []
        for y in range(0, height, block):
            for x in range(0, width, block):
                h, w = min(block, height - y), min(block, width - x)
                image[y : y + h, x : x + w], error = self.read(x, y, w, h)
                if error is not None:
                    errors.append(error)
        return image, errors
