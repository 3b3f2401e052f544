"""Zero-shot teacher-signal accuracy: the prompt, the label comparison and the baselines, checked
against a rule-following stand-in model whose right answers are known in advance."""
import json

import pytest
import torch

from flm_ext.data.tokenizers import build_tokenizer
from flm_ext.evaluation import zero_shot_accuracy

GOOD = "good"


class RuleModel(torch.nn.Module):
    """Says "true" (favours the true emoji's tokens) exactly when the prompt holds the token of GOOD."""

    def __init__(self, tok, vocab):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.good = tok.tokenize(" " + GOOD)[-1]
        self.true_ids, self.false_ids = tok.label_ids(True), tok.label_ids(False)
        self.vocab = vocab

    def forward(self, ids, positions, mask):
        logits = torch.zeros(*ids.shape, self.vocab)
        for row in range(ids.shape[0]):
            says_true = bool((ids[row] == self.good).any())
            favoured = self.true_ids if says_true else self.false_ids
            logits[row, :, favoured[0]] += 1.0  # favour the chosen emoji's tokens at every position
            logits[row, :, favoured[-1]] += 5.0
        return logits


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("GPT2BPETokenizer")


def test_accuracy_and_baselines_follow_the_rule(tok, tmp_path):
    from flm_ext.config import FLMConfig

    # 6 true samples (4 say GOOD -> right), 2 false samples (1 says GOOD -> wrong)
    rows = [(f"a {GOOD} thing", True)] * 4 + [("a thing", True)] * 2 + [(f"so {GOOD}", False), ("bad", False)]
    path = tmp_path / "held_out.jsonl"
    path.write_text("".join(json.dumps({"text": t, "proposition": "This is true.", "label": y}) + "\n"
                            for t, y in rows))
    config = FLMConfig(num_layers=1, hidden_size=8, num_attention_heads=1, seq_length=32, vocab_size=tok.vocab_size)
    result = zero_shot_accuracy(RuleModel(tok, tok.vocab_size), config, tok, str(path))
    family = result["This is true."]
    assert family == result["all"]
    assert family["samples"] == 8
    assert family["accuracy"] == pytest.approx(5 / 8)
    assert family["true_share"] == pytest.approx(6 / 8)
    assert family["majority_baseline"] == pytest.approx(6 / 8)
    assert family["balanced_accuracy"] == pytest.approx((4 / 6 + 1 / 2) / 2)
    # max_samples reads only the first lines
    assert zero_shot_accuracy(RuleModel(tok, tok.vocab_size), config, tok, str(path), max_samples=4)["all"] == \
        {"accuracy": 1.0, "samples": 4, "true_share": 1.0, "majority_baseline": 1.0, "balanced_accuracy": 1.0}


def test_prompt_is_what_training_saw_before_the_label(tok, tmp_path, monkeypatch):
    """The prompt is docs/FLM.md's `text + "\\n" + proposition`, and exactly the tokens preprocessing
    wrote before the label for the same sample (read back with megatron's reader): the model is asked
    in the form it was trained on."""
    import flm_ext.evaluation.core as evaluation
    from data_testutils import read_indexed
    from flm_ext.data.preprocess import PreprocessConfig, preprocess

    prompts = []
    monkeypatch.setattr(evaluation, "label_log_probs", lambda m, c, prompt, cands: prompts.append(prompt) or [0.0, 1.0])
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"text": "Some text.", "proposition": "It is short.", "label": False}) + "\n")
    result = zero_shot_accuracy(None, None, tok, str(path))
    assert prompts == [tok.tokenize("Some text.\nIt is short.")]
    cfg = PreprocessConfig(input=str(path), output_prefix=str(tmp_path / "pre"), tokenizer_type="GPT2BPETokenizer",
                           teacher_signal=True, append_eod=True, workers=1, log_interval=1e9)
    preprocess(cfg)
    [[doc], _], [[mask], _] = (read_indexed(cfg.output_path(s)) for s in ("teacher", "teacher_loss_mask"))
    assert prompts == [doc[:mask.index(1)]]  # everything before the first trained (label) token
    assert result["all"]["accuracy"] == 1.0  # false scored higher, label false


def test_label_log_probs_match_a_plain_forward(megatron_single_process, tok):
    """The batched scoring equals log-softmax read off one full forward pass per candidate, on a real model."""
    from flm_ext.config import FLMConfig
    from flm_ext.evaluation import label_log_probs
    from flm_ext.model.flm_model import build_model_chunks

    config = FLMConfig(num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=24, vocab_size=tok.vocab_size)
    model = build_model_chunks(config)[0].eval()
    prompt = tok.tokenize("A short review.\nThis review is positive.")
    candidates = [tok.label_ids(True), tok.label_ids(False), tok.tokenize(" maybe so")]  # unequal lengths too
    for cands in (candidates[:2], candidates):
        got = label_log_probs(model, config, prompt, cands)
        for cand, score in zip(cands, got):
            ids = (prompt + cand)[-config.seq_length:]
            with torch.no_grad():
                logits = model(torch.tensor([ids]), torch.arange(len(ids))[None], None)[0].double()
            logp = torch.log_softmax(logits, dim=-1)
            ref = sum(logp[len(ids) - len(cand) - 1 + i, t].item() for i, t in enumerate(cand))
            assert score == pytest.approx(ref, abs=1e-4)
