"""--split-sentences: each sentence is its own sequence and documents are groups of them.

References: nltk's PunktSentenceTokenizer called directly on the shipped parameters (read here
with json + gzip, not through flm_ext), hand-split Chinese, megatron-core's own
IndexedDatasetBuilder for the expected bytes, and megatron-core's IndexedDataset to read back."""
import filecmp
import json
import os

import numpy
import pytest
import torch

from data_testutils import REPO, read_indexed, run_tool, write_jsonl
from flm_ext.data.preprocess import PreprocessConfig, preprocess
from flm_ext.data.sentences import PUNKT_PARAMS, split_chinese
from flm_ext.data.tokenizers import build_tokenizer

EN = [
    "In the beginning God created the heaven and the earth. And the earth was without form, and void.",
    'He said, "Go thy way." Then he went.\nAnd it was so!\n\nWhy? Because the LORD had spoken.',
    "A single sentence without an end",
    "The man came at 3.5 hours past noon. He sat down.  It was late.",
]
ZH = {
    "今天天气很好。我们去公园吧！“你来吗？”他问。\n好的": ["今天天气很好。", "我们去公园吧！", "“你来吗？”", "他问。", "好的"],
    "为什么？？真的吗！是的。": ["为什么？？", "真的吗！", "是的。"],
    "没有句号的一句话": ["没有句号的一句话"],
}


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("GPT2BPETokenizer")


@pytest.fixture(scope="module")
def punkt():
    """nltk's own sentence tokenizer with the shipped parameters: the reference for our splitting."""
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    from flm_ext.data.sentences import punkt_params

    return PunktSentenceTokenizer(punkt_params(PUNKT_PARAMS))


def _megatron_reference(path, docs_of_sentences, tok, eod=True):
    """Write the expected dataset with megatron-core's own builder."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(path + ".bin", dtype=numpy.uint16)
    for sentences in docs_of_sentences:
        seqs = [tok.tokenize(s) for s in sentences]
        seqs = [s for s in seqs if s]
        if eod:
            seqs[-1] = seqs[-1] + [tok.eod]
        builder.add_document(torch.tensor([t for s in seqs for t in s]), [len(s) for s in seqs])
    builder.finalize(path + ".idx")


def _run(tmp_path, texts, name, **kw):
    inp = write_jsonl(str(tmp_path / f"{name}.jsonl"), [{"text": t} for t in texts])
    cfg = PreprocessConfig(input=inp, output_prefix=str(tmp_path / name), tokenizer_type="GPT2BPETokenizer",
                           append_eod=True, log_interval=1e9, **kw)
    preprocess(cfg)
    return cfg.output_path("text")


@pytest.mark.parametrize("workers,partitions", [(1, 1), (2, 2)])
def test_english_sentences_are_nltk_punkt(tmp_path, tok, punkt, workers, partitions):
    out = _run(tmp_path, EN * 3, "en", split_sentences=True, workers=workers, partitions=partitions, chunk_lines=2)
    assert out.endswith("_text_sentence")  # Megatron-LM's name for sentence-level data
    expected = [punkt.tokenize(t) for t in EN * 3]
    assert [len(s) for s in expected[:4]] == [2, 5, 1, 3]
    docs, ds = read_indexed(out)
    flat = [tok.tokenize(s) for sentences in expected for s in sentences]
    ends = numpy.cumsum([len(s) for s in expected])
    for i in ends - 1:
        flat[i] = flat[i] + [tok.eod]
    assert docs == flat
    assert ds.document_indices.tolist() == [0] + ends.tolist()
    _megatron_reference(str(tmp_path / "ref"), expected, tok)
    for ext in (".bin", ".idx"):
        assert filecmp.cmp(out + ext, str(tmp_path / "ref") + ext, shallow=False)
    side = json.load(open(out + ".json"))
    assert (side["documents"], side["sequences"], side["flags"]["split_sentences"]) == (12, int(ends[-1]), True)


def test_keep_newlines(tmp_path, tok, punkt):
    out = _run(tmp_path, EN, "keep", split_sentences=True, keep_newlines=True)
    docs, ds = read_indexed(out)
    texts = [tok.detokenize(d[:-1] if d[-1] == tok.eod else d) for d in docs]
    plain = [s for t in EN for s in punkt.tokenize(t)]
    assert [t.strip() for t in texts] == plain  # the same cuts
    assert "Then he went.\n" in texts and "And it was so!\n\n" in texts  # newlines kept
    assert "".join(texts[:2]) == EN[0]
    assert ds.document_indices.tolist() == [0] + numpy.cumsum([len(punkt.tokenize(t)) for t in EN]).tolist()


def test_chinese_and_auto(tmp_path, tok, punkt):
    for text, sentences in ZH.items():
        assert split_chinese(text) == sentences
    assert "".join(split_chinese("第一句。\n第二句！ ", keep_newlines=True)) == "第一句。\n第二句！"
    texts = list(ZH) + EN[:2]
    out = _run(tmp_path, texts, "auto", split_sentences=True, lang="auto")
    _megatron_reference(str(tmp_path / "ref"), list(ZH.values()) + [punkt.tokenize(t) for t in EN[:2]], tok)
    for ext in (".bin", ".idx"):
        assert filecmp.cmp(out + ext, str(tmp_path / "ref") + ext, shallow=False)


# Mixed documents on either side of auto's rule (Han characters >= a third of the Latin letters: zh),
# split by hand: 13 Han against 7 Latin letters is Chinese; 1 Han against 17 Latin letters is English.
MIXED_ZH = ("Chapter 1 起初神创造天地。地是空虚混沌。", ["Chapter 1 起初神创造天地。", "地是空虚混沌。"])
MIXED_EN = "The word 道 means the way. It is old."


def test_bilingual_jsonl_is_split_per_document_by_default_and_counted(tmp_path, tok, punkt):
    """No --lang: each document of a bilingual file by its own language's rule, and the tool says how
    many documents it treated as each; --lang en still forces Punkt on all of them."""
    texts = [EN[0], list(ZH)[0], EN[1], list(ZH)[1], MIXED_ZH[0], MIXED_EN, list(ZH)[2]]
    expected = [punkt.tokenize(EN[0]), ZH[list(ZH)[0]], punkt.tokenize(EN[1]), ZH[list(ZH)[1]], MIXED_ZH[1],
                punkt.tokenize(MIXED_EN), ZH[list(ZH)[2]]]
    assert len(expected[5]) == 2  # the mixed English document is cut by Punkt, after "way."
    inp = write_jsonl(str(tmp_path / "bilingual.jsonl"), [{"text": t} for t in texts])
    base = ["--input", inp, "--tokenizer-type", "GPT2BPETokenizer", "--append-eod", "--split-sentences"]
    for lang, docs, report in ((None, expected, "en: 3, zh: 4 (--lang auto: zh when"),
                               ("en", [punkt.tokenize(t) for t in texts], "en: 7, zh: 0 (--lang en)")):
        prefix = tmp_path / (lang or "auto")
        r = run_tool("preprocess_data.py", *base, "--output-prefix", prefix, *(["--lang", lang] if lang else []))
        assert r.returncode == 0, r.stderr
        assert f"documents split as each language: {report}" in r.stdout
        _megatron_reference(str(tmp_path / "ref"), docs, tok)
        for ext in (".bin", ".idx"):
            assert filecmp.cmp(f"{prefix}_text_sentence{ext}", str(tmp_path / "ref") + ext, shallow=False), lang
    assert punkt.tokenize(list(ZH)[1]) != ZH[list(ZH)[1]]  # forcing en really changes the Chinese documents


def test_without_the_flag_output_is_megatrons(tmp_path, tok):
    """No --split-sentences: one sequence per document, the bytes megatron-core's builder writes."""
    out = _run(tmp_path, EN + list(ZH), "doc")
    assert out.endswith("_text_document")
    _megatron_reference(str(tmp_path / "ref"), [[t] for t in EN + list(ZH)], tok)
    for ext in (".bin", ".idx"):
        assert filecmp.cmp(out + ext, str(tmp_path / "ref") + ext, shallow=False)


def test_cli_flags(tmp_path):
    inp = write_jsonl(str(tmp_path / "in.jsonl"), [{"text": t} for t in EN])
    base = ["--input", inp, "--tokenizer-type", "GPT2BPETokenizer"]
    r = run_tool("preprocess_data.py", *base, "--output-prefix", tmp_path / "new" / "x", "--split-sentences",
                 "--keep-newlines", "--lang", "en")
    assert r.returncode == 0, r.stderr
    assert f"creating the folder {tmp_path / 'new'}" in r.stdout
    assert os.path.exists(tmp_path / "new" / "x_text_sentence.idx")
    r = run_tool("preprocess_data.py", *base, "--output-prefix", tmp_path / "new" / "x", "--split-sentences")
    assert r.returncode == 0 and f"overwriting the existing {tmp_path / 'new' / 'x_text_sentence'}.bin/.idx" in r.stdout



def test_sentence_flags_need_split_sentences(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("preprocess_data", os.path.join(REPO, "tools", "preprocess_data.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    inp = write_jsonl(str(tmp_path / "in.jsonl"), [{"text": t} for t in EN])
    for flags, message in ((["--keep-newlines"], "--keep-newlines only applies with --split-sentences"),
                           (["--lang", "zh"], "--lang only applies with --split-sentences")):
        with pytest.raises(SystemExit) as exit:
            tool.main(["--input", inp, "--tokenizer-type", "GPT2BPETokenizer", "--output-prefix",
                       str(tmp_path / "x"), *flags])
        assert exit.value.code == 2 and message in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["in.jsonl"]
