"""tools/predict_loss.py: µP hyper-parameter search, width sweep, loss-prediction fit and check.

    predict_loss.py coord-check --out DIR                     µP coordinate check (test + PNG)
    predict_loss.py search --out DIR --proxy-width 32 --lrs ... --init-stds ... --output-mults ... [pretrain flags]
    predict_loss.py sweep  --out DIR --widths 32 48 64 96 --from-search DIR/search/best.json [pretrain flags]
    predict_loss.py fit    --sweep DIR/sweep/sweep.json --target-width 384     (or --points CSV --fit-first 7)
    predict_loss.py check  --prediction DIR/fit/fit.json [--actual-loss X]   (default: trains the target)

Flags this tool does not know are passed to every pretrain_flm.py run (data, tokenizer, layers,
sequence length, batch, schedule, --train-iters, --eval-interval, --eval-iters ...). Per run it
sets --hidden-size, --num-attention-heads (hidden / --head-dim), --ffn-hidden-size (4x),
--use-mup, --mup-base-width, --lr, --init-method-std and --mup-output-mult.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from dataclasses import dataclass

from flm_ext.flags import add_flags, flag
from flm_ext.mup import scaling_fit
from flm_ext.mup.sweep import Orchestrator, RunSpec, SweepError, loss_at

OWNED = ("--hidden-size", "--num-attention-heads", "--ffn-hidden-size", "--use-mup", "--no-use-mup",
         "--mup-base-width", "--lr", "--init-method-std", "--mup-output-mult", "--metrics-jsonl", "--save",
         "--load", "--save-interval")


class UsageError(ValueError):
    """Bad flags or input files; the message names them."""


def _say(message: str) -> None:
    print(message, flush=True)


# ---- pretrain flags and model sizes ---------------------------------------------------------------

def _check_passthrough(extra: list[str]) -> None:
    for item in extra:
        if item.split("=")[0] in OWNED:
            raise UsageError(f"{item} is set per run by predict_loss.py; do not pass it through")


def run_flags(base: list[str], *, width: int, head_dim: int, base_width: int, lr: float, init_std: float,
              output_mult: float) -> list[str]:
    if width % head_dim:
        raise UsageError(f"width {width} is not a multiple of --head-dim {head_dim}")
    return [*base, "--hidden-size", str(width), "--num-attention-heads", str(width // head_dim),
            "--ffn-hidden-size", str(4 * width), "--use-mup", "--mup-base-width", str(base_width),
            "--lr", repr(lr), "--init-method-std", repr(init_std), "--mup-output-mult", repr(output_mult)]


def resolve_run(flags: list[str]):
    """The validated TrainConfig of a run (vocabulary padded from the tokenizer), so bad flags or
    missing data files fail here, naming the flag or file, before any run starts."""
    from flm_ext.config import ConfigError
    from flm_ext.training.arguments import build_parser, config_from_args, with_vocab

    parser = build_parser()
    try:
        args = parser.parse_args(flags)
    except SystemExit as exc:
        raise UsageError(f"pretrain_flm.py rejects these flags: {' '.join(flags)}") from exc
    try:
        cfg = config_from_args(args, 1)
    except ConfigError as error:
        raise UsageError(f"pretrain_flm.py configuration error: {error}") from error
    for entry in cfg.data.data_path:
        try:
            float(entry)
            continue
        except ValueError:
            pass
        for suffix in (".bin", ".idx"):
            if not os.path.exists(entry + suffix):
                raise UsageError(f"--data-path {entry}: {entry + suffix} does not exist")
    if cfg.data.vocab_from_tokenizer:
        for name in ("vocab_file", "merge_file", "tokenizer_model"):
            path = getattr(cfg.data, name)
            if path and not os.path.exists(path):
                raise UsageError(f"--{name.replace('_', '-')} {path} does not exist")
        tokenizer = cfg.data.build_tokenizer()
        cfg = with_vocab(cfg, tokenizer.vocab_size)
    return cfg


def model_sizes(model) -> dict:
    from flm_ext.config import num_parameters

    total = num_parameters(model)
    embedding = model.vocab_size * model.hidden_size * (1 if model.share_embeddings_and_output_weights else 2)
    return {"total": total, "non_embedding": total - embedding}


def _steps(cfg) -> list[int]:
    """The steps at which losses are recorded: every --eval-interval and the last step."""
    iters = cfg.schedule.train_iters
    interval = cfg.logging.eval_interval
    steps = list(range(interval, iters + 1, interval)) if interval else []
    return sorted(set(steps) | {iters})


def _run_losses(result: dict | None, steps: list[int], metric: str) -> dict[int, float | None]:
    if result is None:
        return {s: None for s in steps}
    return {s: loss_at(result["metrics"], s, metric) for s in steps}


def _fmt(x) -> str:
    if x is None:
        return "-"
    return f"{x:.4f}" if isinstance(x, float) else str(x)


# ---- search ---------------------------------------------------------------------------------------

def cmd_search(a, extra: list[str]) -> int:
    _check_passthrough(extra)
    base_width = a.mup_base_width or a.proxy_width
    specs, cfg = _search_specs(a, extra, base_width)
    steps = _steps(cfg)
    metric = a.metric or ("valid" if cfg.logging.eval_interval else "train")
    folder = os.path.join(a.out, a.name)
    results = Orchestrator(os.path.join(folder, "runs"), jobs=a.jobs, threads=a.threads, retry_failed=a.retry_failed,
                           checkpoint_interval=a.checkpoint_interval, label=a.name).run(specs)
    rows = _search_rows(specs, results, steps[-1], metric)
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        raise UsageError(f"no run of the search finished with a finite loss; see {folder}/runs/*/stdout.log")
    best = min(ok, key=lambda r: r["loss"])
    title = f"µP search at width {a.proxy_width} (base width {base_width}): {metric} loss at step {steps[-1]}"
    lines = _write_search_tables(folder, rows, best, title)
    summary = {"proxy_width": a.proxy_width, "mup_base_width": base_width, "head_dim": a.head_dim,
               "lr": best["lr"], "init_std": best["init_std"], "output_mult": best["output_mult"], "loss": best["loss"],
               "metric": metric, "step": steps[-1], "grid": {"lrs": a.lrs, "init_stds": a.init_stds,
                                                            "output_mults": a.output_mults},
               "pretrain_flags": extra, "rows": rows}
    with open(os.path.join(folder, "best.json"), "w") as f:
        json.dump(summary, f, indent=1)
    _plot_search(rows, os.path.join(folder, "search.png"), f"µP search, width {a.proxy_width}: {metric} loss "
                                                             f"at step {steps[-1]}")
    _say("\n".join(lines))
    _say(f"best: lr {best['lr']:g}, init std {best['init_std']:g}, output mult {best['output_mult']:g} "
         f"(loss {best['loss']:.4f}); wrote {folder}/table.md, table.csv, best.json, search.png")
    return 0


def _search_specs(a, extra: list[str], base_width: int) -> tuple[list[RunSpec], object]:
    """One run per grid point, every one's flags checked before any starts; and the last config."""
    specs = []
    for lr, std, om in [(lr, std, om) for lr in a.lrs for std in a.init_stds for om in a.output_mults]:
        flags = run_flags(extra, width=a.proxy_width, head_dim=a.head_dim, base_width=base_width, lr=lr,
                          init_std=std, output_mult=om)
        cfg = resolve_run(flags)
        specs.append(RunSpec(name=f"w{a.proxy_width}_lr{lr:g}_std{std:g}_om{om:g}", args=flags,
                             train_iters=cfg.schedule.train_iters,
                             meta={"width": a.proxy_width, "lr": lr, "init_std": std, "output_mult": om}))
    return specs, cfg


def _search_rows(specs: list[RunSpec], results: dict, step: int, metric: str) -> list[dict]:
    """A row per run: its grid point, status (ok, failed, diverged, missing) and loss at `step`."""
    rows = []
    for spec in specs:
        res = results.get(spec.name)
        loss = _run_losses(res, [step], metric)[step]
        status = res["status"] if res else "missing"
        if status == "ok" and (loss is None or not math.isfinite(loss)):
            status = "diverged"
        rows.append({**spec.meta, "name": spec.name, "status": status, "loss": loss})
    return rows


def _write_search_tables(folder: str, rows: list[dict], best: dict, title: str) -> list[str]:
    """table.csv and table.md (best first, then by loss); returns the markdown lines."""
    with open(os.path.join(folder, "table.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["name", "width", "lr", "init_std", "output_mult", "status", "loss"])
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# {title}", "", "| lr | init std | output mult | loss | status |", "|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["loss"] is None, r["loss"] if r["loss"] is not None else 0)):
        mark = " **best**" if r is best else ""
        lines.append(f"| {r['lr']:g} | {r['init_std']:g} | {r['output_mult']:g} | {_fmt(r['loss'])}{mark} | "
                     f"{r['status']} |")
    with open(os.path.join(folder, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return lines


def _plot_search(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    combos = sorted({(r["init_std"], r["output_mult"]) for r in rows})
    for i, (std, om) in enumerate(combos):
        pts = sorted((r["lr"], r["loss"]) for r in rows if (r["init_std"], r["output_mult"]) == (std, om)
                     and r["status"] == "ok")
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=f"C{i % 10}",
                    label=f"std {std:g}, out mult {om:g}")
    scaling_fit.save_log_x_plot(fig, ax, path, xlabel="learning rate", ylabel="loss", title=title)


# ---- sweep ----------------------------------------------------------------------------------------

def _hyper_parameters(a) -> dict:
    hp = {}
    if a.from_search:
        if not os.path.exists(a.from_search):
            raise UsageError(f"--from-search {a.from_search} does not exist (run `search` first)")
        with open(a.from_search) as f:
            best = json.load(f)
        hp = {k: best[k] for k in ("lr", "init_std", "output_mult")}
        hp["mup_base_width"] = best["mup_base_width"]
        hp["head_dim"] = best["head_dim"]
    for key in ("lr", "init_std", "output_mult", "mup_base_width", "head_dim"):
        if getattr(a, key, None) is not None:
            hp[key] = getattr(a, key)
    missing = [k for k in ("lr", "init_std", "output_mult", "mup_base_width") if k not in hp]
    if missing:
        raise UsageError(f"give --from-search or --{', --'.join(m.replace('_', '-') for m in missing)}")
    hp.setdefault("head_dim", 16)
    return hp


def width_spec(width: int, hp: dict, extra: list[str]) -> tuple[RunSpec, object]:
    flags = run_flags(extra, width=width, head_dim=hp["head_dim"], base_width=hp["mup_base_width"], lr=hp["lr"],
                      init_std=hp["init_std"], output_mult=hp["output_mult"])
    cfg = resolve_run(flags)
    return RunSpec(name=f"w{width}", args=flags, train_iters=cfg.schedule.train_iters,
                   meta={"width": width, **model_sizes(cfg.model)}), cfg


def cmd_sweep(a, extra: list[str]) -> int:
    _check_passthrough(extra)
    hp = _hyper_parameters(a)
    specs, cfgs = zip(*(width_spec(w, hp, extra) for w in a.widths))
    steps = _steps(cfgs[0])
    metric = a.metric or ("valid" if cfgs[0].logging.eval_interval else "train")
    folder = os.path.join(a.out, "sweep")
    results = Orchestrator(os.path.join(folder, "runs"), jobs=a.jobs, threads=a.threads, retry_failed=a.retry_failed,
                           checkpoint_interval=a.checkpoint_interval, label="sweep").run(list(specs))
    points = []
    for spec in specs:
        res = results.get(spec.name)
        points.append({**spec.meta, "name": spec.name, "status": res["status"] if res else "missing",
                       "losses": _run_losses(res, steps, metric)})
    sweep = {"hyper_parameters": hp, "metric": metric, "steps": steps, "pretrain_flags": list(extra),
             "points": points}
    with open(os.path.join(folder, "sweep.json"), "w") as f:
        json.dump(sweep, f, indent=1)
    header = "| width | params | non-embedding | status | " + " | ".join(f"step {s}" for s in steps) + " |"
    lines = [header, "|" + "---|" * (4 + len(steps))]
    for p in points:
        lines.append(f"| {p['width']} | {p['total']:,} | {p['non_embedding']:,} | {p['status']} | "
                     + " | ".join(_fmt(p["losses"][s]) for s in steps) + " |")
    _say(f"{metric} loss by width (lr {hp['lr']:g}, init std {hp['init_std']:g}, output mult {hp['output_mult']:g}, "
         f"µP base width {hp['mup_base_width']}):\n" + "\n".join(lines))
    _say(f"wrote {folder}/sweep.json")
    return 0


# ---- fit ------------------------------------------------------------------------------------------

def _points_from_csv(path: str) -> list[scaling_fit.Point]:
    if not os.path.exists(path):
        raise UsageError(f"--points {path} does not exist")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    if not rows or not {"size", "loss"} <= set(rows[0]):
        raise UsageError(f"--points {path}: need a header with columns 'size' and 'loss' (and optionally 'name')")
    points = []
    for i, row in enumerate(rows):
        try:
            size = float(row["size"])
        except ValueError as exc:
            raise UsageError(f"--points {path}, data row {i + 1}: size {row['size']!r} is not a number") from exc
        try:
            loss = float(row["loss"]) if row["loss"].strip() else None
        except ValueError:
            loss = None  # reported as a bad point
        points.append(scaling_fit.Point(name=row.get("name") or f"row{i + 1}", size=size, loss=loss))
    return points


def _load_sweep(path: str) -> dict:
    if not os.path.exists(path):
        raise UsageError(f"--sweep {path} does not exist (run `sweep` first)")
    with open(path) as f:
        sweep = json.load(f)
    for p in sweep["points"]:
        p["losses"] = {int(k): v for k, v in p["losses"].items()}
    return sweep


def cmd_fit(a, extra: list[str]) -> int:
    if extra:
        raise UsageError(f"fit takes no pretrain flags: {' '.join(extra)}")
    size_key = "non_embedding" if a.size == "non-embedding" else "total"
    if a.fit_first is not None and a.fit_first < 3:
        raise UsageError(f"--fit-first {a.fit_first} must be >= 3 (a * N^b + c has 3 parameters)")
    if a.sweep:
        points, targets, step, max_loss, label = _sweep_fit_inputs(a, size_key)
    elif a.points:
        if a.target_width:
            raise UsageError("--target-width needs --sweep (the model flags come from the sweep)")
        points, targets, step, max_loss, label = _points_from_csv(a.points), [], a.step, None, "loss"
    else:
        raise UsageError("give --sweep (from the `sweep` command) or --points CSV")
    if a.fit_first:  # fit the K smallest, predict (and compare with) the rest
        ordered = sorted(points, key=lambda p: p.size)
        points = ordered[:a.fit_first]
        targets += [{"name": p.name, "size": p.size, "actual": p.loss} for p in ordered[a.fit_first:]]
    targets += [{"name": f"N={s:g}", "size": float(s)} for s in a.target_params or []]
    if not targets:
        _say("no target given (--target-width, --target-params or --fit-first): fitting only")
    fit, rejected = _fit_usable(points, max_loss)
    _say(f"fit of {label} on {len(fit.sizes)} points: L(N) = {fit.a:.6g} * N^{fit.b:.5f} + {fit.c:.5f} "
         f"(N = {'non-embedding' if size_key == 'non_embedding' else 'total'} parameters; rmse {fit.rmse:.5f})")
    for t in targets:
        _predict_target(fit, t)
    out = a.output or (os.path.join(os.path.dirname(os.path.abspath(a.sweep)), "..", "fit") if a.sweep else "fit")
    out = os.path.normpath(out)
    os.makedirs(out, exist_ok=True)
    result = {"fit": fit.to_dict(), "size": size_key, "step": step, "label": label, "targets": targets,
              "rejected": [{"name": p.name, "size": p.size, "loss": p.loss, "problem": p.problem} for p in rejected],
              "sweep": os.path.abspath(a.sweep) if a.sweep else None}
    with open(os.path.join(out, "fit.json"), "w") as f:
        json.dump(result, f, indent=1)
    scaling_fit.plot_fit(fit, os.path.join(out, "fit.png"), title=f"µScaling fit: {label}", rejected=rejected,
                         targets=targets, size_label=f"{size_key.replace('_', '-')} parameters N")
    _say(f"wrote {out}/fit.json and {out}/fit.png")
    return 0


def _sweep_fit_inputs(a, size_key: str):
    """(points, width targets, step, max_loss, label) from a sweep.json; max_loss is ln(vocab)."""
    sweep = _load_sweep(a.sweep)
    step = a.step or sweep["steps"][-1]
    if step not in sweep["steps"]:
        raise UsageError(f"--step {step}: the sweep recorded losses at steps {sweep['steps']}")
    points = [scaling_fit.Point(name=p["name"], size=float(p[size_key]), loss=p["losses"].get(step),
                                problem=None if p["status"] == "ok" else f"run {p['status']}")
              for p in sweep["points"]]
    max_loss = None
    if sweep["points"]:
        # No better than a uniform guess over the vocabulary: the run did not learn (or diverged).
        first = sweep["points"][0]
        max_loss = math.log((first["total"] - first["non_embedding"]) // first["width"])
    targets = []
    for w in a.target_width or []:
        spec, cfg = width_spec(w, sweep["hyper_parameters"], sweep["pretrain_flags"])
        targets.append({"name": spec.name, "width": w, "size": float(model_sizes(cfg.model)[size_key])})
    return points, targets, step, max_loss, f"{sweep['metric']} loss at step {step}"


def _fit_usable(points: list[scaling_fit.Point], max_loss: float | None):
    """Report and leave out bad points, fit the rest; refuse a law that is no decreasing power law."""
    usable, rejected = scaling_fit.split_usable(points, max_loss=max_loss)
    for p in rejected:
        _say(f"WARNING: {p.name} (N={p.size:.4g}) left out of the fit: {p.problem}")
    for warning in scaling_fit.non_monotone(usable):
        _say(f"WARNING: {warning}")
    try:
        fit = scaling_fit.fit_power_law([p.size for p in usable], [p.loss for p in usable])
    except scaling_fit.FitError as error:
        raise UsageError(f"cannot fit: {error} ({len(usable)} usable point(s), {len(rejected)} rejected)") from error
    problem = scaling_fit.law_problem(fit)
    if problem:
        raise UsageError(f"no prediction: {problem}")
    return fit, rejected


def _predict_target(fit: scaling_fit.PowerLawFit, t: dict) -> None:
    """Add the prediction, its standard error and leave-one-out spread to target `t`, and print them."""
    t["predicted"] = fit.predict(t["size"])
    t["stderr"] = fit.stderr(t["size"])
    loo = fit.loo_predictions(t["size"])
    t["loo_spread"] = max(abs(x - t["predicted"]) for x in loo) if loo else None
    if t.get("actual") is not None:
        t["relative_error"] = scaling_fit.relative_error(t["predicted"], t["actual"])
    unc = f" +- {t['stderr']:.4f} (1 s.e.)" if t["stderr"] is not None else ""
    loo_text = f", leave-one-out spread {t['loo_spread']:.4f}" if t["loo_spread"] is not None else ""
    actual = (f"; actual {t['actual']:.4f}, error {100 * t['relative_error']:+.3f}%"
              if t.get("actual") is not None else "")
    _say(f"  {t['name']}: N={t['size']:.6g} predicted {t['predicted']:.4f}{unc}{loo_text}{actual}")


# ---- check ----------------------------------------------------------------------------------------

def cmd_check(a, extra: list[str]) -> int:
    if not os.path.exists(a.prediction):
        raise UsageError(f"--prediction {a.prediction} does not exist (run `fit` first)")
    with open(a.prediction) as f:
        pred = json.load(f)
    candidates = [t for t in pred["targets"] if "width" in t] if a.actual_loss is None else pred["targets"]
    if a.target:
        candidates = [t for t in pred["targets"] if t["name"] == a.target]
    if len(candidates) != 1:
        raise UsageError(f"{a.prediction} has targets {[t['name'] for t in pred['targets']]}: choose one with --target")
    target = candidates[0]
    actual, source = (a.actual_loss, "--actual-loss") if a.actual_loss is not None else _train_target(a, pred, target)
    result = check_prediction(target["predicted"], actual, target.get("stderr"))
    result.update({"target": target["name"], "size": target["size"], "actual_from": source, "step": pred["step"]})
    out = os.path.dirname(os.path.abspath(a.prediction))
    with open(os.path.join(out, "check.json"), "w") as f:
        json.dump(result, f, indent=1)
    fit = scaling_fit.PowerLawFit(**{k: v for k, v in pred["fit"].items()})
    target = {**target, "actual": actual}
    rejected = [scaling_fit.Point(**r) for r in pred.get("rejected", [])]
    scaling_fit.plot_fit(fit, os.path.join(out, "check.png"), title=f"prediction vs real run: {pred['label']}",
                         rejected=rejected, targets=[target], size_label=f"{pred['size'].replace('_', '-')} parameters N")
    unc = f" +- {result['stderr']:.4f}" if result["stderr"] is not None else ""
    _say(f"{target['name']} (N={target['size']:.6g}): predicted {result['predicted']:.4f}{unc}, actual {actual:.4f} "
         f"({source}): error {result['absolute_error']:+.4f} = {100 * result['relative_error']:+.3f}%"
         + (f", {result['sigmas']:.2f} standard errors" if result["sigmas"] is not None else ""))
    _say(f"wrote {out}/check.json and {out}/check.png")
    return 0


def _train_target(a, pred: dict, target: dict) -> tuple[float, str]:
    """Train the predicted width with the sweep's flags (reusing a finished run) and read its loss."""
    if not pred.get("sweep") or "width" not in target:
        raise UsageError("without --actual-loss the prediction must come from `fit --sweep ... --target-width`")
    sweep = _load_sweep(pred["sweep"])
    spec, _cfg = width_spec(target["width"], sweep["hyper_parameters"], sweep["pretrain_flags"])
    root = os.path.join(os.path.dirname(pred["sweep"]), "runs")  # same folder: an already-run width is reused
    results = Orchestrator(root, jobs=1, threads=a.threads, retry_failed=a.retry_failed,
                           checkpoint_interval=a.checkpoint_interval, label="check").run([spec])
    res = results[spec.name]
    actual = loss_at(res["metrics"], pred["step"], sweep["metric"]) if res["status"] == "ok" else None
    source = os.path.join(root, spec.name)
    if actual is None or not math.isfinite(actual):
        raise UsageError(f"the target run {source} has no finite loss at step {pred['step']} "
                         f"(status {res['status']}); see its stdout.log")
    return actual, source


def check_prediction(predicted: float, actual: float, stderr: float | None = None) -> dict:
    """Absolute and relative error of a prediction, and how many standard errors off it is."""
    if not math.isfinite(actual) or actual <= 0:
        raise UsageError(f"the actual loss {actual} must be a finite positive number")
    error = predicted - actual
    return {"predicted": predicted, "actual": actual, "absolute_error": error,
            "relative_error": scaling_fit.relative_error(predicted, actual), "stderr": stderr,
            "sigmas": abs(error) / stderr if stderr else None}


# ---- coordinate check -----------------------------------------------------------------------------

def cmd_coord_check(a, extra: list[str]) -> int:
    if extra:
        raise UsageError(f"coord-check takes no pretrain flags: {' '.join(extra)}")
    from flm_ext.mup.coord_check import plot_coord_check, run_coord_check, verdict

    os.makedirs(a.out, exist_ok=True)
    kw = dict(head_dim=a.head_dim, num_layers=a.num_layers, lr=a.lr, steps=a.steps, seeds=tuple(a.seeds))
    mup = run_coord_check(a.widths, use_mup=True, progress=_say, **kw)
    sp = run_coord_check(a.widths, use_mup=False, progress=_say, **kw)
    path = os.path.join(a.out, "coord_check.png")
    plot_coord_check([mup, sp], path)
    ok, text = verdict(mup, sp)
    with open(os.path.join(a.out, "coord_check.json"), "w") as f:
        json.dump({"passed": ok, "verdict": text, "mup": mup.__dict__, "sp": sp.__dict__,
                   "mup_slopes": mup.slopes(), "sp_slopes": sp.slopes()}, f, indent=1)
    for name, res in (("µP", mup), ("SP", sp)):
        _say(f"{name} slopes of log2 mean|coord| vs log2 width at step {res.steps[-1]}: "
             + ", ".join(f"{k} {v:+.2f}" for k, v in res.slopes().items()))
    _say(f"coordinate check {'PASSED' if ok else 'FAILED'}: {text}\nwrote {path}")
    return 0 if ok else 1


# ---- parser ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunsArgs:
    """Flags of the sub-commands that train runs (search, sweep; check takes the last three)."""

    out: str = flag(required=True, help="output root (run folders, tables, plots)")
    jobs: int = flag(1, help="runs in parallel")
    threads: int | None = flag(None, help="OMP threads per run (default: cores / jobs)")
    retry_failed: bool = flag(False, help="rerun runs that finished with an error")
    checkpoint_interval: int | None = flag(None, help="save a checkpoint every N steps so an interrupted run "
                                                      "resumes midway")
    metric: str | None = flag(None, choices=("valid", "train"), help=(
        "loss to record: validation loss (default when --eval-interval is given) or the mean train loss over the "
        "last 5 logged steps"))


@dataclass(frozen=True)
class SearchArgs:
    proxy_width: int = flag(required=True)
    lrs: list[float] = flag(required=True, nargs="+")
    name: str = flag("search", help="sub-folder of --out for this search")
    mup_base_width: int | None = flag(None, help="default: the proxy width")
    head_dim: int = flag(16)
    init_stds: list[float] = flag(default_factory=lambda: [0.02], nargs="+")
    output_mults: list[float] = flag(default_factory=lambda: [1.0], nargs="+")


@dataclass(frozen=True)
class SweepArgs:
    widths: list[int] = flag(required=True, nargs="+")
    from_search: str | None = flag(None, help="best.json written by `search`")
    lr: float | None = flag(None)
    init_std: float | None = flag(None)
    output_mult: float | None = flag(None)
    mup_base_width: int | None = flag(None)
    head_dim: int | None = flag(None)


@dataclass(frozen=True)
class FitArgs:
    sweep: str | None = flag(None, help="sweep.json written by `sweep`")
    points: str | None = flag(None, help="CSV with columns name,size,loss (instead of --sweep)")
    step: int | None = flag(None, help="training step whose losses are fitted (default: last)")
    size: str = flag("total", choices=("total", "non-embedding"), help="what N counts")
    fit_first: int | None = flag(None, help="fit the K smallest points, predict the rest")
    target_width: list[int] | None = flag(None, help="predict these widths (needs --sweep)")
    target_params: list[float] | None = flag(None, help="predict these sizes N")
    output: str | None = flag(None, help="folder for fit.json/fit.png (default: <sweep root>/fit)")


@dataclass(frozen=True)
class CheckArgs:
    prediction: str = flag(required=True, help="fit.json written by `fit`")
    target: str | None = flag(None, help="which target of fit.json (default: the only width target)")
    actual_loss: float | None = flag(None, help="the real loss (default: train the target)")


@dataclass(frozen=True)
class CoordCheckArgs:
    out: str = flag(required=True)
    widths: list[int] = flag(default_factory=lambda: [32, 64, 128, 256], nargs="+")
    head_dim: int = flag(8)
    num_layers: int = flag(2)
    lr: float = flag(1e-3)
    steps: int = flag(8)
    seeds: list[int] = flag(default_factory=lambda: [1, 2], nargs="+")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="predict_loss.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    commands = (  # name, help, the configs of its flags, handler
        ("search", "grid over LR x init std x output multiplier at a proxy width", (RunsArgs, SearchArgs), cmd_search),
        ("sweep", "train a series of widths with the transferred hyper-parameters", (RunsArgs, SweepArgs), cmd_sweep),
        ("fit", "fit L(N) = a N^b + c and predict larger sizes", (FitArgs,), cmd_fit),
        ("check", "compare a prediction with a real run of the target size", (CheckArgs,), cmd_check),
        ("coord-check", "µP coordinate check: activation size vs width, µP vs SP, PNG", (CoordCheckArgs,),
         cmd_coord_check),
    )
    for name, help_, configs, func in commands:
        s = sub.add_parser(name, help=help_)
        for config in configs:
            add_flags(s, config)
        if name == "check":  # it trains the target run when --actual-loss is not given
            add_flags(s, RunsArgs, only=("threads", "retry_failed", "checkpoint_interval"))
        s.set_defaults(func=func)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    a, extra = parser.parse_known_args(argv)
    try:
        return a.func(a, extra)
    except (UsageError, SweepError) as error:
        print(f"predict_loss.py {a.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"predict_loss.py {a.command}: interrupted; run the same command again to resume "
              f"(finished runs are kept)", file=sys.stderr)
        return 130
