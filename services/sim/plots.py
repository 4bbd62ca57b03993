"""PNG plots of simulation results (matplotlib, the `plot` extra).

    attainment_plot(curves, path, title=..., target=0.9)   # attainment against number of models
    gpus_plot(plans, path, title=...)                       # GPUs each policy needs
"""

from __future__ import annotations

from pathlib import Path

from services.sim.errors import SimError

COLORS = {"token": "tab:blue", "request": "tab:orange", "dedicated": "tab:gray"}


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SimError("plots need matplotlib: pip install 'tokenpool[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    path = Path(path)
    if not path.parent.is_dir():
        raise SimError(f"cannot write the plot to {path}: folder {path.parent} does not exist")
    fig.savefig(path, dpi=120, bbox_inches="tight")


def attainment_plot(curves: dict[str, list[tuple[int, float]]], path: Path, title: str, target: float | None = None):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for policy, points in curves.items():
        xs, ys = zip(*points) if points else ((), ())
        ax.plot(xs, [100 * y for y in ys], marker="o", label=policy, color=COLORS.get(policy))
    if target is not None:
        ax.axhline(100 * target, color="black", linestyle=":", linewidth=1, label=f"target {100 * target:g}%")
    ax.set(xlabel="models served", ylabel="SLO attainment (%)", ylim=(0, 102), title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
    plt.close(fig)


def gpus_plot(plans: dict[str, dict], path: Path, title: str):
    """`plans`: policy -> {"gpus", "models_per_gpu", ...} (PolicyPlan.as_dict()); a policy that
    found no pool is drawn as a hatched empty bar."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    names = list(plans)
    heights = [plans[p]["gpus"] or 0 for p in names]
    bars = ax.bar(names, heights, color=[COLORS.get(p, "tab:green") for p in names])
    for bar, policy in zip(bars, names):
        plan = plans[policy]
        label = "none found" if plan["gpus"] is None else f"{plan['gpus']} GPUs\n{plan['models_per_gpu']:g} models/GPU"
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=9)
    ax.set(ylabel="GPUs needed", title=title)
    ax.set_ylim(0, max(heights + [1]) * 1.25)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)
    plt.close(fig)


def models_per_gpu_plot(rows: list[dict], path: Path, title: str):
    """`rows`: bench market's, each with "models" and "policies" -> {"models_per_gpu", ...}."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for policy in ("token", "request", "dedicated"):
        points = [(r["models"], r["policies"][policy]["models_per_gpu"]) for r in rows if policy in r["policies"]]
        points = [(m, v) for m, v in points if v]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", label=policy, color=COLORS.get(policy))
    ax.set(xlabel="models in the market", ylabel="models per GPU", title=title)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
    plt.close(fig)
