"""The flags of the small data tools (build_demo_corpus, train_tokenizer, train_punkt), one field each;
preprocess_data's are PreprocessConfig's, the tokenizer's TokenizerConfig's."""
from __future__ import annotations

from dataclasses import dataclass

from flm_ext.data.sentences import PUNKT_PARAMS
from flm_ext.flags import flag


@dataclass(frozen=True)
class DemoCorpusArgs:
    out: str = flag(required=True, help="output directory")
    valid_fraction: float = flag(0.02, help="held-out share of documents")
    teacher_valid_fraction: float = flag(0.1, help="held-out share of teacher samples")
    seed: int = flag(1234)


@dataclass(frozen=True)
class BPEArgs:
    input: list[str] = flag(required=True, nargs="+", help="jsonl or jsonl.gz files")
    output: str = flag(required=True, help="tokenizer.json to write")
    vocab_size: int = flag(8192)
    min_frequency: int = flag(2)
    json_key: str = flag("text")


@dataclass(frozen=True)
class PunktArgs:
    output: str = flag(PUNKT_PARAMS)
