"""Image and label reading/writing with clear errors, and atomic file writes.

Boundary conventions: images are (H, W, 3) uint8 RGB; instance/type maps are (H, W) int32.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from misc.errors import UserError

log = logging.getLogger(__name__)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
LABEL_EXTENSIONS = (".npy", ".png", ".tif", ".tiff", ".bmp", ".mat")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    The temporary file keeps ``path``'s suffix so format-sniffing writers behave. A crash or
    an exception (e.g. ``OSError(ENOSPC)``) leaves no file under the final name.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".tmp{final.suffix}", dir=final.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Open a temporary file beside ``path`` (see :func:`atomic_path`); flushed and synced on success."""
    with atomic_path(path) as tmp, open(tmp, mode) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, expected a file")


def _read_raw(path: Path, expand_palette: bool = True) -> np.ndarray:
    """Read an image file into an array without changing its values.

    Palette images are expanded through their palette when ``expand_palette`` is set (images);
    otherwise their indices are returned (label maps). CMYK, YCbCr, LAB and HSV images are
    converted to RGB.
    """
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            return np.asarray(tifffile.imread(path))
        from PIL import Image

        with Image.open(path) as img:
            if img.mode == "P" and expand_palette:
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            elif img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                img = img.convert("RGB")
            return np.asarray(img)
    except UserError:
        raise
    except Exception as err:  # any decoder failure is the file's fault
        raise UserError(f"{path}: cannot be read as an image ({type(err).__name__}: {err})") from None


def to_uint8(array: np.ndarray, source: str | os.PathLike = "") -> np.ndarray:
    """Bring an image array to uint8: 16-bit values become ``round(x / 257)``."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return np.round(array.astype(np.float64) / 257.0).astype(np.uint8)
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    raise UserError(f"{source}: image dtype {array.dtype} is not supported; expected uint8 or uint16")


def as_rgb(array: np.ndarray, source: str | os.PathLike = "", allow_grey: bool = False) -> np.ndarray:
    """Convert (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) to (H, W, 3) uint8 RGB.

    RGBA drops alpha (with a warning when alpha is not uniformly opaque); grey is refused
    unless ``allow_grey`` is set, in which case it is replicated to three channels.
    """
    array = to_uint8(np.asarray(array), source)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        if not allow_grey:
            raise UserError(f"{source}: image is greyscale (shape {array.shape}); expected RGB, or pass allow_grey=True")
        return np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise UserError(f"{source}: image shape {array.shape} is not an image; expected (H, W, 3) RGB")
    if array.shape[2] == 4:
        if array[..., 3].min() != 255:
            log.warning("%s: alpha channel is not uniformly opaque; it is dropped", source)
        array = array[..., :3]
    return np.ascontiguousarray(array)


def read_image(path: str | os.PathLike, allow_grey: bool = False) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB.

    Raises:
        UserError: the file is missing, unreadable, or not a colour image.
    """
    path = Path(path)
    _check_exists(path)
    return as_rgb(_read_raw(path), path, allow_grey=allow_grey)


def read_label(path: str | os.PathLike, key: str = "inst_map") -> np.ndarray:
    """Read a label map as (H, W) int32 from ``.npy``, ``.mat`` (``key``) or a label image.

    A palette (mode ``P``) label image gives its palette indices, not the palette colours.

    An ``.npy`` of shape (H, W, C) returns channel 0 (instances of ``[inst, type]`` pairs);
    use :func:`read_label_stack` to get every channel.

    Raises:
        UserError: the file is missing, unreadable, not 2-D, or holds non-integer values.
    """
    stack = read_label_stack(path, key)
    return stack if stack.ndim == 2 else stack[..., 0]


def _mat_variables(path: Path) -> dict[str, np.ndarray]:
    """The variables of a MATLAB file: version 5 through scipy, version 7.3 (HDF5) through
    h5py, its column-major arrays transposed back to (H, W)."""
    import scipy.io

    try:
        return scipy.io.loadmat(path)
    except NotImplementedError:  # MATLAB 7.3 = HDF5
        import h5py

        with h5py.File(path, "r") as handle:
            return {k: np.asarray(handle[k]).T for k in handle.keys() if isinstance(handle[k], h5py.Dataset)}


def read_label_stack(path: str | os.PathLike, key: str = "inst_map") -> np.ndarray:
    """Read a label file as (H, W) or (H, W, C) int32 without dropping channels."""
    path = Path(path)
    _check_exists(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix == ".mat":
            mat = _mat_variables(path)
            if key not in mat:
                names = sorted(k for k in mat if not k.startswith("__"))
                raise UserError(f"{path}: no variable '{key}' in .mat file (has {names})")
            array = np.asarray(mat[key])
        else:
            array = _read_raw(path, expand_palette=False)
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"{path}: cannot be read as a label map ({type(err).__name__}: {err})") from None
    if array.ndim not in (2, 3):
        raise UserError(f"{path}: label shape {array.shape} is not (H, W) or (H, W, C)")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise UserError(f"{path}: label map holds non-integer values; expected integer ids")
    elif array.dtype.kind not in "iub":
        raise UserError(f"{path}: label dtype {array.dtype} is not an integer type")
    if array.size and array.min() < 0:
        raise UserError(f"{path}: label map holds negative ids; expected 0 = background, ids > 0")
    if array.size and array.max() > np.iinfo(np.int32).max:
        raise UserError(f"{path}: label ids exceed int32")
    return array.astype(np.int32)


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 RGB image atomically (format from the suffix)."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(image)).save(tmp, format=_pil_format(Path(path)))


def write_label(path: str | os.PathLike, label: np.ndarray) -> None:
    """Write an (H, W) integer label map atomically as ``.npy``, 16-bit ``.png`` or ``.tif``."""
    path = Path(path)
    label = np.asarray(label)
    suffix = path.suffix.lower()
    with atomic_path(path) as tmp:
        if suffix == ".npy":
            np.save(tmp, label.astype(np.int32))
        elif suffix in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(tmp, label.astype(np.uint16 if label.max(initial=0) < 65536 else np.int32))
        elif suffix == ".png":
            if label.max(initial=0) >= 65536:
                raise UserError(f"{path}: {label.max()} ids do not fit a 16-bit PNG; use .tif or .npy")
            from PIL import Image

            Image.fromarray(label.astype(np.uint16)).save(tmp, format="PNG")
        else:
            raise UserError(f"{path}: unsupported label format '{suffix}'; use .npy, .png or .tif")


def _pil_format(path: Path) -> str:
    formats = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}
    try:
        return formats[path.suffix.lower()]
    except KeyError:
        raise UserError(f"{path}: unsupported image format '{path.suffix}'; use one of {sorted(formats)}") from None
