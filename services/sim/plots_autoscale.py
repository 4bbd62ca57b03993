"""GPUs in use over time per policy (`tokenpool plan --autoscale --plot`)."""

from __future__ import annotations

from pathlib import Path

from services.sim.plots import COLORS, _pyplot, _save


def gpus_over_time_plot(policies: dict[str, dict], path: Path, title: str):
    """`policies`: plan_autoscaled's, each with "gpus_over_time" ({"bin_s", "mean", "peak"}) or,
    for dedicated, "gpus" held all along."""
    plt = _pyplot()
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, ax = plt.subplots(figsize=(7.2, 4.0))
    span_h = max((len(p["gpus_over_time"]["mean"]) * p["gpus_over_time"]["bin_s"] / 3600
                  for p in policies.values() if "gpus_over_time" in p), default=24.0)  # fmt: skip
    for name, p in policies.items():
        label = f"{name}: {p['gpu_hours']:g} GPU-h" if p.get("gpu_hours") is not None else f"{name}: none"
        if "gpus_over_time" in p:
            series = p["gpus_over_time"]
            hours = [i * series["bin_s"] / 3600 for i in range(len(series["mean"]) + 1)]
            ax.stairs(series["mean"], hours, label=label, color=COLORS.get(name), linewidth=1.4, baseline=None)
        elif p.get("gpus"):
            ax.hlines(p["gpus"], 0, span_h, label=label, color=COLORS.get(name), linestyles="--")
    ax.set(xlabel="hours", ylabel="GPUs in use (mean per bin)", title=title)
    ax.set_yscale("log")
    ticks = [1, 2, 3, 4, 6, 10, 20, 40, 80, 160, 320]
    top = max([p.get("peak_gpus") or 1 for p in policies.values()] + [1])
    ax.set_yticks([t for t in ticks if t <= 1.5 * top])
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(alpha=0.3)
    ax.legend(loc="center right")
    _save(fig, path)
    plt.close(fig)
