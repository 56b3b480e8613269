"""The observed universe: its gap switches (:class:`GapConfig`) and its one fixed truth (:class:`Universe`).

The "synthetic" universe is the clean model. The "observed" universe is one fixed "true" universe
drawn once from ``OBSERVED_UNIVERSE_SEED`` (perturbed log gf / χ / γ6, missing and extra weak lines,
NLTE-like factors, T_0 and T_mol offsets, a telluric forest and sky lines), seen through per-star
instrument terms (``instrument.py``) drawn from each star's own random stream (:func:`star_rng`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Mapping

import numpy as np

from .constants import C_KMS
from .line_model import LineModel, _as_label_arrays
from .lines import LineList

#: Seed of THE observed universe (line-data errors, extra lines, NLTE factors, tellurics ...). It is
#: fixed so that every observed dataset, whatever its own seed, is drawn from the same truth.
OBSERVED_UNIVERSE_SEED = 20241107

# independent random streams per star: spawn_key = (stream, star index)
_STREAM_OBSERVE = 1


@dataclass
class GapConfig:
    """Switches and sizes of every difference between the model and the observed universe.

    Each boolean removes one gap term (numbered as in the project's reference notes) when False (for
    ablations). The random draws of a star happen in a fixed order whatever the switches, so switching
    one term off leaves every other term of every star unchanged.
    """

    line_data_errors: bool = True  # 1. log gf, χ, log γ6 errors per line
    missing_extra_lines: bool = True  # 2. true-only weak lines, and weak model lines absent in truth
    physics_mismatch: bool = True  # 3. NLTE-like factors, T_0/Teff, T_mol, vmicro scatter
    continuum_residual: bool = True  # 4. smooth multiplicative polynomial per chip
    lsf_mismatch: bool = True  # 5. true R per star
    telluric: bool = True  # 6a. telluric absorption residuals
    airglow: bool = True  # 6b. sky OH emission residual spikes
    persistence: bool = True  # 7. additive excess in part of the blue chip
    noise: bool = True  # 8. Gaussian noise with 3-tap correlation
    bad_pixels: bool = True  # 9a. random masked bad pixels, occasional unflagged artefact
    flux_clip: bool = True  # 9b. flux < 0.05 or > 1.2 → NaN + masked (the paper's convention)
    label_noise: bool = True  # reported labels = true + N(0, reported error); ~0.7 % missing
    universe_seed: int = OBSERVED_UNIVERSE_SEED
    snr_range: tuple[float, float] = (200.0, 1000.0)  # log-uniform
    loggf_sigma: float = 0.12
    chi_sigma: float = 0.1
    loggam6_sigma: float = 0.3
    n_extra_lines: tuple[int, int] = (300, 800)
    missing_weak_fraction: float = 0.05
    nlte_amplitude: float = 0.1
    t0_over_teff_offset: float = 0.02
    t_mol_offset: float = 0.015
    vmicro_scatter: float = 0.2
    continuum_rms: tuple[float, float] = (0.003, 0.01)
    resolving_power_range: tuple[float, float] = (20000.0, 25000.0)
    telluric_residual: tuple[float, float] = (0.01, 0.05)
    barycentric_kms: float = 30.0
    airglow_amplitude: tuple[float, float] = (0.02, 0.10)
    airglow_flag_probability: float = 0.9
    persistence_fraction: float = 0.1
    persistence_amplitude: tuple[float, float] = (0.01, 0.05)
    bad_pixel_fraction: tuple[float, float] = (0.005, 0.02)
    artefact_probability: float = 0.1
    noise_taps: tuple[float, float, float] = (0.1, 0.8, 0.1)
    blue_noise_factor: float = 1.25
    missing_label_fraction: float = 0.007

    SWITCHES = ("line_data_errors", "missing_extra_lines", "physics_mismatch", "continuum_residual",
                "lsf_mismatch", "telluric", "airglow", "persistence", "noise", "bad_pixels", "flux_clip",
                "label_noise")

    @classmethod
    def clean(cls, **overrides) -> "GapConfig":
        """Every gap term off except the paper's flux clipping: the synthetic universe."""
        values = {name: False for name in cls.SWITCHES}
        values["flux_clip"] = True
        values.update(overrides)
        return cls(**values)

    def without(self, *names: str) -> "GapConfig":
        """A copy with the named switches turned off (ablations)."""
        unknown = [n for n in names if n not in self.SWITCHES]
        if unknown:
            raise ValueError(f"unknown gap switch(es) {unknown}; choose from {self.SWITCHES}")
        return replace(self, **{n: False for n in names})

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping) -> "GapConfig":
        fields = cls.__dataclass_fields__
        unknown = [k for k in values if k not in fields]
        if unknown:
            raise ValueError(f"unknown GapConfig field(s) {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def star_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """The random generator of star ``index`` (independent of batch size, order and thread count)."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(stream), int(index))))


def star_draws(seed: int, index: int, n_segments: int) -> dict:
    """Star ``index``'s draws for the observed terms, always in the same order (so switches do not
    shift other terms' randomness); ``"rng"`` is the rest of its stream (noise, bad pixels, sky spikes)."""
    rng = star_rng(seed, _STREAM_OBSERVE, index)
    draws = {
        "vmicro": rng.normal(0.0, 1.0), "r": rng.random(), "snr": rng.random(),
        "cont": rng.normal(0.0, 1.0, (n_segments, 4)), "cont_rms": rng.random(),
        "tell": rng.random(3), "sky": rng.random((4,)), "pers": rng.random(4),
        "bad_frac": rng.random(), "art": rng.random(4), "label": rng.normal(0.0, 1.0, 5),
    }
    draws["rng"] = rng
    return draws


def _extra_weak_lines(model: LineModel, extra_u: np.ndarray) -> LineList:
    """Weak low-χ Fe I lines that exist only in the true universe, from (n_extra, 4) uniform draws.

    Calibrated to a line-centre opacity 0.005–0.03 (depth 0.5–3 %) in a 4500 K, logg 2 giant; the low
    χ makes them stronger in cooler stars.
    """
    n_extra = len(extra_u)
    lo, hi = model.fine_wavelength[0], model.fine_wavelength[-1]
    lam = lo + (hi - lo) * extra_u[:, 0]
    extra = LineList(wavelength=lam, species=np.full(n_extra, "Fe I"), ion=np.ones(n_extra, int),
                     chi=0.5 + 2.5 * extra_u[:, 1], loggf=np.zeros(n_extra), mass=np.full(n_extra, 55.845),
                     loggam6=np.full(n_extra, -7.3))
    # only the per-line constants are needed, not the grid: skip LineModel's grid and windows
    probe = LineModel.__new__(LineModel)
    probe.lines, probe.consts = extra, model.consts
    probe._build_line_constants()
    ref = _as_label_arrays({"TEFF": np.array([4500.0]), "LOGG": np.array([2.0]),
                            "FE_H": np.zeros(1), "MG_FE": np.zeros(1), "O_FE": np.zeros(1)})
    eta_ref = probe.line_parameters(ref)[0][0]
    target = 10 ** (np.log10(0.005) + extra_u[:, 2] * np.log10(6.0))
    extra.loggf = np.log10(target / eta_ref)
    return extra


class Universe:
    """One fixed "true" universe: perturbed line data, extra/missing lines, physics tweaks, sky.

    Everything here is drawn once from ``config.universe_seed`` (not from a dataset's seed).
    """

    def __init__(self, config: GapConfig, wavelength: np.ndarray, model: LineModel):
        self.config = config
        rng = np.random.default_rng(np.random.SeedSequence(config.universe_seed, spawn_key=(0,)))
        lines = model.lines
        n = len(lines)
        # draws in a fixed order, then applied according to the switches
        d_loggf = rng.normal(0.0, config.loggf_sigma, n)
        d_chi = rng.normal(0.0, config.chi_sigma, n)
        d_gam = rng.normal(0.0, config.loggam6_sigma, n)
        drop_u = rng.random(n)
        n_extra = int(rng.integers(config.n_extra_lines[0], config.n_extra_lines[1] + 1))
        extra_u = rng.random((n_extra, 4))
        self.nlte = {el: tuple(rng.uniform(-1.0, 1.0, 3) * config.nlte_amplitude / np.array([2.0, 2.0, 2.0]))
                     for el in ("Mg", "Al", "K", "Na")}
        self.t0_over_teff = model.consts["T0_over_Teff"] + rng.uniform(-1, 1) * config.t0_over_teff_offset
        self.t_mol = model.consts["T_mol"] * (1.0 + rng.uniform(-1, 1) * config.t_mol_offset)
        n_tell = 400
        tell_u = rng.random((n_tell, 3))
        n_sky = 70
        sky_u = rng.random((n_sky, 2))

        true = LineList(**{k: getattr(lines, k).copy() for k in lines.__dataclass_fields__})
        if config.line_data_errors:
            true.loggf = true.loggf + d_loggf
            true.chi = np.clip(true.chi + d_chi, 0.0, None)
            true.loggam6 = true.loggam6 + np.where(lines.ion == 0, 0.0, d_gam)
        if config.missing_extra_lines:
            weak = model.envelope_eta0 < 1.0
            keep = ~(weak & (drop_u < config.missing_weak_fraction))
            true = true.subset(keep)
            true = LineList.concatenate(true, _extra_weak_lines(model, extra_u))
        self.true_model = LineModel(wavelength, line_list=true)
        self.tweaks_physics = config.physics_mismatch
        # telluric forest (observer frame): more lines at the ends of the H band (water) than mid-band
        span = (model.wavelength[0] - 10.0, model.wavelength[-1] + 10.0)
        pos = np.where(tell_u[:, 0] < 0.5, span[0] + (span[1] - span[0]) * tell_u[:, 1] ** 2 * 0.5,
                       span[1] - (span[1] - span[0]) * tell_u[:, 1] ** 2 * 0.5)
        self.telluric_lines = pos
        self.telluric_depth = 10 ** (np.log10(0.01) + tell_u[:, 2] * np.log10(60.0))  # 1 − T: 1 %–60 %
        self.sky_lines = span[0] + (span[1] - span[0]) * sky_u[:, 0]
        self.sky_strength = 0.3 + 0.7 * sky_u[:, 1]

    def telluric_absorption(self, wavelength: np.ndarray, v_bary: np.ndarray) -> np.ndarray:
        """1 − T on the output grid in each star's rest frame, (B, P); lines ~unresolved (σ 0.35 Å)."""
        if getattr(self, "_tell_table", None) is None:
            # tabulated on a uniform log10 λ grid (step 1e-6 ≈ 0.04 Å), so a velocity shift is a
            # constant index offset: linear interpolation without searching
            self._tell_log0 = np.log10(self.telluric_lines.min() - 40.0)
            n = int((np.log10(self.telluric_lines.max() + 40.0) - self._tell_log0) / 1e-6) + 2
            grid = 10.0 ** (self._tell_log0 + 1e-6 * np.arange(n))
            table = np.zeros(n)
            for centre, depth in zip(self.telluric_lines, self.telluric_depth):
                near = np.abs(grid - centre) < 3.0
                table[near] += depth * np.exp(-0.5 * ((grid[near] - centre) / 0.35) ** 2)
            self._tell_table = np.clip(table, 0.0, 1.0)
            # (value, slope) per table cell: linear interpolation is one gather and one multiply-add
            self._tell_cells = np.stack([self._tell_table, np.diff(self._tell_table, append=0.0)], axis=-1)
        n_cells = len(self._tell_table)
        base = (np.log10(wavelength) - self._tell_log0) / 1e-6  # table position of each pixel at v = 0
        shift = np.log10(1.0 + np.asarray(v_bary, dtype=np.float64) / C_KMS) / 1e-6  # (B,) positions
        pos = np.clip(base[None, :] + shift[:, None], 0.0, n_cells - 1.0)
        cell = pos.astype(np.int64)
        pos -= cell
        g = np.take(self._tell_cells, cell, axis=0)
        return g[..., 0] + pos * g[..., 1]


_UNIVERSE_CACHE: dict = {}


def get_universe(config: GapConfig, model: LineModel) -> Universe:
    """The (cached) observed universe for ``config`` on ``model``'s grid."""
    fields = ("universe_seed", "line_data_errors", "missing_extra_lines", "loggf_sigma", "chi_sigma",
              "loggam6_sigma", "n_extra_lines", "missing_weak_fraction", "nlte_amplitude",
              "t0_over_teff_offset", "t_mol_offset")
    key = (tuple(getattr(config, f) for f in fields), model.wavelength.tobytes())
    if key not in _UNIVERSE_CACHE:
        if len(_UNIVERSE_CACHE) > 4:
            _UNIVERSE_CACHE.clear()
        _UNIVERSE_CACHE[key] = Universe(config, model.wavelength, model)
    return _UNIVERSE_CACHE[key]
