#!/usr/bin/env python3
"""Price a growth schedule: FLOPs, GPU-days, days and cost per stage and in total, against training
the final model from scratch on the same tokens. Defaults: FLM-101B's three stages (docs/FLM.md
section 2). Logic in flm_ext/planning.py.

    python tools/plan_schedule.py                      # the paper's schedule, paper figures beside it
    python tools/plan_schedule.py --stage flm-16b:245.37e9:2/1/96:162 --stage flm-101b:60B:4/4/12:165
    python tools/plan_schedule.py --price-per-gpu-hour 2.5 --json
    python tools/plan_schedule.py --mtbf-node-hours 2000 --save-seconds 30   # the failure side
    python tools/plan_schedule.py --method-ratios runs/growth_vs_scratch/result.json   # per growth method
The second table is the failure side (flm_ext/failures.py): expected GPU-hours lost to failures per
stage and the save interval that minimises them (Young), the launchers' default --save-interval.
With --method-ratios, a third: days and cost per growth method from its measured compute ratio.
"""
import argparse
import json
import sys

from flm_ext.failures import FailureModel, failure_plan, format_failures
from flm_ext.flags import add_flags, from_args
from flm_ext.planning import PAPER_STAGES, PlanArgs, PlanError, format_plan, parse_stage, plan
from flm_ext.planning import format_method_plan, load_method_ratios, method_plan, parse_method_ratio

PROG = "plan_schedule.py"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        print(f"{PROG}: error: {message}", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="""stage format: MODEL:TOKENS:TP/PP/DP:TFLOPS[:NAME]
  MODEL    a preset (flm-16b, flm-51b, flm-101b, tiny-...) or LAYERSxHIDDENxHEADS, e.g. 40x5632x44
           (FFN 4 x hidden, sequence 2048, vocabulary 100,352)
  TOKENS   tokens trained in the stage: 245.37e9, 245.37B, 500M, 1.2T
  TP/PP/DP the layout; GPUs = TP x PP x DP (the paper: 192 = 2/1/96, 4/2/24, 4/4/12)
  TFLOPS   achieved TFLOP/s per GPU, counted with the same FLOPs formula (the trainer's log line)
  NAME     optional label
Repeat --stage for each stage, in training order; the last stage's model, layout and TFLOP/s
are used for the from-scratch comparison. Wall time counts compute only.""")
    add_flags(p, PlanArgs, skip=["method_ratios", "method_ratio"])
    add_flags(p.add_argument_group("failures (second table)"), FailureModel)
    add_flags(p, PlanArgs, only=["method_ratios", "method_ratio"])
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        stages = [parse_stage(s) for s in args.stage] if args.stage else PAPER_STAGES
        result = plan(stages, price_per_gpu_hour=args.price_per_gpu_hour, attention=args.flops == "megatron",
                      recompute=args.recompute)
        result["failures"] = failure_plan(stages, from_args(FailureModel, args))
        ratios = load_method_ratios(args.method_ratios) if args.method_ratios else {}
        ratios.update(parse_method_ratio(text) for text in args.method_ratio)
    except PlanError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    if ratios:
        result["methods"] = method_plan(result, ratios)
    methods = result.get("methods") if args.json else result.pop("methods", None)
    failures = result["failures"] if args.json else result.pop("failures")
    print(json.dumps(result, indent=2) if args.json else format_plan(result) + "\n\n" + format_failures(failures))
    if ratios and not args.json:
        print("\n" + format_method_plan(methods, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
