"""Validate the simulator against a real APOGEE spectrum and show its label derivatives.

    python scripts/validate_simulator.py [--out runs/validation] [--apstar PATH]

Writes to ``--out``:

* ``sim_vs_apstar.png`` — the real K-dwarf apStar (``../shared/data/real/apStar-dr17-2M19485057+5005279.fits``,
  combined row, APOGEE_PIXMASK-masked, continuum-normalised by the project's own
  :func:`spectrafm_hf.data.apogee.read_apstar` / :mod:`spectrafm_hf.data.continuum` — per-chip
  Chebyshev upper-envelope fit) against the synthetic spectrum, full range and zooms, with residuals;
* ``residuals.json`` — residual statistics (rms, MAD, per chip) at the radial-velocity template labels
  (Teff 5226, logg 4.6, [Fe/H] −0.22; the header's RV_LOGG of 5.0 is a template-grid edge) and at the
  best labels of a small least-squares grid in (Teff, logg, [Fe/H]) — said so in the JSON;
* ``dflux_dlabel.png`` — d flux / d label for each of the five labels across the grid for a 4000 K
  giant and a 5200 K dwarf (finite differences), with the strongest Fe I, Mg I and OH lines marked.

This is a visual and statistical sanity check of a one-layer model, not an abundance analysis.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from spectrafm_hf.data import simulator as sim
from spectrafm_hf.data.grid import apogee_wavelength, chip_of_pixel

DEFAULT_APSTAR = (Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
                  / "apStar-dr17-2M19485057+5005279.fits")
RV_LABELS = {"TEFF": 5226.0, "LOGG": 4.6, "FE_H": -0.22, "MG_FE": 0.0, "O_FE": 0.0}
DERIV_STEPS = {"TEFF": 50.0, "LOGG": 0.1, "FE_H": 0.05, "MG_FE": 0.05, "O_FE": 0.05}


def dwarf_nuisances(n: int) -> dict:
    """K-dwarf nuisances: vmacro 2 km/s, no rotation, solar C and N."""
    return {"VMACRO": np.full(n, 2.0), "VSINI": np.zeros(n), "C_FE": np.zeros(n), "N_FE": np.zeros(n)}


def residual_stats(real: np.ndarray, model: np.ndarray, good: np.ndarray) -> dict:
    r = (real - model)[good]
    chips = chip_of_pixel()[good]
    stats = {"rms": float(np.sqrt(np.mean(r**2))), "mad": float(np.median(np.abs(r - np.median(r)))),
             "mean": float(np.mean(r)), "n_pixels": int(good.sum())}
    for c, name in enumerate(("blue", "green", "red")):
        rc = r[chips == c]
        stats[f"rms_{name}"] = float(np.sqrt(np.mean(rc**2)))
    return stats


def fit_grid(real, good):
    """Least-squares (Teff, logg, [Fe/H]) on a small grid around the RV template labels."""
    teff = np.arange(4900.0, 5601.0, 100.0)
    logg = np.array([4.2, 4.4, 4.6, 4.8])
    feh = np.arange(-0.5, 0.11, 0.1)
    tt, gg, ff = (a.ravel() for a in np.meshgrid(teff, logg, feh, indexing="ij"))
    labels = {"TEFF": tt, "LOGG": gg, "FE_H": ff, "MG_FE": np.zeros_like(tt), "O_FE": np.zeros_like(tt),
              **dwarf_nuisances(len(tt))}
    flux = sim.simulate(labels, "synthetic")["flux"].astype(np.float64)
    chi2 = np.nanmean(np.where(good[None, :], (flux - real[None, :]) ** 2, np.nan), axis=1)
    best = int(np.argmin(chi2))
    return {"TEFF": float(tt[best]), "LOGG": float(gg[best]), "FE_H": float(ff[best]), "MG_FE": 0.0, "O_FE": 0.0}


def plot_comparison(path, wl, real, fits: dict, good):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chips = chip_of_pixel()
    zooms = [(15735, 15780, "Mg I 15745/15753/15770"), (16150, 16200, "Fe I 16157.7/16169.4, CO 6-3 head"),
             (15950, 15990, "Si I 15964, Fe I"), (16700, 16760, "Al I 16723/16755")]
    fig = plt.figure(figsize=(15, 16))
    gs = fig.add_gridspec(9, 4, height_ratios=[2, 1, 2, 1, 2, 1, 2, 1, 1.5])
    (name_a, model_a), (name_b, model_b) = list(fits.items())
    for c in range(3):
        ax = fig.add_subplot(gs[2 * c, :])
        sel = chips == c
        ax.plot(wl[sel], np.where(good, real, np.nan)[sel], "k", lw=0.5, label="real apStar (normalised)")
        ax.plot(wl[sel], model_b[sel], "r", lw=0.5, alpha=0.8, label=name_b)
        ax.set_ylim(0.35, 1.12)
        ax.set_title(f"chip {('blue', 'green', 'red')[c]}", fontsize=9)
        if c == 0:
            ax.legend(loc="lower left", fontsize=7)
        axr = fig.add_subplot(gs[2 * c + 1, :], sharex=ax)
        axr.plot(wl[sel], np.where(good, real - model_b, np.nan)[sel], "k", lw=0.4)
        axr.axhline(0, color="r", lw=0.5)
        axr.set_ylim(-0.15, 0.15)
        axr.set_ylabel("real − model", fontsize=8)
    for i, (lo, hi, title) in enumerate(zooms):
        ax = fig.add_subplot(gs[6, i])
        sel = (wl > lo) & (wl < hi)
        ax.plot(wl[sel], np.where(good, real, np.nan)[sel], "k", lw=0.8, label="real")
        ax.plot(wl[sel], model_a[sel], "b", lw=0.7, alpha=0.8, label=name_a)
        ax.plot(wl[sel], model_b[sel], "r", lw=0.7, alpha=0.8, label=name_b)
        ax.set_title(title, fontsize=9)
        ax.set_ylim(0.3, 1.1)
        if i == 0:
            ax.legend(fontsize=6, loc="lower left")
        axr = fig.add_subplot(gs[7, i], sharex=ax)
        axr.plot(wl[sel], np.where(good, real - model_b, np.nan)[sel], "k", lw=0.6)
        axr.axhline(0, color="r", lw=0.5)
        axr.set_ylim(-0.12, 0.12)
    ax = fig.add_subplot(gs[8, :])
    r = np.where(good, real - model_b, np.nan)
    ax.hist(r[np.isfinite(r)], bins=200, range=(-0.15, 0.15), color="k", histtype="step")
    ax.set_xlabel("real − model (normalised flux)")
    ax.set_title("residual distribution, " + name_b)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def derivatives(base: dict) -> dict:
    rows = {k: np.repeat(np.asarray(v, dtype=np.float64), 2 * len(DERIV_STEPS)) for k, v in base.items()}
    for j, (name, step) in enumerate(DERIV_STEPS.items()):
        rows[name][2 * j] += step
        rows[name][2 * j + 1] -= step
    flux = sim.simulate(rows, "synthetic", gap_config=sim.GapConfig.clean(flux_clip=False))["flux"].astype(np.float64)
    return {name: (flux[2 * j] - flux[2 * j + 1]) / (2 * step) for j, (name, step) in enumerate(DERIV_STEPS.items())}


def plot_derivatives(path, wl, stars: dict, marks: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(DERIV_STEPS), 1, figsize=(15, 12), sharex=True)
    colours = {"Fe I": "tab:orange", "Mg I": "tab:green", "OH": "tab:purple"}
    for ax, name in zip(axes, DERIV_STEPS):
        for (label, deriv), c in zip(stars.items(), ("k", "tab:blue")):
            d = deriv[name] * (100.0 if name == "TEFF" else 1.0)
            for chip in range(3):
                sel = chip_of_pixel() == chip
                ax.plot(wl[sel], d[sel], color=c, lw=0.5, label=label if chip == 0 else None)
        for species, lines in marks.items():
            for w in lines:
                ax.axvline(w, color=colours[species], lw=0.5, alpha=0.5)
        ax.set_ylabel(f"dF/d{name}" + (" (per 100 K)" if name == "TEFF" else " (per dex)"), fontsize=8)
    axes[0].legend(fontsize=7, loc="lower right")
    axes[-1].set_xlabel("vacuum wavelength (Å); marks: Fe I orange, Mg I green, OH purple (strongest)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/validation")
    parser.add_argument("--apstar", default=str(DEFAULT_APSTAR))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wl = apogee_wavelength()

    from spectrafm_hf.data.apogee import read_apstar

    real_spec = read_apstar(args.apstar)
    real = real_spec["flux"].astype(np.float64)
    good = ~real_spec["mask"] & np.isfinite(real)

    rv = {k: np.array([v]) for k, v in RV_LABELS.items()} | dwarf_nuisances(1)
    model_rv = sim.simulate(rv, "synthetic")["flux"][0].astype(np.float64)
    best = fit_grid(real, good)
    model_best = sim.simulate({k: np.array([v]) for k, v in best.items()} | dwarf_nuisances(1),
                              "synthetic")["flux"][0].astype(np.float64)
    good &= np.isfinite(model_rv) & np.isfinite(model_best)
    report = {
        "apstar": str(args.apstar), "snr_header": real_spec["snr"],
        "normalisation": "spectrafm_hf.data.apogee.read_apstar (per-chip Chebyshev upper-envelope continuum)",
        "at_rv_template_labels": {"labels": RV_LABELS, **residual_stats(real, model_rv, good)},
        "at_grid_best_fit": {"labels": best, "fit": "least squares over Teff 4900–5600 (100 K), logg 4.2–4.8 "
                             "(0.2), [Fe/H] −0.5–+0.1 (0.1); [Mg/Fe]=[O/Fe]=0, vmacro 2 km/s",
                             **residual_stats(real, model_best, good)},
        "noise_expected": 1.0 / real_spec["snr"] if real_spec["snr"] else None,
    }
    plot_comparison(out / "sim_vs_apstar.png", wl, real,
                    {f"model at RV labels {RV_LABELS['TEFF']:.0f}/{RV_LABELS['LOGG']}/{RV_LABELS['FE_H']}": model_rv,
                     f"model at best grid labels {best['TEFF']:.0f}/{best['LOGG']}/{best['FE_H']:.1f}": model_best},
                    good)

    giant = {"TEFF": np.array([4000.0]), "LOGG": np.array([1.5]), "FE_H": np.array([-0.2]),
             "MG_FE": np.array([0.1]), "O_FE": np.array([0.1])}
    dwarf = {k: np.array([v]) for k, v in RV_LABELS.items()} | dwarf_nuisances(1)
    derivs = {"4000 K giant (logg 1.5)": derivatives(giant), "5226 K dwarf (logg 4.6)": derivatives(dwarf)}
    model = sim.get_line_model()
    eta0, _, _ = model.line_parameters(giant)
    marks = {}
    for species in ("Fe I", "Mg I", "OH"):
        idx = np.where(model.lines.species == species)[0]
        marks[species] = model.lines.wavelength[idx[np.argsort(eta0[0, idx])[::-1][:12 if species != "Mg I" else 9]]]
    plot_derivatives(out / "dflux_dlabel.png", wl, derivs, marks)
    # mean |derivative| at each species' strongest lines over the mean |derivative| of all pixels
    # (d/d[Fe/H] largest at Fe I, d/d[O/Fe] at OH in the cool giant, d/d[Mg/Fe] at Mg I)
    peaks = {}
    for star, d in derivs.items():
        peaks[star] = {}
        for name, values in d.items():
            typical = float(np.mean(np.abs(values)))
            peaks[star][name] = {
                species: round(float(np.mean(np.abs(values[[np.argmin(np.abs(wl - w)) for w in lines]])))
                               / max(typical, 1e-12), 1)
                for species, lines in marks.items()
            }
    report["derivative_at_strongest_lines_over_mean_pixel"] = peaks
    (out / "residuals.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("at_rv_template_labels", "at_grid_best_fit")}, indent=2))
    print(json.dumps(peaks, indent=1))
    print(f"wrote {out / 'sim_vs_apstar.png'}, {out / 'dflux_dlabel.png'}, {out / 'residuals.json'}")


if __name__ == "__main__":
    main()
