"""Which columns of an input the model reads, and which ones are carried into the output.

An input holds per-row scalar columns besides the spectrum: catalogue labels and their errors,
truths of a simulation (``TRUE_*``), photometry, coordinates. A column is fed to the model as a
named input only when the model's vocabulary (``feature_extractor.named_tokens``) has it, and:

* by default, only columns that are not labels: ``TEFF`` ... ``O_FE``, their ``_ERR``, ``snr`` and
  ``TRUE_*`` columns are answers, not inputs, and feeding them by accident would let the model read
  the answer (the vocabulary holds the labels because a model can be asked for any of them);
* with ``--inputs A --inputs B`` (``inputs=[...]``), exactly those columns, labels included (e.g. a
  spectroscopic TEFF given as a prior); a name the input or the model lacks is an error.

A requested label is never an input. Every other column is ignored, and said so in one line.
``--keep`` names columns copied unchanged into the output (a name that clashes with an output
column, case-insensitively as FITS compares them, gets the suffix ``_input``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from ..data.labels import LABEL_COLUMNS
from ..data.tables import TRUTH_PREFIX


@dataclass
class ColumnChoice:
    """The columns a run reads.

    Attributes:
        inputs: named inputs fed to the model, in the input's column order.
        keep: input column → output column name, for ``--keep``.
        ignored: the input's other scalar columns (read by nobody).
    """

    inputs: list[str]
    keep: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)

    @property
    def to_read(self) -> list[str]:
        """Columns to read from the source: inputs, then kept columns."""
        return [*self.inputs, *(name for name in self.keep if name not in self.inputs)]

    def note(self) -> str | None:
        """One line for the user when some input column is ignored (None otherwise)."""
        if not self.ignored:
            return None
        shown = ", ".join(self.ignored[:12]) + (f" and {len(self.ignored) - 12} more" if len(self.ignored) > 12 else "")
        used = ", ".join(self.inputs) if self.inputs else "none"
        return (f"model inputs besides the spectrum: {used}; columns not read by the model: {shown} "
                "(labels and TRUE_* are never inputs unless --inputs names them; --keep carries columns through)")


def _listed(names: Sequence[str]) -> str:
    names = list(names)
    return ", ".join(names[:20]) + (" ..." if len(names) > 20 else "") if names else "none"


def choose_columns(available: Mapping[str, str], named_tokens: Sequence[str], request: Sequence[str],
                   output_columns: Sequence[str], inputs: Sequence[str] | None = None,
                   keep: Sequence[str] = (), where: str = "the input") -> ColumnChoice:
    """Decide the named inputs and kept columns (rules in the module docstring).

    Args:
        available: the input's scalar columns → numpy dtype kind (``SpectraSource.columns``).
        named_tokens: the model's vocabulary.
        request: the requested labels.
        output_columns: the prediction columns (for renaming clashing kept columns).
        inputs: explicit named inputs (``--inputs``), None = the default rule.
        keep: columns to carry through (``--keep``).
        where: the input's name, for messages.

    Raises:
        ValueError: an ``--inputs`` or ``--keep`` name the input lacks, an ``--inputs`` name the
            model does not know or that is requested or not numeric.
    """
    known, request = set(named_tokens), set(request)
    if inputs is None:
        chosen = [name for name in available if name in known and name not in request
                  and name not in LABEL_COLUMNS and not name.startswith(TRUTH_PREFIX)
                  and available[name] in "biuf"]
    else:
        chosen = list(dict.fromkeys(inputs))
        for name in chosen:
            if name not in available:
                raise ValueError(f"--inputs {name}: {where} has no column {name!r}; its columns: {_listed(available)}")
            if name not in known:
                raise ValueError(f"--inputs {name}: the model has no named input {name!r}; it knows "
                                 f"{_listed(named_tokens)}")
            if name in request:
                raise ValueError(f"--inputs {name}: {name} is requested, so it cannot also be an input; drop one")
            if available[name] not in "biuf":
                raise ValueError(f"--inputs {name}: column {name!r} is not numeric; a named input is a number per star")
    taken = {column.lower() for column in output_columns}
    kept = {}
    for name in dict.fromkeys(keep):
        if name not in available:
            raise ValueError(f"--keep {name}: {where} has no column {name!r}; its columns: {_listed(available)}")
        kept[name] = f"{name}_input" if name.lower() in taken else name
        taken.add(kept[name].lower())
    ignored = [name for name in available if name not in chosen and name not in kept]
    return ColumnChoice(inputs=chosen, keep=kept, ignored=ignored)
