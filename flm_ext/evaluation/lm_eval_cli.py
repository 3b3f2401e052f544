"""lm-eval's own command line with the `flm` model registered:

    python tools/make_iq_tasks.py --out runs/iq_tasks
    ARGS=load=runs/demo/stage3/ckpt,tokenizer_type=HuggingFaceTokenizer,tokenizer_model=runs/demo/data/bpe4096.json
    python -m flm_ext.evaluation.lm_eval_cli --model flm --model_args $ARGS --tasks iq --include_path runs/iq_tasks

lm-eval finds models only in its registry (its built-in table, or classes registered by
code that has run); it reads no package entry points, so a plain `lm_eval --model flm` cannot
see ours. This wrapper imports the backend (which registers `flm`) and hands over to lm-eval's
CLI unchanged: every lm-eval flag works as documented upstream. `--model iq-oracle` (the IQ
solvers) and `--model iq-constant` check a suite without any model.
"""
import sys


def main() -> None:
    print("loading lm-eval and megatron-core ...", file=sys.stderr, flush=True)
    import flm_ext.evaluation.backend  # noqa: F401  (registers "flm")
    import flm_ext.evaluation.iq.oracle  # noqa: F401  (registers "iq-oracle" and "iq-constant")
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
