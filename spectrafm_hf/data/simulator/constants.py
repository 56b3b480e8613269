"""Physical constants (cgs), the fine-grid step, the label names, and element and molecule data."""

from __future__ import annotations

import math

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
