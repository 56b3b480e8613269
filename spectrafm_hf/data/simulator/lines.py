"""The shipped line list and the recipe's calibration constants: the one reader of ``data/linelists``.

Both files live inside the package (``spectrafm_hf/data/linelists``, see its README for sources and
columns), so a pip-installed package reads nothing outside itself. The simulator uses every line;
the attention analysis asks for the strong ones (``min_strength`` / ``species_min_strength``).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

LINELIST_DIR = Path(__file__).resolve().parents[1] / "linelists"
LINELIST_FILE = LINELIST_DIR / "hband_lines_full_sim.csv"
CONSTANTS_FILE = LINELIST_DIR / "sim_calibration_constants.json"

#: Columns a line-list CSV must have (``loggam6`` may be empty: log10 γ6 = −7.3 is assumed).
REQUIRED_COLUMNS = ("wavelength_vac_A", "species", "ion", "chi_eV", "loggf", "mass_amu", "loggam6")
#: Diagnostic line-centre opacity ratio η₀ of the recipe at a 4500 K, logg 2 giant (optional column).
STRENGTH_COLUMN = "eta0_ref4500g2"


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
        """The lines selected by ``keep`` (boolean mask or indices)."""
        return LineList(**{k: getattr(self, k)[keep] for k in self.__dataclass_fields__})

    def of(self, species: Sequence[str]) -> np.ndarray:
        """Wavelengths (vacuum Å) of the lines whose species is in ``species``."""
        return self.wavelength[np.isin(self.species, list(species))]

    @staticmethod
    def concatenate(a: "LineList", b: "LineList") -> "LineList":
        return LineList(**{k: np.concatenate([getattr(a, k), getattr(b, k)]) for k in a.__dataclass_fields__})


def _is_strong(row: Mapping[str, str], min_strength: float | None,
               species_min_strength: Mapping[str, float]) -> bool:
    """Whether a CSV row passes its species' strength threshold (rows without a strength pass)."""
    threshold = species_min_strength.get(row["species"].strip(), min_strength)
    strength = row.get(STRENGTH_COLUMN)
    return threshold is None or strength in (None, "") or float(strength) >= threshold


def load_line_list(path: str | Path | None = None, min_strength: float | None = None,
                   species_min_strength: Mapping[str, float] | None = None) -> LineList:
    """Read the shipped 4,741-line list (or a CSV with the same columns) into a :class:`LineList`.

    Args:
        path: a CSV with :data:`REQUIRED_COLUMNS`; default the package's ``hband_lines_full_sim.csv``.
        min_strength: keep only lines whose ``eta0_ref4500g2`` (η₀ in a 4500 K, logg 2 giant) is ≥
            this; None (default) keeps every line. Rows without that value are always kept.
        species_min_strength: per-species thresholds overriding ``min_strength`` (e.g. ``{"OH": 0.1}``).
    """
    path = Path(path) if path is not None else LINELIST_FILE
    if not path.exists():
        raise ValueError(f"line list {path} not found; pass the path of a CSV with columns "
                         f"{', '.join(REQUIRED_COLUMNS)}")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    missing = [c for c in REQUIRED_COLUMNS if rows and c not in rows[0]]
    if missing or not rows:
        raise ValueError(f"line list {path} lacks columns {missing or REQUIRED_COLUMNS}")
    rows = [r for r in rows if _is_strong(r, min_strength, species_min_strength or {})]
    return LineList(
        wavelength=np.array([float(r["wavelength_vac_A"]) for r in rows]),
        species=np.array([r["species"].strip() for r in rows]),
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
