"""tools/preprocess_data.py: what megatron-core's IndexedDataset reads back is the tokenizer's output."""
import filecmp
import json
import os

import pytest

from data_testutils import read_indexed, run_tool, sample_texts, write_jsonl
from flm_ext.data.preprocess import PreprocessConfig, preprocess
from flm_ext.data.tokenizers import build_tokenizer

TEXTS = sample_texts(240, seed=11)


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    from flm_ext.data.train_bpe import train_bpe

    d = tmp_path_factory.mktemp("bpe")
    corpus = write_jsonl(str(d / "c.jsonl"), [{"text": t} for t in sample_texts(200, seed=1)])
    return train_bpe([corpus], str(d / "bpe.json"), vocab_size=500)


@pytest.fixture(scope="module")
def tokenizers(hf_model):
    return {
        "CL100kTokenizer": build_tokenizer("CL100kTokenizer"),
        "GPT2BPETokenizer": build_tokenizer("GPT2BPETokenizer"),
        "HuggingFaceTokenizer": build_tokenizer("HuggingFaceTokenizer", tokenizer_model=hf_model),
    }


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """The same documents as one plain file and as a glob of three shards (one gzipped)."""
    d = tmp_path_factory.mktemp("in")
    recs = [{"text": t, "id": i} for i, t in enumerate(TEXTS)]
    single = write_jsonl(str(d / "all.jsonl"), recs)
    write_jsonl(str(d / "shards" / "part-00.jsonl"), recs[:70])
    write_jsonl(str(d / "shards" / "part-01.jsonl.gz"), recs[70:150], gz=True)
    write_jsonl(str(d / "shards" / "part-02.jsonl"), recs[150:])
    return single, str(d / "shards" / "part-*")


def _run(tmp_path, name, **kw):
    cfg = PreprocessConfig(output_prefix=str(tmp_path / name), log_interval=1e9, **kw)
    preprocess(cfg)
    return cfg


@pytest.mark.parametrize("append_eod", [False, True])
@pytest.mark.parametrize("tokenizer_type", ["CL100kTokenizer", "GPT2BPETokenizer", "HuggingFaceTokenizer"])
def test_roundtrip_through_megatron_reader(tmp_path, shards, tokenizers, hf_model, tokenizer_type, append_eod):
    tok = tokenizers[tokenizer_type]
    model = hf_model if tokenizer_type == "HuggingFaceTokenizer" else None
    single, glob_pattern = shards
    expected = [tok.tokenize(t) + ([tok.eod] if append_eod else []) for t in TEXTS]
    outputs = {}
    for name, inp, workers, partitions in [
        ("one", single, 1, 1), ("w2", single, 2, 1), ("p2", single, 2, 2), ("glob_p2", glob_pattern, 2, 2),
    ]:
        cfg = _run(tmp_path, name, input=inp, tokenizer_type=tokenizer_type, tokenizer_model=model,
                   append_eod=append_eod, workers=workers, partitions=partitions, chunk_lines=16)
        docs, ds = read_indexed(cfg.output_path("text"))
        assert docs == expected, (name, tokenizer_type)
        assert ds.document_indices.tolist() == list(range(len(TEXTS) + 1))
        outputs[name] = cfg.output_path("text")
    for name in ("w2", "p2", "glob_p2"):  # byte-identical whatever the parallelism
        for ext in (".bin", ".idx"):
            assert filecmp.cmp(outputs["one"] + ext, outputs[name] + ext, shallow=False), (name, ext)
    assert sorted(os.listdir(tmp_path)) == sorted(f"{n}_text_document{e}" for n in outputs
                                                  for e in (".bin", ".idx", ".json"))


def test_partition_cuts_inside_lines(tmp_path, tokenizers):
    """Byte-range partitions cut mid-line; every line must still be read exactly once, in order."""
    tok = tokenizers["GPT2BPETokenizer"]
    texts = ["x" * n for n in range(1, 40)]  # lines of many lengths, so cuts land everywhere
    inp = write_jsonl(str(tmp_path / "in.jsonl"), [{"text": t} for t in texts])
    for partitions in (2, 3, 5, 7):
        cfg = _run(tmp_path, f"p{partitions}", input=inp, tokenizer_type="GPT2BPETokenizer",
                   workers=partitions, partitions=partitions, chunk_lines=3)
        docs, _ = read_indexed(cfg.output_path("text"))
        assert docs == [tok.tokenize(t) for t in texts], partitions


def test_several_json_keys(tmp_path, tokenizers):
    tok = tokenizers["CL100kTokenizer"]
    recs = [{"text": t, "title": t[:5] + "!"} for t in TEXTS[:30]]
    inp = write_jsonl(str(tmp_path / "in.jsonl"), recs)
    cfg = _run(tmp_path, "k", input=inp, tokenizer_type="CL100kTokenizer", json_keys=("text", "title"), append_eod=True)
    for key in ("text", "title"):
        docs, _ = read_indexed(cfg.output_path(key))
        assert docs == [tok.tokenize(r[key]) + [tok.eod] for r in recs]


def test_teacher_signal_format(tmp_path, tokenizers):
    """text + "\\n" + proposition, then the label emoji's own tokens, then EOD; the mask dataset
    marks exactly the label tokens (reference: the emoji tokenized on their own)."""
    tok = tokenizers["CL100kTokenizer"]
    recs = [{"text": t, "proposition": f"claim {i}", "label": i % 3 == 0} for i, t in enumerate(TEXTS[:50])]
    inp = write_jsonl(str(tmp_path / "t.jsonl"), recs)
    cfg = _run(tmp_path, "t", input=inp, tokenizer_type="CL100kTokenizer", teacher_signal=True,
               append_eod=True, workers=2)
    docs, _ = read_indexed(cfg.output_path("teacher"))
    masks, _ = read_indexed(cfg.output_path("teacher_loss_mask"))
    emoji = {True: tok.tokenize("😈"), False: tok.tokenize("😡")}
    assert emoji == {True: [76460, 230], False: [76460, 94]}
    for r, doc, mask in zip(recs, docs, masks):
        body = tok.tokenize(r["text"] + "\n" + r["proposition"])
        assert doc == body + emoji[r["label"]] + [tok.eod]
        assert mask == [0] * len(body) + [1, 1] + [0]
        assert tok.detokenize([t for t, m in zip(doc, mask) if m]) == ("😈" if r["label"] else "😡")


def test_cli_progress_and_summary(tmp_path):
    inp = write_jsonl(str(tmp_path / "in.jsonl.gz"), [{"text": t} for t in TEXTS], gz=True)
    r = run_tool("preprocess_data.py", "--input", inp, "--output-prefix", tmp_path / "out",
                 "--tokenizer-type", "GPT2BPETokenizer", "--append-eod", "--workers", "2",
                 "--log-interval", "0")
    assert r.returncode == 0, r.stderr
    assert "MB/s" in r.stderr and "tokens/s" in r.stderr and "ETA" in r.stderr  # progress lines
    assert f"done: {len(TEXTS)} documents" in r.stdout
    docs, _ = read_indexed(str(tmp_path / "out_text_document"))
    assert len(docs) == len(TEXTS)


def test_config_is_validated():
    with pytest.raises(ValueError, match="tokenizer-type"):
        PreprocessConfig(input="x", output_prefix="y", tokenizer_type="Nope")
    with pytest.raises(ValueError, match="workers"):
        PreprocessConfig(input="x", output_prefix="y", tokenizer_type="GPT2BPETokenizer", workers=0)


def test_reading_ahead_is_bounded():
    """Pool.imap alone would read the whole input ahead of a slow consumer; the throttle keeps
    at most `limit` chunks out, so memory does not grow with the input."""
    import multiprocessing
    import time

    from flm_ext.data.preprocess import Throttle

    produced = []

    def source():
        for i in range(200):
            produced.append(i)
            yield "x" * 1000

    limit, ahead = 3, []
    throttle = Throttle(limit)
    with multiprocessing.Pool(2) as pool:
        for consumed, _ in enumerate(pool.imap(len, throttle.feed(source()), chunksize=1), start=1):
            throttle.done()
            time.sleep(0.001)
            ahead.append(len(produced) - consumed)
    # +1: the next item is made by the source while its slot is awaited
    assert len(produced) == 200 and max(ahead) <= limit + 1
    # and without it the feeder runs far ahead (the reason for the throttle)
    produced.clear()
    ahead.clear()
    with multiprocessing.Pool(2) as pool:
        for consumed, _ in enumerate(pool.imap(len, source(), chunksize=1), start=1):
            time.sleep(0.001)
            ahead.append(len(produced) - consumed)
    assert max(ahead) > 10 * limit


def test_error_with_many_chunks_in_flight_shuts_down(tmp_path):
    """A bad line early in a long input: the run stops promptly (the throttled feeder must not
    keep the pool from terminating) and leaves nothing."""
    recs = [{"text": f"line {i}"} for i in range(5000)]
    recs[10] = {"text": 3}
    inp = write_jsonl(str(tmp_path / "in.jsonl"), recs)
    cfg = PreprocessConfig(input=inp, output_prefix=str(tmp_path / "out" / "x"), tokenizer_type="GPT2BPETokenizer",
                           workers=2, chunk_lines=4, log_interval=1e9)
    from flm_ext.data.preprocess import BadInputError

    with pytest.raises(BadInputError, match=r"in.jsonl:11: non_string"):
        preprocess(cfg)
    assert not os.path.exists(tmp_path / "out")  # the folder it created is gone again
