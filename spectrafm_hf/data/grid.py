"""The APOGEE wavelength grid, its chips and the paper's pixel windows.

All wavelengths in this project are **vacuum Ångström** unless a name says otherwise.

APOGEE spectra live on a log-linear grid: ``λ_i = 10**(4.179 + 6e-6·i)`` for i = 0..8574 (the
apStar / aspcapStar layout). Only three chip slices carry light; concatenated they are the
7514-pixel grid that SpectraFM uses (pixel index 0..7513, blue → green → red). Facts from the
SDSS DR17 data model (https://data.sdss.org/datamodel/, the apStar and aspcapStar pages: header
keywords ``CRVAL1 = 4.179``, ``CDELT1 = 6e-6``, ``NAXIS1 = 8575``).
"""

from __future__ import annotations

import numpy as np

APSTAR_LOG10_START = 4.179
APSTAR_LOG10_STEP = 6e-6
APSTAR_NPIX = 8575

#: apStar column slices of the three detectors (blue, green, red).
CHIP_SLICES: dict[str, slice] = {
    "blue": slice(246, 3274),
    "green": slice(3585, 6080),
    "red": slice(6344, 8335),
}
APOGEE_NPIX = sum(s.stop - s.start for s in CHIP_SLICES.values())  # 7514

#: Pixel windows of the 7514-pixel grid used by the paper's stages (Python slices, stop exclusive).
FIRST_HALF = slice(0, 3757)  # stage 2: pixels 0–3756, 15152–15799 + 15868–16028 Å
FE_WINDOW = slice(4107, 4619)  # stage 3: pixels 4107–4618, 16105.9–16220.0 Å


def apstar_wavelength() -> np.ndarray:
    """Vacuum wavelengths (Å) of the full 8575-pixel apStar grid, shape (8575,), float64."""
    return 10.0 ** (APSTAR_LOG10_START + APSTAR_LOG10_STEP * np.arange(APSTAR_NPIX))


def chip_pixel_indices() -> np.ndarray:
    """apStar column index of each of the 7514 SpectraFM pixels, shape (7514,), int64."""
    return np.concatenate([np.arange(s.start, s.stop) for s in CHIP_SLICES.values()])


def apogee_wavelength() -> np.ndarray:
    """Vacuum wavelengths (Å) of the 7514-pixel SpectraFM grid, shape (7514,), float64."""
    return apstar_wavelength()[chip_pixel_indices()]


def apstar_to_apogee(array: np.ndarray) -> np.ndarray:
    """Cut the chip pixels out of apStar-layout data: (..., 8575) → (..., 7514)."""
    array = np.asarray(array)
    if array.shape[-1] != APSTAR_NPIX:
        raise ValueError(
            f"expected {APSTAR_NPIX} pixels on the last axis (apStar layout), got shape {array.shape}; "
            "data already on the 7514-pixel grid need no conversion"
        )
    return array[..., chip_pixel_indices()]


def chip_of_pixel() -> np.ndarray:
    """Chip number (0 blue, 1 green, 2 red) of each of the 7514 pixels, shape (7514,), int8."""
    return np.concatenate(
        [np.full(s.stop - s.start, i, dtype=np.int8) for i, s in enumerate(CHIP_SLICES.values())]
    )


def log_linear_grid(start_A: float, stop_A: float, resolving_power_per_pixel: float) -> np.ndarray:
    """A log-linear vacuum grid from ``start_A`` to ``stop_A`` (Å) with ``R_pix = λ/Δλ`` per pixel.

    Used to simulate spectra of instruments other than APOGEE.
    """
    if not (0 < start_A < stop_A):
        raise ValueError(f"need 0 < start_A < stop_A, got start_A={start_A}, stop_A={stop_A}")
    step = np.log10(1.0 + 1.0 / resolving_power_per_pixel)
    n = int(np.floor((np.log10(stop_A) - np.log10(start_A)) / step)) + 1
    return 10.0 ** (np.log10(start_A) + step * np.arange(n))


def air_to_vacuum(wavelength_air_A: np.ndarray) -> np.ndarray:
    """Air → vacuum wavelengths (Å), IAU standard (Morton 2000); ≈ +4.4 Å at 1.6 µm."""
    lam = np.asarray(wavelength_air_A, dtype=np.float64)
    s2 = (1e4 / lam) ** 2
    n = 1.0 + 8.336624212083e-5 + 2.408926869968e-2 / (130.1065924522 - s2) + 1.599740894897e-4 / (
        38.92568793293 - s2
    )
    return lam * n


def vacuum_to_air(wavelength_vac_A: np.ndarray) -> np.ndarray:
    """Vacuum → air wavelengths (Å), IAU standard (Morton 2000)."""
    lam = np.asarray(wavelength_vac_A, dtype=np.float64)
    s2 = (1e4 / lam) ** 2
    n = 1.0 + 0.0000834254 + 0.02406147 / (130.0 - s2) + 0.00015998 / (38.9 - s2)
    return lam / n
