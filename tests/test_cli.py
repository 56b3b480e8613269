"""The ``spectrafm`` command line: argument plumbing and one-line errors (library logic is tested elsewhere)."""

import numpy as np
import pytest
from datasets import load_from_disk

from spectrafm_hf.cli import build_parser, main
from spectrafm_hf.data.apogee.build import _parse_bits
from spectrafm_hf.data.schema import get_metadata


def test_every_subcommand_has_help():
    parser = build_parser()
    for command in ("predict", "simulate", "build-apogee", "pipeline", "publish", "convert-original"):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([command, "--help"])
        assert exit_info.value.code == 0


def test_simulate_cli_applies_gap_switches_and_snr(tmp_path):
    out = tmp_path / "obs"
    rc = main(["simulate", "--universe", "observed", "--n", "12", "--seed", "5", "--out", str(out),
               "--gap-off", "telluric", "--gap-off", "airglow", "--snr-min", "60", "--snr-max", "80",
               "--no-progress"])
    assert rc == 0
    dataset = load_from_disk(str(out))
    assert sum(len(split) for split in dataset.values()) == 12
    snr = np.concatenate([np.asarray(split["snr"]) for split in dataset.values()])
    assert np.all((snr >= 60 - 1e-3) & (snr <= 80 + 1e-3)), snr
    gap = get_metadata(dataset)["gap_config"]
    assert gap["telluric"] is False and gap["airglow"] is False and gap["noise"] is True


def test_simulate_cli_rejects_unknown_gap_switch(tmp_path, capsys):
    rc = main(["simulate", "--universe", "observed", "--n", "2", "--out", str(tmp_path / "x"),
               "--gap-off", "weather", "--no-progress"])
    assert rc == 2
    assert "weather" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_bad_bits_parser():
    assert _parse_bits("0-3,12") == (0, 1, 2, 3, 12)
    with pytest.raises(ValueError, match="cannot parse"):
        _parse_bits("low")
    with pytest.raises(ValueError, match="0..31"):
        _parse_bits("40")


def test_predict_list_options_take_one_or_many_values_per_flag():
    """--request / --inputs / --keep: ``--keep RA DEC`` is ``--keep RA --keep DEC`` (argparse "extend")."""
    common = ["predict", "--model", "m", "--input", "i.npz", "--output", "o.csv"]
    many = build_parser().parse_args(common + ["--request", "FE_H", "TEFF", "--keep", "RA", "DEC",
                                               "--inputs", "SNR", "GAIA_G"])
    repeated = build_parser().parse_args(common + ["--request", "FE_H", "--request", "TEFF", "--keep", "RA",
                                                   "--keep", "DEC", "--inputs", "SNR", "--inputs", "GAIA_G"])
    for name, expected in (("request", ["FE_H", "TEFF"]), ("keep", ["RA", "DEC"]), ("inputs", ["SNR", "GAIA_G"])):
        assert getattr(many, name) == getattr(repeated, name) == expected
    defaults = build_parser().parse_args(common + ["--request", "FE_H"])
    assert defaults.keep == [] and defaults.inputs is None  # "not given" stays distinguishable from a list
