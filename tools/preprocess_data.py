#!/usr/bin/env python3
"""jsonl (.jsonl, .jsonl.gz, or a glob of shards) -> megatron-core .bin/.idx.

Megatron-LM's interface, e.g.:
  python tools/preprocess_data.py --input corpus/en_train.jsonl --output-prefix data/en \\
      --tokenizer-type CL100kTokenizer --append-eod --workers 2
writes data/en_text_document.{bin,idx} and data/en_text_document.json (tokenizer, vocabulary
fingerprint, counts, largest id, inputs, flags: the trainer checks it against its tokenizer).
With --split-sentences every sentence is its own sequence, grouped by document in the .idx, and
the output is data/en_text_sentence.*. English sentences come from nltk's Punkt with parameters
trained by nltk's PunktTrainer on the King James Bible (tools/train_punkt.py; no PyPI package
ships nltk's own), Chinese ones end at 。！？; each document is split by the rule of the language
detected in it (--lang auto, the default; the tool reports how many documents it split as each),
or --lang en|zh forces one. See flm_ext/data/preprocess.py for the details.
Errors (a bad line, an empty input) print one line, exit 2 and leave nothing behind.
"""
import argparse
import sys
import time

from flm_ext.data.preprocess import (BadInputError, EmptyInputError, OutputError, PreprocessConfig, expand_inputs,
                                    output_notes, preprocess)
from flm_ext.data.tokenizers import TokenizerConfig
from flm_ext.flags import add_flags, flag_values, from_args


def parse_args(argv=None) -> PreprocessConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(p, PreprocessConfig, skip=["append_eod"])  # sections input, output, runtime
    add_flags(p.add_argument_group("tokenizer"), TokenizerConfig, required=["tokenizer_type"])
    add_flags(p, PreprocessConfig, only=["append_eod"])
    a = p.parse_args(argv)
    if a.lang and not a.split_sentences:
        p.error("--lang only applies with --split-sentences")
    try:
        return from_args(PreprocessConfig, a, **flag_values(TokenizerConfig, a), lang=a.lang or "auto")
    except ValueError as e:
        p.error(str(e))


def main(argv=None) -> int:
    cfg = parse_args(argv)
    t0 = time.time()
    try:
        expand_inputs(cfg.input)  # a missing or empty input: say so before anything else
        for note in output_notes(cfg):
            print(note)
        stats = preprocess(cfg)
    except (BadInputError, FileNotFoundError) as e:
        bad_line = not (cfg.skip_bad_lines or isinstance(e, (EmptyInputError, OutputError, FileNotFoundError)))
        hint = " (use --skip-bad-lines to skip such lines)" if bad_line else ""
        print(f"error: {e}; nothing was written{hint}", file=sys.stderr)
        return 2
    dt = max(time.time() - t0, 1e-9)
    print(f"done: {stats.documents:,} documents, {stats.tokens:,} tokens, {stats.bytes / 1e6:,.2f} MB "
          f"in {dt:.2f}s ({stats.bytes / dt / 1e6:.2f} MB/s, {stats.tokens / dt:,.0f} tokens/s)")
    for s in cfg.streams:
        print(f"wrote {cfg.output_path(s)}.bin/.idx/.json")
    if cfg.split_sentences:
        from flm_ext.data.sentences import AUTO_RULE

        counts = ", ".join(f"{lang}: {stats.languages[lang]:,}" for lang in ("en", "zh"))
        how = f"--lang auto: {AUTO_RULE}" if cfg.lang == "auto" else f"--lang {cfg.lang}"
        print(f"documents split as each language: {counts} ({how})")
    if cfg.skip_bad_lines:
        counts = ", ".join(f"{r}={n}" for r, n in sorted(stats.skipped.items())) or "none"
        print(f"skipped bad lines: {sum(stats.skipped.values())} ({counts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
