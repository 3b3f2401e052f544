"""Growth versus scratch: compute and wall time to reach the same validation loss.

    python benchmarks/growth_vs_scratch.py --out runs/growth_vs_scratch [--grown-from runs/demo]

Two runs with the same training compute, on the same data, batch and validation batches:
- scratch: the stage-3 shape (8 x 128, 8 heads) from random init, for as many steps as the
  miniature recipe takes in all (stage 1 + stage 2 + stage 3);
- grown: the recipe's stage 1 -> width growth -> stage 2 -> depth growth (reused from a finished
  `make demo` run with --grown-from, or trained here), then stage 3 from the depth-grown
  checkpoint for as many steps as leave its total compute equal to the scratch run's (the demo's
  own stage 3 is much shorter: a grown schedule that stops early cannot reach a loss it has not
  paid for, and the question is which path gets there with less compute).
For each it reports the training FLOPs and wall time at which its validation loss first reaches
the scratch run's final validation loss (the grown schedule's FLOPs are cumulative over its stages;
growth itself is not counted as training compute, its wall time is). Writes `result.json`,
`growth_vs_scratch.png` and a markdown table for docs/BENCHMARKS.md. Reports what it measures,
whichever way it goes.

    python benchmarks/growth_vs_scratch.py --methods msg,stack,clone,random --seeds 3 --data-path PREFIX ...

compares the growth operators instead (benchmarks/growth_methods_compare.py: each operator's
schedule and scratch at the same total compute, in this process; `result.json` feeds
`tools/plan_schedule.py --method-ratios`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flm_ext import quiet_megatron_import_warnings  # noqa: E402

quiet_megatron_import_warnings()

from flm_ext.recipe import Runner, Stage, _metrics, default_recipe, run_recipe, train_stage  # noqa: E402


def curve(stage_results: list[dict], growth: list[dict] = ()) -> list[tuple[float, float, float]]:
    """(cumulative FLOPs, cumulative wall seconds, validation loss) at every evaluation; growth's
    wall time counts, its (tiny) compute does not."""
    points, flops0, wall0 = [], 0.0, 0.0
    for i, stage in enumerate(stage_results):
        if i > 0:
            wall0 += growth[i - 1]["wall_s"]
        per_step = stage["flops"] / stage["steps"]
        for row in _metrics(stage["metrics"]):
            if "valid/loss" in row:
                points.append((flops0 + row["iteration"] * per_step, wall0 + row["time/elapsed_s"], row["valid/loss"]))
        flops0 += stage["flops"]
        wall0 += stage["wall_s"]
    return points


def first_reaching(points, target: float):
    return next(((f, w) for f, w, loss in points if loss <= target), (None, None))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/growth_vs_scratch")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--eval-interval", type=int, default=25)
    parser.add_argument("--grown-from", default=None,
                        help="reuse a finished recipe run (e.g. runs/demo from `make demo`, same --scale) "
                             "as the grown schedule instead of training it again")
    parser.add_argument("--reuse-scratch", action="store_true",
                        help="reuse the finished scratch and long stage-3 runs in --out (only redo the report)")
    parser.add_argument("--methods", default=None, help="compare growth operators, e.g. msg,stack,clone,random "
                                                          "(benchmarks/growth_methods_compare.py)")
    parser.add_argument("--seeds", type=int, default=3, help="--methods: seeds per schedule")
    parser.add_argument("--data-path", nargs="+", default=None,
                        help="--methods: megatron .bin/.idx prefixes with their .json sidecars (e.g. a demo run's "
                             "data/en_text_document data/zh_text_document)")
    parser.add_argument("--scratch-steps", type=int, default=200, help="--methods: the budget, in steps of the big model")
    parser.add_argument("--image", default=None, help="--methods: where to write the PNG")
    args = parser.parse_args(argv)
    if args.methods:
        from growth_methods_compare import compare

        if not args.data_path:
            parser.error("--methods needs --data-path")
        if args.seeds < 1 or args.scratch_steps < 10:
            parser.error("--seeds must be >= 1 and --scratch-steps >= 10")
        compare(args.out, args.data_path, args.methods.split(","), args.seeds, scratch_steps=args.scratch_steps,
                image=args.image)
        return 0

    grown_cfg = dataclasses.replace(default_recipe(os.path.join(args.out, "grown"), args.scale),
                                    control_run=False, eval_interval=args.eval_interval)
    if args.grown_from:
        with open(os.path.join(args.grown_from, "summary.json")) as f:
            summary = json.load(f)
        grown_cfg = dataclasses.replace(default_recipe(args.grown_from, args.scale), control_run=False)
        if [s["steps"] for s in summary["stages"]] != [s.steps for s in grown_cfg.stages]:
            parser.error(f"--grown-from {args.grown_from}: its stages do not match --scale {args.scale}")
        # Evaluate the scratch run as often as the reused run was evaluated (same batches either way).
        grown_cfg = dataclasses.replace(grown_cfg, eval_interval=default_recipe("", args.scale).eval_interval)
    else:
        summary = run_recipe(grown_cfg)
    total_steps = sum(s.steps for s in grown_cfg.stages)
    last = grown_cfg.stages[-1]
    scratch_cfg = dataclasses.replace(grown_cfg, out=os.path.join(args.out, "scratch"))
    os.makedirs(scratch_cfg.out, exist_ok=True)
    run = Runner(scratch_cfg.out)
    data = dict(summary["data"], tok=["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model",
                                      summary["data"]["tokenizer"]])
    scratch_stage = Stage("scratch", last.preset, total_steps, grown_cfg.stages[0].lr, last.min_lr,
                          grown_cfg.stages[0].warmup)
    finished = os.path.join(scratch_cfg.out, "scratch.json")
    if args.reuse_scratch and os.path.exists(finished):
        with open(finished) as f:
            scratch = json.load(f)
    else:
        scratch = train_stage(scratch_cfg, run, data, scratch_stage, load=None, label="scratch")
        with open(finished, "w") as f:
            json.dump(scratch, f, indent=2)

    # The grown schedule's stage 3, continued from the depth-grown checkpoint to the scratch run's compute.
    early = summary["stages"][:-1]
    per_step = summary["stages"][-1]["flops"] / summary["stages"][-1]["steps"]  # = scratch's per step
    long_steps = round(total_steps - sum(s["flops"] for s in early) / per_step)
    long_stage = Stage("stage3_long", last.preset, long_steps, last.lr, last.min_lr, last.warmup)
    long_cfg = dataclasses.replace(grown_cfg, out=os.path.join(args.out, "grown_long"))
    os.makedirs(long_cfg.out, exist_ok=True)
    finished_long = os.path.join(long_cfg.out, "stage3_long.json")
    if args.reuse_scratch and os.path.exists(finished_long):
        with open(finished_long) as f:
            stage3_long = json.load(f)
    else:
        stage3_long = train_stage(long_cfg, Runner(long_cfg.out), data, long_stage,
                                  load=summary["growth"][-1]["checkpoint"], label="stage3_long")
        with open(finished_long, "w") as f:
            json.dump(stage3_long, f, indent=2)
    grown_stages = [*early, stage3_long]
    grown_total = sum(s["flops"] for s in grown_stages)
    grown_steps = " + ".join(str(s["steps"]) for s in grown_stages)

    grown_points = curve(grown_stages, summary["growth"])
    scratch_points = curve([scratch])
    target = scratch["final_valid_loss"]
    g_flops, g_wall = first_reaching(grown_points, target)
    s_flops, s_wall = first_reaching(scratch_points, target)
    # And the other way round: the scratch run's validation loss once it has spent the grown schedule's compute.
    demo_flops = summary["total_flops"]
    at_demo_compute = next((loss for f, _, loss in scratch_points if f >= demo_flops), None)
    # The demo's own (short) schedule against scratch: compute for scratch to reach the demo's final loss.
    demo_final = summary["stages"][-1]["final_valid_loss"]
    s_to_demo, s_wall_to_demo = first_reaching(scratch_points, demo_final)
    result = {"target_valid_loss": target,
              "scratch": {"flops": s_flops, "wall_s": s_wall, "steps": total_steps, "total_flops": scratch["flops"]},
              "grown": {"flops": g_flops, "wall_s": g_wall, "final_valid_loss": grown_points[-1][2],
                        "total_flops": grown_total, "stage_steps": [s["steps"] for s in grown_stages]},
              "demo_schedule": {"total_flops": demo_flops, "final_valid_loss": demo_final,
                                "scratch_valid_loss_at_same_flops": at_demo_compute,
                                "scratch_flops_to_reach_it": s_to_demo, "scratch_wall_s_to_reach_it": s_wall_to_demo,
                                "compute_ratio": (s_to_demo / demo_flops) if s_to_demo else None},
              "compute_ratio": (s_flops / g_flops) if g_flops else None,
              "wall_ratio": (s_wall / g_wall) if g_wall else None,
              "machine": f"{os.cpu_count()} CPU cores", "date": time.strftime("%Y-%m-%d")}
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(result, f, indent=2)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot([p[0] for p in scratch_points], [p[2] for p in scratch_points], "o-", label="stage-3 shape from scratch")
    ax.plot([p[0] for p in grown_points], [p[2] for p in grown_points], "o-",
            label=f"grown: stage 1 -> 2 -> 3 ({grown_steps} steps)")
    for x in (sum(s["flops"] for s in early[:i + 1]) for i in range(len(early))):
        ax.axvline(x, color="tab:orange", linestyle=":", alpha=0.6)
    ax.axhline(target, color="gray", linestyle="--", label=f"scratch final validation loss {target:.3f}")
    ax.set_xlabel("cumulative training FLOPs")
    ax.set_ylabel("validation loss")
    ratio = f"{result['compute_ratio']:.2f}x less compute" if result["compute_ratio"] else "target not reached"
    ax.set_title(f"Growth vs scratch (tiny FLM, CPU): grown schedule {ratio}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "growth_vs_scratch.png"), dpi=120)

    def fmt(x, unit=""):
        return "not reached" if x is None else f"{x:.3g}{unit}"

    table = ("| schedule (same total compute) | FLOPs to reach {t:.3f} | wall time to reach it |\n|---|---|---|\n"
             "| stage-3 shape from scratch ({n} steps) | {sf} | {sw} |\n"
             "| grown (stage 1 -> width -> stage 2 -> depth -> stage 3; {steps} steps) | {gf} | {gw} |\n"
             "| ratio (scratch / grown) | {cr} | {wr} |\n\n"
             "Final validation loss: scratch {t:.3f}, grown {gl:.3f} ({sf_total} vs {gt} FLOPs in all). The demo's own "
             "schedule (stage 3 of {d3} steps, {dt} FLOPs) ends at {dl:.3f}; {sd} Once scratch has spent as much "
             "compute as the demo schedule, its validation loss is {sl}.\n").format(
        t=target, n=total_steps, steps=grown_steps, sf=fmt(s_flops), sw=fmt(s_wall, " s"), gf=fmt(g_flops),
        gw=fmt(g_wall, " s"), cr=fmt(result["compute_ratio"], "x"), wr=fmt(result["wall_ratio"], "x"),
        gl=grown_points[-1][2], sf_total=fmt(scratch["flops"]), gt=fmt(grown_total),
        d3=summary["stages"][-1]["steps"], dt=fmt(demo_flops), dl=demo_final,
        sd=(f"scratch never gets that low (it ends at {target:.3f})." if s_to_demo is None else
            f"scratch reaches that after {s_to_demo:.3g} FLOPs ({s_to_demo / demo_flops:.2f}x the demo schedule's "
            "compute)."),
        sl="n/a" if at_demo_compute is None else f"{at_demo_compute:.3f}")
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
