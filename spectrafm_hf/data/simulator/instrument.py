"""What the instrument and the pipeline add to a noise-free spectrum, and the reported labels.

:func:`apply_instrument` (observed universe only): continuum residual, telluric residual at a
barycentric shift, persistence. :func:`finish_batch` (both universes): sky spikes, correlated noise,
bad pixels and artefacts, flux clipping, and the reported labels (with label noise when observed).
Every term uses the star's own draws (``universe.star_draws``) and has a :class:`GapConfig` switch.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .constants import C_KMS, NUISANCE_LABELS, SIM_LABELS
from .line_model import LineModel
from .universe import GapConfig, Universe, get_universe

#: Default reported label errors (ASPCAP medians): TEFF in K, the others in dex.
REPORTED_ERRORS = {"TEFF": 8.0, "LOGG": 0.023, "FE_H": 0.0075, "MG_FE": 0.012, "O_FE": 0.015}


def apply_instrument(flux, model: LineModel, uni: Universe, cfg: GapConfig, draws) -> np.ndarray:
    """Continuum residual, telluric and persistence terms of the observed universe on (B, P) flux
    (modified in place and returned)."""
    B, P = flux.shape
    wl = model.wavelength
    if cfg.continuum_residual:
        coeffs = np.stack([d["cont"] for d in draws])  # (B, n_segments, 4)
        rms = cfg.continuum_rms[0] + (cfg.continuum_rms[1] - cfg.continuum_rms[0]) * np.array(
            [d["cont_rms"] for d in draws])
        for si, (_, _, p0, p1) in enumerate(model.segments):
            basis = np.polynomial.legendre.legvander(np.linspace(-1.0, 1.0, p1 - p0), 3)  # (n, 4)
            # explicit sum over the 4 terms (no BLAS): identical numbers whatever the batch size
            poly = sum(coeffs[:, si, k:k + 1] * basis[None, :, k] for k in range(4))
            poly = poly - 0.5 * poly.mean(axis=1, keepdims=True)  # a mild mean offset, as real residuals have
            flux[:, p0:p1] *= 1.0 + poly / np.sqrt(np.mean(poly**2, axis=1, keepdims=True)) * rms[:, None]
    v_bary = np.array([(2.0 * d["tell"][0] - 1.0) * cfg.barycentric_kms for d in draws])
    if cfg.telluric:
        lo, hi = cfg.telluric_residual
        scale = np.array([(lo + (hi - lo) * d["tell"][1]) * (1.0 if d["tell"][2] < 0.5 else -1.0) for d in draws])
        flux *= 1.0 + scale[:, None] * uni.telluric_absorption(wl, v_bary)
    if cfg.persistence:
        _, _, p0, p1 = model.segments[0]
        idx = np.arange(p0, p1)
        for b, d in enumerate(draws):
            u = d["pers"]
            if u[0] < cfg.persistence_fraction:
                amp_lo, amp_hi = cfg.persistence_amplitude[0], cfg.persistence_amplitude[1]
                amp = amp_lo + (amp_hi - amp_lo) * u[1]
                start = p0 + u[2] * 0.6 * (p1 - p0)
                stop = start + (0.3 + 0.4 * u[3]) * (p1 - p0)
                window = 0.5 * (np.tanh((idx - start) / 60.0) - np.tanh((idx - stop) / 60.0))
                flux[b, p0:p1] += amp * window
    return flux


def _add_sky_spikes(flux_row, mask_row, wl, uni: Universe, cfg: GapConfig, d, sky_amp, sky_flag) -> None:
    """Sky OH residual spikes on one star's (P,) flux, in place; flags most spike cores in ``mask_row``.

    The sky lines are in the observer frame, so they shift by the star's barycentric velocity.
    """
    P = len(wl)
    v_b = (2.0 * d["tell"][0] - 1.0) * cfg.barycentric_kms
    centres = uni.sky_lines / (1.0 + v_b / C_KMS)
    pix = np.interp(centres, wl, np.arange(P), left=-10, right=-10)
    lo, hi = cfg.airglow_amplitude
    inside = pix >= 0
    c = pix[inside]
    near = np.floor(c)[:, None].astype(int) + np.arange(-2, 4)[None, :]  # (n, 6) pixels
    ok = (near >= 0) & (near < P)
    amp = (np.sign(sky_amp) * (lo + (hi - lo) * np.abs(sky_amp)) * uni.sky_strength)[inside]
    spike = amp[:, None] * np.exp(-0.5 * ((near - c[:, None]) / 0.8) ** 2)
    np.add.at(flux_row, near[ok], spike[ok])
    flagged = ok & (np.abs(near - c[:, None]) <= 1.5) & (sky_flag[inside] < cfg.airglow_flag_probability)[:, None]
    mask_row[near[flagged]] = True


def _reported_labels(stars, labels: Mapping, draws, observed: bool, cfg: GapConfig) -> dict:
    """Reported labels (true + label noise when observed; NaN where ``<LABEL>_MISSING``), their
    ``_ERR``, ``true_<LABEL>`` and the nuisances, each float32 (B,)."""
    B = len(stars["TEFF"])
    out = {}
    for j, name in enumerate(SIM_LABELS):
        err = np.asarray(labels.get(f"{name}_ERR", np.full(B, REPORTED_ERRORS[name])), dtype=np.float64)
        value = stars[name].copy()
        if observed and cfg.label_noise:
            value = value + err * np.array([d["label"][j] for d in draws])
            missing = labels.get(f"{name}_MISSING")
            if missing is not None:
                value = np.where(np.asarray(missing, dtype=bool), np.nan, value)
        out[name] = value.astype(np.float32)
        out[f"{name}_ERR"] = err.astype(np.float32)
        out[f"true_{name}"] = stars[name].astype(np.float32)
    for name in NUISANCE_LABELS:
        out[name] = stars[name].astype(np.float32)
    return out


def finish_batch(flux, model: LineModel, cfg: GapConfig, draws, stars, labels, universe, snr) -> dict:
    """Sky spikes, noise, bad pixels, clipping and reported labels; returns :func:`simulate`'s dict.

    ``flux`` (B, P) is modified in place (it is the caller's fresh array)."""
    B, P = flux.shape
    mask = np.zeros((B, P), dtype=bool)
    flux_err = np.zeros((B, P))
    snr_out = np.full(B, np.nan)
    chip_factor = np.ones(P)
    _, _, p0, p1 = model.segments[0]
    chip_factor[p0:p1] = cfg.blue_noise_factor
    taps = np.asarray(cfg.noise_taps, dtype=np.float64)
    observed = universe == "observed"
    uni = get_universe(cfg, model) if observed else None
    for b, d in enumerate(draws):
        rng = d["rng"]
        # drawn whatever the switches, in this order, so that no switch shifts another term's draws
        n_sky = len(uni.sky_lines) if observed else 70
        sky_amp = rng.uniform(-1.0, 1.0, n_sky)
        sky_flag = rng.random(n_sky)
        white = rng.standard_normal(P + 2, dtype=np.float32)  # float32: 2× faster, ample for noise
        art = d["art"]
        if observed and cfg.airglow:
            _add_sky_spikes(flux[b], mask[b], model.wavelength, uni, cfg, d, sky_amp, sky_flag)
        if snr is not None:
            s_b = float(np.asarray(snr)[b])
        else:
            lo, hi = cfg.snr_range
            s_b = float(np.exp(np.log(lo) + (np.log(hi) - np.log(lo)) * d["snr"]))
        if cfg.noise:
            sigma = chip_factor / s_b
            correlated = np.convolve(white, taps, mode="valid") / np.sqrt(np.sum(taps**2))
            flux[b] += sigma * correlated
            flux_err[b] = sigma
            snr_out[b] = s_b
        if cfg.artefact_probability and cfg.bad_pixels and art[0] < cfg.artefact_probability:
            c = int(art[1] * (P - 3))
            flux[b, c:c + 1 + int(art[2] * 3)] *= 1.0 + (0.05 + 0.15 * art[3]) * (1 if art[3] > 0.5 else -1)
        if cfg.bad_pixels:
            lo, hi = cfg.bad_pixel_fraction
            bad = np.flatnonzero(rng.random(P, dtype=np.float32) < lo + (hi - lo) * d["bad_frac"])
            n_bad = len(bad)
            flux[b, bad] = np.where(rng.random(n_bad) < 0.5, flux[b, bad] + rng.uniform(0.1, 2.0, n_bad),
                                    flux[b, bad] * rng.uniform(0.0, 0.9, n_bad))
            mask[b, bad] = True
    if cfg.flux_clip:
        clip = (flux < 0.05) | (flux > 1.2) | ~np.isfinite(flux)
        flux[clip] = np.nan
        mask |= clip
    out = {"flux": flux.astype(np.float32), "flux_err": flux_err.astype(np.float32), "mask": mask,
           "snr": snr_out.astype(np.float32)}
    out.update(_reported_labels(stars, labels, draws, observed, cfg))
    return out
