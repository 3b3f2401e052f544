"""Training datasets: the language blend follows its weights, every global batch holds its
teacher samples at fixed positions, and loss masks cover exactly the label tokens.

The mask reference is independent of the dataset code: the label emoji are tokenized on their
own, and label tokens are found in the sample's labels by their ids (teacher texts here contain
no emoji, so the emoji's first token appears only in labels)."""
import dataclasses
import os
import subprocess
import sys

import pytest
import torch

from data_testutils import EN_WORDS, REPO, ZH_CHARS, write_jsonl
from flm_ext.data.datasets import DataConfig, build_pretraining_datasets, teacher_dataset_paths
from flm_ext.data.preprocess import PreprocessConfig, preprocess
from flm_ext.data.tokenizers import build_tokenizer

SEQ, GBS, FRACTION, WEIGHTS = 64, 8, 0.25, (0.535, 0.465)
TRAIN, VALID = 1600, 160


def _docs(rng, n, alphabet, sep, lo, hi):
    return [sep.join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    import random

    rng = random.Random(7)
    d = tmp_path_factory.mktemp("corpus")
    en = write_jsonl(str(d / "en.jsonl"), [{"text": t} for t in _docs(rng, 300, EN_WORDS, " ", 5, 60)])
    zh = write_jsonl(str(d / "zh.jsonl"), [{"text": t} for t in _docs(rng, 300, ZH_CHARS, "", 5, 60)])
    teacher = [
        {"text": t, "proposition": rng.choice(["It is so.", "这是真的。"]), "label": rng.random() < 0.5}
        for t in _docs(rng, 400, EN_WORDS + list(ZH_CHARS), " ", 2, 12)
    ]
    tj = write_jsonl(str(d / "teacher.jsonl"), teacher)
    for name, path, teacher_mode in (("en", en, False), ("zh", zh, False), ("teacher", tj, True)):
        preprocess(PreprocessConfig(input=path, output_prefix=str(d / name), tokenizer_type="GPT2BPETokenizer",
                                    append_eod=True, teacher_signal=teacher_mode, log_interval=1e9))
    return d


def _config(d, cache):
    return DataConfig(
        data_path=[str(WEIGHTS[0]), str(d / "en_text_document"), str(WEIGHTS[1]), str(d / "zh_text_document")],
        split="90,8,2", teacher_data_path=str(d / "teacher"), teacher_fraction=FRACTION, data_cache_path=str(cache),
    )


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("GPT2BPETokenizer")


@pytest.fixture(scope="module")
def datasets(corpus, tok):
    return build_pretraining_datasets(_config(corpus, corpus / "cache"), tok, SEQ, GBS, TRAIN, VALID, 0, seed=1234)


def _is_cjk(text):
    return any("\u4e00" <= c <= "\u9fff" for c in text)


def _reference_label_mask(tok, tokens, labels):
    """1 where labels[i] is a token of a label emoji (found by the emoji's own token ids)."""
    true_ids, false_ids = tok.tokenize("😈"), tok.tokenize("😡")
    assert len(true_ids) == len(false_ids) == 2 and true_ids[0] == false_ids[0]
    first, seconds = true_ids[0], {true_ids[1], false_ids[1]}
    prev = [tokens[0]] + labels[:-1]  # the token before labels[i] is tokens[i] == labels[i-1]
    return [1.0 if t == first or (t in seconds and p == first) else 0.0 for t, p in zip(labels, prev)]


def test_shapes_and_types(datasets):
    train, valid, test = datasets
    assert (len(train), len(valid), test) == (TRAIN, VALID, None)
    item = train[0]
    assert set(item) == {"tokens", "labels", "loss_mask", "position_ids"}
    for key, dtype in (("tokens", torch.int64), ("labels", torch.int64), ("loss_mask", torch.float32),
                       ("position_ids", torch.int64)):
        assert item[key].dtype == dtype and item[key].shape == (SEQ,)
    assert torch.equal(item["tokens"][1:], item["labels"][:-1])


def test_teacher_positions_and_loss_masks(datasets, tok):
    train, _, _ = datasets
    n_teacher = round(FRACTION * GBS)
    first_emoji_token = tok.tokenize("😈")[0]
    positions = None
    n_labels = 0
    for b in range(TRAIN // GBS):
        batch_teacher = []
        for j in range(GBS):
            item = train[b * GBS + j]
            tokens, labels, mask = item["tokens"].tolist(), item["labels"].tolist(), item["loss_mask"].tolist()
            is_teacher = first_emoji_token in tokens + labels  # only teacher documents hold emoji
            if is_teacher:
                batch_teacher.append(j)
                ref = _reference_label_mask(tok, tokens, labels)
                assert mask == ref, (b, j)
                n_labels += sum(ref)
                # every label is followed by the end of its document (when inside the sample)
                for i in range(SEQ - 1):
                    if ref[i] and not ref[i + 1]:
                        assert labels[i + 1] == tok.eod
            else:
                assert mask == [1.0] * SEQ, (b, j)  # language: every token counts
        assert len(batch_teacher) == n_teacher, b
        positions = positions or batch_teacher
        assert batch_teacher == positions  # the same positions in every batch
    assert positions == [3, 7]  # spread over the batch, not bunched at its start
    assert n_labels > 0


def test_blend_follows_weights(datasets, tok):
    train, _, _ = datasets
    langs = [_is_cjk(tok.detokenize(train[i]["tokens"].tolist())) for i in range(TRAIN)
             if train.source(i)[0] == "language"]
    n = len(langs)
    frac_en = 1 - sum(langs) / n
    sigma = (WEIGHTS[0] * WEIGHTS[1] / n) ** 0.5
    assert abs(frac_en - WEIGHTS[0]) < 3 * sigma, (frac_en, sigma)
    assert sum(langs) > 0 and n == TRAIN * (1 - FRACTION)


def test_valid_split_is_disjoint_from_train(corpus, datasets, tok):
    """Held-out documents: no valid language sample shares a document with train's."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    train, valid, _ = datasets
    # the blend's component GPTDatasets know which documents they use; compare per component
    for tr, va in zip(train.language.datasets, valid.language.datasets):
        assert set(tr.document_index.tolist()).isdisjoint(va.document_index.tolist())
    assert len(IndexedDataset(str(corpus / "en_text_document"))) == 300


def test_rebuild_from_cache_is_identical(corpus, datasets, tok):
    again = build_pretraining_datasets(_config(corpus, corpus / "cache"), tok, SEQ, GBS, TRAIN, VALID, 0, seed=1234)
    for i in range(0, TRAIN, 97):
        for key in ("tokens", "loss_mask"):
            assert torch.equal(again[0][i][key], datasets[0][i][key])


def test_config_validation(corpus):
    with pytest.raises(ValueError, match="--teacher-data-path"):
        DataConfig(data_path=["x"], teacher_fraction=0.1)
    with pytest.raises(ValueError, match="split"):
        DataConfig(data_path=["x"], split="90,10")
    with pytest.raises(ValueError, match="rounds to 0"):
        build_pretraining_datasets(DataConfig(data_path=["x"], teacher_data_path="t", teacher_fraction=0.01),
                                   None, SEQ, 8, 8, 0, 0, 1)


def test_mismatched_mask_dataset_is_refused(corpus, tok, tmp_path):
    """A loss-mask file from another run (other lengths) must not be paired silently."""
    import shutil

    text, mask = teacher_dataset_paths(str(corpus / "teacher"))
    other = str(tmp_path / "teacher")
    o_text, o_mask = teacher_dataset_paths(other)
    for ext in (".bin", ".idx"):
        shutil.copy(text + ext, o_text + ext)
        shutil.copy(str(corpus / "en_text_document") + ext, o_mask + ext)  # wrong lengths
    cfg = dataclasses.replace(_config(corpus, tmp_path / "cache"), teacher_data_path=other)
    with pytest.raises(RuntimeError, match="loss-mask"):
        build_pretraining_datasets(cfg, tok, SEQ, GBS, TRAIN, VALID, 0, seed=1234)


_NO_PG_SCRIPT = """
import sys, torch
from flm_ext.data.datasets import DataConfig, build_pretraining_datasets
from flm_ext.data.tokenizers import build_tokenizer
assert not torch.distributed.is_initialized()
d, cache = sys.argv[1], sys.argv[2]
cfg = DataConfig(data_path=['0.5', d + '/en_text_document', '0.5', d + '/zh_text_document'], split='90,8,2',
                 teacher_data_path=d + '/teacher', teacher_fraction=0.25, data_cache_path=cache)
train, _, _ = build_pretraining_datasets(cfg, build_tokenizer('GPT2BPETokenizer'), 64, 8, 64, 0, 0, 1)
print('first', train[0]['tokens'][:4].tolist())
"""


def test_builds_without_any_process_group(corpus, tmp_path):
    """A fresh process with no torch.distributed group and a cache dir: megatron-core's
    BlendedDataset would call get_rank() and fail without the patch in datasets._build."""
    r = subprocess.run([sys.executable, "-c", _NO_PG_SCRIPT, str(corpus), str(tmp_path / "cache")],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "first" in r.stdout


def _gloo_worker(rank, world, out, corpus, cache):
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)  # env:// from distributed.spawn
    tok = build_tokenizer("GPT2BPETokenizer")
    train, _, _ = build_pretraining_datasets(_config(corpus, cache), tok, SEQ, GBS, TRAIN, VALID, 0, seed=1234)
    torch.save([train[i]["tokens"] for i in range(0, TRAIN, 50)], os.path.join(out, f"rank{rank}.pt"))


def test_under_torch_distributed_gloo(corpus, datasets, tmp_path):
    """Two gloo ranks share a fresh cache dir (rank 0 builds, the other loads) and see the
    same samples as a single process."""
    from distributed import spawn

    spawn(_gloo_worker, 2, tmp_path, corpus, str(tmp_path / "cache"))
    expected = [datasets[0][i]["tokens"] for i in range(0, TRAIN, 50)]
    for rank in range(2):
        got = torch.load(str(tmp_path / f"rank{rank}.pt"))
        assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert os.listdir(tmp_path / "cache")


def test_language_only_when_no_teacher_data(corpus, tok):
    cfg = DataConfig(data_path=f"0.535 {corpus / 'en_text_document'} 0.465 {corpus / 'zh_text_document'}",
                     split="90,8,2", data_cache_path=str(corpus / "cache"))
    train, valid, _ = build_pretraining_datasets(cfg, tok, SEQ, GBS, 100, 10, 0, seed=1234)
    assert len(train) == 100 and len(valid) == 10
    assert all(train.source(i)[0] == "language" for i in range(100))
    assert all(bool(train[i]["loss_mask"].eq(1).all()) for i in range(0, 100, 7))
