"""Where does a label query look? Decoder cross-attention over wavelength, and line enrichment.

For a requested label (FE_H, MG_FE, O_FE) we run the model with ``output_attentions=True`` on test
stars, take the LAST decoder block's cross-attention from that query to the encoder's spectral tokens,
average over heads, renormalise over the star's valid pixels (the ``add_bias_kv`` slot and padding are
dropped), and average over stars pixel by pixel: a profile ``a(λ)`` with ``Σ a = 1``.

Enrichment factor on an element's lines::

    E = (Σ a over pixels within ±core_half_width_A of that element's lines) / (fraction of such pixels)

E = 1 means no preference; the paper's claim is that the [Fe/H] query looks at Fe lines (E > 1).
Control ("shuffled labels"): the species names of the line list are permuted among its lines (so
the control cores sit on real lines of OTHER species, with the same count as the element's), and E is
recomputed; the mean over ``n_shuffles`` permutations is reported. E above its control means the
attention is element-specific, not merely drawn to any absorption line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..data.simulator.lines import LineList, load_line_list

#: query → (element name, species names counted as that element's lines)
QUERY_SPECIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "FE_H": ("Fe", ("Fe I", "Fe II")),
    "MG_FE": ("Mg", ("Mg I", "Mg II")),
    "O_FE": ("O", ("OH", "16OH", "O I")),
}

#: Lines weaker than this line-centre opacity ratio η₀ in the 4500 K, logg 2 reference giant are not
#: counted: they produce no visible absorption in a typical APOGEE giant, and the full list of 4,741
#: would mark nearly every pixel as a "line core".
MIN_STRENGTH = 1.0

#: Per-species strength thresholds overriding ``min_strength``: OH lines are weak in the 4500 K
#: reference giant (η₀ ≤ 0.64) yet they are the [O/Fe] indicators of cooler giants, where they are
#: strong; 0.1 keeps the ~120 that are visible (≳ 9 % deep) already at 4500 K.
SPECIES_MIN_STRENGTH: dict[str, float] = {"OH": 0.1}


def strong_lines(min_strength: float = MIN_STRENGTH,
                 species_min_strength: Mapping[str, float] | None = None) -> LineList:
    """The simulator's shipped line list cut to the lines the analysis counts (see :data:`MIN_STRENGTH`).

    ``species_min_strength`` overrides ``min_strength`` per species (default
    :data:`SPECIES_MIN_STRENGTH`; ``{}`` applies ``min_strength`` to every species).
    """
    thresholds = SPECIES_MIN_STRENGTH if species_min_strength is None else species_min_strength
    return load_line_list(min_strength=min_strength, species_min_strength=thresholds)


def core_mask(wavelength: np.ndarray, lines: np.ndarray, core_half_width_A: float = 0.4) -> np.ndarray:
    """(P,) True for pixels within ±``core_half_width_A`` Å of any line in ``lines`` (vacuum Å)."""
    wavelength = np.asarray(wavelength, np.float64)
    lines = np.sort(np.asarray(lines, np.float64))
    if lines.size == 0:
        return np.zeros(wavelength.shape, bool)
    index = np.clip(np.searchsorted(lines, wavelength), 1, len(lines)) - 1
    next_line = lines[np.minimum(index + 1, len(lines) - 1)]
    nearest = np.minimum(np.abs(wavelength - lines[index]), np.abs(wavelength - next_line))
    return nearest <= core_half_width_A


def enrichment(profile: np.ndarray, cores: np.ndarray) -> float:
    """Attention mass on ``cores`` divided by the fraction of pixels that are cores (NaN if none)."""
    profile = np.asarray(profile, np.float64)
    valid = np.isfinite(profile)
    total = profile[valid].sum()
    fraction = cores[valid].mean() if valid.any() else 0.0
    if fraction == 0 or total <= 0:
        return float("nan")
    return float(profile[valid & cores].sum() / total / fraction)


def shuffled_control(
    profile: np.ndarray,
    wavelength: np.ndarray,
    line_list: LineList,
    species: Sequence[str],
    core_half_width_A: float = 0.4,
    n_shuffles: int = 50,
    seed: int = 0,
) -> float:
    """Mean enrichment when the species names are permuted among the lines (see module docstring)."""
    rng = np.random.default_rng(seed)
    # Only lines that can fall in the analysed window matter; shuffling among them keeps the count.
    inside = (line_list.wavelength >= wavelength.min() - 1) & (line_list.wavelength <= wavelength.max() + 1)
    local = line_list.subset(inside)
    n_element = int(np.isin(local.species, list(species)).sum())
    if n_element == 0 or n_element == len(local.wavelength):
        return float("nan")
    values = []
    for _ in range(n_shuffles):
        chosen = local.wavelength[rng.permutation(len(local.wavelength))[:n_element]]
        values.append(enrichment(profile, core_mask(wavelength, chosen, core_half_width_A)))
    return float(np.nanmean(values))


def nearest_index(grid: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of the nearest ``grid`` point (sorted, (P,)) for each of ``values`` (any shape)."""
    index = np.clip(np.searchsorted(grid, values), 1, len(grid) - 1)
    left_closer = np.abs(values - grid[index - 1]) <= np.abs(grid[index] - values)
    return np.where(left_closer, index - 1, index)


def mean_profile(weights: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Average per-star attention rows over stars, pixel by pixel.

    Args:
        weights: (N, P) attention of one query over the window's pixels (any non-negative scale).
        valid: (N, P) True where the pixel was in the star's context.
    Returns:
        (P,) profile summing to 1; each star's row is renormalised over its valid pixels first, and a
        pixel's mean uses only the stars where it was valid (NaN where none).
    """
    weights = np.where(valid, np.asarray(weights, np.float64), 0.0)
    row_sum = weights.sum(axis=1, keepdims=True)
    weights = np.divide(weights, row_sum, out=np.zeros_like(weights), where=row_sum > 0)
    # Rescale to "per pixel relative to uniform" before averaging, so stars with many masked
    # pixels do not weigh more on their remaining pixels.
    weights *= valid.sum(axis=1, keepdims=True)
    count = valid.sum(axis=0)
    profile = np.divide(weights.sum(axis=0), count, out=np.full(weights.shape[1], np.nan), where=count > 0)
    return profile / np.nansum(profile)


def analyse_profiles(
    profiles: Mapping[str, np.ndarray],
    wavelength: np.ndarray,
    line_list: LineList | None = None,
    core_half_width_A: float = 0.4,
    n_shuffles: int = 50,
    seed: int = 0,
) -> dict:
    """Enrichment and control per query: ``{"profiles": {query: {...}}, "core_half_width_A": ...}``."""
    line_list = line_list or strong_lines()
    wavelength = np.asarray(wavelength, np.float64)
    result: dict = {"core_half_width_A": core_half_width_A, "n_shuffles": n_shuffles, "profiles": {}}
    for query, profile in profiles.items():
        if query not in QUERY_SPECIES:
            raise ValueError(f"no line species known for query {query!r}; known: {sorted(QUERY_SPECIES)}")
        element, species = QUERY_SPECIES[query]
        lines = line_list.of(species)
        lines = lines[(lines >= wavelength.min() - 1) & (lines <= wavelength.max() + 1)]
        cores = core_mask(wavelength, lines, core_half_width_A)
        result["profiles"][query] = {
            "element": element,
            "n_lines": int(lines.size),
            "line_wavelengths": lines.tolist(),
            "core_fraction": float(cores.mean()),
            "enrichment": enrichment(profile, cores),
            "enrichment_control": shuffled_control(profile, wavelength, line_list, species, core_half_width_A,
                                                   n_shuffles, seed),
            "wavelength": wavelength.tolist(),
            "weight": np.nan_to_num(np.asarray(profile, np.float64)).tolist(),
        }
    return result


def cross_attention_profiles(
    model,
    feature_extractor,
    wavelength: np.ndarray,
    flux: np.ndarray,
    mask: np.ndarray,
    queries: Sequence[str] = ("FE_H", "MG_FE", "O_FE"),
    batch_size: int = 16,
    block: int = -1,
) -> dict[str, np.ndarray]:
    """Mean last-block decoder cross-attention of each query over the pixels of ``wavelength``.

    Args:
        model: a SpectraFM model. Only the decoder's cross-attention weights are computed
            (``output_attentions="cross"``): the encoder keeps its fast kernel, so a whole half
            spectrum (3757 pixels) fits in one context.
        feature_extractor: its ``SpectraFMFeatureExtractor``.
        wavelength: (P,) vacuum Å; flux, mask: (N, P). All valid pixels form one context.
        block: decoder block index (default the last).
    Returns:
        query → (P,) profile (see :func:`mean_profile`).
    """
    import torch

    model.eval()
    device = next(model.parameters()).device
    wavelength = np.asarray(wavelength, np.float64)
    sums = {q: [] for q in queries}
    valids = []
    for start in range(0, len(flux), batch_size):
        chunk = slice(start, start + batch_size)
        batch = feature_extractor(
            wavelength, flux[chunk], mask=mask[chunk], request=list(queries), sampling="all", return_tensors="pt"
        )
        inputs = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        with torch.no_grad():
            output = model(**inputs, output_attentions="cross")
        attn = output.cross_attentions[block].float().mean(dim=1)  # (B, Q, K): mean over heads
        keys = attn.shape[-1]
        token_wavelength = inputs["input_wavelength"]  # (B, L)
        is_pixel = (inputs["input_ids"] == 1) & (inputs["attention_mask"] > 0)
        # The bias_kv slot (if any) is an extra key beyond the L tokens: keep the first L keys.
        attn = attn[..., : token_wavelength.shape[1]] if keys >= token_wavelength.shape[1] else attn
        # Scatter each token's weight onto its pixel of the window (nearest wavelength).
        pixel_index = nearest_index(wavelength, token_wavelength.cpu().numpy())
        pixel_mask = is_pixel.cpu().numpy()
        n = attn.shape[0]
        valid = np.zeros((n, len(wavelength)), bool)
        rows = np.repeat(np.arange(n)[:, None], pixel_index.shape[1], axis=1)
        valid[rows[pixel_mask], pixel_index[pixel_mask]] = True
        valids.append(valid)
        for qi, query in enumerate(queries):
            dense = np.zeros((n, len(wavelength)))
            np.add.at(dense, (rows[pixel_mask], pixel_index[pixel_mask]), attn[:, qi, :].cpu().numpy()[pixel_mask])
            sums[query].append(dense)
    valid = np.concatenate(valids)
    return {q: mean_profile(np.concatenate(sums[q]), valid) for q in queries}


def analyse_model(
    model_dir: str | Path,
    data,
    queries: Sequence[str],
    batch_size: int = 16,
    core_half_width_A: float = 0.4,
    device=None,
) -> dict:
    """Load a stage folder, profile its queries on ``data`` and compute enrichments and controls.

    Args:
        model_dir: a stage folder (``AutoModel`` + feature extractor).
        data: a ``WindowData`` (flux, mask, wavelength) already cut to the window to analyse; every
            star is one context.
        device: where the model runs (default: CUDA when available, else CPU).
    Returns:
        :func:`analyse_profiles`'s dict plus ``model`` (the folder name) and ``n_stars``.
    """
    from ..checkpoints import load_model

    model, feature_extractor = load_model(model_dir, device=device)
    profiles = cross_attention_profiles(model, feature_extractor, data.wavelength, data.flux, data.mask,
                                        tuple(queries), batch_size=batch_size)
    result = analyse_profiles(profiles, data.wavelength, core_half_width_A=core_half_width_A)
    result.update(model=Path(model_dir).name, n_stars=int(len(data.flux)))
    return result
