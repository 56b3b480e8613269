"""Combining stage-3 fine-tunes (benchmarks/stage3_ensembles.py) and the members and rehearsal variant of
benchmarks/stage3_variants.py: the arithmetic the issue-15 figures rest on."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import stage3_ensembles  # noqa: E402
import stage3_variants  # noqa: E402

from spectrafm_hf.checkpoints import load_model, save_checkpoint  # noqa: E402
from spectrafm_hf.data.arrays import WindowData  # noqa: E402
from spectrafm_hf.modeling_spectrafm import SpectraFMModel  # noqa: E402


def test_member_zero_is_the_run_itself_and_others_get_seeds_of_their_own():
    assert stage3_variants.member_seed(11, 0) == 11 and stage3_variants.member_tag("context512", 0) == "context512"
    seeds = {stage3_variants.member_seed(s, m) for s in range(15) for m in range(3)}
    assert len(seeds) == 45  # no two (run seed, member) pairs share a stage-3 seed
    assert stage3_variants.member_tag("context512", 2) == "context512-m2"


def test_ensemble_mean_adds_the_members_disagreement_to_their_own_uncertainty():
    members = [(np.array([0.0, 1.0]), np.array([0.1, 0.2])), (np.array([0.2, 1.0]), np.array([0.1, 0.0]))]
    mean, sigma = stage3_ensembles.ensemble_mean(members)
    np.testing.assert_allclose(mean, [0.1, 1.0])
    # star 0: mean σ² = 0.01, variance of the means = 0.01; star 1: (0.04 + 0) / 2, no disagreement
    np.testing.assert_allclose(sigma, [np.sqrt(0.02), np.sqrt(0.02)])


def _member(tiny_config, feature_extractor, folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    save_checkpoint(SpectraFMModel(tiny_config).eval(), feature_extractor, folder)
    return folder


def test_soup_is_the_mean_of_the_members_weights_and_is_reused(tiny_config, feature_extractor, tmp_path):
    members = [_member(tiny_config, feature_extractor, tmp_path / f"m{k}", k) for k in range(3)]
    out = stage3_ensembles.soup(members, tmp_path / "soup")
    souped = load_model(out, device="cpu")[0].state_dict()
    states = [load_model(m, device="cpu")[0].state_dict() for m in members]
    weights = [k for k, v in souped.items() if v.is_floating_point() and v.numel() > 1]
    assert weights and not torch.equal(states[0][weights[0]], states[1][weights[0]])  # members really differ
    for key in weights:
        torch.testing.assert_close(souped[key], (states[0][key] + states[1][key] + states[2][key]) / 3)
    assert json.loads((out / "soup_members.json").read_text())["members"] == [str(m) for m in members]
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert stage3_ensembles.soup(members, out) == out and (out / "model.safetensors").stat().st_mtime_ns == stamp
    stage3_ensembles.soup(members[:2], out)  # other members: made again
    torch.testing.assert_close(load_model(out, device="cpu")[0].state_dict()[weights[0]],
                               (states[0][weights[0]] + states[1][weights[0]]) / 2)


def test_rehearsal_augmentation_perturbs_a_copy_reproducibly_and_keeps_bad_pixels():
    rng = np.random.default_rng(0)
    wavelength = np.linspace(15150.0, 16950.0, 600)
    flux = (1.0 - 0.3 * rng.random((5, 600))).astype(np.float32)
    mask = np.zeros((5, 600), bool)
    mask[:, 100:110] = True
    flux[mask] = np.nan
    stars = WindowData(flux=flux, mask=mask, flux_err=np.full_like(flux, np.nan),
                       labels={"FE_H": np.zeros(5)}, label_errors={"FE_H": np.full(5, np.nan)},
                       wavelength=wavelength)
    before = flux.copy()
    once = stage3_variants._augmented_once(stars, seed=3)
    np.testing.assert_array_equal(stars.flux, before)  # the clean pool is untouched
    good = ~mask
    assert np.mean(once.flux[good] != before[good]) > 0.99  # every good pixel perturbed (noise at SNR ≤ 1000)
    assert np.isnan(once.flux[mask]).all()  # bad pixels stay bad
    np.testing.assert_array_equal(once.flux, stage3_variants._augmented_once(stars, seed=3).flux)
    assert not np.array_equal(once.flux, stage3_variants._augmented_once(stars, seed=4).flux)


def test_members_below_zero_are_refused(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["stage3_variants.py", "run", "--runs", "runs/x:0", "--members", "-1"])
    with pytest.raises(SystemExit, match="--members are 0"):
        stage3_variants.main()


def test_a_bad_draw_is_refused_before_anything_is_trained(monkeypatch, tmp_path):
    monkeypatch.setattr(stage3_variants, "RESULTS", tmp_path)
    monkeypatch.setattr(sys, "argv", ["stage3_variants.py", "run", "--runs", "runs/x:0", "--draw", "runs/y"])
    with pytest.raises(SystemExit, match="--draw takes folder:seed"):
        stage3_variants.main()
