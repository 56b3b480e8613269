"""The entry point: :func:`simulate` turns a batch of TRUE labels into spectra of either universe.

"synthetic": the clean model (:func:`synthesize`) plus the paper's flux clipping. "observed": the
fixed true universe (:class:`Universe`) through a per-star instrument. Star ``i`` draws its randomness
from (seed, i) only, so a spectrum does not depend on the batch it is simulated in.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .constants import APOGEE_RESOLVING_POWER
from .instrument import apply_instrument, finish_batch
from .line_model import LineModel, PhysicsTweaks, _as_label_arrays, get_line_model
from .synthesis import synthesize
from .universe import GapConfig, get_universe, star_draws


def simulate(
    labels: Mapping[str, np.ndarray],
    universe: str = "synthetic",
    seed: int = 0,
    start_index: int = 0,
    wavelength: np.ndarray | None = None,
    resolving_power: float = APOGEE_RESOLVING_POWER,
    gap_config: GapConfig | None = None,
    snr: np.ndarray | None = None,
    indices: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Simulate a batch of stars from their TRUE labels.

    Args:
        labels: dict of (B,) arrays: TEFF (K), LOGG, FE_H, MG_FE, O_FE (dex) and optional nuisances
            VMICRO, VMACRO, VSINI (km/s), C_FE, N_FE; optional ``<LABEL>_ERR`` reported errors
            (default: ASPCAP medians) and ``<LABEL>_MISSING`` booleans (reported label becomes NaN).
        universe: "synthetic" (clean model) or "observed" (true universe + instrument).
        seed: dataset seed; star ``start_index + b`` draws its randomness from (seed, index) only.
        start_index: global index of the first star of the batch (keeps results batch-independent).
        indices: explicit global star indices, (B,) (overrides ``start_index``).
        wavelength: output grid (vacuum Å, (P,)); default the 7514-pixel APOGEE grid.
        resolving_power: the model's R (the observed universe draws its own per star if
            ``gap_config.lsf_mismatch``).
        gap_config: defaults to ``GapConfig()`` (observed) or ``GapConfig.clean()`` (synthetic).
        snr: optional (B,) SNR per star (default: log-uniform in ``gap_config.snr_range``).

    Returns:
        dict with ``flux``, ``flux_err`` (float32, (B, P)), ``mask`` (bool, (B, P), True = bad),
        ``snr`` (float32 (B,), NaN when noise-free), reported labels ``TEFF`` ... with ``_ERR``, the
        nuisances, and ``true_<LABEL>`` (the labels the spectrum was made from).
    """
    if universe not in ("synthetic", "observed"):
        raise ValueError(f"universe must be 'synthetic' or 'observed', got {universe!r}")
    cfg = gap_config if gap_config is not None else (GapConfig() if universe == "observed" else GapConfig.clean())
    stars = _as_label_arrays(labels)
    B = len(stars["TEFF"])
    indices = np.arange(start_index, start_index + B) if indices is None else np.asarray(indices)
    if indices.shape != (B,):
        raise ValueError(f"indices must have shape ({B},) like the labels, got {indices.shape}")
    model = get_line_model(wavelength)
    draws = [star_draws(seed, index, len(model.segments)) for index in indices]
    if universe == "synthetic":
        flux = synthesize(model, stars, resolving_power)
    else:
        flux = _observed_flux(model, stars, cfg, draws, resolving_power)
    return finish_batch(flux, model, cfg, draws, stars, labels, universe, snr)


def _observed_flux(model: LineModel, stars, cfg: GapConfig, draws, resolving_power) -> np.ndarray:
    """(B, P) flux of the true universe (its own physics and per-star R) with the instrument terms."""
    uni = get_universe(cfg, model)
    tweaks = PhysicsTweaks()
    if cfg.physics_mismatch:
        tweaks = PhysicsTweaks(t0_over_teff=uni.t0_over_teff, t_mol=uni.t_mol, nlte=uni.nlte,
                               vmicro_scatter=cfg.vmicro_scatter * np.array([d["vmicro"] for d in draws]))
    r_lo, r_hi = cfg.resolving_power_range
    r_true = (r_lo + (r_hi - r_lo) * np.array([d["r"] for d in draws])) if cfg.lsf_mismatch else resolving_power
    flux = synthesize(uni.true_model, stars, r_true, tweaks)
    return apply_instrument(flux, model, uni, cfg, draws)
