"""The whole FLM recipe in miniature on a CPU (what `make demo` runs): bilingual corpus from installed
packages, BPE, preprocessing, stage 1, width growth (--verify), stage 2, depth growth (--verify),
stage 3, evaluation; writes OUT/summary.json, OUT/loss.png and OUT/tensorboard/.

    python examples/tiny_recipe.py --out runs/demo [--scale 0.1]
"""
import argparse
import sys

from flm_ext import quiet_megatron_import_warnings

quiet_megatron_import_warnings()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every stage's steps (tests use 0.05)")
    parser.add_argument("--no-control", action="store_true", help="skip the stage-1 run without teacher data")
    args = parser.parse_args(argv)
    import dataclasses

    from flm_ext.recipe import default_recipe, run_recipe

    config = default_recipe(args.out, args.scale)
    if args.no_control:
        config = dataclasses.replace(config, control_run=False)
    run_recipe(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
