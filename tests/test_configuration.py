"""SpectraFMConfig: paper defaults, JSON round-trip, validation, and the wavelength encoding."""

import math

import numpy as np
import pytest
import torch

from spectrafm_hf import SpectraFMConfig
from spectrafm_hf.modeling_spectrafm import wavelength_encoding


def test_defaults_are_the_paper_architecture():
    config = SpectraFMConfig()
    assert config.model_type == "spectrafm"
    assert (config.d_model, config.encoder_heads, config.encoder_mlp) == (256, [16, 8], [2048, 1024])
    assert (config.decoder_heads, config.decoder_mlp) == ([16, 8, 4], [2048, 1024, 512])
    assert config.head_mlp == [2048, 1024, 512, 256]
    assert (config.dropout, config.activation, config.add_bias_kv, config.context_length) == (0.05, "gelu", True, 512)
    assert config.named_tokens == ["TEFF", "LOGG", "FE_H", "MG_FE", "O_FE"]
    assert config.named_token_statistics["TEFF"] == [4702.5, 544.0]
    assert config.vocab_size == 7  # padding, the shared pixel row, five labels
    assert config.token_id("TEFF") == 2 and config.token_id("O_FE") == 6


def test_json_round_trip(tmp_path):
    config = SpectraFMConfig.tiny(named_tokens=["TEFF", "FE_H", "G_MAG"],
                                  named_token_statistics={"FE_H": [-0.2, 0.3], "G_MAG": [12.0, 1.5]})
    config.save_pretrained(tmp_path)
    loaded = SpectraFMConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.named_token_statistics == {"FE_H": [-0.2, 0.3], "G_MAG": [12.0, 1.5]}
    assert loaded.encoder_heads == [2, 2] and isinstance(loaded.encoder_heads, list)


def test_keyword_only_and_validation():
    with pytest.raises((TypeError, ValueError)):
        SpectraFMConfig(256)
    with pytest.raises(ValueError, match="same length"):
        SpectraFMConfig(encoder_heads=[16, 8], encoder_mlp=[2048])
    with pytest.raises(ValueError, match="divisible"):
        SpectraFMConfig(d_model=30, encoder_heads=[4, 2])
    with pytest.raises(ValueError, match="wavelength_encoding"):
        SpectraFMConfig(wavelength_encoding="quadratic")
    with pytest.raises(ValueError, match="duplicates"):
        SpectraFMConfig(named_tokens=["TEFF", "TEFF"])
    with pytest.raises(ValueError, match="unknown named token"):
        SpectraFMConfig().token_id("NA_FE")


def test_paper_linear_encoding_matches_the_formula():
    config = SpectraFMConfig.paper()
    lam = torch.tensor([15000.0, 15500.0, 16900.0])
    pe = wavelength_encoding(lam, config).double().numpy()
    lam_n = (lam.double().numpy() - 15000.0) / 2000.0
    i = np.arange(config.d_model // 2)
    angle = 1000.0 * lam_n[:, None] * 10000.0 ** (-2 * i / config.d_model)
    np.testing.assert_allclose(pe[:, 0::2], np.sin(angle), atol=2e-4)
    np.testing.assert_allclose(pe[:, 1::2], np.cos(angle), atol=2e-4)
    assert torch.all(wavelength_encoding(torch.zeros(4), config) == 0)  # named tokens / padding


def test_log_encoding_matches_the_paper_frequency_at_1_6_micron_and_never_wraps():
    config = SpectraFMConfig()
    # fastest sinusoid's phase: scale · ln(λ/λmin) / ln(λmax/λmin); its derivative at 16000 Å
    rad_per_A = config.wavelength_scale / (16000.0 * math.log(config.wavelength_max / config.wavelength_min))
    assert rad_per_A == pytest.approx(0.5, rel=1e-4)  # the paper's 1000 / 2000 Å
    slowest = config.wavelength_scale * config.wavelength_base ** (-(config.d_model - 2) / config.d_model)
    assert slowest < math.pi  # over λn in [0, 1] the slowest sinusoid spans less than half a turn
    # neighbouring APOGEE pixels (Δλ ≈ 0.22 Å) get clearly different codes, in the optical too
    for lam in (5000.0, 16000.0):
        pair = torch.tensor([lam, lam * 10 ** 6e-6])
        pe = wavelength_encoding(pair, config)
        assert (pe[0] - pe[1]).norm() > 0.05
