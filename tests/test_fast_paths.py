"""Each GPU fast path (flm_ext/model/fused.py) against the reference path, forward and gradients, on CPU.

The Triton kernel runs under Triton's interpreter (TRITON_INTERPRET=1, numpy on the CPU); the
references are the unfused code the model always ran (`xpos.apply_rotary`, megatron's unfused
MLP / bias-dropout-add / cross-entropy, torch's foreach AdamW) or the xPos formula in float64.
"""
import os

import pytest
import torch
import torch.nn.functional as F

import reference_flm
from flm_ext.config import FLMConfig, to_transformer_config
from flm_ext.model import fused
from flm_ext.model.xpos import XPosEmbedding


def _qkv_views(s, b, h, d, dtype, seed):
    """q, k, v as megatron's SelfAttention hands them over: strided views of one fused QKV output."""
    gen = torch.Generator().manual_seed(seed)
    mixed = torch.randn(s, b, h * 3 * d, generator=gen, dtype=torch.float64).to(dtype)
    q, k, v = torch.split(mixed.view(s, b, h, 3 * d), d, dim=-1)
    assert not q.is_contiguous()
    return q, k, v


def _grads(impl, q, k, positions, gq, gk):
    q, k = q.detach().requires_grad_(), k.detach().requires_grad_()
    qo, ko = fused.apply_xpos_qk(q, k, positions, impl=impl)
    assert qo.shape == (q.shape[1], q.shape[2], q.shape[0], q.shape[3])
    loss = (qo.double() * gq).sum() + (ko.double() * gk).sum()
    return (qo, ko, *torch.autograd.grad(loss, (q, k)))


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def triton_interpreter():
    pytest.importorskip("triton", reason="triton is not installed (pip install triton; tested via its interpreter)")
    os.environ["TRITON_INTERPRET"] = "1"  # read when the kernel module is imported (its @triton.jit)
    from flm_ext.model import xpos_triton

    if not getattr(xpos_triton.xpos_qk_kernel, "__class__").__name__.startswith("Interpreted"):
        pytest.skip("the Triton kernel module was imported before TRITON_INTERPRET was set")
    return xpos_triton


XPOS_CASES = [  # (s, b, h, d, scale_base): FLM's d=128 (half a power of two) and d=24 (masked columns)
    (40, 2, 3, 128, 512.0), (33, 1, 2, 24, 512.0), (17, 2, 2, 16, None)]


def _check_impl(impl, dtype, case, seed, fwd_tol, grad_tol):
    s, b, h, d, scale_base = case
    q, k, _ = _qkv_views(s, b, h, d, dtype, seed)
    positions = XPosEmbedding(d, base=10000.0, scale_base=scale_base, center=s / 2)
    gen = torch.Generator().manual_seed(seed + 1)
    gq, gk = (torch.randn(b, h, s, d, generator=gen, dtype=torch.float64) for _ in range(2))
    # Reference in float64: the code the model always ran, on upcast inputs.
    ref = _grads("reference", q.double(), k.double(), positions, gq, gk)
    got = _grads(impl, q, k, positions, gq, gk)
    for name, a, r, tol in zip(("q", "k", "grad q", "grad k"), got, ref, (fwd_tol, fwd_tol, grad_tol, grad_tol)):
        assert a.dtype == dtype and torch.isfinite(a).all(), name
        assert _rel(a, r) <= tol, (name, _rel(a, r))


@pytest.mark.parametrize("case", XPOS_CASES)
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 8e-3)])
def test_triton_xpos_matches_reference(triton_interpreter, case, dtype, tol):
    _check_impl("triton", dtype, case, seed=hash(case) % 1000, fwd_tol=tol, grad_tol=tol)


def test_triton_xpos_equals_the_formula(triton_interpreter):
    """Independent of xpos.py's tables: q.k after the kernel equals docs/FLM.md's xPos scores (section 1.1)."""
    s, d = 64, 32
    gen = torch.Generator().manual_seed(7)
    q, k = torch.randn(2, s, d, generator=gen, dtype=torch.float64)
    positions = XPosEmbedding(d, base=10000.0, scale_base=512.0, center=s / 2)
    qo, ko = fused.apply_xpos_qk(q.float()[:, None, None], k.float()[:, None, None], positions, impl="triton")
    expected = reference_flm.scores(q, k, torch.arange(s), base=10000.0, scale_base=512.0, center=s / 2)
    assert _rel(qo[0, 0] @ ko[0, 0].T, expected) <= 1e-6


def test_triton_xpos_writes_every_output(triton_interpreter):
    """Outputs start as NaN-poisoned memory in no test; check by a shape where rows % block != 0."""
    s, b, h, d = 37, 3, 5, 24  # 555 rows, not a multiple of the kernel's row block
    q, k, _ = _qkv_views(s, b, h, d, torch.float32, 3)
    positions = XPosEmbedding(d, base=10000.0, scale_base=512.0, center=s / 2)
    real_empty = torch.empty
    try:
        torch.empty = lambda *a, **kw: real_empty(*a, **kw).fill_(float("nan"))
        qo, ko = fused.apply_xpos_qk(q, k, positions, impl="triton")
    finally:
        torch.empty = real_empty
    ref_q, ref_k = fused.apply_xpos_qk(q.double(), k.double(), positions, impl="reference")
    assert torch.isfinite(qo).all() and torch.isfinite(ko).all()  # no row left as the poisoned memory
    assert _rel(qo, ref_q) <= 1e-6 and _rel(ko, ref_k) <= 1e-6  # and every row holds its value


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 8e-3)])
def test_compiled_xpos_matches_reference(monkeypatch, dtype, tol):
    """The torch.compile'd path, traced as one graph (fullgraph) with AOT autograd, eager kernels.

    Inductor's code generation is left out here (minutes of C++ compilation on a 2-core CI box);
    the graph, its autograd and its arithmetic are what this path adds over the reference.
    """
    compiled = torch.compile(fused._xpos_qk_eager, fullgraph=True, dynamic=False, backend="aot_eager")
    monkeypatch.setattr(fused, "_compiled_xpos_qk", lambda: compiled)
    _check_impl("compiled", dtype, XPOS_CASES[0], seed=11, fwd_tol=tol, grad_tol=tol)


def test_core_attention_fast_paths_equal_reference(megatron_single_process, triton_interpreter):
    """FLMCoreAttention output and q/k/v gradients with each xPos path against the reference path."""
    from megatron.core.transformer.enums import AttnMaskType

    from flm_ext.model.attention import FLMCoreAttention

    cfg = FLMConfig(num_layers=1, hidden_size=64, num_attention_heads=4, seq_length=24, vocab_size=128)
    tc = to_transformer_config(cfg)
    q, k, v = _qkv_views(cfg.seq_length, 2, 4, 16, torch.float32, 5)
    results = {}
    for impl in ("reference", "triton"):
        attn = FLMCoreAttention(tc, 1, AttnMaskType.causal, "self", xpos_center=cfg.seq_length / 2, xpos_impl=impl)
        inputs = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        out = attn(*inputs, None)
        out.pow(2).sum().backward()
        results[impl] = (out, *(t.grad for t in inputs))
    for got, ref in zip(results["triton"], results["reference"]):
        assert _rel(got, ref) <= 1e-5


def _set_triton(monkeypatch, state: str) -> None:
    """Make `import triton` find an installed package, nothing, or a broken install, on any host."""
    import sys
    import types

    if state == "installed":
        package = types.ModuleType("triton")
        package.language = types.ModuleType("triton.language")
        monkeypatch.setitem(sys.modules, "triton", package)
        monkeypatch.setitem(sys.modules, "triton.language", package.language)
    else:  # None in sys.modules: `import` raises ImportError; a broken install raises at its submodule
        monkeypatch.setitem(sys.modules, "triton", None if state == "absent" else types.ModuleType("triton"))
        monkeypatch.setitem(sys.modules, "triton.language", None)
    fused.triton_available.cache_clear()  # looked up once per process: forget this host's answer


@pytest.mark.parametrize("triton, on_cuda", [("installed", "triton"), ("absent", "compiled"), ("broken", "compiled")])
def test_xpos_impl_selection(monkeypatch, request, triton, on_cuda):
    """The selection rule as fixed expectations per host (fused.py docstring): the Triton kernel on CUDA
    when triton imports, torch.compile's path when it does not, the reference on CPU either way."""
    monkeypatch.delenv("FLM_XPOS_IMPL", raising=False)
    request.addfinalizer(fused.triton_available.cache_clear)  # forget the stand-in triton at teardown
    _set_triton(monkeypatch, triton)
    assert fused.resolve_xpos_impl(None, torch.device("cpu")) == "reference"  # CPU runs are unchanged
    assert fused.resolve_xpos_impl(None, torch.device("cuda")) == on_cuda
    monkeypatch.setenv("FLM_XPOS_IMPL", "compiled")
    assert fused.resolve_xpos_impl(None, torch.device("cpu")) == "compiled"
    assert fused.resolve_xpos_impl("reference", torch.device("cuda")) == "reference"
    with pytest.raises(ValueError, match="fast"):
        fused.resolve_xpos_impl("fast")


def test_sdpa_backend_switch(monkeypatch):
    monkeypatch.setenv("FLM_SDPA_BACKENDS", "cudnn,flash")
    from torch.nn.attention import SDPBackend

    assert fused._sdpa_backend_list("cudnn,flash") == [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION]
    with pytest.raises(ValueError, match="flashy"):
        fused._sdpa_backend_list("flashy")
    # On CPU the switch never narrows SDPA (its CPU kernel is "math"/flash-CPU, chosen by torch): the
    # result is causal attention, computed here in float64 from its definition.
    q, k, v = torch.randn(3, 1, 2, 4, 8, generator=torch.Generator().manual_seed(2))
    with fused.sdpa_backends(torch.device("cpu")):
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    scores = (q.double() @ k.double().transpose(-1, -2)) / 8 ** 0.5
    scores = scores.masked_fill(torch.ones(4, 4, dtype=torch.bool).triu(1), float("-inf"))
    assert _rel(out, scores.softmax(-1) @ v.double()) <= 1e-6


# --- megatron's fusions ------------------------------------------------------------------------------
def test_megatron_fused_bias_gelu_is_flm_gelu():
    """megatron's fused bias-GeLU (what bias_activation_fusion runs) equals GeLU(tanh), not GeLU(erf)."""
    from megatron.core.fusions.fused_bias_gelu import bias_gelu_impl

    gen = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(64, 96, generator=gen, dtype=torch.float64)).requires_grad_()
    bias = torch.randn(96, generator=gen, dtype=torch.float64).requires_grad_()
    upstream = torch.randn(64, 96, generator=gen, dtype=torch.float64)
    fused_out = bias_gelu_impl(x, bias)
    fused_grads = torch.autograd.grad((fused_out * upstream).sum(), (x, bias))
    ref_out = F.gelu(x + bias, approximate="tanh")
    ref_grads = torch.autograd.grad((ref_out * upstream).sum(), (x, bias))
    assert (fused_out - ref_out).abs().max().item() <= 1e-7  # megatron's sqrt(2/pi) has 8 digits
    for a, r in zip(fused_grads, ref_grads):
        assert _rel(a, r) <= 1e-7
    assert (fused_out - F.gelu(x + bias)).abs().max().item() > 1e-4  # the erf GeLU is a different function


def test_gpu_fusions_config():
    cfg = FLMConfig(num_layers=1, hidden_size=32, num_attention_heads=2, seq_length=8, vocab_size=64)
    on = to_transformer_config(cfg, gpu_fusions=True, params_dtype=torch.bfloat16)
    assert on.bias_activation_fusion and on.bias_dropout_fusion and on.cross_entropy_loss_fusion
    # megatron's fused cross-entropy hands back bf16 gradients: never on for fp32 / fp16 models.
    assert not to_transformer_config(cfg, gpu_fusions=True).cross_entropy_loss_fusion
    assert on.activation_func is F.gelu  # megatron's selector for its tanh bias-GeLU
    off = to_transformer_config(cfg, gpu_fusions=True, bias_activation_fusion=False)
    assert off.activation_func is not F.gelu and off.activation_func.keywords == {"approximate": "tanh"}
    default = to_transformer_config(cfg)  # CPU: no fusions, as before
    assert not default.bias_activation_fusion and default.activation_func.keywords == {"approximate": "tanh"}


def test_model_with_gpu_fusions_equals_unfused(megatron_single_process):
    """Same weights, fusions on vs off: per-token losses and every gradient agree (fp32, CPU).

    fp32 has no fused cross-entropy (test_fused_cross_entropy_is_bf16_rounded_reference covers it).
    """
    from flm_ext.model.flm_model import build_model_chunks
    from flm_ext.model.global_weights import global_state_dict, load_global_state_dict

    cfg = FLMConfig(num_layers=2, hidden_size=32, num_attention_heads=2, seq_length=16, vocab_size=96,
                    init_method_std=0.1)
    [plain] = build_model_chunks(cfg, gpu_fusions=False)
    [fast] = build_model_chunks(cfg, gpu_fusions=True)
    load_global_state_dict([fast], global_state_dict([plain]))
    gen = torch.Generator().manual_seed(4)
    ids = torch.randint(0, cfg.vocab_size, (2, cfg.seq_length), generator=gen)
    labels = torch.randint(0, cfg.vocab_size, (2, cfg.seq_length), generator=gen)
    pos = torch.arange(cfg.seq_length).expand_as(ids)
    losses = {}
    for name, model in (("plain", plain), ("fast", fast)):
        loss = model(ids, pos, None, labels=labels)
        loss.sum().backward()
        losses[name] = loss.detach()
    assert torch.allclose(losses["fast"], losses["plain"], rtol=1e-5, atol=1e-5)
    grads = {name: dict(m.named_parameters()) for name, m in (("plain", plain), ("fast", fast))}
    for name, p in grads["plain"].items():
        assert _rel(grads["fast"][name].grad, p.grad) <= 1e-4, name


def test_fused_adam_gives_the_same_update(megatron_single_process):
    """megatron's torch-AdamW fallback switched to torch's fused kernel: same parameters after 3 steps."""
    from flm_ext.model.flm_model import build_model_chunks
    from flm_ext.model.global_weights import global_state_dict, load_global_state_dict
    from flm_ext.training.engine import build_optimizer, optimizer_step, wrap_ddp
    from flm_ext.training.optim import OptimConfig

    cfg = FLMConfig(num_layers=1, hidden_size=32, num_attention_heads=2, seq_length=8, vocab_size=64)
    runs = {}
    state = None
    for name in ("foreach", "fused"):
        [model] = build_model_chunks(cfg)
        if state is None:
            state = global_state_dict([model])
        load_global_state_dict([model], state)
        chunks = wrap_ddp([model])
        optimizer = build_optimizer(chunks, cfg, OptimConfig(lr=1e-2))
        if name == "fused":
            assert fused.use_fused_adam(optimizer) >= 1
        gen = torch.Generator().manual_seed(9)
        for _ in range(3):
            chunks[0].zero_grad_buffer()
            optimizer.zero_grad()
            ids = torch.randint(0, cfg.vocab_size, (2, cfg.seq_length), generator=gen)
            loss = chunks[0](ids, torch.arange(cfg.seq_length).expand_as(ids), None, labels=ids.roll(-1, 1)).mean()
            loss.backward()
            chunks[0].finish_grad_sync()
            ok, _ = optimizer_step(optimizer, loss.item())
            assert ok
        runs[name] = global_state_dict([model])
    moved = max((runs["foreach"][n] - state[n]).abs().max().item() for n in state)
    assert moved > 1e-3
    for n in state:
        diff = (runs["fused"][n] - runs["foreach"][n]).abs()
        if n.endswith("linear_qkv.bias"):
            # The key bias has a zero gradient in exact arithmetic (softmax ignores a shift shared by
            # all of a query's scores), so Adam normalises pure rounding noise there: leave it out.
            # megatron's QKV layout per head (one query group per head here): [q (d), k (d), v (d)].
            per_head = diff.reshape(cfg.num_attention_heads, 3, -1)
            diff = per_head[:, [0, 2], :]
        assert diff.max().item() <= 1e-6, n  # lr 1e-2: 1e-4 of a step


def test_fused_cross_entropy_is_bf16_rounded_reference(megatron_single_process):
    """megatron's fused (native) cross-entropy: the unfused loss, and its gradient rounded to bf16."""
    from megatron.core import parallel_state
    from megatron.core.fusions.fused_cross_entropy import fused_vocab_parallel_cross_entropy
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    gen = torch.Generator().manual_seed(6)
    logits = (4 * torch.randn(12, 2, 200, generator=gen)).requires_grad_()
    target = torch.randint(0, 200, (12, 2), generator=gen)
    upstream = torch.rand(12, 2, generator=gen)
    ref = F.cross_entropy(logits.double().reshape(-1, 200), target.reshape(-1), reduction="none").view(12, 2)
    [ref_grad] = torch.autograd.grad((ref * upstream).sum(), logits)
    tp = parallel_state.get_tensor_model_parallel_group()
    for name in ("unfused", "fused"):
        x = logits.detach().clone().requires_grad_()  # both work on their input in place: pass a copy
        loss = (vocab_parallel_cross_entropy(x.clone(), target) if name == "unfused"
                else fused_vocab_parallel_cross_entropy(x.clone(), target, tp))
        assert _rel(loss, ref) <= 1e-6, name
        [grad] = torch.autograd.grad((loss * upstream).sum(), x)
        tol = 4e-3 if name == "fused" else 1e-6  # bf16 has 8 mantissa bits: relative rounding <= 2^-9
        assert _rel(grad, ref_grad) <= tol, name
