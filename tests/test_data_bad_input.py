"""Bad input lines: by default an error naming file and line and nothing written; with
--skip-bad-lines, skipped and counted by reason."""
import importlib.util
import os
import subprocess

import pytest

from data_testutils import REPO, read_indexed, run_tool, write_jsonl
from flm_ext.data.tokenizers import build_tokenizer

GOOD = [b'{"text": "first good line"}', b'{"text": "\xe4\xb8\xad\xe6\x96\x87 good"}', b'{"text": "last good"}']
BAD = {  # reason -> a line that has (only) that problem
    "malformed_json": b'{"text": "no closing brace"',
    "invalid_utf8": b'{"text": "bad \xff\xfe bytes"}',
    "missing_key": b'{"body": "text is missing"}',
    "non_string": b'{"text": ["a", "list"]}',
    "empty_document": b'{"text": ""}',
    "lone_surrogate": b'{"text": "bad \\ud800 escape"}',
}


def _write(path, lines):
    with open(path, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    return str(path)


def _tool_main():
    spec = importlib.util.spec_from_file_location("preprocess_data", os.path.join(REPO, "tools", "preprocess_data.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _preprocess(tmp_path, inp, *extra, capsys=None):
    """Run the tool: as a subprocess, or (with capsys, faster) its main() in this process."""
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    args = ["--input", inp, "--output-prefix", out / "ds", "--tokenizer-type", "GPT2BPETokenizer", *extra]
    if capsys is None:
        r = run_tool("preprocess_data.py", *args)
    else:
        capsys.readouterr()
        rc = _tool_main()([str(a) for a in args])
        captured = capsys.readouterr()
        r = subprocess.CompletedProcess(args, rc, captured.out, captured.err)
    return r, sorted(os.listdir(out)), out


@pytest.mark.parametrize("reason", sorted(BAD))
def test_bad_line_stops_with_file_and_line_and_leaves_nothing(tmp_path, reason, capsys):
    lines = GOOD[:2] + [BAD[reason]] + GOOD[2:]
    inp = _write(tmp_path / "in.jsonl", lines)
    r, left, _ = _preprocess(tmp_path, inp, "--workers", "2", capsys=capsys)
    assert r.returncode != 0
    assert f"{inp}:3: {reason}" in r.stderr, r.stderr
    assert left == []  # no .bin/.idx, no temporary file


@pytest.mark.parametrize("partitions", [1, 3])
def test_line_number_is_global_across_partitions_and_shards(tmp_path, partitions):
    """The bad line sits deep in the file (a byte-range partition other than the first) or in
    the second shard of a glob: its own file's line number is reported."""
    lines = [b'{"text": "line %d"}' % i for i in range(1, 200)]
    lines[150] = BAD["non_string"]  # line 151
    inp = _write(tmp_path / "big.jsonl", lines)
    r, left, _ = _preprocess(tmp_path, inp, "--workers", str(partitions), "--partitions", str(partitions))
    assert r.returncode != 0 and f"{inp}:151: non_string" in r.stderr, r.stderr
    assert left == []
    shard_dir = tmp_path / "shards"
    shard_dir.mkdir()
    _write(shard_dir / "a.jsonl", GOOD)
    bad_shard = _write(shard_dir / "b.jsonl", GOOD[:1] + [BAD["missing_key"]])
    r, left, _ = _preprocess(tmp_path, str(shard_dir / "*.jsonl"), "--partitions", str(partitions))
    assert r.returncode != 0 and f"{bad_shard}:2: missing_key" in r.stderr, r.stderr
    assert left == []


def test_existing_output_is_kept_on_failure(tmp_path, capsys):
    good = _write(tmp_path / "good.jsonl", GOOD)
    r, left, out = _preprocess(tmp_path, good, capsys=capsys)
    assert r.returncode == 0 and left == ["ds_text_document.bin", "ds_text_document.idx", "ds_text_document.json"]
    before = (out / "ds_text_document.bin").read_bytes()
    bad = _write(tmp_path / "bad.jsonl", GOOD + [BAD["empty_document"]])
    r, left, out = _preprocess(tmp_path, bad, capsys=capsys)
    assert r.returncode != 0 and left == ["ds_text_document.bin", "ds_text_document.idx", "ds_text_document.json"]
    assert (out / "ds_text_document.bin").read_bytes() == before


@pytest.mark.parametrize("workers,partitions", [(1, 1), (2, 2)])
def test_skip_bad_lines_counts_by_reason(tmp_path, workers, partitions, capsys):
    counts = {"malformed_json": 3, "invalid_utf8": 1, "missing_key": 2, "non_string": 2, "empty_document": 4,
              "lone_surrogate": 1}
    good_texts = [f"good {i}" for i in range(40)]
    lines = [b'{"text": "%s"}' % t.encode() for t in good_texts]
    bad_lines = [BAD[r] for r, n in counts.items() for _ in range(n)]
    bad_lines += [b"[1, 2]", b'{"text": 7}', b'{"text": "   "}']  # not an object, a number, blanks only
    expected = dict(counts, malformed_json=counts["malformed_json"] + 1, non_string=counts["non_string"] + 1,
                    empty_document=counts["empty_document"] + 1)
    mixed = []
    for i, line in enumerate(lines):
        mixed.append(line)
        if i < len(bad_lines):
            mixed.append(bad_lines[i])
    inp = _write(tmp_path / "mixed.jsonl", mixed)
    r, left, out = _preprocess(tmp_path, inp, "--skip-bad-lines", "--append-eod",
                               "--workers", str(workers), "--partitions", str(partitions), capsys=capsys)
    assert r.returncode == 0, r.stderr
    summary = ", ".join(f"{k}={v}" for k, v in sorted(expected.items()))
    assert f"skipped bad lines: {sum(expected.values())} ({summary})" in r.stdout, r.stdout
    tok = build_tokenizer("GPT2BPETokenizer")
    docs, _ = read_indexed(str(out / "ds_text_document"))
    assert docs == [tok.tokenize(t) + [tok.eod] for t in good_texts]


def test_teacher_signal_bad_lines(tmp_path, capsys):
    lines = [
        b'{"text": "ok", "proposition": "p", "label": true}',
        b'{"text": "ok", "proposition": "p", "label": "true"}',  # a string, not a boolean
        b'{"text": "ok", "label": false}',  # no proposition
        b'{"text": "ok", "proposition": "", "label": false}',  # empty proposition
        b'{"text": "ok", "proposition": 3, "label": false}',
    ]
    inp = _write(tmp_path / "t.jsonl", lines)
    r, left, _ = _preprocess(tmp_path, inp, "--teacher-signal", capsys=capsys)
    assert r.returncode != 0 and f"{inp}:2: non_bool_label" in r.stderr and left == []
    r, left, _ = _preprocess(tmp_path, inp, "--teacher-signal", "--skip-bad-lines", capsys=capsys)
    assert r.returncode == 0, r.stderr
    assert "skipped bad lines: 4 (empty_document=1, missing_key=1, non_bool_label=1, non_string=1)" in r.stdout
    assert len(left) == 6  # teacher and teacher_loss_mask, .bin, .idx and .json


def test_missing_input_file(tmp_path):
    r, left, _ = _preprocess(tmp_path, str(tmp_path / "nope-*.jsonl"))
    assert r.returncode != 0 and "no such file" in r.stderr and left == []


@pytest.mark.parametrize("workers,partitions", [(1, 1), (2, 1), (2, 2)])
def test_truncated_gzip_is_reported_and_leaves_nothing(tmp_path, workers, partitions, capsys):
    import gzip

    shards = tmp_path / "shards"
    shards.mkdir()
    _write(shards / "a.jsonl", GOOD)
    data = gzip.compress(b"\n".join(GOOD * 50) + b"\n")
    (shards / "b.jsonl.gz").write_bytes(data[: len(data) // 2])  # cut in the middle
    r, left, _ = _preprocess(tmp_path, str(shards / "*"), "--workers", str(workers), "--partitions", str(partitions),
                             capsys=capsys)
    assert r.returncode != 0 and f"{shards / 'b.jsonl.gz'}: unreadable" in r.stderr, r.stderr
    assert left == []
