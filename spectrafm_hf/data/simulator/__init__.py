"""A fast, one-layer physical simulator of continuum-normalised APOGEE H-band spectra.

It is a **one-layer (Milne–Eddington / Eddington–Barbier) approximation** with five fitted constants
(the recipe is summarised below; its derivation and calibration are in the project's reference
notes): line depths respond to Teff, logg and every abundance the way real lines do (Boltzmann and
Saha factors, H⁻ continuum, molecular equilibrium of CO/CN/OH, a curve of growth that saturates,
pressure-broadened wings), which makes it good for *relative* behaviour — training and testing
machine-learning models — and **not for abundance analysis**. Known limitations: one atmospheric
layer; H₂, H₂O and FeH are ignored (M dwarfs are poorly modelled); the Brackett lines use a crude
Lorentzian "Stark" proxy (below); partition functions are rough power laws.

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
(:mod:`.line_opacity`, numba; ~130 k profile points per star), then float32 FFTs.
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

Modules, in the order the data flows:

* ``constants`` — physical constants, the fine-grid step, label names, element and molecule data;
* ``lines`` — the shipped line list (:class:`LineList`, :func:`load_line_list`) and calibration constants;
* ``physics`` — steps 1–4 and 6: pressures, H⁻, Saha, molecular equilibrium, Planck, Voigt;
* ``line_model`` — :class:`LineModel`: per-line constants, windows and η₀ for a batch (step 5);
* ``line_opacity`` — the compiled sum of line profiles (step 7);
* ``synthesis`` — broadening and :func:`synthesize`, the noise-free flux (steps 7–8);
* ``universe`` — :class:`GapConfig`, the observed :class:`Universe`, per-star random streams;
* ``instrument`` — instrument terms, noise, bad pixels, clipping and reported labels;
* ``spectra`` — :func:`simulate`, the entry point.
"""

from .constants import (
                        AMU,
                        APOGEE_RESOLVING_POWER,
                        ATOMIC_U_FOR_MOLECULES,
                        C_KMS,
                        C_LIGHT,
                        ELEMENTS,
                        EV,
                        FINE_DV_KMS,
                        FINE_LOG10_STEP,
                        H_PLANCK,
                        HC_OVER_K,
                        HE_OVER_H,
                        K_B,
                        MOLECULE_OF_SPECIES,
                        MOLECULES,
                        NUISANCE_LABELS,
                        PI_E2_MC2,
                        SIM_LABELS,
)
from .instrument import REPORTED_ERRORS
from .line_model import LineModel, PhysicsTweaks, get_line_model
from .lines import CONSTANTS_FILE, LINELIST_DIR, LINELIST_FILE, LineList, calibration_constants, load_line_list
from .physics import (
                        dissociation_constant,
                        hminus_opacity_per_h,
                        layer_pressures,
                        molecular_equilibrium,
                        molecular_partition_function,
                        partition_function,
                        planck_ratio,
                        saha_ratio,
                        voigt_fast,
)
from .spectra import simulate
from .synthesis import broadening_ft, synthesize
from .universe import OBSERVED_UNIVERSE_SEED, GapConfig, Universe, get_universe, star_rng

#: Bumped when a change alters the spectra produced for a given seed.
#: 1.1: compiled opacity sum and float32 transforms (flux changes < 3e-7); float32 noise and
#: bad-pixel draws (new random streams).
SIMULATOR_VERSION = "1.1"

__all__ = [
    "AMU", "APOGEE_RESOLVING_POWER", "ATOMIC_U_FOR_MOLECULES", "C_KMS", "C_LIGHT", "CONSTANTS_FILE", "ELEMENTS",
    "EV", "FINE_DV_KMS", "FINE_LOG10_STEP", "H_PLANCK", "HC_OVER_K", "HE_OVER_H", "K_B", "LINELIST_DIR",
    "LINELIST_FILE", "MOLECULE_OF_SPECIES", "MOLECULES", "NUISANCE_LABELS", "OBSERVED_UNIVERSE_SEED",
    "PI_E2_MC2", "REPORTED_ERRORS", "SIM_LABELS", "SIMULATOR_VERSION",
    "GapConfig", "LineList", "LineModel", "PhysicsTweaks", "Universe",
    "broadening_ft", "calibration_constants", "dissociation_constant", "get_line_model", "get_universe",
    "hminus_opacity_per_h", "layer_pressures", "load_line_list", "molecular_equilibrium",
    "molecular_partition_function", "partition_function", "planck_ratio", "saha_ratio", "simulate",
    "star_rng", "synthesize", "voigt_fast",
]
