"""Label prior: what a catalogue of simulated stars looks like.

Two priors:

``"apogee"`` (realistic, for the "observed" universe), modelled on the APOGEE DR17 SNR > 200 sample:
  * 75 % giants (logg < 3.8) on an isochrone-like red giant branch (≈ 5000 K at logg 3.5 to ≈ 3500 K at
    logg 0.5; metal-poor giants hotter by 300 K per dex) plus a red clump (25 % of giants, logg 2.4,
    ≈ 4700 K); 25 % main-sequence dwarfs (≈ 4000–6500 K at logg 4.7–4.3);
  * [Fe/H] from a piecewise-linear inverse CDF through the DR17 percentiles (1, 5, 25, 50, 75, 95,
    99 %) = (−1.46, −0.73, −0.38, −0.16, +0.02, +0.23, +0.34), with 2.5 % below −1 and 0.1 % below −2;
  * [Mg/Fe] and [O/Fe]: the median α trend by [Fe/H] bin, a high-α sequence (≈ 0.2 dex above the
    low-α one near [Fe/H] ≈ −0.5) and corr([Mg/Fe], [O/Fe]) ≈ 0.84;
  * nuisances: vmicro(logg) relation ± 0.2 km/s, vmacro 3–7 (giants) / 1–3 (dwarfs) km/s, vsini 0
    (giants) / 0–10 (dwarfs) km/s, [C/Fe] −0.1 ± 0.15 and [N/Fe] +0.3 ± 0.2 (giants, first dredge-up),
    0 ± 0.1 (dwarfs);
  * reported label errors: ASPCAP medians (Teff 8 K, logg 0.023, [Fe/H] 0.0075, [Mg/Fe] 0.012, [O/Fe]
    0.015 dex) times a per-star log-normal factor (σ 0.15 dex); ≈ 0.7 % of each abundance label
    flagged missing.

``"wide"`` (for pre-training on synthetic spectra): the same, except that 20 % of stars get [Fe/H]
uniform in [−2.5, −1.0] (≈ 22 % below −1 in total), so a synthetic grid covers the metal-poor regime.
``"wide<P>"`` (e.g. ``"wide5"``, ``"wide50"``): the same with P % of stars drawn there instead of 20 %
(the knob of the scaling study: how many metal-poor spectra pre-training sees at a fixed size). The
metal-poor stars of a smaller P are a subset of those of a larger P (same seed), and ``"wide20"`` is
``"wide"``.

Every star's draws come from its own random stream keyed by (seed, star index), so star ``i`` has the
same labels whatever ``n`` or batching.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtri

from .simulator import REPORTED_ERRORS

PRIORS = ("apogee", "wide")
#: Share of stars the "wide" prior draws uniformly in [Fe/H] [−2.5, −1.0].
WIDE_METAL_POOR_FRACTION = 0.20
_STREAM_PRIOR = 7
_N_UNIFORMS = 26

#: Inverse CDF of [Fe/H] for the realistic prior: (cumulative probability, [Fe/H]).
FEH_QUANTILES = np.array([
    (0.0, -2.5), (0.001, -2.0), (0.01, -1.46), (0.025, -1.0), (0.05, -0.73), (0.25, -0.38),
    (0.5, -0.16), (0.75, 0.02), (0.95, 0.23), (0.99, 0.34), (1.0, 0.50),
])
#: Median [Mg/Fe] / [O/Fe] in [Fe/H] bins (bin centres).
ALPHA_TREND = np.array([
    (-2.25, 0.30, 0.36), (-1.75, 0.24, 0.31), (-1.25, 0.23, 0.29), (-0.75, 0.28, 0.28),
    (-0.25, 0.08, 0.10), (0.30, 0.03, 0.05),
])


def star_uniforms(seed: int, indices: np.ndarray, k: int = _N_UNIFORMS) -> np.ndarray:
    """(n, k) uniforms in (0, 1), row i from the stream of star ``indices[i]`` only."""
    out = np.empty((len(indices), k))
    for row, index in enumerate(indices):
        words = np.random.SeedSequence(int(seed), spawn_key=(_STREAM_PRIOR, int(index))).generate_state(k, np.uint64)
        out[row] = ((words >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
    return out


def vmicro_relation(logg: np.ndarray) -> np.ndarray:
    """Microturbulence (km/s) as a function of logg (APOGEE-like relation)."""
    g = np.asarray(logg, dtype=np.float64)
    return 10 ** (0.226 - 0.0228 * g + 0.0297 * g**2 - 0.0113 * g**3)


def sample_labels(n: int, seed: int = 0, prior: str = "apogee", start_index: int = 0) -> dict[str, np.ndarray]:
    """Draw ``n`` stars from the label prior.

    Returns a dict of (n,) float64 arrays: TEFF, LOGG, FE_H, MG_FE, O_FE, VMICRO, VMACRO, VSINI, C_FE,
    N_FE (true values), ``<LABEL>_ERR`` (reported 1σ errors) and boolean ``<LABEL>_MISSING`` for the
    three abundances (the reported label of an "observed" star is NaN there).
    """
    extra_metal_poor = metal_poor_share(prior)
    if n < 0:
        raise ValueError(f"n must be ≥ 0, got {n}")
    u = star_uniforms(seed, np.arange(start_index, start_index + n))
    z = ndtri(u)  # standard normals, same streams
    giant = u[:, 0] < 0.75
    # [Fe/H]
    fe_h = np.interp(u[:, 1], FEH_QUANTILES[:, 0], FEH_QUANTILES[:, 1])
    if extra_metal_poor > 0:
        poor = u[:, 2] < extra_metal_poor
        fe_h = np.where(poor, -2.5 + 1.5 * u[:, 3], fe_h)
    # Teff–logg: red clump / RGB / main sequence
    clump = giant & (u[:, 4] < 0.25)
    logg_rgb = 0.3 + 3.5 * _beta_like(u[:, 5], 1.5, 1.2)
    teff_rgb = 3500.0 + 1500.0 * (logg_rgb - 0.5) / 3.0 - 300.0 * np.clip(fe_h, -2.5, 0.5) + 80.0 * z[:, 6]
    logg_clump = 2.4 + 0.12 * z[:, 7]
    teff_clump = 4700.0 - 250.0 * np.clip(fe_h, -2.5, 0.5) + 80.0 * z[:, 6]
    teff_ms = 3900.0 + 2600.0 * _beta_like(u[:, 8], 2.2, 1.3)
    logg_ms = 4.72 - 0.42 * (teff_ms - 3900.0) / 2600.0 + 0.06 * z[:, 9] - 0.05 * np.clip(fe_h, -1, 0.5)
    logg = np.where(giant, np.where(clump, logg_clump, logg_rgb), logg_ms)
    teff = np.where(giant, np.where(clump, teff_clump, teff_rgb), teff_ms)
    teff = np.clip(teff, 3200.0, 7000.0)
    logg = np.clip(logg, 0.0, 5.0)
    # α: two sequences around the median trend, Mg–O correlation 0.84
    mg_med = np.interp(fe_h, ALPHA_TREND[:, 0], ALPHA_TREND[:, 1])
    o_med = np.interp(fe_h, ALPHA_TREND[:, 0], ALPHA_TREND[:, 2])
    p_high = np.clip(0.35 - 0.5 * (fe_h + 0.5), 0.05, 0.6)
    high = u[:, 10] < p_high
    # the two sequences sit 0.2 dex apart with their mean on the median trend
    seq = np.where((fe_h > -1.2) & (fe_h < 0.2), np.where(high, 0.2 * (1 - p_high), -0.2 * p_high), 0.0)
    d_mg = seq + 0.05 * z[:, 11]
    mg_fe = mg_med + d_mg
    o_fe = o_med + 0.84 * d_mg + np.sqrt(1 - 0.84**2) * 0.1 * z[:, 12]  # 0.1 ≈ sd of d_mg
    # nuisances
    vmicro = np.clip(vmicro_relation(logg) + 0.2 * z[:, 13], 0.3, 3.0)
    vmacro = np.where(giant, 3.0 + 4.0 * u[:, 14], 1.0 + 2.0 * u[:, 14])
    vsini = np.where(giant, 0.0, 10.0 * u[:, 15])
    c_fe = np.where(giant, -0.1 + 0.15 * z[:, 16], 0.1 * z[:, 16])
    n_fe = np.where(giant, 0.3 + 0.2 * z[:, 17], 0.1 * z[:, 17])
    out = {"TEFF": teff, "LOGG": logg, "FE_H": fe_h, "MG_FE": mg_fe, "O_FE": o_fe, "VMICRO": vmicro,
           "VMACRO": vmacro, "VSINI": vsini, "C_FE": c_fe, "N_FE": n_fe}
    for j, name in enumerate(("TEFF", "LOGG", "FE_H", "MG_FE", "O_FE")):
        out[f"{name}_ERR"] = REPORTED_ERRORS[name] * 10 ** (0.15 * z[:, 18 + j])
    for j, name in enumerate(("FE_H", "MG_FE", "O_FE")):
        out[f"{name}_MISSING"] = u[:, 23 + j] < 0.007
    return out


def metal_poor_share(prior: str) -> float:
    """Share of stars a prior draws uniformly in [Fe/H] [−2.5, −1.0] on top of the APOGEE-like
    distribution: 0 for ``"apogee"``, 0.20 for ``"wide"``, P/100 for ``"wide<P>"`` (0 < P ≤ 100).

    Raises:
        ValueError: an unknown prior name, naming the valid forms.
    """
    if prior == "apogee":
        return 0.0
    if prior == "wide":
        return WIDE_METAL_POOR_FRACTION
    percent = prior[len("wide"):] if isinstance(prior, str) and prior.startswith("wide") else ""
    try:
        share = float(percent) / 100.0
    except ValueError:
        share = -1.0
    if not 0.0 < share <= 1.0:
        raise ValueError(f"prior must be 'apogee', 'wide' or 'wide<P>' with 0 < P <= 100 (e.g. 'wide5': 5 % of "
                         f"stars drawn in [Fe/H] -2.5..-1), got {prior!r}")
    return share


def _beta_like(u: np.ndarray, a: float, b: float) -> np.ndarray:
    """A cheap monotone map of a uniform onto a Beta(a, b)-shaped variable in [0, 1] (inverse CDF)."""
    from scipy.special import betaincinv

    return betaincinv(a, b, u)
