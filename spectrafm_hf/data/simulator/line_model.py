"""The line model: per-line constants, line windows and the pixel-binning operator for one grid.

:class:`LineModel` precomputes everything that does not depend on the star (once per grid), then
gives, for a batch of stars, each line's centre opacity ratio η₀, Doppler width and damping
(:meth:`LineModel.line_parameters`) and their summed profiles on the fine grid
(:meth:`LineModel.opacity`). Label tables are validated here (:func:`_as_label_arrays`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import scipy.sparse as sp

from ..grid import apogee_wavelength
from .constants import (
    AMU,
    C_KMS,
    ELEMENTS,
    FINE_DV_KMS,
    FINE_LOG10_STEP,
    HC_OVER_K,
    HE_OVER_H,
    K_B,
    MOLECULE_OF_SPECIES,
    NUISANCE_LABELS,
    PI_E2_MC2,
    SIM_LABELS,
)
from .line_opacity import accumulate_line_opacity
from .lines import LineList, calibration_constants, load_line_list
from .physics import (
    _VOIGT_LOGA,
    _VOIGT_V_MAX,
    _VOIGT_V_STEP,
    _voigt_corners,
    _voigt_table,
    hminus_opacity_per_h,
    layer_pressures,
    molecular_equilibrium,
    molecular_partition_function,
    partition_function,
    saha_ratio,
)


# --- stars -------------------------------------------------------------------------------------
def _as_label_arrays(labels: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Validate a label table: the five labels are required; nuisances get defaults."""
    missing = [k for k in SIM_LABELS if k not in labels]
    if missing:
        raise ValueError(f"labels lack {missing}; need {SIM_LABELS} (+ optional {NUISANCE_LABELS})")
    out = {k: np.atleast_1d(np.asarray(labels[k], dtype=np.float64)) for k in SIM_LABELS}
    n = len(out["TEFF"])
    if np.any(~np.isfinite(out["TEFF"])) or np.any(out["TEFF"] < 2500) or np.any(out["TEFF"] > 9000):
        raise ValueError(f"TEFF must be finite and within 2500–9000 K, got range "
                         f"{np.nanmin(out['TEFF'])}–{np.nanmax(out['TEFF'])}")
    for k in SIM_LABELS[1:]:
        if np.any(~np.isfinite(out[k])):
            raise ValueError(f"label {k} has non-finite values; simulate only stars with finite true labels")
    g = out["LOGG"]
    defaults = {
        "VMICRO": 10 ** (0.226 - 0.0228 * g + 0.0297 * g**2 - 0.0113 * g**3),
        "VMACRO": np.where(g < 3.8, 5.0, 2.0), "VSINI": np.zeros(n),
        "C_FE": np.zeros(n), "N_FE": np.zeros(n),
    }
    for k in NUISANCE_LABELS:
        out[k] = np.atleast_1d(np.asarray(labels[k], dtype=np.float64)) if k in labels else defaults[k]
    for k, val in out.items():
        if val.shape != (n,):
            raise ValueError(f"label {k} has shape {val.shape}, expected ({n},) like TEFF")
    return out


@dataclass
class PhysicsTweaks:
    """Per-universe departures of the 'true' physics from the model (all neutral by default)."""

    t0_over_teff: float | None = None  # None → calibration constant 0.72
    t_mol: float | None = None  # None → calibration constant 0.917
    vmicro_scatter: np.ndarray | None = None  # (B,) km/s added to vmicro
    nlte: dict = field(default_factory=dict)  # element → (c0, c_teff, c_logg) η₀ factor coefficients


class LineModel:
    """Precomputed per-line constants, line windows and the pixel-binning operator for one output grid.

    Args:
        wavelength: output pixel centres (vacuum Å), shape (P,), strictly increasing; default the
            7514-pixel APOGEE grid. Gaps larger than 3 pixel steps split it into segments (chips).
        line_list: a :class:`LineList` (default: the shipped 4,741 lines).
        margin_kms: extra velocity range computed beyond each segment (convolution edge room).
    """

    def __init__(self, wavelength=None, line_list: LineList | None = None, margin_kms: float = 60.0):
        wavelength = apogee_wavelength() if wavelength is None else np.asarray(wavelength, dtype=np.float64)
        if wavelength.ndim != 1 or len(wavelength) < 8 or np.any(np.diff(wavelength) <= 0):
            raise ValueError("wavelength must be a 1-D strictly increasing array of ≥ 8 pixel centres (Å), "
                             f"got shape {wavelength.shape}")
        self.wavelength = wavelength
        self.lines = line_list if line_list is not None else load_line_list()
        self.consts = calibration_constants()
        self._build_fine_grid(margin_kms)
        self._build_line_constants()
        self._build_windows()

    # -- grids ----------------------------------------------------------------------------------
    def _build_fine_grid(self, margin_kms: float) -> None:
        logw = np.log10(self.wavelength)
        step = np.diff(logw)
        breaks = np.where(step > 3.0 * np.median(step))[0]
        starts = np.concatenate([[0], breaks + 1])
        stops = np.concatenate([breaks + 1, [len(logw)]])
        margin = int(math.ceil(margin_kms / FINE_DV_KMS))
        self.segments = []  # (fine_start, fine_stop, pix_start, pix_stop)
        fine_logs, rows, cols, vals = [], [], [], []
        offset = 0
        for p0, p1 in zip(starts, stops):
            # pixel edges halfway (in log λ) between centres; outer edges mirror the inner step
            centres = logw[p0:p1]
            d = np.diff(centres)
            edges = np.concatenate([[centres[0] - d[0] / 2], (centres[:-1] + centres[1:]) / 2,
                                    [centres[-1] + d[-1] / 2]])
            # anchor the fine grid so that fine cells tile pixel edges exactly on the APOGEE grid
            k0 = math.floor((edges[0] - FINE_LOG10_STEP * margin) / FINE_LOG10_STEP + 1e-6)
            k1 = math.ceil((edges[-1] + FINE_LOG10_STEP * margin) / FINE_LOG10_STEP - 1e-6)
            fine_edges = np.arange(k0, k1 + 1) * FINE_LOG10_STEP
            n_fine = len(fine_edges) - 1
            fine_logs.append((fine_edges[:-1] + fine_edges[1:]) / 2)
            # overlap weights of fine cells with each output pixel (exact 5-average on APOGEE)
            for j in range(p1 - p0):
                lo, hi = edges[j], edges[j + 1]
                i0 = max(int(np.floor((lo - fine_edges[0]) / FINE_LOG10_STEP + 1e-6)), 0)
                i1 = min(int(np.ceil((hi - fine_edges[0]) / FINE_LOG10_STEP - 1e-6)), n_fine)
                cells = np.arange(i0, i1)
                overlap = np.minimum(fine_edges[cells + 1], hi) - np.maximum(fine_edges[cells], lo)
                keep = overlap > 1e-12
                w = overlap[keep] / overlap[keep].sum()
                rows.append(np.full(keep.sum(), p0 + j))
                cols.append(cells[keep] + offset)
                vals.append(w)
            self.segments.append((offset, offset + n_fine, p0, p1))
            offset += n_fine
        self.fine_log10 = np.concatenate(fine_logs)
        self.fine_wavelength = 10.0**self.fine_log10
        self.n_fine = offset
        self.bin_matrix = sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(len(self.wavelength), self.n_fine),
        )
        self.bin_matrix32 = self.bin_matrix.astype(np.float32)  # for the float32 synthesis path

    # -- per-line constants ----------------------------------------------------------------------
    def _build_line_constants(self) -> None:
        lines = self.lines
        c = self.consts
        self.is_mol = lines.ion == 0
        self.element = np.array([s.split()[0] if not m else "" for s, m in zip(lines.species, self.is_mol)])
        self.molecule = np.array([MOLECULE_OF_SPECIES.get(s, "") for s in lines.species])
        bad = [s for s, e, m in zip(lines.species, self.element, self.molecule) if not (e in ELEMENTS or m)]
        if bad:
            raise ValueError(f"unknown species in line list: {sorted(set(bad))}")
        lam_cm = lines.wavelength * 1e-8
        log_c = np.where(self.is_mol, 0.0, c["logC_atom"])
        for spc, key in (("12C16O", "logC_mol_CO"), ("12C14N", "logC_mol_CN"), ("OH", "logC_mol_OH")):
            log_c = np.where(lines.species == spc, c[key], log_c)
        # log10 of every star-independent factor of η₀ except 1/Δλ_D (which needs T, ξ)
        self.log_static = log_c + np.log10(PI_E2_MC2 * lam_cm**2 / np.sqrt(np.pi)) + lines.loggf
        self.gamma_rad = 0.2223 / lam_cm**2  # classical radiative damping, s^-1
        self.gamma6 = 10.0**lines.loggam6
        self.is_hydrogen = lines.species == "H I"
        # Brackett upper level from the hydrogenic series limit (n_lower = 4): 1/λ = R_H (1/16 − 1/n²)
        inv = 1.0 / (lines.wavelength * 1e-8) / 109677.6
        with np.errstate(invalid="ignore", divide="ignore"):
            self.n_upper = np.where(self.is_hydrogen, np.sqrt(1.0 / np.clip(1 / 16 - inv, 1e-6, None)), 0.0)
        self.two_k_over_m = 2.0 * K_B / (lines.mass * AMU) / 1e10  # (km/s)² per K
        # continuum interpolation nodes (20 Å apart, plus both sides of the H⁻ bf threshold)
        lo, hi = lines.wavelength.min() - 20.0, lines.wavelength.max() + 20.0
        nodes = np.union1d(np.arange(lo, hi + 20.0, 20.0), [16418.99, 16419.0])
        self.cont_nodes = nodes
        i0 = np.clip(np.searchsorted(nodes, lines.wavelength) - 1, 0, len(nodes) - 2)
        self.cont_weight = (lines.wavelength - nodes[i0]) / (nodes[i0 + 1] - nodes[i0])
        self.cont_index = i0 + np.where(lines.ion == 0, len(nodes), 0)  # molecules use the second table
        self.chi_bf = 1.2398e4 / lines.wavelength
        keys = []
        for is_m, el, mol, ion in zip(self.is_mol, self.element, self.molecule, lines.ion):
            keys.append(("mol", mol, 0) if is_m else ("atom", el, int(ion)))
        self.species_keys = sorted(set(keys))
        lookup = {k: j for j, k in enumerate(self.species_keys)}
        self.species_index = np.array([lookup[k] for k in keys])

    # -- η₀, Doppler widths and damping for a batch ----------------------------------------------
    def line_parameters(self, stars: Mapping[str, np.ndarray], tweaks: PhysicsTweaks | None = None,
                        line_scale: np.ndarray | None = None):
        """η₀ (B, n_lines), Doppler width w (B, n_lines, km/s) and damping a (B, n_lines).

        Element- and molecule-level quantities (Saha fractions, partition functions, molecular
        partial pressures) are computed per star and gathered onto the lines, then every per-line
        factor is combined in one vectorised pass in log space.
        ``line_scale`` (B, n_lines) multiplies η₀.
        """
        tweaks = tweaks or PhysicsTweaks()
        c = self.consts
        stars = _as_label_arrays(stars)
        teff = stars["TEFF"][:, None]
        logg = stars["LOGG"][:, None]
        fe_h = stars["FE_H"][:, None]
        xi = stars["VMICRO"][:, None]
        if tweaks.vmicro_scatter is not None:
            xi = np.clip(xi + np.asarray(tweaks.vmicro_scatter)[:, None], 0.05, None)
        log_pg, log_pe = layer_pressures(teff, logg, fe_h)
        x_h = {"alpha": fe_h + stars["MG_FE"][:, None], "fe": fe_h, "H": 0.0 * fe_h,
               "O": fe_h + stars["O_FE"][:, None], "C": fe_h + stars["C_FE"][:, None],
               "N": fe_h + stars["N_FE"][:, None]}
        t_atom = c["T_atom"] * teff  # (B, 1)
        t_mol = (tweaks.t_mol if tweaks.t_mol is not None else c["T_mol"]) * teff
        lpe_l, lpg_l = log_pe + c["dlogpe_line"], log_pg + c["dlogpg_line"]
        lpe_m, lpg_m = log_pe + c["dlogpe_mol"], log_pg + c["dlogpg_mol"]
        B = len(teff)
        is_mol = self.is_mol[None, :]
        # per-species "number fraction relative to H" and partition function, (B, n_species)
        log_n_sp = np.zeros((B, len(self.species_keys)))
        log_u_sp = np.zeros((B, len(self.species_keys)))
        eq = None
        for j, (kind, name, ion) in enumerate(self.species_keys):
            if kind == "atom":
                solar, _, _, _, _, group = ELEMENTS[name]
                ratio = saha_ratio(name, t_atom[:, 0], lpe_l[:, 0]) if name != "H" else 0.0 * t_atom[:, 0]
                frac = 1.0 / (1.0 + ratio) if ion == 1 else ratio / (1.0 + ratio)
                log_n_sp[:, j] = solar - 12.0 + x_h[group][:, 0] + np.log10(frac)
                log_u_sp[:, j] = np.log10(partition_function(name, ion, t_atom[:, 0]))
                if name in tweaks.nlte:
                    c0, ct, cg = tweaks.nlte[name]
                    factor = np.clip(1.0 + c0 + ct * (teff[:, 0] - 4800.0) / 1000.0 + cg * (logg[:, 0] - 2.5) / 2.0,
                                     0.7, 1.3)
                    log_n_sp[:, j] += np.log10(factor)
            else:
                if eq is None:
                    p_h = 10.0 ** lpg_m[:, 0] / (1.0 + HE_OVER_H)
                    eps = {e: 10.0 ** (ELEMENTS[e][0] - 12.0 + x_h[e][:, 0]) for e in ("C", "N", "O")}
                    eq = molecular_equilibrium(t_mol[:, 0], p_h, eps["C"], eps["N"], eps["O"])
                log_n_sp[:, j] = np.log10(eq[name] / p_h)
                log_u_sp[:, j] = np.log10(molecular_partition_function(name, t_mol[:, 0]))
        temp = np.where(is_mol, t_mol, t_atom)  # (B, n)
        theta = 5040.0 / temp
        width = np.sqrt(self.two_k_over_m[None, :] * temp + xi * xi)  # km/s
        # H⁻ continuum per H atom at each line (bf with stimulated emission, + ff)
        # log10(stimulated-emission factor / H⁻ continuum opacity): smooth in λ, so it is evaluated at
        # ~100 wavelength nodes per layer and interpolated linearly onto the lines (error < 1e-3 dex)
        nodes = self.cont_nodes
        table = np.concatenate([self._log_stim_over_kappa(nodes, t_atom, lpe_l),
                                self._log_stim_over_kappa(nodes, t_mol, lpe_m)], axis=1)
        i0 = self.cont_index
        lo_node = np.take(table, i0, axis=1)
        log_sk = lo_node + self.cont_weight[None, :] * (np.take(table, i0 + 1, axis=1) - lo_node)
        log_eta = (self.log_static[None, :] - theta * self.lines.chi[None, :]
                   + np.take(log_n_sp - log_u_sp, self.species_index, axis=1) + log_sk
                   - np.log10(width * (self.lines.wavelength[None, :] * 1e-8 / C_KMS)))
        eta0 = np.exp(log_eta * np.log(10.0))
        if line_scale is not None:
            eta0 = eta0 * line_scale
        # damping: radiation + van der Waals by H atoms (+ the Brackett Stark proxy); molecules: none
        n_h = 10.0**lpg_l / (1.0 + HE_OVER_H) / (K_B * t_atom)  # (B, 1)
        gamma = self.gamma_rad[None, :] + self.gamma6[None, :] * n_h * (t_atom / 5000.0) ** 0.3
        if self.is_hydrogen.any():
            h = np.flatnonzero(self.is_hydrogen)
            n_e = 10.0**lpe_l / (K_B * t_atom)
            gamma[:, h] += 4.4e11 * (n_e / 1e13) ** (2 / 3) * (self.n_upper[h][None, :] / 15.0) ** 2
        damping = np.where(is_mol, 0.0, gamma * (self.lines.wavelength[None, :] * 1e-8) / (4.0 * np.pi * width * 1e5))
        return eta0, width, damping

    @staticmethod
    def _log_stim_over_kappa(wavelength_A, temp, log_pe):
        """log10[(1 − e^(−hc/λkT)) / κ_H⁻(λ)] per H atom, (B, n) for λ (n,), T and log P_e (B, 1)."""
        lam = wavelength_A[None, :]
        stim = -np.expm1(-(HC_OVER_K / (lam * 1e-8)) / temp)
        return np.log10(stim / hminus_opacity_per_h(lam, temp, log_pe))

    # -- windows ---------------------------------------------------------------------------------
    def _build_windows(self) -> None:
        """Line windows: an exact core per line plus, for atoms, a damping-wing extent.

        Core half-width (fine pixels): ±3.5 Doppler widths (molecules, Gaussian, e^(−12) = 6e-6) or
        ±4.5 (atoms, Voigt) of the widest envelope case. Beyond the core |v| ≥ 4.5, so the Voigt
        function equals its asymptotic series ``H ≈ a/√π (1/v² + (1.5 − a²)/v⁴)`` to ≈ 1 %; with v = Δv/w this is
        ``A2/Δv² + A4/Δv⁴`` where only the amplitudes depend on the star (no table look-ups in the
        wings). A wing extends until η₀ a/(√π v²) falls to 5e-4 at the envelope stars (cap ±800
        fine pixels ≈ ±33 Å). Windows never leak across a gap between segments.
        """
        env = {
            "TEFF": np.array([3500.0, 4000.0, 4500.0, 5200.0, 6000.0, 7000.0, 3600.0, 4500.0]),
            "LOGG": np.array([0.5, 4.8, 4.8, 4.7, 4.5, 4.3, 4.9, 2.0]),
            "FE_H": np.full(8, 0.5), "MG_FE": np.full(8, 0.4), "O_FE": np.full(8, 0.4),
            "C_FE": np.full(8, 0.3), "N_FE": np.full(8, 0.6), "VMICRO": np.full(8, 2.5),
            "VMACRO": np.zeros(8), "VSINI": np.zeros(8),
        }
        eta0, w, a = self.line_parameters(env)
        self.envelope_eta0 = eta0.max(axis=0)
        w_max = w.max(axis=0)
        core = np.where(self.is_mol, np.clip(np.ceil(3.5 * w_max / FINE_DV_KMS), 4, 14),
                        np.ceil(4.5 * w_max / FINE_DV_KMS)).astype(int)
        wing = np.sqrt((eta0 * a).max(axis=0) / (np.sqrt(np.pi) * 5e-4)) * w.min(axis=0) / FINE_DV_KMS
        wing = np.where(self.is_mol, 0, np.clip(np.ceil(wing), 0, 800)).astype(int)
        log_lam = np.log10(self.lines.wavelength)
        # nearest fine pixel (the fine grid is a concatenation of segments, so search, not divide)
        right = np.clip(np.searchsorted(self.fine_log10, log_lam), 1, self.n_fine - 1)
        centre = np.where(np.abs(self.fine_log10[right] - log_lam) < np.abs(self.fine_log10[right - 1] - log_lam),
                          right, right - 1)

        # per-line window description for the compiled kernel (line_opacity.py): centre pixel, the
        # velocity of that pixel relative to the line, and the fine-pixel range of its segment
        self.line_centre = centre.astype(np.int64)
        self.line_dv0 = C_KMS * np.log(self.fine_wavelength[centre] / self.lines.wavelength)
        seg_lo = np.zeros(self.n_fine, dtype=np.int64)
        seg_hi = np.zeros(self.n_fine, dtype=np.int64)
        for f0, f1, _, _ in self.segments:
            seg_lo[f0:f1], seg_hi[f0:f1] = f0, f1
        self.line_seg_lo, self.line_seg_hi = seg_lo[centre], seg_hi[centre]
        self.core_half = core.astype(np.int64)
        self.wing_half = np.where(self.is_mol, 0, wing).astype(np.int64)

    def opacity(self, eta0, width, damping) -> np.ndarray:
        """Summed line opacity ratio η on the fine grid, shape (B, n_fine), float64.

        Cores (Gaussian for molecules, Voigt for atoms) and the atoms' damping wings, summed by
        the compiled loop of :mod:`.line_opacity` (one star at a time, so a
        star's η does not depend on its batch).
        """
        table = _voigt_table()
        total = np.zeros((eta0.shape[0], self.n_fine))
        return accumulate_line_opacity(
            total, np.ascontiguousarray(eta0, dtype=np.float64), np.ascontiguousarray(width, dtype=np.float64),
            np.ascontiguousarray(damping, dtype=np.float64), self.line_centre, self.line_dv0,
            self.line_seg_lo, self.line_seg_hi, self.core_half, self.wing_half, self.is_mol, FINE_DV_KMS,
            _voigt_corners(), table.shape[0], table.shape[1], float(_VOIGT_LOGA[0]), float(_VOIGT_LOGA[2]),
            float(_VOIGT_V_STEP), float(_VOIGT_V_MAX))


_MODEL_CACHE: dict = {}


def get_line_model(wavelength: np.ndarray | None = None) -> LineModel:
    """A cached :class:`LineModel` of the shipped line list on ``wavelength`` (default APOGEE grid)."""
    key = None if wavelength is None else np.asarray(wavelength, dtype=np.float64).tobytes()
    if key not in _MODEL_CACHE:
        if len(_MODEL_CACHE) > 4:
            _MODEL_CACHE.clear()
        _MODEL_CACHE[key] = LineModel(wavelength)
    return _MODEL_CACHE[key]
