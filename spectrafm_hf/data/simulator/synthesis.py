"""From line opacity to flux: broadening kernels and :func:`synthesize` (noise-free spectra).

η on the fine grid → line shape η/(1 + η) → Gaussian LSF (R), macroturbulence and rotation as one
product of Fourier transforms per star (float32 FFTs on the 5× oversampled log-λ grid) → averaged
onto the output pixels → depth scaled by D_max = 1 − B_λ(T_0)/B_λ(Teff).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping

import numpy as np
from scipy import fft as sfft
from scipy.special import j1

from .constants import APOGEE_RESOLVING_POWER, C_KMS, FINE_DV_KMS
from .line_model import LineModel, PhysicsTweaks, _as_label_arrays
from .physics import planck_ratio


def _rotation_ft(k: np.ndarray, epsilon: float = 0.6) -> np.ndarray:
    """Fourier transform (unit area) of the Gray rotation kernel, argument k = 2π f vsini."""
    k = np.asarray(k, dtype=np.float64)
    small = np.abs(k) < 1e-3
    ks = np.where(small, 1.0, k)
    semi = np.where(small, 1.0 - k**2 / 8.0, 2.0 * j1(ks) / ks)  # FT of √(1−x²)/(π/2)
    para = np.where(small, 1.0 - k**2 / 10.0, 3.0 * (np.sin(ks) - ks * np.cos(ks)) / ks**3)  # of (1−x²)/(4/3)
    w_semi = (1.0 - epsilon) * np.pi / 2.0 * 2.0
    w_para = np.pi * epsilon / 2.0 * 4.0 / 3.0
    return (w_semi * semi + w_para * para) / (w_semi + w_para)


def broadening_ft(n: int, resolving_power: np.ndarray, vmacro: np.ndarray, vsini: np.ndarray) -> np.ndarray:
    """rfft of the per-star broadening kernel on the fine grid, shape (B, n_keep) with n_keep ≤ n//2 + 1.

    Gaussian of σ² = σ_LSF² + (v_mac/√2)² (σ_LSF = c/R/2.355), times the rotation kernel. The
    Gaussian factor exp(−2π²σ²f²) falls below 1e-12 beyond f = 1.2/σ, so each star's transform is
    exactly 0 from its own cut-off on and only the first ``n_keep`` (the batch's largest cut-off)
    frequencies are returned: zero-padding the rest is the caller's job (``irfft(..., n=n)`` does it).
    Cut-offs are per star, so a star's kernel never depends on the other stars of its batch.
    """
    sigma_px = np.sqrt((C_KMS / resolving_power / 2.355) ** 2 + (vmacro / np.sqrt(2.0)) ** 2) / FINE_DV_KMS
    cut = np.minimum(np.ceil(1.2 / sigma_px * n).astype(int) + 2, n // 2 + 1)  # (B,) first zero frequency
    n_keep = int(cut.max())
    f = np.fft.rfftfreq(n)[None, :n_keep]  # cycles per fine pixel
    ft = np.exp((-2.0 * np.pi**2) * sigma_px[:, None] ** 2 * f**2)
    rotating = np.flatnonzero(np.asarray(vsini) > 0)
    if len(rotating):
        vs_px = (np.asarray(vsini)[rotating] / FINE_DV_KMS)[:, None]
        ft[rotating] *= _rotation_ft(2.0 * np.pi * f * vs_px)
    ft[np.arange(n_keep)[None, :] >= cut[:, None]] = 0.0
    return ft


#: Stars per sub-batch: a bigger batch is synthesised in pieces of this size (same numbers either way).
_SUB_BATCH = 48


def synthesize(model: LineModel, stars: Mapping[str, np.ndarray], resolving_power=APOGEE_RESOLVING_POWER,
               tweaks: PhysicsTweaks | None = None, line_scale: np.ndarray | None = None) -> np.ndarray:
    """Noise-free normalised flux of a batch of stars on ``model.wavelength``, shape (B, P).

    ``resolving_power`` is a scalar or (B,) array (the observed universe draws one per star).
    """
    stars = _as_label_arrays(stars)
    tweaks = tweaks or PhysicsTweaks()
    B = len(stars["TEFF"])
    if B > _SUB_BATCH:
        # stars are independent: sub-batches keep the working set in cache (same numbers either way)
        r_all = np.broadcast_to(np.asarray(resolving_power, dtype=np.float64), (B,))
        pieces = []
        for start in range(0, B, _SUB_BATCH):
            rows = slice(start, start + _SUB_BATCH)
            sub_tweaks = tweaks
            if tweaks.vmicro_scatter is not None:
                sub_tweaks = replace(tweaks, vmicro_scatter=tweaks.vmicro_scatter[rows])
            pieces.append(synthesize(model, {k: v[rows] for k, v in stars.items()}, r_all[rows], sub_tweaks,
                                     None if line_scale is None else line_scale[rows]))
        return np.concatenate(pieces)
    eta0, width, damping = model.line_parameters(stars, tweaks, line_scale)
    eta = model.opacity(eta0, width, damping)  # (B, n_fine)
    # float32 from here: the flux needs ~1e-6, not 1e-15, and the transforms run twice as fast
    eta = eta.astype(np.float32)
    shape = eta / (np.float32(1.0) + eta)
    r = np.broadcast_to(np.asarray(resolving_power, dtype=np.float64), (B,))
    broadened = np.empty_like(shape)
    for f0, f1, _, _ in model.segments:
        n = f1 - f0
        nfft = sfft.next_fast_len(n + 64, real=True)
        spec = sfft.rfft(shape[:, f0:f1], n=nfft, axis=-1, workers=1)
        ft = broadening_ft(nfft, r, stars["VMACRO"], stars["VSINI"]).astype(np.float32)
        spec = spec[:, :ft.shape[1]]
        spec *= ft
        broadened[:, f0:f1] = sfft.irfft(spec, n=nfft, axis=-1, workers=1)[:, :n]
    # (P, n_fine) @ (n_fine, B): the sparse product wants the pixel axis contiguous
    binned = (model.bin_matrix32 @ np.ascontiguousarray(broadened.T)).T  # (B, P)
    t0 = (tweaks.t0_over_teff if tweaks.t0_over_teff is not None else model.consts["T0_over_Teff"])
    teff = stars["TEFF"][:, None].astype(np.float32)
    d_max = 1.0 - planck_ratio(model.wavelength[None, :].astype(np.float32), np.float32(t0) * teff, teff)
    # D_max varies by < 1 % across a line window, so it is applied after the (linear) broadening
    return (1.0 - d_max * binned).astype(np.float64)
