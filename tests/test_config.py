"""Presets, parameter counts and config validation."""
import pytest
import torch

from flm_ext.config import (ConfigError, FLMConfig, ParallelConfig, get_preset, num_parameters, pad_vocab_size,
                            to_transformer_config, validate)


@pytest.mark.parametrize("name, billions, tolerance", [
    ("flm-101b", 101.7, 0.005), ("flm-51b", 51.4, 0.005), ("flm-16b", 15.8, 0.01)])
def test_preset_parameter_counts_match_the_paper(name, billions, tolerance):
    count = num_parameters(get_preset(name))
    assert abs(count / 1e9 - billions) <= tolerance * billions, f"{name}: {count / 1e9:.3f}B"


def test_parameter_count_by_hand():
    cfg = FLMConfig(num_layers=2, hidden_size=8, num_attention_heads=2, vocab_size=16)
    per_layer = (8 * 24 + 24) + (8 * 8 + 8) + (8 * 32 + 32) + (32 * 8 + 8) + 4 * 8
    assert num_parameters(cfg) == 2 * per_layer + 2 * 8 + 16 * 8
    assert num_parameters(cfg.replace(share_embeddings_and_output_weights=False)) == num_parameters(cfg) + 16 * 8


def test_presets_have_the_paper_shapes():
    for name, (layers, hidden, heads) in {"flm-16b": (40, 5632, 44), "flm-51b": (40, 10240, 80),
                                          "flm-101b": (80, 10240, 80)}.items():
        cfg = get_preset(name)
        assert (cfg.num_layers, cfg.hidden_size, cfg.num_attention_heads) == (layers, hidden, heads)
        assert cfg.ffn_hidden_size == 4 * hidden and cfg.seq_length == 2048 and cfg.vocab_size == 100_352
        assert cfg.head_dim == 128 and cfg.share_embeddings_and_output_weights
        assert cfg.position_embedding == "xpos" and cfg.xpos_scale_base == 512 and cfg.rotary_base == 10000
    assert get_preset("flm-101b").mup_width_mult == 40.0


def test_vocab_padding_rule():
    assert pad_vocab_size(100_256) == 100_352
    assert pad_vocab_size(100_256, tensor_model_parallel_size=4) == 100_352
    assert pad_vocab_size(50_257, tensor_model_parallel_size=2) == 50_432


@pytest.mark.parametrize("model_changes, parallel, field", [
    (dict(num_attention_heads=3), None, "hidden_size"),
    (dict(num_layers=0), None, "num_layers"),
    (dict(position_embedding="alibi"), None, "position_embedding"),
    (dict(hidden_dropout=1.5), None, "hidden_dropout"),
    (dict(), ParallelConfig(tensor_model_parallel_size=3), "num_attention_heads"),
    (dict(num_layers=3), ParallelConfig(pipeline_model_parallel_size=2), "num_layers"),
    (dict(), ParallelConfig(sequence_parallel=True), "sequence_parallel"),
    (dict(), ParallelConfig(pipeline_model_parallel_size=1, virtual_pipeline_model_parallel_size=2),
     "virtual_pipeline_model_parallel_size"),
    (dict(), ParallelConfig(tensor_model_parallel_size=2, world_size=3), "world_size"),
    (dict(vocab_size=255), ParallelConfig(tensor_model_parallel_size=2, world_size=2), "vocab_size"),
])
def test_invalid_configs_name_the_field(model_changes, parallel, field):
    cfg = get_preset("tiny-test").replace(**model_changes)
    with pytest.raises(ConfigError, match=field):
        validate(cfg, parallel)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="flm-101b"):
        get_preset("flm-1t")


def test_transformer_config_carries_flm_and_mup_choices():
    cfg = get_preset("tiny-test").replace(use_mup=True, mup_base_width=8)  # m = 32 / 8 = 4
    tc = to_transformer_config(cfg)
    assert tc.softmax_scale == pytest.approx(1 / cfg.head_dim)
    assert tc.init_method_std == pytest.approx(0.02 / 2) and tc.embedding_init_method_std == pytest.approx(0.02)
    assert tc.add_bias_linear and not tc.gated_linear_unit and tc.layernorm_epsilon == 1e-5
    x = torch.linspace(-3, 3, 13)
    assert torch.equal(tc.activation_func(x), torch.nn.functional.gelu(x, approximate="tanh"))
    assert to_transformer_config(cfg.replace(use_mup=False)).softmax_scale is None
