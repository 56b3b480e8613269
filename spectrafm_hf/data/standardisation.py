"""Fit a feature extractor's standardisation from a dataset of the project schema.

The feature extractor travels to the Hub as remote code and takes arrays only; this data-layer
helper knows the dataset layout (:mod:`spectrafm_hf.data.schema`: ``flux``, ``mask``, label and
extra scalar columns, the wavelength grid in ``info.description``), reads the arrays and hands
them to :meth:`SpectraFMFeatureExtractor.fit`.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .schema import get_wavelength


def fit_feature_extractor_from_dataset(
    feature_extractor,
    dataset,
    *,
    wavelength=None,
    labels: Mapping[str, Sequence[float]] | None = None,
    max_spectra: int = 2000,
    seed: int = 0,
):
    """Fit ``feature_extractor``'s flux and named-token statistics on a dataset, in place; returns it.

    Flux and mask are read for up to ``max_spectra`` randomly chosen rows only (a dataset of 100k
    APOGEE spectra is not loaded whole); named tokens use every row of each column named like one
    of the extractor's ``named_tokens`` (label columns such as ``FE_H``, extra scalar columns).
    See :meth:`SpectraFMFeatureExtractor.fit` for the statistics themselves.

    Args:
        feature_extractor: a :class:`~spectrafm_hf.SpectraFMFeatureExtractor`.
        dataset: a ``datasets.Dataset``, or a ``DatasetDict`` whose ``train`` split is used.
        wavelength: vacuum Å, (P,); read from the dataset metadata when omitted.
        labels: named token → (N,) physical values, used instead of the dataset's column of that name.
        max_spectra: cap on the spectra read for the flux statistics.
        seed: seed of the random choice of spectra.
    """
    dataset = _training_split(dataset)
    if wavelength is None:
        try:
            wavelength = get_wavelength(dataset)
        except ValueError as err:
            raise ValueError(f"{err}; or pass wavelength= (vacuum Å, (P,))") from err
    data = dataset.with_format("numpy")
    n = len(data)
    # The same draw as fit's own subsampling, so a dataset and its arrays give the same statistics.
    chosen = np.sort(np.random.default_rng(seed).choice(n, size=min(n, max_spectra), replace=False))
    rows = data[chosen]
    labels = dict(labels or {})
    for name in feature_extractor.named_tokens:
        if name in dataset.column_names and name not in labels:
            labels[name] = data[name]
    return feature_extractor.fit(
        wavelength=wavelength, flux=rows["flux"], mask=rows["mask"] if "mask" in rows else None,
        labels=labels, max_spectra=max_spectra, seed=seed,
    )


def _training_split(dataset):
    """The ``datasets.Dataset`` to fit on: ``dataset`` itself, or a DatasetDict's ``train`` split."""
    if hasattr(dataset, "column_names") and not isinstance(dataset.column_names, dict):
        return dataset  # a Dataset (a DatasetDict's column_names is a dict of splits)
    if hasattr(dataset, "keys") and "train" in dataset.keys():
        return dataset["train"]
    found = (f"a DatasetDict with splits {sorted(dataset.keys())}" if hasattr(dataset, "keys")
             else type(dataset).__name__)
    raise ValueError(
        f"fit_feature_extractor_from_dataset needs a datasets.Dataset or a DatasetDict with a 'train' split, "
        f"got {found}; pass the split to fit on (e.g. dataset['validation']), or call "
        "feature_extractor.fit(wavelength=..., flux=...) with arrays"
    )
