"""The rotary [cos | sin] table against transformers' inverse frequencies for each scaling we read."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from worker.models.rotary import build_cos_sin_cache

ROPE_CASES = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 4.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64},
}


@pytest.mark.parametrize("case", sorted(ROPE_CASES))
def test_cos_sin_cache_matches_transformers_inverse_frequencies(case: str) -> None:
    scaling = ROPE_CASES[case]
    config = transformers.LlamaConfig(hidden_size=64, num_attention_heads=2, max_position_embeddings=512,
                                      rope_theta=500000.0, rope_scaling=scaling)
    init = ROPE_INIT_FUNCTIONS[scaling["rope_type"]] if scaling else None
    if init is None:
        inv_freq = 1.0 / (500000.0 ** (torch.arange(0, 32, 2, dtype=torch.float64) / 32))
    else:
        inv_freq, attention_factor = init(config, torch.device("cpu"))
        assert attention_factor == 1.0
    cache = build_cos_sin_cache(32, 512, 500000.0, scaling)  # (512, 32)
    positions = torch.arange(512, dtype=torch.float64).unsqueeze(1)
    angles = positions * inv_freq.double().unsqueeze(0)  # (512, 16)
    # transformers keeps inv_freq in float32, so large positions differ by its rounding only.
    torch.testing.assert_close(cache[:, :16], angles.cos().float(), rtol=0, atol=5e-5)
    torch.testing.assert_close(cache[:, 16:], angles.sin().float(), rtol=0, atol=5e-5)


def test_longrope_tables_match_transformers_short_and_long_frequencies() -> None:
    # Positions of the original context rotate by the short factors, the rest by the long ones,
    # both scaled by transformers' attention factor.
    short, long = [1.0 + 0.2 * i for i in range(16)], [3.0 + 0.5 * i for i in range(16)]
    config = transformers.Phi3Config(hidden_size=64, num_attention_heads=2, max_position_embeddings=512,
                                     original_max_position_embeddings=128, rope_theta=10000.0,
                                     rope_scaling={"rope_type": "longrope", "short_factor": short, "long_factor": long})
    init = ROPE_INIT_FUNCTIONS["longrope"]
    short_inv, factor = init(config, torch.device("cpu"))
    long_inv, _ = init(config, torch.device("cpu"), seq_len=129)
    scaling = {"rope_type": "longrope", "short_factor": short, "long_factor": long, "original_max_position_embeddings": 128}
    cache = build_cos_sin_cache(32, 512, 10000.0, scaling)  # (512, 32)
    positions = torch.arange(512, dtype=torch.float64).unsqueeze(1)
    inv = torch.where(positions < 128, short_inv.double().unsqueeze(0), long_inv.double().unsqueeze(0))  # (512, 16)
    angles = positions * inv
    assert factor > 1.0
    torch.testing.assert_close(cache[:, :16], (angles.cos() * factor).float(), rtol=0, atol=5e-5)
    torch.testing.assert_close(cache[:, 16:], (angles.sin() * factor).float(), rtol=0, atol=5e-5)
