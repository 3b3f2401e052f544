"""The special strings of the data layer, named in one place.

FLM (after FreeLM) casts a teacher-signal task as ``text + proposition`` followed by one of two
emoji that already exist in the vocabulary: one means "the proposition is true", the other
"false". The paper names 😈 and 😡; we read 😈 as true and 😡 as false. In cl100k_base and GPT-2
BPE each emoji is two tokens that share the first one, so a label is a short token *sequence*:
always tokenize it on its own with the tokenizer in use (``Tokenizer.label_ids``).
"""

# End of document: tiktoken's and GPT-2's special token; also the special token of the BPE we train.
EOD_TOKEN = "<|endoftext|>"

# Other names an HF tokenizer.json may use for its end-of-document token, tried in this order.
EOD_TOKEN_ALTERNATIVES = (EOD_TOKEN, "</s>", "<|end_of_text|>", "<eos>", "<|eos|>", "[EOS]")

TRUE_LABEL = "\N{SMILING FACE WITH HORNS}"  # 😈  U+1F608
FALSE_LABEL = "\N{POUTING FACE}"  # 😡  U+1F621

# Between the text and the proposition of a teacher-signal sample.
PROPOSITION_SEPARATOR = "\n"


def label_text(label: bool) -> str:
    """The emoji that stands for a truth value."""
    if not isinstance(label, bool):
        raise TypeError(f"a teacher-signal label is a bool, got {type(label).__name__}")
    return TRUE_LABEL if label else FALSE_LABEL
