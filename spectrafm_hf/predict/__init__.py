"""Predict labels with 1σ uncertainties, in physical units: a Python call and ``spectrafm predict``.

Reading order:

* :mod:`.core` — ``predict_labels(model, feature_extractor, wavelength, flux, ...)``: arrays in,
  :class:`LabelPredictions` out (with per-star quality flags; ``to_table()``, ``to_pandas()``);
  ``dtype="bfloat16"`` for bf16 autocast.
* :mod:`.catalogue` — ``predict_catalogue``: a whole survey streamed from a file, folder or glob
  (:mod:`spectrafm_hf.data.sources`) in shards, resumable, by one or many processes, into one table;
* :mod:`.inputs` — which input columns the model reads (``--inputs``) and which are kept (``--keep``);
* :mod:`.output` — output formats by extension (Parquet, CSV, ECSV, FITS), units, atomic writing;
* :mod:`.shards` — the work folder ``<output>.parts/``: finished shards and the resume fingerprint;
* :mod:`.command` — ``run_predict`` (``spectrafm predict``).
"""

from ..checkpoints import load_model  # also public here: ``from spectrafm_hf.predict import load_model``
from .catalogue import CatalogueOptions, CatalogueResult, predict_catalogue
from .command import run_predict
from .core import DTYPES, NON_FINITE_OUTPUT, PIXEL_MODES, LabelPredictions, predict_labels
from .output import OUTPUT_FORMATS

__all__ = [
    "DTYPES", "NON_FINITE_OUTPUT", "OUTPUT_FORMATS", "PIXEL_MODES", "CatalogueOptions", "CatalogueResult",
    "LabelPredictions", "load_model", "predict_catalogue", "predict_labels", "run_predict",
]
