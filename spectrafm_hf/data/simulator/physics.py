"""The atmosphere formulae of the one-layer recipe (all vectorised; T in K, pressures in dyn/cm²).

Layer pressures (MARCS fits), the H⁻ bound-free + free-free continuum (Gray, 3rd ed., ch. 8 fits),
partition functions, Saha ionisation, CO/CN/OH/N₂ dissociation equilibrium, the Planck ratio that
sets the maximum line depth, and the Voigt function H(a, v) from a table of the exact function.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .constants import AMU, ATOMIC_U_FOR_MOLECULES, ELEMENTS, EV, H_PLANCK, HC_OVER_K, K_B, MOLECULES


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


# --- the Voigt function ------------------------------------------------------------------------
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

    The numpy form of what the compiled opacity loop (:mod:`.line_opacity`) does
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
