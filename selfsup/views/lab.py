"""CIE Lab colour in torch, and the quantized ab space of colorization as classification (Zhang et al. 2016).

Lab separates lightness L (0 black .. 100 white) from the two colour axes a (green-red) and b (blue-yellow), each
roughly in [-110, 110]. We follow the sRGB / D65 definition that scikit-image's `rgb2lab` uses: undo the sRGB
gamma, a linear map to XYZ, divide by the white point, a cube root with a linear part near black. Grayscale images
(one channel) are taken as R = G = B, so their a and b are 0 and their L is the same as for the colour image a
camera would have turned grey: that is why a colorization encoder, which sees L only, transfers to Fashion-MNIST.

Networks do not take L in [0, 100]: `lab_scaled` gives L/100 in [0, 1] and a/110, b/110 in about [-1, 1].
"""

from __future__ import annotations

import functools
import math

import torch

# sRGB (linear) -> XYZ, and the D65 white point (the values of the sRGB standard, as in scikit-image).
_RGB_TO_XYZ = torch.tensor([[0.412453, 0.357580, 0.180423],
                            [0.212671, 0.715160, 0.072169],
                            [0.019334, 0.119193, 0.950227]], dtype=torch.float64)
_WHITE = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)
_EPS = (6 / 29) ** 3  # below it, the cube root is replaced by a line (CIE 1976)
AB_SCALE = 110.0  # a and b are divided by this for networks


def _as_rgb(x: torch.Tensor) -> torch.Tensor:
    if x.shape[-3] == 1:
        return x.expand(*x.shape[:-3], 3, *x.shape[-2:])
    if x.shape[-3] != 3:
        raise ValueError(f"Lab needs 1 or 3 channels, got {x.shape[-3]}")
    return x


def rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """(..., 1 or 3, H, W) sRGB in [0, 1] -> (..., 3, H, W) Lab: L in [0, 100], a and b in about [-110, 110]."""
    rgb = _as_rgb(x.float()).clamp(0, 1)
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    m = (_RGB_TO_XYZ / _WHITE[:, None]).to(linear)  # XYZ already divided by the white point
    with torch.autocast(x.device.type, enabled=False):  # a colour conversion: fp32 even inside a bf16 training step
        xyz = torch.einsum("ij,...jhw->...ihw", m, linear)
    f = torch.where(xyz > _EPS, xyz.clamp_min(_EPS) ** (1 / 3), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    fx, fy, fz = f.unbind(-3)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=-3)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) Lab -> (..., 3, H, W) sRGB clamped to [0, 1] (colours outside the gamut are clipped)."""
    L, a, b = lab.float().unbind(-3)
    fy = (L + 16) / 116
    # f(Z) below 0 (a strong yellow at low L: no such colour) is clipped to 0 first, as scikit-image's lab2rgb does,
    # so out-of-gamut predictions are shown as the reference shows them.
    f = torch.stack([fy + a / 500, fy, (fy - b / 200).clamp_min(0)], dim=-3)
    xyz = torch.where(f > 6 / 29, f ** 3, 3 * (6 / 29) ** 2 * (f - 4 / 29))
    m = torch.linalg.inv(_RGB_TO_XYZ / _WHITE[:, None]).to(xyz)
    with torch.autocast(xyz.device.type, enabled=False):
        linear = torch.einsum("ij,...jhw->...ihw", m, xyz).clamp(0, 1)
    return torch.where(linear > 0.0031308, 1.055 * linear ** (1 / 2.4) - 0.055, 12.92 * linear).clamp(0, 1)


def lab_scaled(x: torch.Tensor) -> torch.Tensor:
    """(..., 1 or 3, H, W) sRGB in [0, 1] -> (..., 3, H, W): L/100 in [0, 1], a/110 and b/110 in about [-1, 1]."""
    lab = rgb_to_lab(x)
    return torch.cat([lab[..., :1, :, :] / 100, lab[..., 1:, :, :] / AB_SCALE], dim=-3)


def lightness(x: torch.Tensor) -> torch.Tensor:
    """(..., 1 or 3, H, W) sRGB in [0, 1] -> (..., 1, H, W) L/100 in [0, 1]; only Y is needed, so it is cheap."""
    rgb = _as_rgb(x.float()).clamp(0, 1)
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    with torch.autocast(x.device.type, enabled=False):
        y = torch.einsum("j,...jhw->...hw", _RGB_TO_XYZ[1].to(linear), linear).unsqueeze(-3)
    f = torch.where(y > _EPS, y.clamp_min(_EPS) ** (1 / 3), y / (3 * (6 / 29) ** 2) + 4 / 29)
    return (116 * f - 16) / 100


def scaled_to_rgb(L: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """L/100 (..., 1, H, W) and ab/110 (..., 2, H, W) -> sRGB in [0, 1]; L is clamped to [0, 1] first."""
    return lab_to_rgb(torch.cat([L.clamp(0, 1) * 100, ab * AB_SCALE], dim=-3))


class ABQuantizer:
    """The ab plane cut into square bins of side `grid` (Zhang et al. 2016: 10), keeping only the bins that some
    sRGB colour falls into: Q bins, Q = 261 for side 10 by our count over a 65^3 sampling (as for 97^3 and 129^3) of the RGB cube (the
    paper keeps 313 with its own convention for what counts as in gamut). Bin centres are multiples of `grid`.
    """

    def __init__(self, grid: float = 10.0, samples: int = 65):
        self.grid = grid
        g = torch.linspace(0, 1, samples, dtype=torch.float64)
        rgb = torch.stack(torch.meshgrid(g, g, g, indexing="ij")).reshape(3, -1, 1)  # (3, samples^3, 1)
        ab = rgb_to_lab(rgb.double())[1:].reshape(2, -1).T  # (N, 2)
        self.half = math.ceil(AB_SCALE / grid)  # cells -half..half on each axis
        side = 2 * self.half + 1
        cells = torch.round(ab / grid).long() + self.half
        occupied = torch.zeros(side * side, dtype=torch.bool)
        occupied[cells[:, 0] * side + cells[:, 1]] = True
        self.side = side
        self.cell_to_bin = torch.full((side * side,), -1, dtype=torch.long)  # grid cell -> bin index or -1
        self.cell_to_bin[occupied] = torch.arange(int(occupied.sum()))
        idx = occupied.nonzero().flatten()
        self.centers = torch.stack([idx // side - self.half, idx % side - self.half], dim=1).float() * grid  # (Q, 2)
        # Each cell (in gamut or not) -> the nearest in-gamut bin, for colours that land just outside the sampled gamut.
        all_centers = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1)
        all_centers = (all_centers.reshape(-1, 2) - self.half).float() * grid
        self.nearest_of_cell = torch.cdist(all_centers, self.centers).argmin(dim=1)

    @property
    def q(self) -> int:
        return self.centers.shape[0]

    def _cells(self, ab: torch.Tensor) -> torch.Tensor:
        """ab in Lab units (..., 2) -> flat grid cell index (...)."""
        c = (torch.round(ab / self.grid).long() + self.half).clamp(0, self.side - 1)
        return c[..., 0] * self.side + c[..., 1]

    def nearest(self, ab: torch.Tensor) -> torch.Tensor:
        """ab in Lab units (..., 2) -> index of the nearest in-gamut bin (...), int64."""
        return self.nearest_of_cell.to(ab.device)[self._cells(ab)]

    def soft_encode(self, ab: torch.Tensor, k: int = 5, sigma: float = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
        """The paper's soft target: the k nearest bins of each ab value (Lab units, (N, 2)), weighted by a Gaussian
        of width sigma on their distance and summing to 1. Returns (indices (N, k), weights (N, k)).

        The k nearest of a regular grid lie in the 3 x 3 cells around the value's own cell (k <= 5), so only those
        nine candidates are compared; candidates outside the gamut are skipped.
        """
        if not 1 <= k <= 5:
            raise ValueError("soft encoding looks at the 3 x 3 neighbouring cells, so k must be 1..5")
        device = ab.device
        own = torch.round(ab / self.grid)  # (N, 2) in cell units, centred
        offsets = torch.tensor([[i, j] for i in (-1, 0, 1) for j in (-1, 0, 1)], device=device, dtype=ab.dtype)
        cand = own[:, None, :] + offsets[None]  # (N, 9, 2)
        idx = (cand.long() + self.half).clamp(0, self.side - 1)
        bins = self.cell_to_bin.to(device)[idx[..., 0] * self.side + idx[..., 1]]  # (N, 9), -1 outside the gamut
        d2 = ((cand * self.grid - ab[:, None, :]) ** 2).sum(-1)
        d2 = torch.where(bins >= 0, d2, torch.full_like(d2, float("inf")))
        d2, order = d2.topk(k, dim=1, largest=False)
        chosen = bins.gather(1, order)
        w = torch.exp(-(d2 - d2[:, :1]) / (2 * sigma ** 2))  # shifted by the nearest for stability; inf -> 0
        # A value whose 3 x 3 neighbourhood is all outside the sampled gamut falls back to its nearest bin.
        none = ~torch.isfinite(d2[:, 0])
        if none.any():
            chosen[none] = self.nearest(ab[none])[:, None]
            w[none] = 0
            w[none, 0] = 1
        chosen = torch.where(w > 0, chosen, chosen[:, :1])
        return chosen, w / w.sum(dim=1, keepdim=True)

    def counts(self, ab: torch.Tensor) -> torch.Tensor:
        """How many ab values (Lab units, (..., 2)) fall nearest to each bin: (Q,) float64 on the CPU."""
        return torch.bincount(self.nearest(ab).flatten().cpu(), minlength=self.q).double()

    def prior(self, ab: torch.Tensor | None = None, sigma: float = 5.0, counts: torch.Tensor | None = None
              ) -> torch.Tensor:
        """Empirical distribution of the bins over ab values (Lab units, (N, 2)) or over summed `counts` (for data
        seen in chunks), smoothed by a Gaussian of width sigma in the ab plane (Zhang et al.: sigma = 5): (Q,)
        summing to 1."""
        counts = self.counts(ab) if counts is None else counts.double()
        p = counts / counts.sum().clamp_min(1)
        kernel = torch.exp(-torch.cdist(self.centers, self.centers).double() ** 2 / (2 * sigma ** 2))
        smoothed = kernel @ p
        return (smoothed / smoothed.sum()).float()

    @staticmethod
    def rebalancing_weights(prior: torch.Tensor, lam: float = 0.5) -> torch.Tensor:
        """w proportional to ((1 - lam) * prior + lam / Q)^-1, scaled so that sum_q prior_q * w_q = 1 (the paper's
        normalization: the expected weight of a pixel under the data is 1). Rare colours get large weights."""
        w = 1.0 / ((1 - lam) * prior + lam / prior.numel())
        return w / (prior * w).sum()

    def cross_entropy(self, logits: torch.Tensor, ab: torch.Tensor, k: int = 5, sigma: float = 5.0,
                      weights: torch.Tensor | None = None) -> torch.Tensor:
        """Per-pixel cross-entropy against the soft targets of `soft_encode`, times weights[q*] of the nearest bin.

        logits: (B, Q, h, w); ab: (B, 2, h, w) in Lab units; weights: (Q,) or None -> (B, h, w). Works on the
        logits' own layout (no permuted copy of the biggest tensor of the method); k = 1 is the hard nearest bin.
        """
        b, q, h, w = logits.shape
        idx, wt = self.soft_encode(ab.permute(0, 2, 3, 1).reshape(-1, 2), k, sigma)  # (B*h*w, k), pixel-major
        idx = idx.view(b, h, w, k).permute(0, 3, 1, 2)  # (B, k, h, w)
        wt = wt.view(b, h, w, k).permute(0, 3, 1, 2)
        per_pixel = -(wt * torch.log_softmax(logits.float(), dim=1).gather(1, idx)).sum(dim=1)  # (B, h, w)
        return per_pixel if weights is None else per_pixel * weights[idx[:, 0]]

    def annealed_mean(self, logits: torch.Tensor, temperature: float = 0.38, dim: int = 1) -> torch.Tensor:
        """The paper's decoding H(Z): softmax(log z / T) of the predicted distribution z, then its mean ab.

        logits: (B, Q, H, W) -> ab in Lab units (B, 2, H, W). T = 1 is the mean (desaturated), T -> 0 the mode
        (vivid but patchy); 0.38 is the paper's compromise. log z / T = log_softmax(logits) / T.
        """
        p = torch.softmax(torch.log_softmax(logits.float(), dim=dim) / temperature, dim=dim)
        return torch.einsum("bqhw,qc->bchw", p, self.centers.to(logits.device))


@functools.lru_cache(maxsize=4)
def ab_quantizer(grid: float = 10.0) -> ABQuantizer:
    """One shared quantizer per bin size (building one samples the RGB cube: about a second)."""
    return ABQuantizer(grid)
