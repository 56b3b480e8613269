"""Real APOGEE DR17 files → the project's dataset schema (``spectrafm build-apogee``).

Modules, in the order the data flows:

* :mod:`.files` — one aspcapStar or apStar file → a dict of arrays on the 7514-pixel grid
  (:func:`read_aspcapstar`, :func:`read_apstar`, :func:`read_apogee_file`), or a clear ``ValueError``
  naming the file and the problem; :func:`check_apogee_grid` refuses other wavelength grids.
* :mod:`.catalogue` — the allStar catalogue (:func:`read_allstar`), the paper's sample selection
  (:func:`paper_sample_cuts`) and the SAS file paths of a star (:func:`spectrum_relpath`,
  :func:`relpath_from_target_id`).
* :mod:`.build` — a folder of files (+ allStar) → one ``DatasetDict`` with reproducible
  train/validation/test splits and a ``bad_files.json`` report (:func:`build_apogee_dataset`,
  :func:`run_build_apogee`).
* :mod:`.paper_arrays` — the paper's Zenodo array release (``synspec_*.npy`` ...) → a dataset,
  streamed (:func:`load_paper_arrays`).

File formats: the SDSS DR17 data model, https://data.sdss.org/datamodel/ (pages for apStar,
aspcapStar and allStar). The facts these readers rely on:

* Grid: vacuum, log-linear, ``λ_i = 10**(4.179 + 6e-6·i)`` for i = 0..8574 (header ``CTYPE1 =
  'LOG-LINEAR'``, ``CRVAL1 = 4.179``, ``CDELT1 = 6e-6``, ``CRPIX1 = 1``); the three chip slices
  246:3274, 3585:6080 and 6344:8335 make the 7514-pixel grid (:mod:`spectrafm_hf.data.grid`).
* aspcapStar (``aspcap/dr17/synspec/<TELESCOPE>/<FIELD>/aspcapStar-dr17-<APOGEE_ID>.fits``):
  HDU 1 ASPCAP-normalised observed spectrum, 2 its error, 3 best-fit synthetic spectrum, 4 the
  star's allStar row.
* apStar (``redux/dr17/stars/<TELESCOPE>/<FIELD>/apStar-dr17-<APOGEE_ID>.fits``): HDU 1 flux
  (1e-17 erg/s/cm²/Å, row 0 the combined spectrum), 2 its error, 3 APOGEE_PIXMASK; not
  continuum-normalised. Header RV_TEFF/RV_LOGG/RV_FEH are radial-velocity templates, not labels.
* allStar (``allStar-dr17-synspec_rev1.fits``, HDU 1): one row per star and field; labels
  TEFF, LOGG, FE_H, MG_FE, O_FE and ``*_ERR``; SNR, STARFLAG, ASPCAPFLAG (bit 23 STAR_BAD),
  VSCATTER (km/s); -9999 means "no value". FITS columns are big-endian.
"""

from .build import DEFAULT_SPLITS, build_apogee_dataset, run_build_apogee
from .catalogue import (
    ALLSTAR_COLUMNS,
    STAR_BAD_BIT,
    paper_sample_cuts,
    read_allstar,
    relpath_from_target_id,
    spectrum_relpath,
)
from .files import (
    DEFAULT_BAD_PIXMASK_BITS,
    KINDS,
    PAPER_FLUX_RANGE,
    check_apogee_grid,
    read_apogee_file,
    read_apstar,
    read_aspcapstar,
)
from .paper_arrays import load_paper_arrays

__all__ = [
    "ALLSTAR_COLUMNS", "DEFAULT_BAD_PIXMASK_BITS", "DEFAULT_SPLITS", "KINDS", "PAPER_FLUX_RANGE", "STAR_BAD_BIT",
    "build_apogee_dataset", "check_apogee_grid", "load_paper_arrays", "paper_sample_cuts", "read_allstar",
    "read_apogee_file", "read_apstar", "read_aspcapstar", "relpath_from_target_id", "run_build_apogee",
    "spectrum_relpath",
]
