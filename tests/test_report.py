"""The run report: figures drawn from saved arrays (axes, units, limits that hide nothing), report.md and
report.html text (test-set composition, negative results said plainly), the self-contained HTML page,
and rebuilding a report from a run folder without retraining."""

import base64
import json
import re

import numpy as np
import pytest

from spectrafm_hf.data.grid import FE_WINDOW, FIRST_HALF, apogee_wavelength
from spectrafm_hf.data.labels import LABEL_LATEX, LABELS
from spectrafm_hf.training import report_figures as rf
from spectrafm_hf.training.evaluation import evaluate_label

N_STARS = 240


def _star_labels(rng, n=N_STARS):
    """True labels of fake test stars: 40 % iron-poor, as the pipeline's test set."""
    feh = np.where(rng.random(n) < 0.4, rng.uniform(-2.4, -1.0, n), rng.uniform(-0.9, 0.4, n))
    return {"TEFF": rng.uniform(3800, 5500, n), "LOGG": rng.uniform(0.8, 4.0, n), "FE_H": feh,
            "MG_FE": rng.normal(0.1, 0.1, n), "O_FE": rng.normal(0.1, 0.1, n), "snr": rng.uniform(50, 400, n)}


def _fe_window(rng, stars):
    """Three Fe-window models: good, biased on iron-poor stars (as the baselines are), overconfident."""
    true = stars["FE_H"]
    poor = true < -1
    return {
        "stage3": {"true": true, "pred": true + rng.normal(0, 0.1, len(true)), "sigma": np.full(len(true), 0.1)},
        "ridge": {"true": true, "pred": np.where(poor, -1.0, true) + rng.normal(0, 0.1, len(true)),
                  "sigma": np.full(len(true), 0.1)},
        # a baseline whose running median runs to +2.5 dex: the residual axis must still show it
        "cannon": {"true": true, "pred": np.where(poor, 0.5, true) + rng.normal(0, 0.02, len(true)),
                   "sigma": np.full(len(true), 0.01)},
    }


def _stage2(rng, stars):
    scatter = {"TEFF": 80.0, "LOGG": 0.2, "FE_H": 0.1, "MG_FE": 0.05, "O_FE": 0.05}
    return {label: {"true": stars[label], "pred": stars[label] + rng.normal(0, s, len(stars[label])),
                    "sigma": np.full(len(stars[label]), s)} for label, s in scatter.items()}


def _models_entry(fe_window, stage2, feh):
    models = {name: {"pixels": [FE_WINDOW.start, FE_WINDOW.stop - 1], "description": f"the {name} model",
                     "labels": {"FE_H": evaluate_label(p["pred"], p["sigma"], p["true"], feh,
                                                       p["pred"], p["sigma"], p["true"])}}
              for name, p in fe_window.items()}
    models["stage2"] = {"pixels": [0, 3756], "description": "stage 2", "labels": {
        label: evaluate_label(p["pred"], p["sigma"], p["true"], feh, p["pred"], p["sigma"], p["true"])
        for label, p in stage2.items()}}
    return models


def _attention(window, queries, weights):
    """An attention analysis as metrics.json holds it, made by the real enrichment code."""
    from spectrafm_hf.training.attention import analyse_profiles

    wavelength = apogee_wavelength()[window]
    result = analyse_profiles({q: w / w.sum() for q, w in zip(queries, weights)}, wavelength)
    result.update(model="stage2", n_stars=4, window="first_half" if window == FIRST_HALF else "fe_window",
                  mean_flux=(1 - 0.3 * np.exp(-0.5 * ((wavelength - wavelength.mean()) / 0.3) ** 2)).tolist())
    return result


@pytest.fixture(scope="module")
def fake_run():
    """Arrays and metrics of a fake run: Fe-window models, stage 2, attention (Mg below its control)."""
    from spectrafm_hf.training.attention import nearest_index, strong_lines

    rng = np.random.default_rng(1)
    stars = _star_labels(rng)
    fe_window, stage2 = _fe_window(rng, stars), _stage2(rng, stars)
    wavelength = apogee_wavelength()[FIRST_HALF]
    fe_lines = [line for line in np.sort(strong_lines().of(("Fe I",))) if wavelength[0] < line < 15790]
    fe_lines = np.array([line for i, line in enumerate(fe_lines) if i % (len(fe_lines) // 5) == 0][:5])
    assert np.diff(fe_lines).min() > np.ptp(wavelength) / 14  # far enough apart to be named, each
    on_fe = np.isin(np.arange(len(wavelength)), nearest_index(wavelength, fe_lines))
    fe_weight = np.where(on_fe, 60.0, 1.0)  # attention peaks on five Fe lines
    mg_weight = np.where(on_fe, 30.0, 1.0)  # the [Mg/Fe] query also looks at Fe lines: below its control
    metrics = {
        "models": _models_entry(fe_window, stage2, stars["FE_H"]),
        "test_set": {"n": N_STARS, "n_feh_known": N_STARS, "n_feh_lt_-1": int(np.sum(stars["FE_H"] < -1)),
                     "n_feh_lt_-1.5": int(np.sum(stars["FE_H"] < -1.5)), "n_iron_poor_supplement": 80,
                     "n_observed_split": N_STARS - 80, "description": "fake test stars"},
        "attention_first_half": _attention(FIRST_HALF, ("FE_H", "MG_FE"), (fe_weight, mg_weight)),
        "acceptance": {"iron-poor |bias| stage3 / scratch MLP": {"value": 0.9, "target": "≤ 0.5", "pass": False}},
        "run": {"config": "fake.yaml", "seed": 0},
        "training": {"stage3": {"best_step": 40}},
    }
    return {"stars": stars, "fe_window": fe_window, "stage2": stage2, "metrics": metrics, "fe_lines": fe_lines}


def _is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------


def test_fe_window_one_to_one_has_a_panel_per_model_with_error_bars_and_stats(fake_run, tmp_path):
    fe_window = fake_run["fe_window"]
    fig = rf.plot_fe_window_one_to_one(fe_window, tmp_path / "one.png")
    assert _is_png(tmp_path / "one.png")
    panels = [ax for ax in fig.axes if ax.get_title() in fe_window]
    assert [ax.get_title() for ax in panels] == list(fe_window)
    for ax in panels:
        assert ax.get_xlabel() == f"true {LABEL_LATEX['FE_H']} (dex)"
        assert ax.get_ylabel() == f"predicted {LABEL_LATEX['FE_H']} (dex)"
        assert len(ax.containers) == 1 and len(ax.containers[0].lines[0].get_xdata()) <= rf.N_ERROR_BAR_STARS
    stage3 = fe_window["stage3"]
    rmse, _, _ = rf.residual_summary(stage3["true"], stage3["pred"])
    text = " ".join(t.get_text() for t in panels[0].texts)
    assert f"{rmse:.3f}" in text and "[Fe/H]<−1" in text


def test_stage2_one_to_one_covers_all_five_labels_in_their_units(fake_run, tmp_path):
    fig = rf.plot_stage2_one_to_one(fake_run["stage2"], fake_run["stars"]["FE_H"], tmp_path / "s2.png")
    xlabels = {ax.get_xlabel() for ax in fig.axes if ax.get_xlabel()}
    assert xlabels == {f"true {LABEL_LATEX[label]} ({'K' if label == 'TEFF' else 'dex'})" for label in LABELS}
    assert "true $T_\\mathrm{eff}$ (K)" in xlabels and "true $\\log g$ (dex)" in xlabels


def test_kiel_diagram_reverses_both_axes_and_shares_the_colour_scale(fake_run, tmp_path):
    stage2 = fake_run["stage2"]
    keys = ("TEFF", "LOGG", "FE_H")
    fig = rf.plot_kiel({k: stage2[k]["true"] for k in keys}, {k: stage2[k]["pred"] for k in keys}, tmp_path / "k.png")
    left, right = fig.axes[:2]
    assert left.xaxis_inverted() and left.yaxis_inverted() and right.xaxis_inverted()
    assert left.get_xlabel() == "$T_\\mathrm{eff}$ (K)" and left.get_ylabel() == "$\\log g$ (dex)"
    assert left.collections[0].get_clim() == right.collections[0].get_clim()
    assert "[\\mathrm{Fe/H}]" in fig.axes[2].get_ylabel()  # the colour bar
    assert left.get_title().startswith("true") and "predictions" in right.get_title()


def test_residual_axes_enclose_every_running_median_and_mark_points_beyond(fake_run, tmp_path):
    fe_window, stars = fake_run["fe_window"], fake_run["stars"]
    fig = rf.plot_residuals(fe_window, stars, tmp_path / "r.png")
    panels = [ax for ax in fig.axes if ax.get_xlabel()]
    assert [ax.get_xlabel() for ax in panels] == [rf.RESIDUAL_AXES[k][0] for k in ("FE_H", "TEFF", "snr")]
    assert panels[2].get_xscale() == "log"
    low, high = panels[0].get_ylim()
    for name, p in fe_window.items():
        for key in ("FE_H", "TEFF", "snr"):
            medians = rf.running_median(stars[key], p["pred"] - p["true"])["median"]
            assert low <= medians.min() and medians.max() <= high, (name, key)
    assert high > 2.5  # the cannon's iron-poor offset (+2.5 dex at [Fe/H] = −2) stays on the plot
    assert all(len(ax.get_lines()) >= len(fe_window) for ax in panels)


def test_coverage_matches_nominal_for_honest_sigma_and_falls_below_for_overconfident():
    rng = np.random.default_rng(0)
    true = np.zeros(20000)
    pred = rng.normal(0, 1, true.size)
    honest = rf.coverage_curve(true, pred, np.ones(true.size))
    assert np.max(np.abs(honest - rf.NOMINAL_LEVELS)) < 0.02
    overconfident = rf.coverage_curve(true, pred, np.full(true.size, 0.5))
    assert np.all(overconfident[rf.NOMINAL_LEVELS > 0.2] < rf.NOMINAL_LEVELS[rf.NOMINAL_LEVELS > 0.2] - 0.05)
    assert np.allclose(rf.coverage_curve(true, pred, np.full(true.size, 0.5), scale=2.0), honest)


def test_coverage_figure_draws_every_model_with_sigma(fake_run, tmp_path):
    fe_window = fake_run["fe_window"]
    fig = rf.plot_coverage(fe_window, {"stage3": 1.0, "ridge": 1.2, "cannon": 8.0}, tmp_path / "c.png",
                           fake_run["stage2"], {"TEFF": 1.1})
    raw, scaled, stage2 = fig.axes[:3]
    assert {line.get_label() for line in raw.get_lines()} >= set(fe_window)
    assert "cannon (σ × 8.00)" in {line.get_label() for line in scaled.get_lines()}
    assert len([line for line in stage2.get_lines() if not line.get_label().startswith("_")]) >= len(LABELS)
    for ax in (raw, scaled, stage2):
        assert ax.get_xlabel().startswith("nominal coverage") and ax.get_ylabel().startswith("empirical coverage")


def test_chip_gap_is_a_break_not_a_segment():
    wavelength = apogee_wavelength()[FIRST_HALF]
    x, y = rf.with_gaps(wavelength, np.ones(len(wavelength)))
    assert len(x) == len(wavelength) + 1 and np.isnan(x[3028]) and np.isnan(y[3028])  # blue | green
    assert len(rf.with_gaps(apogee_wavelength()[FE_WINDOW])[0]) == FE_WINDOW.stop - FE_WINDOW.start
    chips = rf.chip_of_wavelength(apogee_wavelength())
    assert np.bincount(chips).tolist() == [3028, 2495, 1991]


def test_attention_figure_names_the_peaks_over_the_mean_spectrum(fake_run, tmp_path):
    analysis = fake_run["metrics"]["attention_first_half"]
    fig = rf.plot_attention(analysis, tmp_path / "a.png")
    flux_ax, fe_ax, mg_ax = fig.axes[:3]
    assert flux_ax.get_ylabel() == "mean normalised flux" and fe_ax.get_ylabel() == "attention / uniform"
    assert fe_ax.get_shared_x_axes().joined(flux_ax, fe_ax)
    assert np.isnan(flux_ax.get_lines()[0].get_ydata()).sum() == 1  # the chip gap, left blank
    names = [t.get_text() for t in fe_ax.texts]
    assert len(names) == 5 and all(re.fullmatch(r"Fe I \d{5}\.\d", n) for n in names)
    assert {float(n.split()[-1]) for n in names} == {round(w, 1) for w in fake_run["fe_lines"]}
    assert "BELOW the shuffled control" in mg_ax.get_title() and "above" in fe_ax.get_title()
    assert fig.axes[-1].get_xlabel() == "vacuum wavelength (Å)"


def test_training_curves_label_loss_and_validation_rmse_in_dex(tmp_path):
    records = [{"step": s, "train/loss": 1.0 / s} for s in range(10, 210, 10)]
    records += [{"step": s, "eval/val_rmse_FE_H": 0.3 / (1 + s / 100)} for s in (50, 100, 150, 200)]
    stage1 = [{"step": s, "train/loss": 0.5, "eval/val_loss": 0.4} for s in (100, 200)]
    fig = rf.plot_training_curves({"stage1": stage1, "stage3": records, "empty": []}, tmp_path / "t.png",
                                  {"stage3": 150})
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    assert set(panels) == {"stage1", "stage3"}
    assert panels["stage3"].get_xlabel() == "optimizer step"
    assert panels["stage3"].get_ylabel().startswith("Gaussian NLL per label")
    twin = [ax for ax in fig.axes if ax.get_ylabel().startswith("validation RMSE")]
    assert twin and twin[0].get_ylabel().endswith("(dex)") and "Fe/H" in twin[0].get_ylabel()
    assert any(line.get_xdata()[0] == 150 for line in panels["stage3"].get_lines())  # the checkpoint kept


# ----------------------------------------------------------------------------------------------
# Text and HTML
# ----------------------------------------------------------------------------------------------


def _figures(tmp_path, keys):
    """Small real PNGs for the figure keys of the report."""
    plt = rf.pyplot()
    figures = {}
    for i, key in enumerate(keys):
        fig, ax = plt.subplots(figsize=(2, 1.5))
        ax.plot([0, 1], [0, i])
        figures[key] = tmp_path / f"{key}.png"
        rf.save_figure(fig, figures[key])
    return figures


def test_report_text_states_negative_results_and_the_test_set_composition(fake_run, tmp_path):
    from spectrafm_hf.training.report import write_report

    metrics = fake_run["metrics"]
    text = write_report(tmp_path, metrics, _figures(tmp_path, ["pred_vs_true", "attention_first_half"])).read_text()
    n_poor = metrics["test_set"]["n_feh_lt_-1"]
    assert f"**Test set:** {N_STARS} simulated stars; {n_poor} (" in text
    assert "80 of them were drawn from the prior restricted to [Fe/H] < −1" in text
    mg = metrics["attention_first_half"]["profiles"]["MG_FE"]
    assert mg["enrichment"] < mg["enrichment_control"]
    assert re.search(r"\*\*Negative result\*\* — stage2 \(first_half\): the \[Mg/Fe\] query puts only "
                     rf"{mg['enrichment']:.2f}× .* below its shuffled control \({mg['enrichment_control']:.2f}×", text)
    assert "**Not met:** iron-poor |bias| stage3 / scratch MLP" in text
    assert "| iron-poor \\|bias\\| stage3 / scratch MLP |" in text  # a | inside a cell does not split it
    assert "issue" not in text.lower() and "FE_H" not in text
    assert "![pred_vs_true](pred_vs_true.png)" in text
    assert "| Teff (K) |" in text and "| log g (dex) |" in text


def test_report_says_when_enrichment_is_above_control_without_negative(fake_run):
    from spectrafm_hf.training.report import attention_sentences

    sentences = attention_sentences(fake_run["metrics"])
    fe = [s for s in sentences if "[Fe/H] query" in s][0]
    assert "above its shuffled control" in fe and "Negative" not in fe


def test_html_report_embeds_every_figure_and_parses(fake_run, tmp_path):
    from spectrafm_hf.training.report_html import check_html_report, write_html_report

    figures = _figures(tmp_path, ["pred_vs_true", "residuals", "coverage", "attention_first_half"])
    page = write_html_report(tmp_path, fake_run["metrics"], figures)
    text = page.read_text()
    for path in figures.values():
        assert base64.b64encode(path.read_bytes()).decode() in text
    summary = check_html_report(page)
    assert len(summary["images"]) == len(figures) and summary["title"] == "SpectraFM pipeline report"
    assert summary["tags"]["table"] >= 3
    assert '<strong class="negative">Negative result</strong>' in text and "T<sub>eff</sub>" in text
    assert not re.search(r'src="(?!data:image/png;base64,)', text)  # nothing outside the page


def test_html_check_rejects_images_that_are_not_embedded_pngs(tmp_path):
    from spectrafm_hf.training.report_html import check_html_report

    page = tmp_path / "p.html"
    page.write_text('<html><head><title>t</title></head><body><img src="figure.png"></body></html>')
    with pytest.raises(ValueError, match="not an embedded PNG"):
        check_html_report(page)
    png = _figures(tmp_path, ["x"])["x"].read_bytes()
    truncated = base64.b64encode(png[: len(png) // 2]).decode()
    page.write_text(f'<html><head><title>t</title></head><body><img src="data:image/png;base64,{truncated}">'
                    "</body></html>")
    with pytest.raises(Exception):  # noqa: B017 - the PNG decoder's own error
        check_html_report(page)
    page.write_text("<html><head><title>t</title></head><body><table><tr></table></body></html>")
    with pytest.raises(ValueError, match="unbalanced"):
        check_html_report(page)


# ----------------------------------------------------------------------------------------------
# Rebuilding from a run folder
# ----------------------------------------------------------------------------------------------


def _run_folder(tmp_path, fake_run, legacy=False):
    """A run folder as the pipeline leaves it (predictions.npz, metrics.json, a stage log, the marker)."""
    from spectrafm_hf.output_guard import mark_written
    from spectrafm_hf.training.report import write_metrics

    run = tmp_path / "run"
    (run / "stage3").mkdir(parents=True)
    mark_written(run, "run")
    arrays = {f"{m}__{k}": v for m, p in fake_run["fe_window"].items() for k, v in p.items()}
    arrays.update({f"stage2_all_labels__{label}": p["pred"] for label, p in fake_run["stage2"].items()})
    if not legacy:
        arrays.update({f"stage2__{label}__{k}": v for label, p in fake_run["stage2"].items() for k, v in p.items()})
        arrays.update({f"test__{k}": v for k, v in fake_run["stars"].items()})
    np.savez(run / "predictions.npz", **arrays)
    write_metrics(run / "metrics.json", fake_run["metrics"])
    (run / "stage3" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in (
        {"config": {"max_steps": 60}}, {"step": 20, "train/loss": 0.3}, {"step": 40, "eval/val_rmse_FE_H": 0.2},
        {"step": 60, "train/loss": 0.1})) + "\n")
    return run


def test_rebuild_report_redraws_every_figure_from_the_run_folder(fake_run, tmp_path):
    from spectrafm_hf.pipeline.report import FIGURE_FILES, load_predictions, rebuild_report

    run = _run_folder(tmp_path, fake_run)
    arrays = load_predictions(run / "predictions.npz")
    assert set(arrays.stage2) == set(LABELS) and np.array_equal(arrays.stars["snr"], fake_run["stars"]["snr"])
    page = rebuild_report(run)
    assert page == run / "report.html"
    expected = set(FIGURE_FILES) - {"attention"}  # the fake run has the first-half analysis only
    markdown = (run / "report.md").read_text()
    for key in expected:
        assert _is_png(run / FIGURE_FILES[key]) and f"({FIGURE_FILES[key]})" in markdown, key
    from spectrafm_hf.training.report_html import check_html_report

    assert len(check_html_report(page)["images"]) == len(expected)


def test_rebuild_report_reads_older_runs_and_refuses_foreign_folders(fake_run, tmp_path):
    from spectrafm_hf.output_guard import UnsafeOutputError
    from spectrafm_hf.pipeline.report import load_predictions, rebuild_report

    run = _run_folder(tmp_path, fake_run, legacy=True)
    arrays = load_predictions(run / "predictions.npz")
    assert np.all(np.isnan(arrays.stage2["TEFF"]["true"])) and np.isfinite(arrays.stage2["FE_H"]["true"]).all()
    out = tmp_path / "elsewhere"
    rebuild_report(run, out)
    assert (out / "stage2_one_to_one.png").exists() and not (out / "kiel_stage2.png").exists()  # no T_eff truth
    assert not (run / "report.md").exists()  # --out leaves the run folder alone
    (run / ".spectrafm-output").unlink()
    with pytest.raises(UnsafeOutputError, match="not written by spectrafm"):
        rebuild_report(run)
    (run / "predictions.npz").unlink()
    with pytest.raises(FileNotFoundError, match="predictions.npz not found"):
        rebuild_report(run, out)


@pytest.mark.slow
def test_report_html_renders_in_a_headless_browser(fake_run, tmp_path):
    """Needs a Chromium on PATH (Debian: apt-get install chromium); skipped otherwise."""
    import importlib.util
    from pathlib import Path

    from spectrafm_hf.pipeline.report import rebuild_report

    spec = importlib.util.spec_from_file_location(
        "render_report_check", Path(__file__).resolve().parents[1] / "scripts" / "render_report_check.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    browser = check.find_browser()
    if browser is None:
        pytest.skip("no headless Chromium on PATH")
    page = rebuild_report(_run_folder(tmp_path, fake_run))
    shot = check.screenshot(page, tmp_path / "shot.png", browser)
    assert check.screenshot_shows_content(shot) > 0.2
    assert check.main([str(page), "--screenshot", str(tmp_path / "again.png")]) == 0
