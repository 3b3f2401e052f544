"""tools/evaluate.py's own flags (the tokenizer group is the shared one); checked in the tool's _check."""
from __future__ import annotations

from dataclasses import dataclass

from flm_ext.evaluation import tasks as registry  # light: no torch
from flm_ext.flags import flag


@dataclass(frozen=True)
class EvalArgs:
    load: str = flag(required=True)
    tasks: str | None = flag(None, help="comma-separated task names: ours (registered: "
                                        f"{', '.join(t.name for t in registry.tasks())}; iq also answers "
                                        "iq_<family> and each IQ sub-test) or any lm-eval task (see above)")
    valid_data: list[str] = flag(default_factory=list, metavar="LANG=FILE.jsonl")
    teacher_data: str | None = flag(None, help="held-out {text, proposition, label} jsonl")
    max_teacher_samples: int = flag(1000)
    iq_dir: str | None = flag(None, help="an IQ suite written by tools/make_iq_tasks.py")
    iq_seed: int = flag(1234)
    iq_n: int = flag(100, help="items per IQ sub-test when generating")
    iq_lang: str = flag("en,zh")
    include_path: list[str] = flag(default_factory=list, help="extra lm-eval task folders (local data)")
    limit: int | None = flag(None, help="at most this many items per lm-eval/IQ task")
    num_fewshot: int | None = flag(None, help="for lm-eval tasks (IQ prompts hold their own)")
    batch_size: int = flag(8)
    lengths: str | None = flag(None, metavar="1x,2x,4x,8x", help="perplexity at these window lengths (multiples of "
                                                                 "the training length or token counts)")
    blockwise_attention: bool = flag(False, help="blockwise causal attention at inference (the xPos paper's; "
                                                 "docs/long_context.md)")
    blockwise_block_size: int | None = flag(None, help="default: half the training length")
    max_eval_tokens: int = flag(200_000, help="held-out tokens read per language")
    output: str | None = flag(None, help="write the results as JSON here too")
    markdown: str | None = flag(None, help="write the results table here")




@dataclass(frozen=True)
class IQSuiteArgs:
    """tools/make_iq_tasks.py's flags."""

    out: str = flag(required=True, help="folder to create (must not exist)")
    seed: int = flag(1234)
    n: int = flag(100, help="items per sub-test (the paper: 100)")
    lang: str = flag("en,zh", help="comma-separated subset of en,zh")
