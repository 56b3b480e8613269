"""The report's figures, drawn from saved arrays only (so a report can be rebuilt from a run folder).

Every function takes plain arrays in physical units and a PNG path, writes the PNG atomically and
returns the matplotlib ``Figure`` (closed; its axes still answer ``get_xlabel()`` etc., which the tests
read). Inputs:

* ``fe_window``: model → ``{"true", "pred", "sigma"}``, each (N,) [Fe/H] in dex on the test stars.
* ``stage2``: label → ``{"true", "pred", "sigma"}``, each (N,) in the label's unit (K or dex).
* ``stars``: ``{"FE_H", "TEFF", "LOGG", ..., "snr"}`` → (N,) true labels and S/N per pixel of the same stars.

Axis labels use :data:`spectrafm_hf.data.labels.LABEL_LATEX` and the unit of each label; no figure
clips a curve away: limits come from percentiles and running medians, and points beyond a limit are
drawn at the edge as triangles.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from statistics import NormalDist
from typing import Mapping, Sequence

import numpy as np

from ..data.grid import CHIP_SLICES, apstar_wavelength
from ..data.labels import LABEL_DISPLAY_NAMES, LABEL_LATEX, LABEL_UNITS

#: Pixel density of every PNG: a 14-inch-wide figure is 1540 px, readable on a laptop screen.
DPI = 110
#: Stars drawn with error bars in a one-to-one panel (a random subsample; all stars are drawn as dots).
N_ERROR_BAR_STARS = 60
#: [Fe/H] (dex) below which a star counts as iron-poor in every figure (the paper's regime split).
FEH_POOR = -1.0
POOR_COLOUR, RICH_COLOUR, UNKNOWN_COLOUR = "tab:red", "tab:blue", "0.55"


def pyplot():
    """matplotlib.pyplot on the Agg backend, mathtext only (LaTeX may be absent)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["text.usetex"] = False  # TheCannon switches it on at import
    plt.rcParams.update({"font.size": 10, "axes.titlesize": 10, "legend.fontsize": 8})
    return plt


def save_figure(fig, path: str | Path):
    """Write ``fig`` to ``path`` as PNG through a temporary name (no half-written file), close it."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fig.savefig(temporary, dpi=DPI, format="png")
    os.replace(temporary, path)
    pyplot().close(fig)
    return fig


def unit(label: str) -> str:
    """Short unit of a label for axis labels: "K" or "dex"."""
    return LABEL_UNITS[label].split(" ")[0]


def axis_label(label: str, prefix: str = "") -> str:
    """E.g. ``axis_label("TEFF", "true ")`` → ``"true $T_\\mathrm{eff}$ (K)"``."""
    return f"{prefix}{LABEL_LATEX[label]} ({unit(label)})"


def format_value(label: str, value: float, signed: bool = False) -> str:
    """A number in the label's unit at a sensible precision (K: integer, dex: 3 decimals)."""
    if value is None or not np.isfinite(value):
        return "–"
    digits = 0 if unit(label) == "K" else 3
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def residual_summary(true, pred) -> tuple[float, float, int]:
    """(RMSE, median residual, n) of pred − true over stars where both are finite."""
    true, pred = np.asarray(true, np.float64), np.asarray(pred, np.float64)
    ok = np.isfinite(true) & np.isfinite(pred)
    if not ok.any():
        return float("nan"), float("nan"), 0
    residual = pred[ok] - true[ok]
    return float(np.sqrt(np.mean(residual**2))), float(np.median(residual)), int(ok.sum())


def model_colours(names: Sequence[str]) -> dict[str, str]:
    """One colour per model, the same in every figure (order of ``names``, tab10 cycle)."""
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
               "tab:gray", "tab:olive", "tab:cyan"]
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def padded_limits(*arrays, low: float = 0.5, high: float = 99.5, pad: float = 0.05) -> tuple[float, float]:
    """Limits spanning the ``low``–``high`` percentiles of all finite values, padded by ``pad`` of the span."""
    values = np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [low, high])
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    return float(lo - pad * span), float(hi + pad * span)


def mark_beyond(ax, x, y, limits: tuple[float, float], colour: str, size: float = 14) -> int:
    """Draw points whose y lies beyond ``limits`` at the edge as triangles; return how many there were."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    lo, hi = limits
    count = 0
    for beyond, edge, marker in ((y > hi, hi, "^"), (y < lo, lo, "v")):
        if beyond.any():
            ax.scatter(x[beyond], np.full(beyond.sum(), edge), marker=marker, s=size, color=colour,
                       edgecolors="k", linewidths=0.3, clip_on=False, zorder=4)
            count += int(beyond.sum())
    return count


def readable_log_axis(axis, set_scale, subs: tuple[float, ...] = (1.0, 3.0)) -> None:
    """A log scale ticked at ``subs`` × 10ⁿ (default 1, 3, 10, 30, ...), labelled with plain numbers (not 3×10²)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    set_scale("log")
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def error_bar_subsample(n: int, size: int = N_ERROR_BAR_STARS, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``size`` stars out of ``n`` (all if fewer), the same for every panel."""
    return np.sort(np.random.default_rng(seed).choice(n, size=min(size, n), replace=False))


# ----------------------------------------------------------------------------------------------
# One-to-one panels
# ----------------------------------------------------------------------------------------------


def one_to_one_panel(ax, true, pred, sigma, label: str, limits: tuple[float, float], feh, title: str) -> None:
    """Predicted vs true ``label`` on ``ax``: every star as a dot (iron-poor red), a random subsample with
    ±1σ error bars, the one-to-one line, and RMSE / bias (all stars and [Fe/H] < −1) as text."""
    true, pred, feh = (np.asarray(a, np.float64) for a in (true, pred, feh))
    sigma = np.asarray(sigma, np.float64) if sigma is not None else np.full(true.shape, np.nan)
    poor, rich = feh < FEH_POOR, feh >= FEH_POOR  # neither: [Fe/H] unknown, drawn grey
    within = (pred >= limits[0]) & (pred <= limits[1])
    for stars, colour in ((rich & within, RICH_COLOUR), (poor & within, POOR_COLOUR),
                          (~rich & ~poor & within, UNKNOWN_COLOUR)):
        ax.scatter(true[stars], pred[stars], s=4, alpha=0.35, color=colour, linewidths=0, rasterized=True)
    mark_beyond(ax, true, pred, limits, "0.3")
    chosen = error_bar_subsample(len(true))
    chosen = chosen[np.isfinite(sigma[chosen]) & np.isfinite(pred[chosen])]
    inside = chosen[within[chosen]]
    if inside.size:
        ax.errorbar(true[inside], pred[inside], yerr=sigma[inside], fmt="o", ms=3, mfc="w", mec="k", mew=0.7,
                    ecolor="k", elinewidth=0.7, capsize=0, zorder=3)
    ax.plot(limits, limits, color="k", lw=0.9, zorder=2)
    ax.set_xlim(limits)
    ax.set_ylim(limits)
    ax.set_aspect("equal", adjustable="box")
    ax.text(0.03, 0.97, _stats_text(true, pred, poor, label), transform=ax.transAxes, va="top", fontsize=7.5,
            family="monospace", bbox={"facecolor": "w", "edgecolor": "0.7", "alpha": 0.85, "pad": 2})
    ax.set_title(title)
    ax.set_xlabel(axis_label(label, "true "))
    ax.set_ylabel(axis_label(label, "predicted "))


def _stats_text(true, pred, poor, label: str) -> str:
    """A small table: RMSE and bias (median residual) of all stars and of [Fe/H] < −1, in the label's unit."""
    rows = [f"{'':11}RMSE    bias ({unit(label)})"]
    for name, stars in (("all", np.ones(len(true), bool)), ("[Fe/H]<−1", poor)):
        rmse, bias, n = residual_summary(true[stars], pred[stars])
        if n:
            rows.append(f"{name:<9}{format_value(label, rmse):>7} {format_value(label, bias, True):>7}  n={n}")
    return "\n".join(rows)


def _legend_panel(ax, feh, note: str = "") -> None:
    """An empty panel holding the legend of the one-to-one figures and a note on the test set."""
    from matplotlib.lines import Line2D

    ax.axis("off")
    feh = np.asarray(feh, np.float64)
    n, n_rich, n_poor = len(feh), int(np.sum(feh >= FEH_POOR)), int(np.sum(feh < FEH_POOR))
    n_unknown = n - n_rich - n_poor
    handles = [
        Line2D([], [], ls="", marker="o", ms=4, color=RICH_COLOUR, label=f"[Fe/H] ≥ −1 ({n_rich} stars)"),
        Line2D([], [], ls="", marker="o", ms=4, color=POOR_COLOUR, label=f"[Fe/H] < −1 ({n_poor} stars)"),
        *([Line2D([], [], ls="", marker="o", ms=4, color=UNKNOWN_COLOUR,
                  label=f"no true [Fe/H] ({n_unknown} stars)")] if n_unknown else []),
        Line2D([], [], ls="-", marker="o", ms=4, mfc="w", mec="k", color="k", lw=0.7,
               label=f"{min(N_ERROR_BAR_STARS, n)} random stars, predicted ±1σ"),
        Line2D([], [], ls="", marker="^", ms=5, color="0.3", label="beyond the axis (drawn at the edge)"),
        Line2D([], [], ls="-", color="k", lw=0.9, label="one-to-one"),
    ]
    ax.legend(handles=handles, loc="upper left", fontsize=9, frameon=False)
    ax.text(0.0, 0.4, textwrap.fill(note, 48), transform=ax.transAxes, va="top", fontsize=9)


def plot_fe_window_one_to_one(fe_window: Mapping[str, Mapping[str, np.ndarray]], path: Path, note: str = ""):
    """Predicted vs true [Fe/H] of every Fe-window model (stage 3 and the baselines), one panel each."""
    plt = pyplot()
    names = list(fe_window)
    cols = 4 if len(names) > 3 else len(names) + 1
    rows = int(np.ceil((len(names) + 1) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.1 * cols, 4.1 * rows), squeeze=False)
    true = np.asarray(fe_window[names[0]]["true"], np.float64)
    limits = padded_limits(true, *[p["pred"] for p in fe_window.values()], low=0.2, high=99.8)
    for ax, name in zip(axes.flat, names):
        p = fe_window[name]
        one_to_one_panel(ax, p["true"], p["pred"], p.get("sigma"), "FE_H", limits, p["true"], name)
    for ax in list(axes.flat)[len(names) + 1:]:
        ax.axis("off")
    _legend_panel(axes.flat[len(names)], true, note)
    fig.suptitle("[Fe/H] in the Fe window (16106–16220 Å): predicted vs true on the test stars", fontsize=12)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_stage2_one_to_one(stage2: Mapping[str, Mapping[str, np.ndarray]], feh, path: Path, note: str = ""):
    """Stage 2 on its own pixels: predicted vs true for each label with a truth, one panel per label."""
    plt = pyplot()
    labels = [label for label, p in stage2.items() if np.isfinite(np.asarray(p["true"], np.float64)).any()]
    cols = 3
    rows = int(np.ceil((len(labels) + 1) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.3 * cols, 4.2 * rows), squeeze=False)
    feh = np.asarray(feh, np.float64)
    for ax, label in zip(axes.flat, labels):
        p = stage2[label]
        limits = padded_limits(p["true"], p["pred"], low=0.2, high=99.8)
        one_to_one_panel(ax, p["true"], p["pred"], p.get("sigma"), label, limits, feh, LABEL_LATEX[label])
    for ax in list(axes.flat)[len(labels) + 1:]:
        ax.axis("off")
    _legend_panel(axes.flat[len(labels)], feh, note)
    fig.suptitle("Stage 2 (pixels 0–3756, 15152–16028 Å): predicted vs true on the test stars", fontsize=12)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_kiel(true: Mapping[str, np.ndarray], predicted: Mapping[str, np.ndarray], path: Path,
              title: str = "stage 2"):
    """Kiel diagram (T_eff vs log g, both axes reversed) coloured by [Fe/H]: truth left, predictions right.

    ``true``/``predicted``: ``{"TEFF", "LOGG", "FE_H"}`` → (N,), K and dex. One colour scale for both.
    """
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 5.4), sharex=True, sharey=True, layout="constrained")
    teff_limits = padded_limits(true["TEFF"], predicted["TEFF"], low=0.2, high=99.8)
    logg_limits = padded_limits(true["LOGG"], predicted["LOGG"], low=0.2, high=99.8)
    colour_limits = padded_limits(true["FE_H"], low=1, high=99, pad=0)
    for ax, labels, name in ((axes[0], true, "true labels"), (axes[1], predicted, f"{title} predictions")):
        order = np.argsort(-np.asarray(labels["FE_H"], np.float64))  # iron-poor stars drawn on top
        points = ax.scatter(np.asarray(labels["TEFF"])[order], np.asarray(labels["LOGG"])[order], s=7,
                            c=np.asarray(labels["FE_H"])[order], cmap="viridis", vmin=colour_limits[0],
                            vmax=colour_limits[1], linewidths=0, rasterized=True)
        shown = np.isfinite(np.asarray(labels["TEFF"], float) + np.asarray(labels["LOGG"], float) + labels["FE_H"])
        ax.set_title(f"{name} ({int(shown.sum())} test stars)")
        ax.set_xlabel(axis_label("TEFF"))
    axes[0].set_xlim(teff_limits[1], teff_limits[0])  # hot stars on the left, as astronomers draw it
    axes[0].set_ylim(logg_limits[1], logg_limits[0])  # giants at the top
    axes[0].set_ylabel(axis_label("LOGG"))
    bar = fig.colorbar(points, ax=list(axes), shrink=0.95)
    bar.set_label(f"{LABEL_LATEX['FE_H']} (dex): true (left), predicted (right)")
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------
# Residuals and coverage
# ----------------------------------------------------------------------------------------------

#: Residual panels: star quantity → (x-axis label, log scale).
RESIDUAL_AXES: dict[str, tuple[str, bool]] = {
    "FE_H": (axis_label("FE_H", "true "), False),
    "TEFF": (axis_label("TEFF", "true "), False),
    "snr": ("S/N per pixel", True),
}


def running_median(x, y, min_per_bin: int = 8) -> dict[str, np.ndarray]:
    """Median and 16th/84th percentiles of ``y`` in equal-count bins of ``x`` (non-finite pairs dropped).

    Returns ``{"x", "median", "p16", "p84"}``, each (n_bins,), with ``x`` the median of each bin; 4–14
    bins of at least ``min_per_bin`` stars (none when there are fewer than ``2·min_per_bin`` stars).
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n_bins = int(np.clip(len(x) // max(min_per_bin, 60), 4, 14)) if len(x) >= 2 * min_per_bin else 0
    n_bins = min(n_bins, len(x) // min_per_bin)
    chunks = np.array_split(np.argsort(x, kind="stable"), n_bins) if n_bins else []
    stats = [(np.median(x[c]), *np.percentile(y[c], [50, 16, 84])) for c in chunks]
    columns = np.array(stats).reshape(-1, 4).T
    return dict(zip(("x", "median", "p16", "p84"), columns))


def plot_residuals(fe_window: Mapping[str, Mapping[str, np.ndarray]], stars: Mapping[str, np.ndarray], path: Path,
                   highlight: str = "stage3"):
    """[Fe/H] residual vs true [Fe/H], T_eff and S/N: running medians of every model; the ``highlight``
    model's stars and 16–84 % band too. y-limits enclose every running median and the band."""
    plt = pyplot()
    names = list(fe_window)
    keys = [k for k in RESIDUAL_AXES if k in stars and np.isfinite(np.asarray(stars[k], np.float64)).any()]
    if not keys or not names:
        return None
    highlight = highlight if highlight in fe_window else names[0]
    residual = {n: np.asarray(p["pred"], np.float64) - np.asarray(p["true"], np.float64) for n, p in fe_window.items()}
    curves = {(k, n): running_median(stars[k], residual[n]) for k in keys for n in names}
    spans = [c[q] for (_, n), c in curves.items() for q in (("median", "p16", "p84") if n == highlight
                                                                else ("median",))]
    limits = padded_limits(np.zeros(1), *spans, low=0, high=100, pad=0.08)
    colours = model_colours(names)
    fig, axes = plt.subplots(1, len(keys), figsize=(5.3 * len(keys), 4.8), sharey=True, squeeze=False)
    for ax, key in zip(axes[0], keys):
        x, y = np.asarray(stars[key], np.float64), residual[highlight]
        within = (y >= limits[0]) & (y <= limits[1])
        many = len(x) > 300  # a thousand stars need small faint dots; a few dozen must stay visible
        ax.scatter(x[within], y[within], s=3 if many else 9, alpha=0.25 if many else 0.6, color=colours[highlight],
                   linewidths=0, rasterized=True)
        mark_beyond(ax, x, y, limits, colours[highlight], size=10)
        band = curves[(key, highlight)]
        ax.fill_between(band["x"], band["p16"], band["p84"], color=colours[highlight], alpha=0.15, lw=0)
        for name in names:
            curve = curves[(key, name)]
            ax.plot(curve["x"], curve["median"], color=colours[name], lw=2.6 if name == highlight else 1.5,
                    label=name)
        ax.axhline(0, color="k", lw=0.8)
        if key == "FE_H":
            ax.axvline(FEH_POOR, color="0.4", ls=":", lw=0.9)
        if RESIDUAL_AXES[key][1]:
            readable_log_axis(ax.xaxis, ax.set_xscale, subs=(1.0, 2.0, 5.0))
        ax.set_xlabel(RESIDUAL_AXES[key][0])
        ax.set_ylim(limits)
    axes[0, 0].set_ylabel(f"Δ{LABEL_LATEX['FE_H']} = predicted − true (dex)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(names), 3 * len(keys) + 1), frameon=False)
    title = f"[Fe/H] residuals: running medians of every model; {highlight}'s stars and 16–84 % band"
    fig.suptitle(textwrap.fill(title, 60 * len(keys)), fontsize=11)
    fig.tight_layout(rect=(0, 0.12 if len(keys) < 3 else 0.08, 1, 1))
    return save_figure(fig, path)


#: Nominal coverage levels of the coverage curves (central Gaussian intervals).
NOMINAL_LEVELS = np.linspace(0.05, 0.99, 95)


def coverage_curve(true, pred, sigma, scale: float = 1.0, nominal=NOMINAL_LEVELS) -> np.ndarray:
    """Empirical coverage (fraction of stars with |pred − true| < z_p · σ · scale) per nominal level p,
    where ±z_p is the central Gaussian interval holding p. NaN where no star has a finite σ > 0."""
    true, pred, sigma = (np.asarray(a, np.float64) for a in (true, pred, sigma))
    ok = np.isfinite(true) & np.isfinite(pred) & np.isfinite(sigma) & (sigma > 0)
    if not ok.any():
        return np.full(len(nominal), np.nan)
    z = np.abs(pred[ok] - true[ok]) / (sigma[ok] * scale)
    half_widths = np.array([NormalDist().inv_cdf(0.5 + p / 2) for p in nominal])
    return np.mean(z[:, None] < half_widths[None, :], axis=0)


def _coverage_axes(ax, title: str) -> None:
    ax.plot([0, 1], [0, 1], color="k", lw=0.9, ls="--", label="ideal (coverage = nominal)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.set_xlabel("nominal coverage of the ±zσ Gaussian interval")
    ax.set_ylabel("empirical coverage (fraction of test stars)")


def plot_coverage(fe_window: Mapping[str, Mapping[str, np.ndarray]], scales: Mapping[str, float], path: Path,
                  stage2: Mapping[str, Mapping[str, np.ndarray]] | None = None,
                  stage2_scales: Mapping[str, float] | None = None):
    """Coverage vs nominal level for every model with a predicted σ: Fe-window models with their σ as
    predicted and after the validation-fitted variance scale, and stage 2's labels (σ as predicted,
    solid; scaled, dashed)."""
    plt = pyplot()
    with_sigma = [n for n, p in fe_window.items() if np.isfinite(np.asarray(p.get("sigma", np.nan), float)).any()]
    if not with_sigma:
        return None
    panels = 3 if stage2 else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.4 * panels, 5.6), squeeze=False)
    colours = model_colours(list(fe_window))
    for ax, scaled in zip(axes[0], (False, True)):
        for name in with_sigma:
            p = fe_window[name]
            scale = scales.get(name, np.nan) if scaled else 1.0
            if np.isfinite(scale):
                label = f"{name} (σ × {scale:.2f})" if scaled else name
                ax.plot(NOMINAL_LEVELS, coverage_curve(p["true"], p["pred"], p["sigma"], scale),
                        color=colours[name], lw=2.4 if name == "stage3" else 1.4, label=label)
        _coverage_axes(ax, "[Fe/H], Fe window: " + ("σ × validation-fitted scale" if scaled else "σ as predicted"))
        ax.legend(loc="lower right", fontsize=8.5)
    if stage2:
        ax, label_colours = axes[0, 2], model_colours(list(stage2))
        for label, p in stage2.items():
            ax.plot(NOMINAL_LEVELS, coverage_curve(p["true"], p["pred"], p.get("sigma", np.nan)),
                    color=label_colours[label], lw=1.6, label=LABEL_LATEX[label])
            scale = (stage2_scales or {}).get(label, np.nan)
            if np.isfinite(scale):
                ax.plot(NOMINAL_LEVELS, coverage_curve(p["true"], p["pred"], p.get("sigma", np.nan), scale),
                        color=label_colours[label], lw=1.2, ls=":")
        _coverage_axes(ax, "stage 2, five labels: solid σ as predicted, dotted scaled")
        ax.legend(loc="lower right", fontsize=8.5)
    fig.tight_layout()
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------
# Attention over the mean spectrum
# ----------------------------------------------------------------------------------------------


#: Attention peaks are named only when at least this many times the uniform attention.
MIN_NAMED_PEAK = 2.0


def chip_of_wavelength(wavelength) -> np.ndarray:
    """APOGEE chip (0 blue, 1 green, 2 red; −1 outside every chip) of each vacuum wavelength (Å)."""
    grid = apstar_wavelength()
    wavelength = np.asarray(wavelength, np.float64)
    chip = np.full(wavelength.shape, -1, dtype=np.int8)
    for index, pixels in enumerate(CHIP_SLICES.values()):
        low, high = grid[pixels.start], grid[pixels.stop - 1]
        tolerance = 0.5 * (grid[pixels.start + 1] - low)
        chip[(wavelength >= low - tolerance) & (wavelength <= high + tolerance)] = index
    return chip


def with_gaps(wavelength, *values) -> tuple[np.ndarray, ...]:
    """Insert a NaN between neighbouring pixels on different chips (or more than 5 median steps apart,
    for other grids), so a plotted line breaks there instead of bridging the gap with a flat segment."""
    wavelength = np.asarray(wavelength, np.float64)
    step = np.diff(wavelength)
    chip = chip_of_wavelength(wavelength)
    breaks = (chip[1:] != chip[:-1]) | (step > 5 * np.median(step)) if step.size else np.zeros(0, bool)
    where = np.flatnonzero(breaks) + 1
    return tuple(np.insert(np.asarray(v, np.float64), where, np.nan) for v in (wavelength, *values))


def strongest_peaks(wavelength, weight, n: int = 5, min_separation_A: float | None = None) -> list[int]:
    """Indices of the ``n`` highest pixels of ``weight`` at least ``min_separation_A`` apart (default
    1/14 of the span, so that their labels do not overlap), highest first."""
    wavelength, weight = np.asarray(wavelength, np.float64), np.asarray(weight, np.float64)
    separation = min_separation_A if min_separation_A is not None else np.ptp(wavelength) / 14
    chosen: list[int] = []
    for index in np.argsort(-np.nan_to_num(weight, nan=-np.inf)):
        if len(chosen) == n or not np.isfinite(weight[index]):
            break
        if all(abs(wavelength[index] - wavelength[c]) >= separation for c in chosen):
            chosen.append(int(index))
    return chosen


def line_name(wavelength_A: float, line_list, tolerance_A: float = 0.8) -> str:
    """``"Fe I 15294.6"``: species and vacuum λ (Å) of the listed line nearest ``wavelength_A`` within
    ``tolerance_A``; ``"15294.6 Å (no listed line)"`` when none is that close."""
    if line_list is not None and len(line_list.wavelength):
        nearest = int(np.argmin(np.abs(line_list.wavelength - wavelength_A)))
        if abs(line_list.wavelength[nearest] - wavelength_A) <= tolerance_A:
            return f"{line_list.species[nearest]} {line_list.wavelength[nearest]:.1f}"
    return f"{wavelength_A:.1f} Å (no listed line)"


def _attention_panel(ax, profile: Mapping, line_list, query: str) -> list[float]:
    """One query's attention relative to uniform (log scale) with the element's lines, the mean on
    their cores vs the shuffled control, and the strongest peaks named; returns the named λ."""
    wavelength = np.asarray(profile["wavelength"], np.float64)
    weight = np.asarray(profile["weight"], np.float64)
    weight = np.where(weight > 0, weight, np.nan)  # 0: the pixel was in no star's context
    relative = weight * np.isfinite(weight).sum() / np.nansum(weight)  # 1 = uniform attention
    ax.plot(*with_gaps(wavelength, relative), color="k", lw=0.7)
    readable_log_axis(ax.yaxis, ax.set_yscale)
    element = profile.get("element", "?")
    lines = np.asarray(profile.get("line_wavelengths", []), np.float64)
    ax.vlines(lines, 0, 0.07, transform=ax.get_xaxis_transform(), color="tab:orange", lw=0.9,
              label=f"{element} lines counted ({len(lines)})")
    enrichment, control = profile.get("enrichment", np.nan), profile.get("enrichment_control", np.nan)
    ax.axhline(1.0, color="0.5", ls=":", lw=1, label="uniform attention (1)")
    for value, colour, text in ((enrichment, "tab:orange", f"mean on {element} line cores"),
                                (control, "tab:purple", "mean on shuffled-species cores (control)")):
        if value is not None and np.isfinite(value):
            ax.axhline(value, color=colour, ls="--", lw=1.3, label=f"{text}: {value:.2f}")
    # Only peaks well above uniform attention are named: the rest would label noise.
    named = [wavelength[i] for i in strongest_peaks(wavelength, relative) if relative[i] >= MIN_NAMED_PEAK]
    for peak in named:
        index = int(np.argmin(np.abs(wavelength - peak)))
        ax.annotate(line_name(peak, line_list), (peak, relative[index]), xytext=(0, 3), textcoords="offset points",
                    ha="center", va="bottom", fontsize=7.5)
    top = np.nanmax(relative) if np.isfinite(relative).any() else 10.0
    ax.set_ylim(max(np.nanmin(relative) / 2, 1e-3) if np.isfinite(relative).any() else 0.1, top * 3)
    verdict = "above" if enrichment > control else "BELOW"
    ax.set_title(f"{LABEL_DISPLAY_NAMES.get(query, query)} query: {element} line cores get {enrichment:.2f}× "
                 f"uniform attention, {verdict} the shuffled control ({control:.2f}×)")
    ax.set_ylabel("attention / uniform")
    ax.legend(loc="upper right", fontsize=7, ncol=2, framealpha=0.85)
    return named


def plot_attention(analysis: Mapping, path: Path, line_list=None):
    """Mean decoder cross-attention of each query over wavelength, under the mean spectrum of the same
    stars (when saved), strongest peaks named from the line list, chip gaps left blank.

    ``analysis``: an entry of metrics.json's ``attention``/``attention_first_half`` (profiles per query
    with wavelength, weight, line_wavelengths, element, enrichment, enrichment_control; optional
    ``mean_flux`` (P,) and ``n_stars``). ``line_list``: default the attention analysis's strong lines.
    """
    from .attention import strong_lines

    profiles = analysis.get("profiles", {})
    if not profiles:
        return None
    plt = pyplot()
    line_list = line_list if line_list is not None else strong_lines()
    flux = analysis.get("mean_flux")
    rows = len(profiles) + (flux is not None)
    fig, axes = plt.subplots(rows, 1, figsize=(14, 2.2 + 2.6 * rows), sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": [1.0] * (flux is not None) + [1.25] * len(profiles)})
    axes = list(axes[:, 0])
    named: list[float] = []
    for ax, (query, profile) in zip(axes[rows - len(profiles):], profiles.items()):
        named += _attention_panel(ax, profile, line_list, query)
    if flux is not None:
        wavelength = np.asarray(next(iter(profiles.values()))["wavelength"], np.float64)
        axes[0].plot(*with_gaps(wavelength, flux), color="k", lw=0.6)
        for peak in named:
            axes[0].axvline(peak, color="0.5", ls=":", lw=0.8)
        axes[0].set_ylabel("mean normalised flux")
        axes[0].set_title(f"mean spectrum of the {analysis.get('n_stars', '?')} test stars analysed "
                          "(dotted: the named attention peaks; blank: chip gap)")
    axes[-1].set_xlabel("vacuum wavelength (Å)")
    fig.suptitle(f"Decoder cross-attention of {analysis.get('model', '?')}, last block, mean over heads and "
                 f"{analysis.get('n_stars', '?')} test stars", fontsize=12)
    fig.tight_layout()
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------
# Training curves
# ----------------------------------------------------------------------------------------------


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def _training_panel(ax, records: Sequence[Mapping], best_step: int | None) -> None:
    train = np.array([(r["step"], r["train/loss"]) for r in records if "train/loss" in r]).reshape(-1, 2)
    if len(train):
        window = max(1, len(train) // 15)
        ax.plot(train[:, 0], train[:, 1], color="tab:blue", lw=0.7, alpha=0.35)
        ax.plot(train[window - 1:, 0], _moving_average(train[:, 1], window), color="tab:blue", lw=1.6,
                label=f"training loss (mean of {window} logs)" if window > 1 else "training loss")
    validation = np.array([(r["step"], r["eval/val_loss"]) for r in records if "eval/val_loss" in r]).reshape(-1, 2)
    if len(validation):
        ax.plot(validation[:, 0], validation[:, 1], "o-", color="tab:green", ms=4, lw=1.2, label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("Gaussian NLL per label\n(standardised labels)")
    rmse_keys = sorted({k for r in records for k in r if k.startswith("eval/val_rmse_")})
    handles, labels = [], []
    if rmse_keys:
        twin = ax.twinx()
        for key in rmse_keys:
            label = key[len("eval/val_rmse_"):]
            points = np.array([(r["step"], r[key]) for r in records if key in r])
            twin.plot(points[:, 0], points[:, 1], "o-", color="tab:red", ms=3.5, lw=1.2,
                      label=f"validation RMSE of {LABEL_DISPLAY_NAMES.get(label, label)}")
            twin.set_ylabel(f"validation RMSE of {LABEL_LATEX.get(label, label)} ({unit(label)})", color="tab:red")
        handles, labels = twin.get_legend_handles_labels()
    if best_step is not None:
        ax.axvline(best_step, color="0.3", ls="--", lw=1, label=f"checkpoint kept (step {best_step})")
    own_handles, own_labels = ax.get_legend_handles_labels()
    ax.legend(own_handles + handles, own_labels + labels, loc="upper right", fontsize=7.5, framealpha=0.85)


def plot_training_curves(logs: Mapping[str, Sequence[Mapping]], path: Path,
                         best_steps: Mapping[str, int | None] | None = None):
    """Training loss, validation loss and validation RMSE (physical units) vs step, one panel per stage.

    ``logs``: stage folder → records of its ``metrics.jsonl`` (``step``, ``train/loss``, ``eval/...``).
    """
    names = [name for name, records in logs.items() if records]
    if not names:
        return None
    plt = pyplot()
    cols = 2 if len(names) > 1 else 1
    rows = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(7.0 * cols, 3.9 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        _training_panel(ax, logs[name], (best_steps or {}).get(name))
        ax.set_title(name)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, path)
