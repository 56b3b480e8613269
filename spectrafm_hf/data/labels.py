"""The five stellar labels: names, units, display names and the schema columns derived from them.

This module is the one owner of the label vocabulary; the dataset schema, the readers, the model
cards and the reports import it. (The three remote-code files — configuration, modeling, feature
extraction — travel to the Hub without this package and keep their own small constants.)

=========  =====================================  =========  ===========  ======================
label      meaning                                unit       display      LaTeX
=========  =====================================  =========  ===========  ======================
``TEFF``   effective temperature                  K          Teff         ``$T_\\mathrm{eff}$``
``LOGG``   surface gravity, log10(g / cm s⁻²)     dex (cgs)  log g        ``$\\log g$``
``FE_H``   iron abundance [Fe/H]                  dex        [Fe/H]       ``$[\\mathrm{Fe/H}]$``
``MG_FE``  magnesium-to-iron ratio [Mg/Fe]        dex        [Mg/Fe]      ``$[\\mathrm{Mg/Fe}]$``
``O_FE``   oxygen-to-iron ratio [O/Fe]            dex        [O/Fe]       ``$[\\mathrm{O/Fe}]$``
=========  =====================================  =========  ===========  ======================

Every label has a reported 1σ error column ``<LABEL>_ERR`` (:func:`error_column`) in the same unit.
"""

from __future__ import annotations

#: The labels, in the schema's column order (the paper's array release uses another order).
LABELS: tuple[str, ...] = ("TEFF", "LOGG", "FE_H", "MG_FE", "O_FE")

#: The paper's label order in its array release (``labels_*.npy``).
PAPER_LABEL_ORDER: tuple[str, ...] = ("TEFF", "LOGG", "O_FE", "MG_FE", "FE_H")

#: Physical unit of each label (its ``_ERR`` column has the same unit).
LABEL_UNITS: dict[str, str] = {"TEFF": "K", "LOGG": "dex (cgs)", "FE_H": "dex", "MG_FE": "dex", "O_FE": "dex"}

#: One-line description with the unit, as the model cards list a checkpoint's outputs.
LABEL_DESCRIPTIONS: dict[str, str] = {
    "TEFF": "effective temperature, K",
    "LOGG": "surface gravity, log10(g / cm s⁻²)",
    "FE_H": "[Fe/H], dex",
    "MG_FE": "[Mg/Fe], dex",
    "O_FE": "[O/Fe], dex",
}

#: Plain-text names for tables and plot titles.
LABEL_DISPLAY_NAMES: dict[str, str] = {
    "TEFF": "Teff", "LOGG": "log g", "FE_H": "[Fe/H]", "MG_FE": "[Mg/Fe]", "O_FE": "[O/Fe]",
}

#: Matplotlib mathtext names for axis labels.
LABEL_LATEX: dict[str, str] = {
    "TEFF": r"$T_\mathrm{eff}$", "LOGG": r"$\log g$", "FE_H": r"$[\mathrm{Fe/H}]$",
    "MG_FE": r"$[\mathrm{Mg/Fe}]$", "O_FE": r"$[\mathrm{O/Fe}]$",
}


def error_column(label: str) -> str:
    """Name of the reported-1σ column of ``label`` (``"FE_H"`` → ``"FE_H_ERR"``)."""
    return f"{label}_ERR"


#: The error columns of :data:`LABELS`, in the same order.
ERROR_COLUMNS: tuple[str, ...] = tuple(error_column(label) for label in LABELS)

#: Per-star scalar columns every dataset of the schema has: the labels, their errors, ``snr``.
LABEL_COLUMNS: tuple[str, ...] = (*LABELS, *ERROR_COLUMNS, "snr")
