"""tools/grow_checkpoint.py's own flags; the target sizes are FLMConfig's flags, --verify the shared block."""
from __future__ import annotations

from dataclasses import dataclass

from flm_ext.flags import flag
from flm_ext.growth.methods import method_names
from flm_ext.growth.operators import DEPTH_INITS, DEPTH_PLACEMENTS

# The FLMConfig fields a growth may change (flags --num-layers ...; those left out keep the old size).
GROWN_SIZES = ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size")


@dataclass(frozen=True)
class GrowArgs:
    load: str = flag(required=True, help="checkpoint root (with latest_checkpointed_iteration.txt) or iter_N")
    save: str = flag(required=True, help="new checkpoint root; must not exist")
    method: str = flag("msg", choices=method_names(), help="growth operator (docs/growth.md)")
    depth_init: str | None = flag(None, choices=DEPTH_INITS,
                                  help="msg: new layers copy old ones (stack, default) or start fresh (random)")
    depth_placement: str | None = flag(None, choices=DEPTH_PLACEMENTS,
                                       help="msg, stack, random: new layers after the old stack (top, default) or "
                                            "each after the layer it copies (interleave)")
    stack_factor: int | None = flag(None, help="stack: the grown model has this many times the old layers "
                                               "(G_stack's g, >= 2)")
    clone_noise: float | None = flag(None, help="clone: std of the noise added to the cloned weight blocks, "
                                                "cancelling over the copies (default 0)")
    growth_ramp_steps: int = flag(1000, help="steps over which the trainer ramps the masks from 0 to 1")
    seed: int = flag(0, help="seed of the new weights' init")
    bucket_mb: int = flag(256, help="bytes per output file (bounds memory with the largest tensor chunk)")
    workers: int = flag(1, help="processes growing and writing the output files in parallel (memory: --bucket-mb "
                                "each; same bytes as 1)")
    progress_interval: float = flag(5.0, help="seconds between progress lines")
