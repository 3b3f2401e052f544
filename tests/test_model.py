"""The FLM model built on megatron-core against an independent float64 implementation."""
import pytest
import torch

import reference_flm
from flm_ext.config import FLMConfig, num_parameters
from flm_ext.model.flm_model import FLMModel, build_model_chunks
from flm_ext.model.global_weights import global_state_dict, load_global_state_dict

CFG = FLMConfig(num_layers=3, hidden_size=48, num_attention_heads=3, seq_length=40, vocab_size=128,
                init_method_std=0.08)


def _ids(cfg, batch=2, seed=0):
    return torch.randint(0, cfg.vocab_size, (batch, cfg.seq_length), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids):
    return model(ids, torch.arange(ids.shape[1]).expand_as(ids), None)


@pytest.mark.parametrize("cfg", [
    CFG,
    CFG.replace(use_mup=True, mup_base_width=16, mup_output_mult=2.0, mup_input_mult=1.5),
    CFG.replace(position_embedding="rope"),
], ids=["xpos", "xpos-mup", "rope"])
def test_logits_equal_independent_reference(megatron_single_process, cfg):
    [model] = build_model_chunks(cfg)
    ids = _ids(cfg)
    with torch.no_grad():
        got = _logits(model, ids).double()
    expected = reference_flm.logits(global_state_dict([model]), cfg, ids)
    assert expected.abs().max() > 0.5
    assert (got - expected).abs().max().item() <= 5e-5


def test_parameter_count_matches_formula_and_embeddings_are_tied(megatron_single_process):
    [model] = build_model_chunks(CFG)
    assert sum(p.numel() for p in model.parameters()) == num_parameters(CFG)
    assert model.output_layer.weight is None  # the output projection reuses the embedding
    assert isinstance(model, FLMModel) and model.share_embeddings_and_output_weights


def test_per_token_loss_is_cross_entropy_of_logits(megatron_single_process):
    [model] = build_model_chunks(CFG)
    ids = _ids(CFG)
    labels = torch.roll(ids, -1, dims=1)
    with torch.no_grad():
        loss = model(ids, torch.arange(ids.shape[1]).expand_as(ids), None, labels=labels)
        logits = _logits(model, ids)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, CFG.vocab_size), labels.reshape(-1),
                                                 reduction="none").view_as(loss)
    assert torch.allclose(loss, expected, atol=1e-5)


def test_mup_output_multiplier_scales_logits_exactly(megatron_single_process):
    base = CFG.replace(use_mup=True, mup_base_width=16, mup_output_mult=1.0)  # m = 3
    [model] = build_model_chunks(base)
    state = global_state_dict([model])
    [doubled] = build_model_chunks(base.replace(mup_output_mult=2.0))
    load_global_state_dict([doubled], state)
    ids = _ids(base)
    with torch.no_grad():
        a, b = _logits(model, ids), _logits(doubled, ids)
    assert torch.allclose(b, 2 * a, rtol=1e-6, atol=1e-6)


def test_mup_init_scales_hidden_matrices_not_embeddings(megatron_single_process):
    wide = FLMConfig(num_layers=2, hidden_size=256, num_attention_heads=4, seq_length=16, vocab_size=512,
                     use_mup=True, mup_base_width=16, init_method_std=0.04)  # m = 16
    [model] = build_model_chunks(wide)
    fc1 = model.decoder.layers[0].mlp.linear_fc1.weight
    emb = model.embedding.word_embeddings.weight
    assert fc1.std().item() == pytest.approx(0.04 / 4, rel=0.05)
    assert emb.std().item() == pytest.approx(0.04, rel=0.05)


def test_mup_learning_rate_groups():
    from flm_ext.model.mup import is_hidden_matrix, mup_optimizer_overrides

    cfg = CFG.replace(use_mup=True, mup_base_width=16)  # m = 3
    [override] = mup_optimizer_overrides(cfg, lr=3e-3, min_lr=3e-4).values()
    assert override == {"max_lr": pytest.approx(1e-3), "min_lr": pytest.approx(1e-4), "lr_mult": pytest.approx(1 / 3)}
    assert mup_optimizer_overrides(CFG, lr=1.0, min_lr=0.0) == {}
    w = torch.nn.Parameter(torch.zeros(4, 4))
    assert is_hidden_matrix(w, "decoder.layers.0.mlp.linear_fc1.weight")
    assert not is_hidden_matrix(w, "embedding.word_embeddings.weight")
    assert not is_hidden_matrix(torch.nn.Parameter(torch.zeros(4)), "decoder.layers.0.mlp.linear_fc1.bias")


def test_load_global_state_rejects_wrong_shapes(megatron_single_process):
    [model] = build_model_chunks(CFG)
    state = global_state_dict([model])
    state["embedding.word_embeddings.weight"] = torch.zeros(7, 7)
    with pytest.raises(ValueError, match="embedding.word_embeddings.weight"):
        load_global_state_dict([model], state)
    del state["embedding.word_embeddings.weight"]
    with pytest.raises(KeyError, match="embedding.word_embeddings.weight"):
        load_global_state_dict([model], state)
