"""Export to transformers: logits parity with the training model (checkpoints saved at TP=2 with µP,
PP=2 without, and inside a growth ramp), tokenizer ids for every tokenizer type, incremental
decoding, greedy generation against transformers' generate, the import round trip, bad input."""
from __future__ import annotations

import filecmp
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import export_workers
from distributed import spawn

os.environ["HF_HUB_OFFLINE"] = "1"
REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
MIXED = ("In the beginning God created the heaven and the earth. 起初，神创造天地。"
         "这条评论是正面的。😈 😡 🎉 naïve café, 2024年12月1日!\n\tlit<|endoftext|>eral  ")


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def bpe(tmp_path_factory) -> str:
    """A small byte-level BPE (the project's trainer) on bilingual text: 300 tokens."""
    from flm_ext.data.train_bpe import train_bpe

    d = tmp_path_factory.mktemp("bpe")
    with open(d / "text.jsonl", "w", encoding="utf-8") as f:
        for i in range(50):
            f.write(json.dumps({"text": f"In the beginning God created the heaven and the earth {i}. "
                                        f"起初，神创造天地。这条评论是正面的。😈😡"}) + "\n")
    return train_bpe([str(d / "text.jsonl")], str(d / "bpe.json"), vocab_size=300, min_frequency=1)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory, megatron_single_process) -> dict[str, str]:
    """name -> checkpoint root: tp2_mup and pp2 (2 gloo processes), ramp (TP=1, lambda 0.4)."""
    root = tmp_path_factory.mktemp("ckpts")
    spawn(export_workers.save_layouts, 2, root)
    export_workers.save_ramp(str(root / "ramp"))
    return {name: str(root / name) for name in ("tp2_mup", "pp2", "ramp")}


def export(ckpt: str, out: Path, bpe: str, **kwargs) -> Path:
    from flm_ext.data.tokenizers import build_tokenizer
    from flm_ext.export import open_for_export
    from flm_ext.export.export import export_checkpoint

    export_checkpoint(open_for_export(ckpt), str(out), build_tokenizer("HuggingFaceTokenizer", tokenizer_model=bpe),
                      tokenizer_model=bpe, log=lambda m: None, **kwargs)
    return out


@pytest.fixture(scope="session")
def exports(checkpoints, bpe, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    # Small shards and read blocks for two of them: several files and the index, and tensors read
    # and folded in row blocks, must give the same model.
    small = {"pp2": dict(max_shard_bytes=20_000, block_bytes=3_000), "ramp": dict(block_bytes=5_000)}
    return {name: export(path, root / name, bpe, **small.get(name, {})) for name, path in checkpoints.items()}


def reference_logits(ckpt: str, ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The training model (megatron, TP=1) loaded by megatron's own loader, growth masks at the
    checkpoint's lambda, as flm_ext's evaluation runs it."""
    from flm_ext.checkpoint import open_checkpoint
    from flm_ext.checkpoint.model_state import load_model_weights
    from flm_ext.growth import GrowthState, attach_growth
    from flm_ext.model.flm_model import build_model_chunks

    c = open_checkpoint(ckpt)
    chunks = build_model_chunks(c.config)
    load_model_weights(c.folder, chunks)
    chunks[0].to(dtype)  # before attach_growth: the masks take the model's dtype
    if c.growth_record:
        state = GrowthState.from_dict(c.growth_record)
        attach_growth(chunks, state, state.lambda_at(c.iteration))
    with torch.no_grad():
        return chunks[0].eval()(ids, torch.arange(ids.shape[1]).expand_as(ids), None)


def auto_model(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=True).eval()


def probe(vocab: int, length: int = 48, batch: int = 2) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(11))


@pytest.mark.parametrize("name", ["tp2_mup", "pp2", "ramp"])
def test_exported_logits_equal_the_training_model(name, checkpoints, exports):
    model = auto_model(exports[name])
    assert type(model).__name__ == "FLMForCausalLM" and model.dtype == torch.float32
    ids = probe(model.config.vocab_size)
    ref = reference_logits(checkpoints[name], ids)
    with torch.no_grad():
        out = model(ids).logits
    assert out.shape[-1] == 300 and ref.shape[-1] == 384  # padding rows dropped
    assert ref[..., :300].abs().max() > 0.5  # logits of order 1: the comparison means something
    assert float((out - ref[..., :300]).abs().max()) <= 1e-5
    # In float64 the difference measures the conversion itself (key map, folded masks), not
    # rounding: the export's tensor plan, built into a float64 model in memory.
    from flm_ext.export import open_for_export
    from flm_ext.export.generation import model_from_checkpoint

    exact = model_from_checkpoint(open_for_export(checkpoints[name]), 300, 0, torch.float64)
    with torch.no_grad():
        diff64 = (exact(ids).logits - reference_logits(checkpoints[name], ids, torch.float64)[..., :300])
    assert float(diff64.abs().max()) <= 1e-12
    print(f"{name}: max abs logit diff fp32 {float((out - ref[..., :300]).abs().max()):.2e}, "
          f"float64 {float(diff64.abs().max()):.2e}")
    config = json.loads((exports[name] / "config.json").read_text())
    expected = {"tp2_mup": (True, None), "pp2": (False, None), "ramp": (True, [32, 0.4])}[name]
    assert (config["use_mup"], config["growth_norm_mask"]) == expected
    assert config["padded_vocab_size"] == 384 and config["vocab_size"] == 300


def test_without_the_growth_fold_the_ramp_checkpoint_would_differ(checkpoints, exports):
    """The ramp test is sensitive: the same weights as a plain model (masks not applied) compute
    something else, so folding the masks is what makes the parity hold."""
    from flm_ext.export.modeling_flm import FLMForCausalLM

    folder = exports["ramp"]
    config = json.loads((folder / "config.json").read_text())
    assert config["layer_gates"] == [1.0, 0.4, 1.0]
    plain = FLMForCausalLM.from_pretrained(str(folder), growth_norm_mask=None, layer_gates=None).eval()
    ids = probe(300)
    with torch.no_grad():
        diff = (plain(ids).logits - reference_logits(checkpoints["ramp"], ids)[..., :300]).abs().max()
    assert diff > 1e-2


@pytest.mark.parametrize("kind", ["CL100kTokenizer", "GPT2BPETokenizer", "HuggingFaceTokenizer"])
def test_autotokenizer_gives_the_training_ids(kind, bpe, exports, tmp_path):
    from transformers import AutoTokenizer

    from flm_ext.data.tokenizers import build_tokenizer
    from flm_ext.export.tokenizer import write_tokenizer

    if kind == "HuggingFaceTokenizer":
        folder, training = exports["pp2"], build_tokenizer(kind, tokenizer_model=bpe)  # a complete export
    else:
        training = build_tokenizer(kind)
        folder = tmp_path
        write_tokenizer(training, str(folder), tokenizer_model=None, model_max_length=2048)
    # trust_remote_code=False: the tokenizer needs none of the exported model code.
    hf = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    ids = training.tokenize(MIXED)
    assert hf(MIXED)["input_ids"] == ids
    assert hf.decode(ids) == MIXED
    assert hf.eos_token_id == training.eod and hf.convert_ids_to_tokens(training.eod) == "<|endoftext|>"
    assert len(set(ids)) > 20


def test_incremental_decoding_equals_the_full_forward(exports):
    """64 steps with the KV cache (xPos at offset positions) against one forward over everything,
    in the exported model and in our generation loop."""
    from transformers.cache_utils import DynamicCache

    from flm_ext.export.generation import generate_tokens

    model = auto_model(exports["tp2_mup"])
    prompt = probe(300, length=8, batch=1)
    steps: list[torch.Tensor] = []
    tokens = list(generate_tokens(model, prompt[0].tolist(), 64, on_logits=steps.append))
    assert len(tokens) == 64 and len(set(tokens)) > 4
    full_ids = torch.cat([prompt, torch.tensor([tokens])], dim=1)
    with torch.no_grad():
        full = model(full_ids).logits[0]
        cache = DynamicCache()
        pieces = [model(prompt, past_key_values=cache, use_cache=True).logits[0]]
        for t in range(8, full_ids.shape[1]):
            pieces.append(model(full_ids[:, t:t + 1], past_key_values=cache, use_cache=True).logits[0])
    # fp32 matmuls of other shapes round differently: a few ulp of the largest logit (~20 here).
    tol = 1e-6 * float(full.abs().max())
    assert float((torch.cat(pieces) - full).abs().max()) <= tol
    ours = torch.stack(steps)  # logits that chose token i, at position 7 + i
    assert float((ours - full[7:7 + 64]).abs().max()) <= tol


def test_greedy_generate_equals_transformers_generate(exports, bpe):
    """Token for token over 64 tokens (in process), and the CLI prints the same text."""
    from transformers import AutoTokenizer

    from flm_ext.export.generation import generate_tokens

    folder = exports["pp2"]
    model, tok = auto_model(folder), AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    prompt = "In the beginning 起初"
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    theirs = model.generate(ids, max_new_tokens=64, do_sample=False, eos_token_id=None, pad_token_id=0)[0, ids.shape[1]:]
    ours = list(generate_tokens(model, ids[0].tolist(), 64))
    assert ours == theirs.tolist() and len(set(ours)) > 4
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "generate.py"), "--load", str(folder), "--prompt",
                           prompt, "--max-new-tokens", "64", "--greedy"], capture_output=True, text=True, env=ENV,
                          stdin=subprocess.DEVNULL, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    stop = ours.index(tok.eos_token_id) if tok.eos_token_id in ours else len(ours)
    assert proc.stdout == prompt + tok.decode(ours[:stop]) + "\n"


def test_generation_from_a_checkpoint_equals_the_export(checkpoints, exports, bpe):
    """load_hf_model on a TP=2 checkpoint converts it in memory to the same model as the export."""
    from flm_ext.data.tokenizers import build_tokenizer
    from flm_ext.export.generation import load_hf_model

    tok = build_tokenizer("HuggingFaceTokenizer", tokenizer_model=bpe)
    direct, codec = load_hf_model(checkpoints["tp2_mup"], tokenizer=tok)
    exported, _ = load_hf_model(str(exports["tp2_mup"]))
    ids = probe(300)
    with torch.no_grad():
        assert torch.equal(direct(ids).logits, exported(ids).logits)
    assert codec.encode(MIXED) == tok.tokenize(MIXED)


def test_round_trip_is_bitwise(exports, bpe, tmp_path):
    from flm_ext.export.importer import import_hf

    first = exports["tp2_mup"]
    import_hf(str(first), str(tmp_path / "ckpt"), log=lambda m: None)
    again = export(str(tmp_path / "ckpt"), tmp_path / "again", bpe)
    names = sorted(os.listdir(first))
    assert names == sorted(os.listdir(again)) and len(names) == 8
    match, mismatch, errors = filecmp.cmpfiles(first, again, names, shallow=False)
    assert (mismatch, errors) == ([], [])


def _run_main(tool: str, argv: list[str], capsys) -> tuple[int, str]:
    rc = _tool(tool).main(argv)
    return rc, capsys.readouterr().err


def test_bad_input_is_one_line_and_leaves_nothing(checkpoints, exports, bpe, tmp_path, capsys):
    tok = ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", bpe]
    out = tmp_path / "out"
    cases = [
        ("export_hf", ["--load", checkpoints["pp2"], "--save", str(exports["pp2"]), *tok], "--save"),
        ("export_hf", ["--load", str(tmp_path / "nothing"), "--save", str(out), *tok], "--load"),
        ("export_hf", ["--load", checkpoints["pp2"], "--save", str(out), "--dtype", "float8", *tok], "--dtype"),
        ("export_hf", ["--load", checkpoints["pp2"], "--save", str(out), "--iteration", "9", *tok], "--load"),
        ("export_hf", ["--load", checkpoints["pp2"], "--save", str(out), "--block-mb", "0", *tok], "--block-mb"),
        ("export_hf", ["--load", checkpoints["pp2"], "--save", str(out), "--tokenizer-type",
                       "HuggingFaceTokenizer", "--tokenizer-model", str(tmp_path / "none.json")], "--tokenizer"),
        ("import_hf", ["--load", str(exports["ramp"]), "--save", str(out)], "growth ramp"),
        ("import_hf", ["--load", checkpoints["pp2"], "--save", str(out)], "config.json"),
    ]
    for tool, argv, needle in cases:
        rc, err = _run_main(tool, argv, capsys)
        assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, (tool, argv, err)
        assert not out.exists() and not Path(str(out) + ".partial").exists()


def test_incomplete_checkpoint_is_refused(checkpoints, bpe, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(checkpoints["pp2"], broken)
    folder = next(broken.glob("iter_*"))
    shard = next(folder.glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-10])
    rc, err = _run_main("export_hf", ["--load", str(broken), "--save", str(tmp_path / "out"), "--tokenizer-type",
                                      "HuggingFaceTokenizer", "--tokenizer-model", bpe], capsys)
    assert rc == 2 and "--load" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_model_code_is_standalone_and_copied(exports):
    """configuration_flm.py / modeling_flm.py import only torch and transformers (and each other),
    and every export carries this package's copies."""
    import ast

    for name in ("configuration_flm.py", "modeling_flm.py"):
        source = (REPO / "flm_ext" / "export" / name).read_text()
        assert (exports["pp2"] / name).read_text() == source
        modules = set()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                modules |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                modules.add("." if node.level else node.module.split(".")[0])
        assert modules <= {"__future__", "torch", "transformers", "."}, modules


def test_bfloat16_export(checkpoints, exports, bpe, tmp_path):
    """--dtype bfloat16: every tensor is the float32 export's, rounded to bf16; it loads and runs."""
    from safetensors.torch import load_file

    folder = export(checkpoints["pp2"], tmp_path / "bf16", bpe, dtype=torch.bfloat16)
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"

    def tensors(path: Path) -> dict:
        out = {}
        for shard in sorted(path.glob("*.safetensors")):
            out.update(load_file(str(shard)))
        return out

    half, full = tensors(folder), tensors(exports["pp2"])
    assert half.keys() == full.keys() and len(half) == 27
    assert all(half[k].dtype == torch.bfloat16 and torch.equal(half[k], full[k].to(torch.bfloat16)) for k in half)
    model = auto_model(folder)
    assert model.dtype == torch.bfloat16
    ids = probe(300)
    with torch.no_grad():
        half_logits = model(ids).logits.double()
        full_logits = auto_model(exports["pp2"])(ids).logits.double()
    # bf16 keeps 8 mantissa bits: weights and activations within a few per cent of the float32 model's
    assert ((half_logits - full_logits).norm() / full_logits.norm()).item() <= 0.05


def test_sampling_and_streaming():
    from flm_ext.data.tokenizers import build_tokenizer
    from flm_ext.export.generation import Codec, Sampling, StreamDecoder, pick

    logits = torch.randn(300, generator=torch.Generator().manual_seed(0))
    best = int(logits.argmax())
    assert pick(logits, Sampling(greedy=False, top_k=1)) == best
    assert pick(logits, Sampling(greedy=False, top_p=1e-6)) == best
    draws = [pick(logits, Sampling(greedy=False, temperature=0.7, top_k=5), torch.Generator().manual_seed(s))
             for s in range(40)]
    assert set(draws) <= set(torch.topk(logits, 5).indices.tolist()) and len(set(draws)) > 1
    again = [pick(logits, Sampling(greedy=False, temperature=0.7, top_k=5), torch.Generator().manual_seed(s))
             for s in range(40)]
    assert draws == again
    gpt2 = build_tokenizer("GPT2BPETokenizer")
    ids = gpt2.tokenize(MIXED)
    decoder = StreamDecoder(Codec.from_training(gpt2))
    pieces = [decoder.push(t) for t in ids] + [decoder.flush()]
    assert "".join(pieces) == MIXED and not any("\ufffd" in p for p in pieces)
    assert sum(1 for p in pieces if p == "") > 3  # emoji and CJK bytes held back until complete


def test_generate_cli_interactive_and_bad_flags(exports, checkpoints, monkeypatch, capsys):
    import io

    tool = _tool("generate")
    monkeypatch.setattr(sys, "stdin", io.StringIO("In the beginning\n起初\n"))
    assert tool.main(["--load", str(exports["tp2_mup"]), "--interactive", "--max-new-tokens", "5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("In the beginning") and "\n起初" in out and out.endswith("\n")
    for argv, needle in [(["--prompt", "x", "--greedy", "--temperature", "1"], "--greedy"),
                         (["--prompt", "x", "--temperature", "0.7", "--top-p", "2"], "--top-p"),
                         ([], "--prompt"), (["--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens")]:
        assert tool.main(["--load", str(exports["tp2_mup"]), *argv]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err
    assert tool.main(["--load", checkpoints["pp2"], "--prompt", "x"]) == 2  # a checkpoint needs its tokenizer
    err = capsys.readouterr().err
    assert "--tokenizer-type" in err and len(err.strip().splitlines()) == 1


def test_left_padded_batches_equal_single_sequences(exports):
    """Batched scoring and generation (as evaluation harnesses batch prompts): left padding with an
    attention mask gives each row the logits and greedy tokens it gets alone."""
    model = auto_model(exports["tp2_mup"])
    long, short = probe(300, length=12, batch=1)[0], probe(300, length=5, batch=1)[0] + 1
    batch = torch.stack([long, torch.cat([torch.zeros(7, dtype=torch.long), short])])
    mask = torch.tensor([[1] * 12, [0] * 7 + [1] * 5])
    with torch.no_grad():
        both = model(batch, attention_mask=mask).logits
        assert float((both[0] - model(long[None]).logits[0]).abs().max()) <= 1e-5
        assert float((both[1, 7:] - model(short[None]).logits[0]).abs().max()) <= 1e-5
        batched = model.generate(batch, attention_mask=mask, max_new_tokens=16, do_sample=False, eos_token_id=None,
                                 pad_token_id=0)[:, 12:]
        alone = model.generate(short[None], max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert batched[1].tolist() == alone[0, 5:].tolist()


def test_packed_sequences_equal_unpacked_ones(exports):
    """Sequences packed into one row, told apart by position_ids restarting at 0 (as serving
    engines and packed training batches pass them), get the logits each gets alone."""
    model = auto_model(exports["tp2_mup"])
    parts = [probe(300, length=n, batch=1)[0] + i for i, n in enumerate((9, 5, 14))]
    packed = torch.cat(parts)[None]
    positions = torch.cat([torch.arange(len(p)) for p in parts])[None]
    with torch.no_grad():
        together = model(packed, position_ids=positions, use_cache=False).logits[0]
        alone = torch.cat([model(p[None]).logits[0] for p in parts])
        unmarked = model(packed, use_cache=False).logits[0]  # without position_ids: one long sequence
    assert float((together - alone).abs().max()) <= 1e-5
    assert float((unmarked - alone).abs().max()) > 1e-2


def test_attention_backends_agree(exports):
    """eager and sdpa (and flash_attention_2 where installed) give the same logits, plain and with
    left padding; set per model as transformers users do."""
    import importlib.util

    from transformers import AutoModelForCausalLM

    backends = ["eager", "sdpa"] + (["flash_attention_2"] if importlib.util.find_spec("flash_attn") else [])
    ids = probe(300, length=20)
    mask = torch.ones_like(ids)
    mask[1, :6] = 0
    results = {}
    for backend in backends:
        model = AutoModelForCausalLM.from_pretrained(str(exports["tp2_mup"]), trust_remote_code=True,
                                                     attn_implementation=backend).eval()
        assert model.config._attn_implementation == backend
        with torch.no_grad():
            results[backend] = (model(ids).logits, model(ids, attention_mask=mask).logits[1, 6:])
    for backend in backends[1:]:
        for ref, out in zip(results["eager"], results[backend]):
            assert float((ref - out).abs().max()) <= 1e-5, backend


def test_attention_goes_through_the_interface_with_explicit_scale(exports):
    """What serving engines rely on: attention is looked up in ALL_ATTENTION_FUNCTIONS, gets
    scaling= explicitly (µP: 1/head_dim, not head_dim^-0.5), is_causal, position_ids, and any keyword
    the caller passed to the model; per-head q/k/v of the configured shape."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    seen = []

    def recording(module, query, key, value, attention_mask, **kwargs):
        seen.append((query.shape, kwargs))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("flm_recording", recording)
    model = auto_model(exports["tp2_mup"])
    ids = probe(300, length=10, batch=1)
    with torch.no_grad():
        ref = model(ids).logits
        model.set_attn_implementation("flm_recording")
        out = model(ids, engine_tag="x").logits
    config = model.config
    assert len(seen) == config.num_hidden_layers and torch.equal(out, ref)
    shape, kwargs = seen[0]
    assert tuple(shape) == (1, config.num_attention_heads, 10, config.head_dim)
    assert config.use_mup and kwargs["scaling"] == 1.0 / config.head_dim != config.head_dim ** -0.5
    assert kwargs["is_causal"] is True and kwargs["engine_tag"] == "x"
    assert kwargs["position_ids"].tolist() == [list(range(10))]
    cfg = json.loads((exports["tp2_mup"] / "config.json").read_text())
    assert cfg["auto_map"]["AutoModel"] == "modeling_flm.FLMModel"
    assert type(model).__mro__[1]._supports_attention_backend
    assert config.logit_scale == cfg["output_mult"] / cfg["mup_scale_factor"] != 1.0


def test_tp_plan_with_transformers_tensor_parallel_loading(exports, tmp_path):
    """The export's base_model_tp_plan (what vLLM shards by) used by transformers' own tensor-parallel
    loading in 2 gloo processes: each rank holds half the heads and half the FFN, and the logits
    equal the unsharded model's."""
    folder = exports["tp2_mup"]
    spawn(export_workers.tp_plan_logits, 2, tmp_path, str(folder))
    full = auto_model(folder)
    config = full.config
    width = config.num_attention_heads * config.head_dim
    for rank in range(2):
        out = torch.load(tmp_path / f"rank{rank}.pt")
        assert out["shapes"] == {"qkv": (3 * width // 2, config.hidden_size), "o": (config.hidden_size, width // 2),
                                 "fc1": (config.intermediate_size // 2, config.hidden_size),
                                 "fc2": (config.hidden_size, config.intermediate_size // 2)}
        with torch.no_grad():
            ref = full(out["ids"]).logits
        assert float((out["logits"] - ref).abs().max()) <= 1e-5
