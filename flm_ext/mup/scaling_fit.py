"""Fit L(N) = a * N^b + c to (size, loss) points and predict the loss of a larger model.

Why not a general non-linear solver: for a fixed exponent b the model is linear in (a, c), so
the best (a, c) is an ordinary least-squares solve and the fit reduces to a one-dimensional
search over b (variable projection). A dense scan of b followed by golden-section refinement
finds the global optimum for the few, smooth points a width sweep gives, with no starting guess
and no dependency beyond numpy. Uncertainty of a prediction is reported two ways: the delta-method
standard error from the residual variance (needs more points than the 3 parameters) and the
spread of leave-one-out refits (how much one point moves the prediction).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

# Exponent search range: losses fall with size, and slower than 1/N^3.
B_MIN, B_MAX = -3.0, -1e-4


class FitError(ValueError):
    """Too few usable points, or points that cannot be fitted; the message says which."""


@dataclass
class PowerLawFit:
    a: float
    b: float
    c: float
    sizes: list[float]
    losses: list[float]
    rmse: float
    cov: list[list[float]] | None = None  # covariance of (a, b, c); None with no residual dof
    loo_params: list[tuple[float, float, float]] = field(default_factory=list)  # leave-one-out (a, b, c)

    def predict(self, size: float) -> float:
        return self.a * size ** self.b + self.c

    def stderr(self, size: float) -> float | None:
        """Delta-method standard error of predict(size); None when the fit has no residual dof."""
        if self.cov is None:
            return None
        grad = np.array([size ** self.b, self.a * size ** self.b * math.log(size), 1.0])
        var = float(grad @ np.array(self.cov) @ grad)
        return math.sqrt(max(var, 0.0))

    def loo_predictions(self, size: float) -> list[float]:
        return [a * size ** b + c for a, b, c in self.loo_params]

    def to_dict(self) -> dict:
        return asdict(self)


def _solve_linear(b: float, x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Best (a, c) for a fixed b, and the sum of squared residuals."""
    design = np.stack([x ** b, np.ones_like(x)], axis=1)
    (a, c), *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ np.array([a, c])
    return float(a), float(c), float(residual @ residual)


def _fit_params(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    grid = np.linspace(B_MIN, B_MAX, 3001)
    ssr = np.array([_solve_linear(b, x, y)[2] for b in grid])
    i = int(np.nanargmin(ssr))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    golden = (math.sqrt(5) - 1) / 2
    for _ in range(80):  # golden-section refinement inside the bracketing grid cells
        m1, m2 = hi - golden * (hi - lo), lo + golden * (hi - lo)
        if _solve_linear(m1, x, y)[2] < _solve_linear(m2, x, y)[2]:
            hi = m2
        else:
            lo = m1
    b = (lo + hi) / 2
    a, c, s = _solve_linear(b, x, y)
    return a, b, c, s


def fit_power_law(sizes, losses, *, leave_one_out: bool = True) -> PowerLawFit:
    """Least-squares fit of L = a * N^b + c. Sizes are rescaled internally (to millions when large)
    only for conditioning; the returned a, b, c are for N as given."""
    x = np.asarray(sizes, dtype=np.float64)
    y = np.asarray(losses, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise FitError(f"sizes and losses must be equal-length lists (got {x.shape} and {y.shape})")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise FitError("sizes and losses must be finite; drop bad runs first (see split_usable)")
    if np.any(x <= 0):
        raise FitError("sizes must be positive")
    if len(np.unique(x)) < 3:
        raise FitError(f"need at least 3 distinct sizes to fit a * N^b + c, got {len(np.unique(x))}")
    scale = float(np.median(x))
    a_s, b, c, ssr = _fit_params(x / scale, y)
    a = a_s * scale ** (-b)  # a_s (N/scale)^b = (a_s scale^-b) N^b
    n = len(x)
    cov = None
    if n > 3:
        sigma2 = ssr / (n - 3)
        jac = np.stack([(x / scale) ** b, a_s * (x / scale) ** b * np.log(x / scale), np.ones_like(x)], axis=1)
        try:
            cov_s = sigma2 * np.linalg.inv(jac.T @ jac)
            # back to (a, b, c) for unscaled N: a = a_s * scale^-b
            t = np.array([[scale ** -b, -a_s * scale ** -b * math.log(scale), 0.0],
                          [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
            cov = (t @ cov_s @ t.T).tolist()
        except np.linalg.LinAlgError:
            cov = None
    loo = []
    if leave_one_out and n > 3:
        for i in range(n):
            keep = np.arange(n) != i
            sub = fit_power_law(x[keep], y[keep], leave_one_out=False)
            loo.append((sub.a, sub.b, sub.c))
    return PowerLawFit(a=a, b=b, c=c, sizes=x.tolist(), losses=y.tolist(), rmse=math.sqrt(ssr / n),
                       cov=cov, loo_params=loo)


def law_problem(fit: PowerLawFit) -> str | None:
    """Why `fit` is no decreasing power law to predict from, or None when it is one.

    Losses that do not fall with size still get a least-squares "fit": the exponent runs to the
    edge of the search range, a turns negative or huge and cancels against c, and the standard
    errors come out as zero, a confident prediction with no meaning."""
    law = f"L(N) = {fit.a:.6g} * N^{fit.b:.5f} + {fit.c:.5f}"
    if not fit.a > 0:
        return f"the fitted {law} does not decrease with N (a <= 0): the losses do not fall with size"
    for bound in (B_MIN, B_MAX):
        if abs(fit.b - bound) <= 1e-6:
            return (f"the fitted {law} has its exponent at the edge of the range searched [{B_MIN:g}, {B_MAX:g}]: "
                    f"the points do not follow a * N^b + c")
    return None


@dataclass
class Point:
    """One run of a width series: its size, loss at the chosen step, and why it is unusable (if so)."""

    name: str
    size: float
    loss: float | None
    problem: str | None = None


def split_usable(points: list[Point], *, max_loss: float | None = None) -> tuple[list[Point], list[Point]]:
    """(usable, rejected): a point is rejected when its run failed or diverged, its loss is missing
    or not finite, or it is above `max_loss` (e.g. ln(vocab): no better than chance). Rejected
    points get `problem` set; the caller reports them and fits the rest."""
    usable, rejected = [], []
    for p in points:
        if p.problem is None:
            if p.loss is None:
                p.problem = "no loss recorded at this step"
            elif not math.isfinite(p.loss):
                p.problem = f"loss is {p.loss}"
            elif max_loss is not None and p.loss > max_loss:
                p.problem = f"loss {p.loss:.4f} > {max_loss:.4f} (diverged or not learning)"
        (rejected if p.problem else usable).append(p)
    return usable, rejected


def non_monotone(points: list[Point]) -> list[str]:
    """Warnings for points whose loss is higher than a smaller model's (under µP wider is better)."""
    warnings = []
    ordered = sorted(points, key=lambda p: p.size)
    for smaller, larger in zip(ordered, ordered[1:]):
        if larger.loss > smaller.loss:
            warnings.append(f"{larger.name} (N={larger.size:.4g}) has a higher loss {larger.loss:.4f} than "
                            f"{smaller.name} (N={smaller.size:.4g}) {smaller.loss:.4f}")
    return warnings


def relative_error(predicted: float, actual: float) -> float:
    """(predicted - actual) / actual."""
    return (predicted - actual) / actual


def plot_fit(fit: PowerLawFit, path: str, *, title: str, rejected: list[Point] = (), targets=(),
             size_label: str = "parameters") -> None:
    """Points, fitted curve, predictions (with error bars) and actual target losses, log-x PNG.

    `targets`: list of dicts with size, predicted, stderr (optional) and actual (optional)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    all_sizes = list(fit.sizes) + [t["size"] for t in targets] + [p.size for p in rejected]
    grid = np.geomspace(min(all_sizes) * 0.8, max(all_sizes) * 1.25, 200)
    ax.plot(grid, [fit.predict(s) for s in grid], "-", color="C0",
            label=f"fit: {fit.a:.4g} N^{fit.b:.4f} + {fit.c:.4f}")
    ax.plot(fit.sizes, fit.losses, "o", color="C0", label="fitted points")
    for p in rejected:
        if p.loss is not None and math.isfinite(p.loss):
            ax.plot([p.size], [p.loss], "x", color="C3", ms=9)
        ax.axvline(p.size, color="C3", ls=":", lw=0.8)
        ax.annotate(f"rejected: {p.name}", (p.size, ax.get_ylim()[1]), fontsize=7, color="C3", rotation=90,
                    va="top")
    for i, t in enumerate(targets):
        err = t.get("stderr")
        ax.errorbar([t["size"]], [t["predicted"]], yerr=[err] if err else None, fmt="s", color="C1", capsize=4,
                    label="prediction" if i == 0 else None)
        if t.get("actual") is not None:
            ax.plot([t["size"]], [t["actual"]], "*", color="C2", ms=12,
                    label="actual" if not any(u.get("actual") is not None for u in targets[:i]) else None)
            ax.annotate(f"{100 * relative_error(t['predicted'], t['actual']):+.2f}%", (t["size"], t["actual"]),
                        textcoords="offset points", xytext=(6, -12), fontsize=8)
    save_log_x_plot(fig, ax, path, xlabel=size_label, ylabel="loss", title=title)


def save_log_x_plot(fig, ax, path: str, *, xlabel: str, ylabel: str, title: str) -> None:
    """Log x axis, labels, grid and legend, then write the PNG (shared by the fit and search plots)."""
    import matplotlib.pyplot as plt

    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
