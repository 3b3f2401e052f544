"""Longer than trained (docs/long_context.md): blockwise causal attention (BCA) against the rule
written as loops, the training model against the export under it, KV-cache decoding against the
full forward under it, and perplexity by length and position bucket against a hand-computed
forward, on the training path and on the export, through tools/evaluate.py."""
from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import pytest
import torch

from flm_ext.config import FLMConfig
from flm_ext.model.blockwise import blockwise_mask, blockwise_sdpa, default_block, set_blockwise_attention

os.environ["HF_HUB_OFFLINE"] = "1"
REPO = Path(__file__).resolve().parents[1]
# seq 16: BCA block 8, so 2x / 4x windows (32 / 64 tokens) reach the third block and beyond. The
# vocabulary is the tokenizer's exactly (no padding rows, which the export drops), so that the
# training model's perplexities and the export's are the same function.
VOCAB = 300
CFG = FLMConfig(num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=64, seq_length=16,
                vocab_size=VOCAB, init_method_std=0.6)


def loop_mask(length: int, block: int) -> torch.Tensor:
    """The paper's rule, spelled out: split positions into blocks; a query sees earlier-or-equal
    keys of its own block and every key of the block before."""
    allowed = torch.zeros(length, length, dtype=torch.bool)
    for i in range(length):
        for j in range(i + 1):
            if j // block in (i // block, i // block - 1):
                allowed[i, j] = True
    return allowed


def test_mask_is_the_rule_and_never_looks_back_past_the_training_length():
    for length, block in ((1, 4), (7, 4), (8, 4), (9, 4), (33, 4), (40, 8), (17, 1)):
        pos = torch.arange(length)
        mask = blockwise_mask(pos, pos, block)
        assert torch.equal(mask, loop_mask(length, block)), (length, block)
        rows, cols = mask.nonzero(as_tuple=True)
        assert int((rows - cols).max()) < 2 * block  # distance < training length = 2 x block
    assert default_block(2048) == 1024
    # a query at the start of a block still sees the whole previous block
    assert blockwise_mask(torch.tensor([16]), torch.arange(17), 8)[0].tolist() == [False] * 8 + [True] * 9


@pytest.mark.parametrize("length, gqa", [(37, False), (64, True), (16, False)])
def test_blockwise_sdpa_equals_masked_softmax_in_float64(length, gqa):
    g = torch.Generator().manual_seed(length)
    heads, kv_heads, d, block = 4, (2 if gqa else 4), 8, 8
    q = torch.randn(2, heads, length, d, generator=g, dtype=torch.float64)
    k, v = torch.randn(2, 2, kv_heads, length, d, generator=g, dtype=torch.float64)
    got = blockwise_sdpa(q, k, v, block, scale=0.3, enable_gqa=gqa)
    kr, vr = (t.repeat_interleave(heads // kv_heads, dim=1) for t in (k, v))
    scores = (q @ kr.transpose(-1, -2)) * 0.3
    scores = scores.masked_fill(~loop_mask(length, block), float("-inf"))
    expected = torch.softmax(scores, dim=-1) @ vr
    assert (got - expected).abs().max().item() < 1e-12


# --- a real checkpoint and its export --------------------------------------------------------------
TEXT = ("In the beginning God created the heaven and the earth. And the earth was without form, and void; "
        "and darkness was upon the face of the deep. 起初，神创造天地。地是空虚混沌，渊面黑暗。")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from flm_ext.data.train_bpe import train_bpe

    d = tmp_path_factory.mktemp("long_context_data")
    with open(d / "valid.jsonl", "w", encoding="utf-8") as f:
        for i in range(30):
            f.write(json.dumps({"text": f"{TEXT} {i}"}, ensure_ascii=False) + "\n")
    bpe = train_bpe([str(d / "valid.jsonl")], str(d / "bpe.json"), vocab_size=VOCAB, min_frequency=1)
    from flm_ext.data.tokenizers import build_tokenizer

    assert build_tokenizer("HuggingFaceTokenizer", tokenizer_model=bpe).vocab_size == VOCAB
    return {"valid": str(d / "valid.jsonl"), "bpe": bpe, "root": d}


@pytest.fixture(scope="module")
def checkpoint(files, megatron_single_process):
    from export_workers import perturbed_chunks

    from flm_ext.config import ParallelConfig
    from flm_ext.checkpoint.training_io import save_checkpoint, trainer_record

    path = str(files["root"] / "ckpt")
    save_checkpoint(path, 3, perturbed_chunks(CFG, ParallelConfig(), seed=11), None, None,
                    record=trainer_record(3, CFG, 0))
    return path


@pytest.fixture(scope="module")
def exported(files, checkpoint):
    from flm_ext.data.tokenizers import build_tokenizer
    from flm_ext.export import open_for_export
    from flm_ext.export.export import export_checkpoint

    out = str(files["root"] / "export")
    export_checkpoint(open_for_export(checkpoint), out, build_tokenizer("HuggingFaceTokenizer", tokenizer_model=files["bpe"]),
                      tokenizer_model=files["bpe"], log=lambda m: None)
    return out


def _hf(folder, blockwise: bool):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32,
                                                blockwise_attention=blockwise).eval()


def test_export_config_has_blockwise_attention_off(exported):
    config = json.loads(Path(exported, "config.json").read_text())
    assert config["blockwise_attention"] is False and config["blockwise_block_size"] is None


@pytest.mark.parametrize("blockwise", [False, True])
def test_training_model_equals_export_at_4x_length(checkpoint, exported, blockwise):
    from flm_ext.evaluation.core import load_model

    model, _, _ = load_model(checkpoint)
    if blockwise:
        assert set_blockwise_attention(model, default_block(CFG.seq_length)) == CFG.num_layers
    ids = torch.randint(0, VOCAB, (2, 4 * CFG.seq_length), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(ids, torch.arange(ids.shape[1]).expand_as(ids), None).float()
        theirs = _hf(exported, blockwise)(input_ids=ids, use_cache=False).logits
    assert (ours - theirs).abs().max().item() < 1e-4
    # BCA changes nothing within the first two blocks (the training length) and something after
    with torch.no_grad():
        set_blockwise_attention(model, None)
        plain = model(ids, torch.arange(ids.shape[1]).expand_as(ids), None).float()
    early, late = slice(0, CFG.seq_length), slice(CFG.seq_length, None)
    assert (plain[:, early] - ours[:, early]).abs().max().item() < 1e-4
    assert ((plain[:, late] - ours[:, late]).abs().max().item() > 1e-3) == blockwise


def test_kv_cache_decoding_equals_full_forward_under_blockwise_attention(exported):
    from transformers.cache_utils import DynamicCache

    model = _hf(exported, True)
    ids = torch.randint(0, VOCAB, (1, 5 * CFG.seq_length + 3), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits[0]
        cache, steps = DynamicCache(), []
        prompt = 13  # a prompt ending mid-block, then one token per forward across several block edges
        steps.append(model(input_ids=ids[:, :prompt], past_key_values=cache, use_cache=True).logits[0])
        for t in range(prompt, ids.shape[1]):
            steps.append(model(input_ids=ids[:, t:t + 1], past_key_values=cache, use_cache=True).logits[0])
    decoded = torch.cat(steps)
    assert (decoded - full).abs().max().item() < 1e-4
    plain = _hf(exported, False)
    with torch.no_grad():
        assert (plain(input_ids=ids, use_cache=False).logits[0] - full).abs().max().item() > 1e-3


# --- perplexity by length ----------------------------------------------------------------------------
def test_parse_and_resolve_lengths():
    from flm_ext.evaluation.lengths import bucket_width, parse_lengths, resolve

    assert resolve(parse_lengths("1x, 2x,0.5x,128,2x"), 64) == [64, 128, 32]
    for bad in ("3y", "0x", "-5", ","):
        with pytest.raises(ValueError, match="--lengths"):
            parse_lengths(bad)
    assert bucket_width(128, 1024) == 128 and bucket_width(16, 16 * 40) == 48


def test_buckets_and_totals_against_a_hand_computed_forward(checkpoint, files):
    from flm_ext.data.tokenizers import build_tokenizer
    from flm_ext.evaluation.core import load_model, model_logits_fn, read_stream
    from flm_ext.evaluation.lengths import perplexity_by_length

    tok = build_tokenizer("HuggingFaceTokenizer", tokenizer_model=files["bpe"])
    model, _, _ = load_model(checkpoint)
    result = perplexity_by_length(model_logits_fn(model), tok, {"en": files["valid"]}, [40], CFG.seq_length,
                                  max_tokens=500, batch_size=3)
    r = result["languages"]["en"]["40"]
    stream = read_stream(tok, files["valid"], 500)
    count = len(stream) // 41
    nll = torch.zeros(count, 40, dtype=torch.float64)
    for w in range(count):  # one window at a time, log-softmax by hand
        window = torch.tensor(stream[w * 41:(w + 1) * 41])
        with torch.no_grad():
            logits = model(window[None, :-1], torch.arange(40)[None], None)[0].double()
        logp = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
        nll[w] = -logp[torch.arange(40), window[1:]]
    assert r["windows"] == count and r["tokens"] == count * 40
    assert r["loss"] == pytest.approx(nll.mean().item(), rel=1e-5)
    assert [(b["start"], b["end"]) for b in r["buckets"]] == [(0, 16), (16, 32), (32, 40)]
    for b in r["buckets"]:
        assert b["perplexity"] == pytest.approx(math.exp(nll[:, b["start"]:b["end"]].mean().item()), rel=1e-5)


def _evaluate(argv):
    spec = importlib.util.spec_from_file_location("evaluate_tool", REPO / "tools" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


@pytest.mark.parametrize("blockwise", [False, True])
def test_evaluate_tool_by_length_on_checkpoint_and_export_agree(checkpoint, exported, files, tmp_path, blockwise):
    common = ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", files["bpe"], "--tasks", "perplexity",
              "--valid-data", f"en={files['valid']}", f"zh={files['valid']}", "--lengths", "1x,2x,4x,40",
              "--max-eval-tokens", "600"] + (["--blockwise-attention"] if blockwise else [])
    results = {}
    for name, load in (("ckpt", checkpoint), ("export", exported)):
        out, md = tmp_path / f"{name}.json", tmp_path / f"{name}.md"
        assert _evaluate(["--load", load, *common, "--output", str(out), "--markdown", str(md)]) == 0
        results[name] = json.loads(out.read_text())
        table = md.read_text()
        assert "| en | 64 | 4 |" in table and "positions 48-64" in table
        assert ("blockwise causal attention, block 8" in table) == blockwise
    ours, theirs = results["ckpt"]["perplexity_by_length"], results["export"]["perplexity_by_length"]
    assert ours["lengths"] == [16, 32, 64, 40] and ours["bucket_width"] == 16
    for lang in ("en", "zh"):
        for length in ("16", "32", "64", "40"):
            a, b = ours["languages"][lang][length], theirs["languages"][lang][length]
            assert a["tokens"] == b["tokens"]
            assert a["perplexity"] == pytest.approx(b["perplexity"], rel=1e-4)
            assert [x["perplexity"] for x in a["buckets"]] == pytest.approx([x["perplexity"] for x in b["buckets"]],
                                                                            rel=1e-4)
        # the training-length figures (backward compatible "languages") are the 1x entry
        assert results["ckpt"]["languages"][lang]["perplexity"] == ours["languages"][lang]["16"]["perplexity"]


def test_evaluate_tool_bad_lengths_and_too_few_tokens(checkpoint, exported, files, tmp_path, capsys):
    tok = ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", files["bpe"]]
    with pytest.raises(SystemExit) as exit_info:
        _evaluate(["--load", checkpoint, *tok, "--valid-data", f"en={files['valid']}", "--lengths", "2y"])
    assert exit_info.value.code == 2 and "--lengths '2y'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        _evaluate(["--load", exported, *tok, "--valid-data", f"en={files['valid']}", "--tasks", "perplexity,teacher",
                   "--teacher-data", files["valid"]])
    assert exit_info.value.code == 2 and "exported model" in capsys.readouterr().err
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"text": "In the beginning"}) + "\n")
    assert _evaluate(["--load", checkpoint, *tok, "--valid-data", f"en={short}", "--lengths", "8x",
                      "--output", str(tmp_path / "none.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and f"{short}: only" in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "none.json").exists()


def test_export_mask_builder_applies_the_rule_and_refuses_unmasked_kernels():
    from flm_ext.export.modeling_flm import attention_mask_for

    for past, length in ((0, 40), (37, 1), (20, 5)):  # prefill, one decoding step, a chunk after a cache
        got = attention_mask_for("sdpa", None, None, past, length, "cpu", block=8)
        expected = loop_mask(past + length, 8)[past:]
        assert torch.equal(got[0, 0], expected), (past, length)
    assert attention_mask_for("sdpa", None, None, 0, 16, "cpu", block=8) is None  # within 2 blocks: plain causal
    with pytest.raises(ValueError, match="blockwise_attention needs attn_implementation"):
        attention_mask_for("flash_attention_2", None, None, 0, 40, "cpu", block=8)
