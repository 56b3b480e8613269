"""A fast, one-layer physical simulator of continuum-normalised APOGEE H-band spectra.

This implements the recipe of ``../shared/docs/simulator.md``. It is a **one-layer
(Milne–Eddington / Eddington–Barbier) approximation** with five fitted constants: line depths respond
to Teff, logg and every abundance the way real lines do (Boltzmann and Saha factors, H⁻ continuum,
molecular equilibrium of CO/CN/OH, a curve of growth that saturates, pressure-broadened wings), which
makes it good for *relative* behaviour — training and testing machine-learning models — and **not for
abundance analysis**. Known limitations: one atmospheric layer; H₂, H₂O and FeH are ignored (M dwarfs
are poorly modelled); the Brackett lines use a crude Lorentzian "Stark" proxy (below); partition
functions are rough power laws.

Per star (vectorised over a batch of stars and over all 4,741 lines):

1. layer pressures ``log P_g``, ``log P_e`` (fits to MARCS at log τ_R ≈ −0.3); atoms at
   ``T_l = 0.86 Teff``, molecules at ``T_m = 0.917 Teff`` (calibration constants, JSON beside the list);
2. H⁻ bound-free + free-free continuum opacity per H atom (Gray, 3rd ed., ch. 8 fits);
3. Saha ionisation; 4. CO/CN/OH/N₂ dissociation equilibrium with C, N, O conservation (fixed point);
5. line-centre opacity ratio ``η₀`` with the fitted class constants ``C_X``;
6. Voigt profile ``H(a, v)`` (bilinear table of the exact function in the core, |ΔH| < 2e-4; the
   asymptotic Lorentz series in the wings) for atoms,
   pure Doppler (Gaussian) for molecules (their damping is negligible);
7. ``η(λ) = Σ η₀ H``, ``depth = D_max η / (1 + η)``, ``D_max = 1 − B_λ(T_0)/B_λ(Teff)``;
8. Gaussian LSF (R), macroturbulence and rotation (FFT on a 5× oversampled log-λ grid), then
   pixel-averaging onto the output grid.

Speed comes from precomputing per-line constants once; evaluating the continuum at ~100 wavelength
nodes and interpolating; evaluating each line's exact profile only inside a narrow core window
(±3.5 Doppler widths for molecules, ±4.5 for atoms) and the atomic damping wings, out to where η falls
to 5e-4 (< 0.05 % in flux), with their asymptotic series; and summing all windows in one compiled loop
(:mod:`spectrafm_hf.data.line_opacity`, numba; ~130 k profile points per star), then float32 FFTs.
Every star is computed independently (no reduction across the batch axis, no BLAS), so results are
bit-identical whatever the batch size or thread count.

Observed universe (:class:`GapConfig`, :class:`Universe`): one fixed "true" universe drawn once from
``OBSERVED_UNIVERSE_SEED`` (perturbed log gf / χ / γ6, missing and extra weak lines, NLTE-like
factors, T_0 and T_mol offsets, a telluric forest and sky lines) plus per-star instrument terms drawn
from the star's own stream (seed, index): continuum residual, true R, telluric residual at a
barycentric shift, sky spikes, persistence, correlated noise, bad pixels, clipping and label noise.
Every term has a switch.

The Brackett proxy: H I lines get a Lorentzian width ``γ_S ∝ n_e^(2/3) n_u²`` (linear-Stark scaling,
normalised to a ~3 Å FWHM at n_e = 1e13 cm⁻³ for n_u = 15). Real Brackett profiles are not Voigt.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Mapping

import numpy as np
import scipy.sparse as sp
from scipy import fft as sfft
from scipy.special import j1

from .grid import apogee_wavelength
from .line_opacity import accumulate_line_opacity

LINELIST_DIR = Path(__file__).resolve().parent / "linelists"
LINELIST_FILE = LINELIST_DIR / "hband_lines_full_sim.csv"
CONSTANTS_FILE = LINELIST_DIR / "sim_calibration_constants.json"

# --- physical constants (cgs) ------------------------------------------------------------------
K_B = 1.380649e-16  # erg/K
H_PLANCK = 6.62607015e-27  # erg s
C_LIGHT = 2.99792458e10  # cm/s
C_KMS = 2.99792458e5  # km/s
AMU = 1.66053907e-24  # g
EV = 1.602176634e-12  # erg
HC_OVER_K = H_PLANCK * C_LIGHT / K_B  # cm K
#: πe²/(m_e c²) in cm: converts gf to an integrated line cross-section per unit wavelength.
PI_E2_MC2 = 8.853e-13
#: Oversampling: the fine grid step in log10 λ (5× the APOGEE step).
FINE_LOG10_STEP = 1.2e-6
FINE_DV_KMS = C_KMS * math.log(10.0) * FINE_LOG10_STEP  # ≈ 0.8283 km/s per fine pixel
APOGEE_RESOLVING_POWER = 22500.0

#: Label columns the simulator reads (the five SpectraFM labels plus nuisances).
SIM_LABELS: tuple[str, ...] = ("TEFF", "LOGG", "FE_H", "MG_FE", "O_FE")
NUISANCE_LABELS: tuple[str, ...] = ("VMICRO", "VMACRO", "VSINI", "C_FE", "N_FE")

# --- element data ------------------------------------------------------------------------------
# symbol: (solar log eps (Asplund+2009), first ionisation energy eV, mass amu,
#          (u_I at 5000 K, power p), (u_II at 5000 K, power p), abundance group)
# u(T) = u5000 (T/5000)^p: rough fits to standard partition-function tables; the strong T dependence
# matters only for iron-peak neutrals (Fe, Ti, V, Co, Ni). Groups: "alpha" follows [Mg/Fe] (Mg, Si,
# S, Ca, Ti), "O", "C", "N" follow their own labels, "fe" follows [Fe/H], "H" is hydrogen.
ELEMENTS: dict[str, tuple] = {
    "H": (12.00, 13.598, 1.008, (2.0, 0.0), (1.0, 0.0), "H"),
    "C": (8.43, 11.260, 12.011, (9.3, 0.0), (5.9, 0.0), "C"),
    "N": (7.83, 14.534, 14.007, (4.0, 0.0), (9.0, 0.0), "N"),
    "O": (8.69, 13.618, 15.999, (8.9, 0.0), (4.0, 0.0), "O"),
    "Na": (6.24, 5.139, 22.990, (2.0, 0.0), (1.0, 0.0), "fe"),
    "Mg": (7.60, 7.646, 24.305, (1.0, 0.0), (2.0, 0.0), "alpha"),
    "Al": (6.45, 5.986, 26.982, (5.9, 0.0), (1.0, 0.0), "fe"),
    "Si": (7.51, 8.152, 28.086, (9.6, 0.0), (5.7, 0.0), "alpha"),
    "P": (5.41, 10.487, 30.974, (4.5, 0.0), (8.4, 0.0), "fe"),
    "S": (7.12, 10.360, 32.060, (8.5, 0.0), (4.1, 0.0), "alpha"),
    "K": (5.03, 4.341, 39.098, (2.1, 0.0), (1.0, 0.0), "fe"),
    "Ca": (6.34, 6.113, 40.078, (1.2, 0.0), (2.2, 0.0), "alpha"),
    "Ti": (4.95, 6.828, 47.867, (28.0, 1.0), (55.0, 0.5), "alpha"),
    "V": (3.93, 6.746, 50.942, (38.0, 1.0), (32.0, 0.5), "fe"),
    "Cr": (5.64, 6.767, 51.996, (10.0, 0.0), (7.2, 0.0), "fe"),
    "Mn": (5.43, 7.434, 54.938, (6.4, 0.0), (7.5, 0.0), "fe"),
    "Fe": (7.50, 7.902, 55.845, (30.0, 1.0), (42.0, 0.5), "fe"),
    "Co": (4.99, 7.881, 58.933, (33.0, 0.8), (26.0, 0.5), "fe"),
    "Ni": (6.22, 7.640, 58.693, (28.0, 0.3), (8.6, 0.0), "fe"),
}
HE_OVER_H = 10 ** (10.93 - 12.0)

# Molecules: D0 (eV), B (cm^-1), omega (cm^-1), electronic degeneracy, constituent atoms.
MOLECULES: dict[str, tuple] = {
    "CO": (11.09, 1.931, 2170.0, 1.0, ("C", "O")),
    "CN": (7.72, 1.900, 2069.0, 2.0, ("C", "N")),
    "OH": (4.39, 18.9, 3738.0, 4.0, ("O", "H")),
    "N2": (9.76, 1.998, 2359.0, 1.0, ("N", "N")),  # symmetric: σ = 2
}
MOLECULE_OF_SPECIES = {"12C16O": "CO", "12C14N": "CN", "OH": "OH"}
ATOMIC_U_FOR_MOLECULES = {"C": 9.3, "N": 4.0, "O": 8.9, "H": 2.0}


# --- line list -----------------------------------------------------------------------------------
@dataclass
class LineList:
    """Per-line data, each an array of shape (n_lines,). Wavelengths vacuum Å, energies eV."""

    wavelength: np.ndarray
    species: np.ndarray  # str, e.g. "Fe I", "OH", "12C16O"
    ion: np.ndarray  # 1 neutral, 2 singly ionised, 0 molecule
    chi: np.ndarray
    loggf: np.ndarray
    mass: np.ndarray  # amu
    loggam6: np.ndarray  # log10 van der Waals γ6 per perturber (cm³/s)

    def __len__(self) -> int:
        return len(self.wavelength)

    def subset(self, keep: np.ndarray) -> "LineList":
        return LineList(**{k: getattr(self, k)[keep] for k in self.__dataclass_fields__})

    @staticmethod
    def concatenate(a: "LineList", b: "LineList") -> "LineList":
        return LineList(**{k: np.concatenate([getattr(a, k), getattr(b, k)]) for k in a.__dataclass_fields__})


def load_line_list(path: str | Path | None = None) -> LineList:
    """Read the shipped 4,741-line list (or a CSV with the same columns) into a :class:`LineList`."""
    import csv

    path = Path(path) if path is not None else LINELIST_FILE
    if not path.exists():
        raise ValueError(f"line list {path} not found; pass the path of a CSV with columns "
                         "wavelength_vac_A, species, ion, chi_eV, loggf, mass_amu, loggam6")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    required = ("wavelength_vac_A", "species", "ion", "chi_eV", "loggf", "mass_amu", "loggam6")
    missing = [c for c in required if rows and c not in rows[0]]
    if missing or not rows:
        raise ValueError(f"line list {path} lacks columns {missing or required}")
    return LineList(
        wavelength=np.array([float(r["wavelength_vac_A"]) for r in rows]),
        species=np.array([r["species"] for r in rows]),
        ion=np.array([int(r["ion"]) for r in rows]),
        chi=np.array([float(r["chi_eV"]) for r in rows]),
        loggf=np.array([float(r["loggf"]) for r in rows]),
        mass=np.array([float(r["mass_amu"]) for r in rows]),
        loggam6=np.array([float(r["loggam6"]) if r["loggam6"] else -7.3 for r in rows]),
    )


@lru_cache(maxsize=1)
def calibration_constants() -> dict:
    """The fitted constants of the recipe (``sim_calibration_constants.json``)."""
    return json.loads(CONSTANTS_FILE.read_text())


# --- physics pieces (all vectorised; T in K, pressures in dyn/cm²) -------------------------------
def layer_pressures(teff, logg, m_h):
    """log10 gas and electron pressure of the line-forming layer (MARCS fit, log τ_R ≈ −0.3)."""
    lt = np.log10(np.asarray(teff) / 5777.0)
    log_pg = 4.96 + 0.63 * (logg - 4.44) - 2.46 * lt - 0.25 * m_h
    log_pe = 1.14 + 0.34 * (logg - 4.44) + 7.5 * lt + 0.35 * m_h
    return log_pg, log_pe


def _hminus_bf_cross_section(wavelength_A: np.ndarray) -> np.ndarray:
    """H⁻ bound-free cross-section α_bf (cm², Gray ch. 8 polynomial), 0 beyond the 16,419 Å threshold."""
    lam = np.asarray(wavelength_A, dtype=np.float64)
    coeffs = (1.99654, -1.18267e-5, 2.64243e-6, -4.40524e-10, 3.23992e-14, -1.39568e-18, 2.78701e-23)
    alpha = np.zeros_like(lam)
    for power, c in enumerate(coeffs):
        alpha = alpha + c * lam**power
    return np.where(lam < 16419.0, np.clip(alpha, 0.0, None), 0.0) * 1e-18


def _hminus_ff_coefficients(wavelength_A: np.ndarray):
    """(f0, f1, f2) of Gray's H⁻ free-free fit, each (n,)."""
    x = np.log10(np.asarray(wavelength_A, dtype=np.float64))
    f0 = -2.2763 - 1.6850 * x + 0.76661 * x**2 - 0.053346 * x**3
    f1 = 15.2827 - 9.2846 * x + 1.99381 * x**2 - 0.142631 * x**3
    f2 = -197.789 + 190.266 * x - 67.9775 * x**2 + 10.6913 * x**3 - 0.625151 * x**4
    return f0, f1, f2


def hminus_opacity_per_h(wavelength_A, temperature, log_pe):
    """H⁻ bf+ff continuum opacity per neutral H atom (cm²), stimulated emission included.

    Broadcasts ``wavelength_A`` (..., n) against ``temperature`` / ``log_pe`` (..., 1).
    """
    theta = 5040.0 / temperature
    pe = 10.0**log_pe
    alpha = _hminus_bf_cross_section(wavelength_A)
    stim = 1.0 - 10.0 ** (-(1.2398e4 / wavelength_A) * theta)
    bf = 4.158e-10 * alpha * pe * theta**2.5 * 10.0 ** (0.754 * theta) * stim
    f0, f1, f2 = _hminus_ff_coefficients(wavelength_A)
    lt = np.log10(theta)
    ff = 1e-26 * pe * 10.0 ** (f0 + f1 * lt + f2 * lt**2)
    return bf + ff


def partition_function(element: str, ion: int, temperature):
    """Rough partition function u(T) of an atom (ion 1) or singly-ionised atom (ion 2)."""
    u5000, p = ELEMENTS[element][3 if ion == 1 else 4]
    return u5000 * (np.asarray(temperature) / 5000.0) ** p


def saha_ratio(element: str, temperature, log_pe):
    """N_II / N_I from the Saha equation (Gray's pressure form)."""
    theta = 5040.0 / temperature
    ratio_u = partition_function(element, 2, temperature) / partition_function(element, 1, temperature)
    return 1.2020e9 * ratio_u * theta**-2.5 * 10.0 ** (-theta * ELEMENTS[element][1]) / 10.0**log_pe


def molecular_partition_function(name: str, temperature):
    """Rigid-rotor / harmonic-oscillator partition function of a diatomic molecule."""
    _, b, omega, g_el, atoms = MOLECULES[name]
    kt_cm = temperature / (HC_OVER_K)  # kT in cm^-1 ... (T / (hc/k))
    sigma = 2.0 if atoms[0] == atoms[1] else 1.0
    rot = kt_cm / (sigma * b)
    vib = 1.0 / (1.0 - np.exp(-omega / kt_cm))
    return g_el * rot * vib


def dissociation_constant(name: str, temperature):
    """K_p = p_A p_B / p_AB (dyn/cm²) of a diatomic molecule."""
    d0, _, _, _, atoms = MOLECULES[name]
    ma, mb = (ELEMENTS[a][2] for a in atoms)
    mu = ma * mb / (ma + mb) * AMU
    kt = K_B * temperature
    translational = (2.0 * np.pi * mu * kt / H_PLANCK**2) ** 1.5 * kt
    ua, ub = (ATOMIC_U_FOR_MOLECULES[a] for a in atoms)
    return translational * ua * ub / molecular_partition_function(name, temperature) * np.exp(-d0 * EV / kt)


def molecular_equilibrium(temperature, p_h, eps_c, eps_n, eps_o, n_iter: int = 200):
    """Partial pressures of CO, CN, OH (and free C, N, O) from C/N/O conservation.

    Solved by damped fixed-point iteration (geometric mean of old and new estimate, which converges
    also when CO locks up nearly all carbon). Inputs are (B,) arrays; returns a dict of (B,) arrays.
    """
    k_co = dissociation_constant("CO", temperature)
    k_cn = dissociation_constant("CN", temperature)
    k_oh = dissociation_constant("OH", temperature)
    k_n2 = dissociation_constant("N2", temperature)
    tot_c, tot_n, tot_o = eps_c * p_h, eps_n * p_h, eps_o * p_h
    p_c, p_n, p_o = tot_c.copy(), tot_n.copy(), tot_o.copy()
    for _ in range(n_iter):
        new_c = tot_c / (1.0 + p_o / k_co + p_n / k_cn)
        new_o = tot_o / (1.0 + p_c / k_co + p_h / k_oh)
        new_n = tot_n / (1.0 + p_c / k_cn + 2.0 * p_n / k_n2)
        p_c, p_o, p_n = np.sqrt(p_c * new_c), np.sqrt(p_o * new_o), np.sqrt(p_n * new_n)
    return {
        "C": p_c, "N": p_n, "O": p_o,
        "CO": p_c * p_o / k_co, "CN": p_c * p_n / k_cn, "OH": p_o * p_h / k_oh,
    }


def planck_ratio(wavelength_A, t_low, t_high):
    """B_λ(t_low) / B_λ(t_high), in the precision of ``wavelength_A``.

    Uses exp(x) − 1 rather than expm1 (which numpy does not vectorise in float32): here
    x = hc/λkT ≥ 1 (λ < 2 µm, T < 7000 K), far from where exp − 1 loses digits.
    """
    x = HC_OVER_K / (np.asarray(wavelength_A) * 1e-8)
    return (np.exp(x / t_high) - 1.0) / (np.exp(x / t_low) - 1.0)


_VOIGT_V_STEP = 0.02
_VOIGT_V_MAX = 25.0
_VOIGT_LOGA = (-5.0, 2.0, 0.05)  # log10 a: start, stop, step


@lru_cache(maxsize=1)
def _voigt_table() -> np.ndarray:
    """H(a, v) tabulated on (log10 a, v) with the exact Faddeeva function (scipy ``wofz``), float32."""
    from scipy.special import wofz

    log_a = np.arange(_VOIGT_LOGA[0], _VOIGT_LOGA[1] + 1e-9, _VOIGT_LOGA[2])
    v = np.arange(0.0, _VOIGT_V_MAX + _VOIGT_V_STEP + 1e-9, _VOIGT_V_STEP)
    table = wofz(v[None, :] + 1j * 10.0 ** log_a[:, None]).real
    return table.astype(np.float32)


@lru_cache(maxsize=1)
def _voigt_corners() -> np.ndarray:
    """The table as one row per cell: (H[a, v], ΔvH[a, v], H[a+1, v], ΔvH[a+1, v]), float32 (n_a·n_v, 4).

    Bilinear interpolation then needs ONE gather of 16 contiguous bytes per point instead of four
    scattered ones: the gathers dominate the cost of the opacity sum.
    """
    table = _voigt_table()
    step_v = np.diff(table, axis=1, append=table[:, -1:])  # last column: constant extension
    upper = np.vstack([table[1:], table[-1:]])
    step_upper = np.vstack([step_v[1:], step_v[-1:]])
    return np.stack([table, step_v, upper, step_upper], axis=-1).reshape(-1, 4)


def voigt_fast(a: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Fast H(a, v): bilinear interpolation in a (log10 a, v) table of the exact function for
    |v| < 25, the asymptotic wing ``a/√π (1/(v² + a²) + 1.5/v⁴)`` beyond.

    The numpy form of what the compiled opacity loop (:mod:`spectrafm_hf.data.line_opacity`) does
    point by point, from the same table. Accuracy (checked against ``scipy.special.wofz`` in the
    tests): |ΔH| < 2e-4 absolute for 1e-5 ≤ a ≤ 100; a is clipped to that range. Inputs broadcast;
    returns float32.
    """
    a = np.asarray(a, dtype=np.float32)
    x = np.abs(np.asarray(v, dtype=np.float32))
    n_a, n_v = _voigt_table().shape
    corners = _voigt_corners()
    la = (np.log10(np.clip(a, 1e-5, 100.0)) - np.float32(_VOIGT_LOGA[0])) / np.float32(_VOIGT_LOGA[2])
    la = np.clip(la, 0.0, n_a - 1.001)
    ia = la.astype(np.int32)
    fa = (la - ia).astype(np.float32)
    xi = np.minimum(x, np.float32(_VOIGT_V_MAX)) * np.float32(1.0 / _VOIGT_V_STEP)
    iv = xi.astype(np.int32)
    fv = xi - iv
    g = np.take(corners, iv + ia * n_v, axis=0)  # (..., 4) table rows; np.take: far faster than corners[idx]
    lo = g[..., 0] + fv * g[..., 1]
    hi = g[..., 2] + fv * g[..., 3]
    out = lo + fa * (hi - lo)
    x = np.broadcast_to(x, out.shape)
    far = x >= _VOIGT_V_MAX
    if np.any(far):
        af = np.broadcast_to(a, x.shape)[far]
        x2 = x[far] ** 2
        out[far] = af / np.float32(np.sqrt(np.pi)) * (1.0 / (x2 + af * af) + 1.5 / (x2 * x2))
    return out


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
        B, n = len(teff), len(self.lines)
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
        lpe = np.where(is_mol, lpe_m, lpe_l)
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
        the compiled loop of :mod:`spectrafm_hf.data.line_opacity` (one star at a time, so a
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


# --- broadening ------------------------------------------------------------------------------------
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
                from dataclasses import replace

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


# =================================================================================================
# Universes: the clean model ("synthetic") and one fixed "true" universe plus instrument ("observed")
# =================================================================================================
#: Seed of THE observed universe (line-data errors, extra lines, NLTE factors, tellurics ...). It is
#: fixed so that every observed dataset, whatever its own seed, is drawn from the same truth.
OBSERVED_UNIVERSE_SEED = 20241107

# independent random streams per star: spawn_key = (stream, star index)
_STREAM_OBSERVE = 1


@dataclass
class GapConfig:
    """Switches and sizes of every difference between the model and the observed universe.

    Each boolean removes one gap term of ``docs/simulator.md`` when False (for ablations). The random
    draws of a star happen in a fixed order whatever the switches, so switching one term off leaves
    every other term of every star unchanged.
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
        from dataclasses import replace

        unknown = [n for n in names if n not in self.SWITCHES]
        if unknown:
            raise ValueError(f"unknown gap switch(es) {unknown}; choose from {self.SWITCHES}")
        return replace(self, **{n: False for n in names})

    def to_dict(self) -> dict:
        from dataclasses import asdict

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
            lo, hi = model.fine_wavelength[0], model.fine_wavelength[-1]
            lam = lo + (hi - lo) * extra_u[:, 0]
            extra = LineList(wavelength=lam, species=np.full(n_extra, "Fe I"), ion=np.ones(n_extra, int),
                             chi=0.5 + 2.5 * extra_u[:, 1], loggf=np.zeros(n_extra), mass=np.full(n_extra, 55.845),
                             loggam6=np.full(n_extra, -7.3))
            # calibrate: line-centre opacity 0.005–0.03 (depth 0.5–3 %) at a 4500 K, logg 2 giant;
            # the low χ makes them stronger in cooler stars
            probe = LineModel.__new__(LineModel)
            probe.lines, probe.consts = extra, model.consts
            probe._build_line_constants()
            ref = _as_label_arrays({"TEFF": np.array([4500.0]), "LOGG": np.array([2.0]),
                                    "FE_H": np.zeros(1), "MG_FE": np.zeros(1), "O_FE": np.zeros(1)})
            eta_ref = probe.line_parameters(ref)[0][0]
            target = 10 ** (np.log10(0.005) + extra_u[:, 2] * np.log10(6.0))
            extra.loggf = np.log10(target / eta_ref)
            true = LineList.concatenate(true, extra)
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


_MODEL_CACHE: dict = {}


def get_line_model(wavelength: np.ndarray | None = None) -> LineModel:
    """A cached :class:`LineModel` of the shipped line list on ``wavelength`` (default APOGEE grid)."""
    key = None if wavelength is None else np.asarray(wavelength, dtype=np.float64).tobytes()
    if key not in _MODEL_CACHE:
        if len(_MODEL_CACHE) > 4:
            _MODEL_CACHE.clear()
        _MODEL_CACHE[key] = LineModel(wavelength)
    return _MODEL_CACHE[key]


#: Bumped when a change alters the spectra produced for a given seed.
#: 1.1: compiled opacity sum and float32 transforms (flux changes < 3e-7); float32 noise and
#: bad-pixel draws (new random streams).
SIMULATOR_VERSION = "1.1"

REPORTED_ERRORS = {"TEFF": 8.0, "LOGG": 0.023, "FE_H": 0.0075, "MG_FE": 0.012, "O_FE": 0.015}


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
    # per-star draws, always in the same order (so switches do not shift other terms' randomness)
    draws = []
    for b in range(B):
        rng = star_rng(seed, _STREAM_OBSERVE, indices[b])
        d = {
            "vmicro": rng.normal(0.0, 1.0), "r": rng.random(), "snr": rng.random(),
            "cont": rng.normal(0.0, 1.0, (len(model.segments), 4)), "cont_rms": rng.random(),
            "tell": rng.random(3), "sky": rng.random((4,)), "pers": rng.random(4),
            "bad_frac": rng.random(), "art": rng.random(4), "label": rng.normal(0.0, 1.0, 5),
        }
        d["rng"] = rng  # remaining stream: noise, bad pixels, sky spikes
        draws.append(d)

    if universe == "synthetic":
        flux = synthesize(model, stars, resolving_power)
        tweaks = None
    else:
        uni = get_universe(cfg, model)
        tweaks = PhysicsTweaks()
        if cfg.physics_mismatch:
            tweaks = PhysicsTweaks(t0_over_teff=uni.t0_over_teff, t_mol=uni.t_mol, nlte=uni.nlte,
                                   vmicro_scatter=cfg.vmicro_scatter * np.array([d["vmicro"] for d in draws]))
        r_lo, r_hi = cfg.resolving_power_range
        r_true = (r_lo + (r_hi - r_lo) * np.array([d["r"] for d in draws])) if cfg.lsf_mismatch else resolving_power
        flux = synthesize(uni.true_model, stars, r_true, tweaks)
        flux = _apply_instrument(flux, model, uni, cfg, draws)
    out = _finish(flux, model, cfg, draws, stars, labels, universe, snr)
    return out


def _apply_instrument(flux, model: LineModel, uni: Universe, cfg: GapConfig, draws) -> np.ndarray:
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
                amp = cfg.persistence_amplitude[0] + (cfg.persistence_amplitude[1] - cfg.persistence_amplitude[0]) * u[1]
                start = p0 + u[2] * 0.6 * (p1 - p0)
                stop = start + (0.3 + 0.4 * u[3]) * (p1 - p0)
                window = 0.5 * (np.tanh((idx - start) / 60.0) - np.tanh((idx - stop) / 60.0))
                flux[b, p0:p1] += amp * window
    return flux


def _finish(flux, model: LineModel, cfg: GapConfig, draws, stars, labels, universe, snr) -> dict:
    """Sky spikes, noise, bad pixels, clipping and reported labels; returns the output dict.

    ``flux`` (B, P) is modified in place (it is the caller's fresh array)."""
    B, P = flux.shape
    wl = model.wavelength
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
        # sky OH residual spikes (observer frame → shifted by the same barycentric velocity)
        n_sky = len(uni.sky_lines) if observed else 70
        sky_amp = rng.uniform(-1.0, 1.0, n_sky)
        sky_flag = rng.random(n_sky)
        white = rng.standard_normal(P + 2, dtype=np.float32)  # float32: 2× faster, ample for noise
        art = d["art"]
        if observed and cfg.airglow:
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
            np.add.at(flux[b], near[ok], spike[ok])
            flagged = ok & (np.abs(near - c[:, None]) <= 1.5) & (sky_flag[inside] < cfg.airglow_flag_probability)[:, None]
            mask[b, near[flagged]] = True
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
