"""Fully connected CRF with Gaussian and bilateral kernels, mean-field inference, in torch.

The model and the inference are Krähenbühl & Koltun's (NIPS 2011), as the ``densecrf``
library behind ``pydensecrf`` implements them and HistoSegNet calls them: Potts compatibility,
kernels normalised symmetrically (``D^-1/2 K D^-1/2`` with ``D`` the kernel's row sums),
high-dimensional Gaussian filtering on the permutohedral lattice of Adams, Baek & Davis
(Eurographics 2010) with its splat / blur (1-2-1 along each of the d+1 lattice axes) / slice
steps and its scaling constant. Everything is tensor code: it runs on the CPU or a GPU, needs no
compiler, and its memory grows linearly with the number of pixels.

Energies: ``E(x) = sum_i U_i(x_i) + sum_{i<j} mu(x_i, x_j) [w_g k_g(p_i, p_j) + w_b k_b(p_i, I_i, p_j, I_j)]``
with ``k_g = exp(-|p_i - p_j|^2 / (2 sxy_g^2))`` and
``k_b = exp(-|p_i - p_j|^2 / (2 sxy_b^2) - |I_i - I_j|^2 / (2 srgb^2))``; ``p`` in pixels
(x = column, y = row), ``I`` in 0-255 RGB.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np
import torch

from misc.errors import UserError

#: Probabilities below this are clipped before ``-log`` (``pydensecrf.utils.unary_from_softmax``).
PROB_CLIP = 1e-5
MAX_ITERATIONS = 100


@dataclass(frozen=True)
class CRFParams:
    """Dense-CRF settings (HistoSegNet's published defaults).

    Attributes:
        gauss_sxy: spatial standard deviation of the Gaussian (smoothness) kernel, pixels.
        gauss_compat: its Potts weight.
        bilat_sxy: spatial standard deviation of the bilateral (appearance) kernel, pixels.
        bilat_srgb: its colour standard deviation, 0-255 RGB units.
        bilat_compat: its Potts weight.
        iterations: mean-field iterations (0: the unaries' argmax).
    """

    gauss_sxy: float = 3.0
    gauss_compat: float = 30.0
    bilat_sxy: float = 10.0
    bilat_srgb: float = 20.0
    bilat_compat: float = 50.0
    iterations: int = 5

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None, source: str = "postproc.crf") -> "CRFParams":
        """Parameters from a mapping of the field names, range-checked.

        Raises:
            UserError: an unknown key or a value out of range (see :meth:`check`).
        """
        options = dict(options or {})
        unknown = sorted(set(options) - set(asdict(cls())))
        if unknown:
            raise UserError(f"{source}: unknown key(s) {unknown}; expected {sorted(asdict(cls()))}")
        try:
            params = cls(**{key: (int(value) if key == "iterations" else float(value)) for key, value in options.items()})
        except (TypeError, ValueError) as err:
            raise UserError(f"{source}: {err}") from None
        params.check(source)
        return params

    def check(self, source: str = "postproc.crf") -> None:
        """Raise :class:`UserError` unless standard deviations are finite and > 0, weights
        finite and >= 0 and ``iterations`` in 0..100."""
        for key in ("gauss_sxy", "bilat_sxy", "bilat_srgb"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise UserError(f"{source}.{key} is {value}; expected a finite standard deviation > 0")
        for key in ("gauss_compat", "bilat_compat"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise UserError(f"{source}.{key} is {value}; expected a finite Potts weight >= 0")
        if not 0 <= self.iterations <= MAX_ITERATIONS:
            raise UserError(f"{source}.iterations is {self.iterations}; expected 0..{MAX_ITERATIONS}")


class PermutohedralLattice:
    """Gaussian filtering of values at points with d-dimensional features (Adams et al. 2010).

    ``filter(v)_i ~ sum_j exp(-|f_i - f_j|^2 / 2) v_j`` (unit standard deviation: scale the
    features by the kernel's standard deviations first), approximated as in ``densecrf``:
    every point splats onto the d+1 vertices of its enclosing simplex with barycentric
    weights, the lattice is blurred with [1/2, 1, 1/2] along each of its d+1 axes, and the
    points read back with the same weights times ``1 / (1 + 2^-d)``.

    Args:
        features: (N, d) float features, one row per point (any device).
    """

    def __init__(self, features: torch.Tensor) -> None:
        if features.ndim != 2 or features.shape[1] < 1:
            raise UserError(f"lattice features must be (N, d) with d >= 1; got shape {tuple(features.shape)}")
        self.device = features.device
        self.n, self.d = features.shape
        rem0, rank, barycentric = self._enclosing_simplex(features.float())
        keys = self._vertex_keys(rem0, rank)  # (N, d+1, d)
        codes, self._low, self._strides = self._encode_setup(keys)
        self._vertices, inverse = torch.unique(codes(keys.reshape(-1, self.d)), return_inverse=True)
        self.m = int(self._vertices.numel())
        self.offsets = inverse.reshape(self.n, self.d + 1)
        self.barycentric = barycentric
        self.neighbours = self._blur_neighbours(keys.reshape(-1, self.d)[self._first_occurrence(inverse)], codes)
        self.alpha = 1.0 / (1.0 + 2.0 ** (-self.d))

    def _enclosing_simplex(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Elevate the features onto the hyperplane and find their simplices.

        Returns:
            ``rem0`` (N, d+1) int64 the remainder-0 vertex, ``rank`` (N, d+1) int64 the order
            of the coordinates within the simplex, ``barycentric`` (N, d+1) float32 weights.
        """
        d = self.d
        index = torch.arange(d, device=self.device, dtype=torch.float64)
        inv_std_dev = math.sqrt(2.0 / 3.0) * (d + 1)
        scale = (inv_std_dev / torch.sqrt((index + 2) * (index + 1))).float()
        cf = f * scale
        suffix = torch.flip(torch.cumsum(torch.flip(cf, [1]), 1), [1])  # suffix[:, i] = sum_{k >= i} cf[:, k]
        tail = torch.cat([suffix[:, 1:], torch.zeros_like(suffix[:, :1])], 1)
        elevated = torch.cat([suffix[:, :1], tail - torch.arange(1, d + 1, device=self.device) * cf], 1)
        v = elevated / (d + 1)
        up, down = torch.ceil(v) * (d + 1), torch.floor(v) * (d + 1)
        rem0 = torch.where(up - elevated < elevated - down, up, down)
        total = torch.round(rem0.sum(1) / (d + 1)).long()
        diff = elevated - rem0
        dj, di = diff[:, None, :], diff[:, :, None]  # [n, i, j]
        later = torch.triu(torch.ones(d + 1, d + 1, dtype=torch.bool, device=self.device), 1)
        rank = ((dj > di) & later).sum(2) + ((dj >= di) & later.T).sum(2)
        rank = rank + total[:, None]
        rem0 = rem0.long()
        low, high = rank < 0, rank > d
        rank = rank + (d + 1) * low.long() - (d + 1) * high.long()
        rem0 = rem0 + (d + 1) * low.long() - (d + 1) * high.long()
        values = (elevated - rem0.float()) / (d + 1)
        bary = torch.zeros(self.n, d + 2, device=self.device)
        bary.scatter_add_(1, d - rank, values)
        bary.scatter_add_(1, d - rank + 1, -values)
        bary[:, 0] += 1.0 + bary[:, d + 1]
        return rem0, rank, bary[:, : d + 1].contiguous()

    def _vertex_keys(self, rem0: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
        """(N, d+1, d) int64 first d coordinates of every simplex vertex (remainder r = 0..d)."""
        d = self.d
        r = torch.arange(d + 1, device=self.device)[None, :, None]
        wrap = (rank[:, None, :d] > d - r).long()
        return rem0[:, None, :d] + r - (d + 1) * wrap

    def _encode_setup(self, keys: torch.Tensor) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """A function packing (K, d) keys into int64 codes (mixed radix over the keys' range,
        one step of margin for the blur neighbours; -1 for keys outside it)."""
        flat = keys.reshape(-1, self.d)
        low = flat.amin(0) - (self.d + 1)
        span = flat.amax(0) + (self.d + 1) - low + 1
        if math.prod(int(s) for s in span.tolist()) >= 2**62:
            raise UserError(f"dense CRF: the lattice of {self.n} points is too large to index; process smaller tiles")
        strides = torch.cumprod(torch.cat([torch.ones(1, dtype=torch.long, device=self.device), span[:-1]]), 0)

        def codes(k: torch.Tensor) -> torch.Tensor:
            shifted = k - low
            inside = ((shifted >= 0) & (shifted < span)).all(1)
            return torch.where(inside, (shifted * strides).sum(1), torch.full_like(shifted[:, 0], -1))

        return codes, low, strides

    @staticmethod
    def _first_occurrence(inverse: torch.Tensor) -> torch.Tensor:
        """For every lattice vertex, one index into the flattened keys that maps to it."""
        m = int(inverse.max()) + 1
        first = torch.empty(m, dtype=torch.long, device=inverse.device)
        first.scatter_(0, inverse, torch.arange(inverse.numel(), device=inverse.device))
        return first

    def _lookup(self, code: torch.Tensor) -> torch.Tensor:
        """Vertex index of each code, ``m`` (the zero row) where the lattice has no such vertex."""
        index = torch.searchsorted(self._vertices, code).clamp(max=self.m - 1)
        found = (self._vertices[index] == code) & (code >= 0)
        return torch.where(found, index, torch.full_like(index, self.m))

    def _blur_neighbours(self, vertex_keys: torch.Tensor, codes: Any) -> torch.Tensor:
        """(d+1, 2, M) int64 indices of each vertex's two neighbours along every lattice axis."""
        d = self.d
        out = torch.empty(d + 1, 2, self.m, dtype=torch.long, device=self.device)
        for axis in range(d + 1):  # d+1 lattice axes (not pixels)
            minus, plus = vertex_keys - 1, vertex_keys + 1
            if axis < d:
                minus[:, axis] = vertex_keys[:, axis] + d
                plus[:, axis] = vertex_keys[:, axis] - d
            out[axis, 0] = self._lookup(codes(minus))
            out[axis, 1] = self._lookup(codes(plus))
        return out

    def filter(self, values: torch.Tensor) -> torch.Tensor:
        """Splat, blur and slice (N, V) float values; returns (N, V) float32."""
        if values.shape[0] != self.n:
            raise UserError(f"lattice of {self.n} points got values of shape {tuple(values.shape)}")
        values = values.float()
        grid = torch.zeros(self.m + 1, values.shape[1], device=self.device)
        for r in range(self.d + 1):
            grid.index_add_(0, self.offsets[:, r], self.barycentric[:, r : r + 1] * values)
        for axis in range(self.d + 1):
            blurred = grid[: self.m] + 0.5 * (grid[self.neighbours[axis, 0]] + grid[self.neighbours[axis, 1]])
            grid = torch.cat([blurred, grid[self.m :]], 0)
        out = torch.zeros_like(values)
        for r in range(self.d + 1):
            out += self.barycentric[:, r : r + 1] * grid[self.offsets[:, r]]
        return out * self.alpha


class NormalisedKernel:
    """A Gaussian kernel on the lattice, symmetrically normalised: ``D^-1/2 K D^-1/2``."""

    def __init__(self, features: torch.Tensor) -> None:
        self.lattice = PermutohedralLattice(features)
        ones = torch.ones(features.shape[0], 1, device=features.device)
        self.norm = 1.0 / torch.sqrt(self.lattice.filter(ones) + 1e-20)

    def apply(self, q: torch.Tensor) -> torch.Tensor:
        """(N, C) -> (N, C) filtered marginals."""
        return self.norm * self.lattice.filter(self.norm * q)


def pixel_features(image: torch.Tensor, sxy: float, srgb: float | None) -> torch.Tensor:
    """(H*W, 2) positions / sxy (x = column, y = row, row-major order), with ``srgb`` also
    (H*W, 5) with RGB / srgb appended.

    Args:
        image: (H, W, 3) RGB in 0-255 (any dtype).
    """
    h, w = image.shape[:2]
    rows, cols = torch.meshgrid(torch.arange(h, device=image.device), torch.arange(w, device=image.device), indexing="ij")
    position = torch.stack([cols.reshape(-1), rows.reshape(-1)], 1).float() / sxy
    if srgb is None:
        return position
    return torch.cat([position, image.reshape(-1, 3).float() / srgb], 1)


def _as_image_tensor(image: np.ndarray | torch.Tensor, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    image = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image, device=device)
    if image.ndim != 3 or image.shape[2] != 3 or tuple(image.shape[:2]) != shape:
        raise UserError(f"dense CRF: image must be (H, W, 3) RGB matching the unaries' {shape}; got {tuple(image.shape)}")
    return image


def dense_crf(unary: torch.Tensor, image: np.ndarray | torch.Tensor, params: CRFParams = CRFParams()) -> torch.Tensor:
    """Mean-field marginals of the dense CRF.

    Args:
        unary: (C, H, W) float unary energies (e.g. ``-log p``), on the device to run on.
        image: (H, W, 3) RGB in 0-255 (uint8 numpy or tensor) for the bilateral kernel.
        params: kernel parameters and iterations (range-checked).

    Returns:
        (C, H, W) float32 marginals Q (sum 1 over C at every pixel).
    """
    params.check()
    if unary.ndim != 3:
        raise UserError(f"dense CRF: unary must be (C, H, W); got shape {tuple(unary.shape)}")
    c, h, w = unary.shape
    rgb = _as_image_tensor(image, (h, w), unary.device)
    u = unary.reshape(c, h * w).T.float()
    kernels = [
        (params.gauss_compat, NormalisedKernel(pixel_features(rgb, params.gauss_sxy, None))),
        (params.bilat_compat, NormalisedKernel(pixel_features(rgb, params.bilat_sxy, params.bilat_srgb))),
    ]
    q = torch.softmax(-u, 1)
    for _ in range(params.iterations):
        message = -u
        for weight, kernel in kernels:
            message = message + weight * kernel.apply(q)  # Potts: -mu * (K Q) subtracted
        q = torch.softmax(message, 1)
    return q.T.reshape(c, h, w)


def crf_labels(scores: torch.Tensor, image: np.ndarray | torch.Tensor, params: CRFParams = CRFParams()) -> torch.Tensor:
    """HistoSegNet's CRF step: class scores -> label map.

    Classes whose score map is zero everywhere take no part; the others get unaries
    ``-log(clip(score, 1e-5, 1))`` (scores need not sum to 1); the label is the argmax of
    the marginals.

    Args:
        scores: (C, H, W) float class scores in [0, 1].
        image: (H, W, 3) RGB 0-255.

    Returns:
        (H, W) int64 class indices into ``scores`` (0 where no class has any mass).
    """
    if scores.ndim != 3:
        raise UserError(f"dense CRF: scores must be (C, H, W); got shape {tuple(scores.shape)}")
    active = torch.nonzero(scores.flatten(1).sum(1) > 0).flatten()
    if active.numel() == 0:
        return torch.zeros(scores.shape[1:], dtype=torch.long, device=scores.device)
    unary = -torch.log(scores[active].float().clamp(PROB_CLIP, 1.0))
    q = dense_crf(unary, image, params)
    return active[q.argmax(0)]
