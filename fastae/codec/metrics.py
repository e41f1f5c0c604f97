"""Distortion metrics of images: PSNR and MS-SSIM on RGB arrays (all channels together, peak 255),
as ``fastae eval`` reports them. MS-SSIM follows ``pytorch_msssim`` (an 11-tap Gaussian window of
sigma 1.5, 5 scales), with fewer scales for images of 160 px or less on a side."""

import math
from typing import Sequence

import numpy as np

#: Standard MS-SSIM scale weights (Wang, Simoncelli & Bovik 2003), finest scale first.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_WIN_SIZE = 11  # Gaussian window of SSIM (sigma 1.5), the pytorch_msssim default

# ---------------------------------------------------------------------------------------------
# Distortion metrics
# ---------------------------------------------------------------------------------------------

def _check_pair(a, b, what: str):
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"{what}: images must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim not in (2, 3) or a.size == 0:
        raise ValueError(f"{what}: expected HxW or HxWxC images, got shape {a.shape}")
    return a, b


def psnr(a, b, max_value: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB between two HxWxC (or HxW) images, usually uint8.

    ``10 * log10(max_value**2 / MSE)`` with the MSE over all pixels and channels, computed in float64.
    Identical images give ``float('inf')``.
    """
    a, b = _check_pair(a, b, "psnr")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * math.log10(float(max_value) ** 2 / mse))


def _to_nchw(a: np.ndarray):
    import torch
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    t = t.unsqueeze(-1) if t.dim() == 2 else t
    return t.permute(2, 0, 1).unsqueeze(0)  # [1, C, H, W]


def _ms_ssim_levels(x, y, weights: Sequence[float], data_range: float = 255.0,
                    win_size: int = _WIN_SIZE, win_sigma: float = 1.5) -> float:
    """MS-SSIM with ``len(weights)`` scales on [1, C, H, W] float tensors.

    The same computation as ``pytorch_msssim.ms_ssim`` (valid-padded separable Gaussian window,
    relu'd contrast-structure terms at the finer scales, SSIM at the coarsest, 2x2 average pooling
    with odd-size padding), without its fixed check that the image is large enough for 5 scales.
    """
    import torch
    import torch.nn.functional as F

    # The window is built in float32 and then cast, exactly as pytorch_msssim does, so that the
    # 2-4 scale values are computed the same way as the 5-scale ones.
    coords = torch.arange(win_size, dtype=torch.float32) - win_size // 2
    g = torch.exp(-(coords ** 2) / (2 * win_sigma ** 2))
    g = (g / g.sum()).to(x.dtype).view(1, 1, 1, -1).repeat(x.shape[1], 1, 1, 1)  # [C, 1, 1, win]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(t):
        t = F.conv2d(t, g.transpose(2, 3), groups=t.shape[1])  # along H
        return F.conv2d(t, g, groups=t.shape[1])  # along W

    values = []
    for level in range(len(weights)):
        mu_x, mu_y = blur(x), blur(y)
        var_x, var_y = blur(x * x) - mu_x ** 2, blur(y * y) - mu_y ** 2
        cov = blur(x * y) - mu_x * mu_y
        cs_map = (2 * cov + c2) / (var_x + var_y + c2)
        if level < len(weights) - 1:
            values.append(torch.relu(cs_map.flatten(2).mean(-1)))  # [1, C]
            padding = [s % 2 for s in x.shape[2:]]
            x, y = F.avg_pool2d(x, 2, padding=padding), F.avg_pool2d(y, 2, padding=padding)
        else:
            ssim_map = (2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1) * cs_map
            values.append(torch.relu(ssim_map.flatten(2).mean(-1)))
    w = torch.tensor(list(weights), dtype=x.dtype).view(-1, 1, 1)
    return float(torch.prod(torch.stack(values) ** w, dim=0).mean())


def ms_ssim(a, b) -> float:
    """Multi-scale SSIM (data range 255) between two HxWx3 (or HxW) uint8 images; 1.0 for identical ones.

    Uses ``pytorch_msssim`` with its defaults (11-tap Gaussian window, sigma 1.5), on float32
    tensors [1, C, H, W] (float64 changes values by ~1e-7 and is 4x slower on CPU). The 5 standard scales need the smaller side to be larger than
    ``(11 - 1) * 2**4 = 160`` px. Smaller images fall back to fewer scales:

    * smaller side > ``10 * 2**(n - 1)`` px: ``n`` scales (n = 5 .. 2: sides > 160, 80, 40, 20 px) with
      the first ``n`` MS-SSIM weights renormalised to sum to 1 (pytorch_msssim asserts the 5-scale
      size even when given fewer weights, so 2 to 4 scales are computed by this module with the
      same formulas; see ``_ms_ssim_levels``);
    * 11 .. 20 px: single-scale SSIM (``pytorch_msssim.ssim``);
    * below 11 px (the window size): ValueError.

    So values for images of 160 px or less are not comparable with the usual 5-scale MS-SSIM.
    """
    a, b = _check_pair(a, b, "ms_ssim")
    try:
        import pytorch_msssim
    except ImportError as e:
        raise ImportError("ms_ssim needs the pytorch_msssim package: pip install fastae[eval] "
                          "(or pip install pytorch_msssim)") from e
    side = min(a.shape[:2])
    if side < _WIN_SIZE:
        raise ValueError(f"ms_ssim: images must be at least {_WIN_SIZE}x{_WIN_SIZE} px (the SSIM window), "
                         f"got shape {a.shape}")
    x, y = _to_nchw(a), _to_nchw(b)
    scales = max(n for n in range(1, 6) if n == 1 or side > (_WIN_SIZE - 1) * 2 ** (n - 1))
    if scales == 5:
        return float(pytorch_msssim.ms_ssim(x, y, data_range=255, win_size=_WIN_SIZE))
    if scales == 1:
        return float(pytorch_msssim.ssim(x, y, data_range=255, win_size=_WIN_SIZE))
    weights = np.asarray(MS_SSIM_WEIGHTS[:scales], dtype=np.float64)
    return _ms_ssim_levels(x, y, (weights / weights.sum()).tolist())
