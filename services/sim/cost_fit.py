"""DistServe-style step-time fits of the paper's vLLM profiles, and the command that re-fits them.

    python -m services.sim.cost_fit            # fit ../shared/data/aegaeon/profiles, print quality
    python -m services.sim.cost_fit --write    # ... and regenerate services/sim/cost_fitted.py
    python -m services.sim.cost_fit --json     # coefficients and quality as JSON

The data: ../shared/data/aegaeon/profiles/<model>/<GPU>/i<input>b<batch>.json, written by the
Aegaeon artifact's latency benchmark (vLLM, 4 warm-up and 12 timed runs of one batch of `batch`
random prompts of `input` tokens each, ignore_eos). `prefill_latencies` is the time from request
0's first scheduling to its first token: the first engine step. `decode_latencies` is request 0's
time from its first to its last token divided by the steps in between. We fit the median of the
12 runs of each file. The output length is not recorded (the script's default is 10 tokens), so a
decode step's context is taken as batch * input.

What the data shows, and what the fit does about it
- Truncated prefills. vLLM without chunked prefill schedules whole prompts up to
  max_num_batched_tokens (4096 here, = max_model_len), so a batch of more than 4096 tokens
  prefills only its first 4096 // input prompts in the step that is timed: prefill latency is
  flat beyond 4096 tokens. We read such a point as the prefill of min(batch, 4096 // input)
  prompts, which is what it measured. One profile has no such cap (Qwen2.5-7B on H800: its
  8192-token batches take twice its 4096-token ones), found by that test, not by name.
- Contaminated decodes. In those capped batches the remaining prompts prefill during request
  0's "decode" steps: their decode latency doubles or triples. They are left out of the decode fit.
- Empty decodes. i4096b2 under the cap reports 0.3-0.5 ms: the prompt fills max_model_len, no
  decode step ran. Decode points under 2 ms are left out.
- The prefill floor. Up to ~64-128 tokens a prefill costs what one read of the weights costs
  (flat at about a decode step); beyond, compute grows with tokens. prefill = max(floor,
  a + b*tokens + c*squared_tokens), floor = median of the points of <= 64 tokens, the affine
  part fitted on the points above 1.3 * floor.
- Batch steps. On H20 and A100 a decode step jumps between batch 60 and 70 and again between
  120 and 130 (H20: +9 to +21 ms, the size of a whole step); on H100/H800 the jump is small.
  decode = a + b*batch + c*context + s*((batch - 1) // 64) takes it: s is fitted, >= 0.
- Context. At <= 8192 context tokens the KV read is a small part of a step and the fit alone
  cannot pin it down; c is bounded below by the roofline (KV bytes per token / HBM bandwidth:
  every cached token's K and V are read once per step) and fitted above it.
- Noise. Individual points stray by 10-25% from their neighbours (Llama-2-13B on H100, input 32,
  batch 1 and 2: decode 15.2 and 17.1 ms between neighbours of 12.2-12.6 ms). No point is
  dropped for it; the fit weights every point by 1/latency (least relative error), and the
  quality figures below count all of them.

The regressors follow DistServe (Zhong et al., OSDI'24, section 4 / appendix): prefill time
linear in the batch's tokens plus a term in the sum of squared prompt lengths (attention),
decode time linear in batch size and in the tokens attended to. All coefficients are >= 0
(non-negative least squares on the relative errors).
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from services.sim.cost import ARCHITECTURES
from services.sim.cost_gpus import GPU_SPECS
from services.sim.errors import SimError

PROFILES = Path(__file__).resolve().parents[2] / "../shared/data/aegaeon/profiles"
FITTED_MODULE = Path(__file__).resolve().parent / "cost_fitted.py"

PROFILE_DIRS = {"qwen2.5-7b": "qwen2_5_7b", "yi-1.5-9b": "yi1_5_9b_chat", "llama-2-13b": "llama2_13b_chat"}
"""ARCHITECTURES key -> the profiles' folder name."""
GPUS = ("H100", "H800", "H20", "A100")

PREFILL_CAP_TOKENS = 4096
"""vLLM's max_num_batched_tokens in the capped profiles."""
FLOOR_TOKENS = 64
"""Prefills of at most this many tokens measure the floor."""
ABOVE_FLOOR = 1.3
"""A prefill point joins the affine fit when it takes more than this times the floor."""
EMPTY_DECODE_S = 0.002
BATCH_STEP = 64


@dataclass(frozen=True)
class ProfilePoint:
    input_tokens: int
    batch: int
    prefill_s: float
    decode_s: float


@dataclass(frozen=True)
class FitQuality:
    points: int
    median_rel_err: float
    p90_rel_err: float
    max_rel_err: float
    r2: float
    worst: str
    """The point the fit misses most, e.g. 'i32b2 -25%'."""


@dataclass(frozen=True)
class StepFitResult:
    """One architecture on one GPU: coefficients (seconds) and how well they match the profile."""

    decode_fixed_s: float
    decode_per_seq_s: float
    decode_per_context_token_s: float
    decode_per_64_seqs_s: float
    prefill_floor_s: float
    prefill_fixed_s: float
    prefill_per_token_s: float
    prefill_per_squared_token_s: float
    prefill_cap_tokens: int | None
    decode_quality: FitQuality
    prefill_quality: FitQuality


def load_points(directory: Path) -> list[ProfilePoint]:
    if not directory.is_dir():
        raise SimError(f"no profile folder {directory} (the paper's profiles live in ../shared/data/aegaeon/profiles)")
    points = []
    for path in sorted(directory.glob("i*b*.json")):
        match = re.fullmatch(r"i(\d+)b(\d+)\.json", path.name)
        if not match:
            continue
        data = json.loads(path.read_text())
        points.append(
            ProfilePoint(
                int(match[1]),
                int(match[2]),
                statistics.median(data["prefill_latencies"]),
                statistics.median(data["decode_latencies"]),
            )
        )
    if not points:
        raise SimError(f"{directory} holds no i<input>b<batch>.json profile")
    return sorted(points, key=lambda p: (p.input_tokens, p.batch))


def prefill_cap(points: list[ProfilePoint]) -> int | None:
    """PREFILL_CAP_TOKENS when the batches of twice that many tokens take < 1.5x as long (flat), else None."""
    at = {
        n: [p.prefill_s for p in points if p.input_tokens * p.batch == n and p.input_tokens < n] for n in (4096, 8192)
    }
    if not at[4096] or not at[8192]:
        return None
    flat = statistics.median(at[8192]) < 1.5 * statistics.median(at[4096])
    return PREFILL_CAP_TOKENS if flat else None


def prefilled_batch(point: ProfilePoint, cap: int | None) -> int:
    """Prompts the timed prefill step computed."""
    return point.batch if cap is None else max(1, min(point.batch, cap // point.input_tokens))


def nnls(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with every coefficient >= 0: the best unconstrained fit over the supports
    whose solution is feasible (exact for the <= 4 columns used here)."""
    best, best_residual = np.zeros(x.shape[1]), float(np.sum(y**2))
    for size in range(1, x.shape[1] + 1):
        for support in itertools.combinations(range(x.shape[1]), size):
            coef, *_ = np.linalg.lstsq(x[:, support], y, rcond=None)
            if (coef < 0).any():
                continue
            full = np.zeros(x.shape[1])
            full[list(support)] = coef
            residual = float(np.sum((x @ full - y) ** 2))
            if residual < best_residual:
                best, best_residual = full, residual
    return best


def relative_fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative coefficients minimising the squared relative errors."""
    return nnls(x / y[:, None], np.ones_like(y))


def quality(predicted: np.ndarray, measured: np.ndarray, labels: list[str]) -> FitQuality:
    rel = predicted / measured - 1
    worst = int(np.argmax(np.abs(rel)))
    ss_res = float(np.sum((predicted - measured) ** 2))
    ss_tot = float(np.sum((measured - measured.mean()) ** 2))
    return FitQuality(
        points=len(measured),
        median_rel_err=round(float(np.median(np.abs(rel))), 4),
        p90_rel_err=round(float(np.percentile(np.abs(rel), 90)), 4),
        max_rel_err=round(float(np.max(np.abs(rel))), 4),
        r2=round(1 - ss_res / ss_tot, 4) if ss_tot > 0 else 1.0,
        worst=f"{labels[worst]} {rel[worst] * 100:+.0f}%",
    )


def prefill_regressors(tokens: np.ndarray, squared: np.ndarray) -> np.ndarray:
    return np.column_stack([np.ones_like(tokens), tokens, squared])


def decode_regressors(batch: np.ndarray, context: np.ndarray) -> np.ndarray:
    return np.column_stack([np.ones_like(batch), batch, context, (batch - 1) // BATCH_STEP])


def fit_points(points: list[ProfilePoint], kv_bytes_per_token: int, memory_bandwidth_bytes_s: float) -> StepFitResult:
    cap = prefill_cap(points)

    prompts = np.array([prefilled_batch(p, cap) for p in points], float)
    lengths = np.array([p.input_tokens for p in points], float)
    tokens, squared = prompts * lengths, prompts * lengths**2
    prefill = np.array([p.prefill_s for p in points])
    floor = float(np.median(prefill[tokens <= FLOOR_TOKENS]))
    above = prefill > ABOVE_FLOOR * floor
    p_coef = relative_fit(prefill_regressors(tokens[above], squared[above]), prefill[above])
    p_pred = np.maximum(floor, prefill_regressors(tokens, squared) @ p_coef)
    p_labels = [f"i{p.input_tokens}b{p.batch}" for p in points]

    usable = [p for p in points if prefilled_batch(p, cap) == p.batch and p.decode_s >= EMPTY_DECODE_S]
    batch = np.array([p.batch for p in usable], float)
    context = np.array([p.batch * p.input_tokens for p in usable], float)
    decode = np.array([p.decode_s for p in usable])
    roofline = kv_bytes_per_token / memory_bandwidth_bytes_s
    x = decode_regressors(batch, context)
    d_coef = _decode_fit(x, decode, roofline)
    d_pred = x @ d_coef
    d_labels = [f"i{p.input_tokens}b{p.batch}" for p in usable]

    return StepFitResult(
        decode_fixed_s=_sig(d_coef[0]),
        decode_per_seq_s=_sig(d_coef[1]),
        decode_per_context_token_s=_sig(d_coef[2]),
        decode_per_64_seqs_s=_sig(d_coef[3]),
        prefill_floor_s=_sig(floor),
        prefill_fixed_s=_sig(p_coef[0]),
        prefill_per_token_s=_sig(p_coef[1]),
        prefill_per_squared_token_s=_sig(p_coef[2]),
        prefill_cap_tokens=cap,
        decode_quality=quality(d_pred, decode, d_labels),
        prefill_quality=quality(p_pred, prefill, p_labels),
    )


def _decode_fit(x: np.ndarray, decode: np.ndarray, roofline: float) -> np.ndarray:
    """Relative least squares with c >= roofline: fit the time beyond the roofline KV read."""
    context = x[:, 2]
    weights = 1 / decode
    coef = nnls(x * weights[:, None], (decode - roofline * context) * weights)
    coef[2] += roofline
    return coef


def _sig(value: float) -> float:
    """4 significant digits: the shipped coefficients, and what a re-fit is compared with."""
    return float(f"{value:.4g}")


def fit_all(root: Path = PROFILES) -> dict[str, dict[str, StepFitResult]]:
    """GPU -> architecture -> fit, over every profile in `root`."""
    fits: dict[str, dict[str, StepFitResult]] = {}
    for gpu in GPUS:
        spec = GPU_SPECS[gpu]
        for arch, folder in PROFILE_DIRS.items():
            points = load_points(root / folder / gpu)
            kv = ARCHITECTURES[arch].kv_bytes_per_token()
            fits.setdefault(gpu, {})[arch] = fit_points(points, kv, spec.memory_bandwidth_bytes_s)
    return fits


def quality_table(fits: dict[str, dict[str, StepFitResult]]) -> str:
    lines = [
        "    GPU   model         | decode: a ms  b us/seq  c ns/tok  s ms/64  med  p90  max  R^2  | "
        "prefill: floor ms  a ms  b us/tok  c ps/tok^2  med  p90  max  R^2"
    ]
    for gpu, by_arch in fits.items():
        for arch, f in by_arch.items():
            d, p = f.decode_quality, f.prefill_quality
            lines.append(
                f"    {gpu:5} {arch:13} | {f.decode_fixed_s * 1e3:6.2f} {f.decode_per_seq_s * 1e6:7.1f} "
                f"{f.decode_per_context_token_s * 1e9:8.1f} {f.decode_per_64_seqs_s * 1e3:7.2f} "
                f"{_pct(d.median_rel_err)} {_pct(d.p90_rel_err)} {_pct(d.max_rel_err)} {d.r2:.2f} | "
                f"{f.prefill_floor_s * 1e3:8.2f} {f.prefill_fixed_s * 1e3:6.2f} {f.prefill_per_token_s * 1e6:7.1f} "
                f"{f.prefill_per_squared_token_s * 1e12:8.2f}    {_pct(p.median_rel_err)} {_pct(p.p90_rel_err)} "
                f"{_pct(p.max_rel_err)} {p.r2:.2f}"
            )
    return "\n".join(lines)


def _pct(x: float) -> str:
    return f"{x * 100:3.0f}%"


def render_module(fits: dict[str, dict[str, StepFitResult]]) -> str:
    """The source of services/sim/cost_fitted.py: the coefficients the simulator ships."""
    rows = []
    for gpu, by_arch in fits.items():
        rows.append(f"    {json.dumps(gpu)}: {{")
        for arch, f in by_arch.items():
            rows += [
                f"        {json.dumps(arch)}: StepFit(",
                f"            decode_fixed_s={f.decode_fixed_s!r},",
                f"            decode_per_seq_s={f.decode_per_seq_s!r},",
                f"            decode_per_context_token_s={f.decode_per_context_token_s!r},",
                f"            decode_per_64_seqs_s={f.decode_per_64_seqs_s!r},",
                f"            prefill_floor_s={f.prefill_floor_s!r},",
                f"            prefill_fixed_s={f.prefill_fixed_s!r},",
                f"            prefill_per_token_s={f.prefill_per_token_s!r},",
                f"            prefill_per_squared_token_s={f.prefill_per_squared_token_s!r},",
                "        ),",
            ]
        rows.append("    },")
    caps = sorted({(g, a) for g, by in fits.items() for a, f in by.items() if f.prefill_cap_tokens is None})
    return (
        '"""Step-time coefficients fitted to ../shared/data/aegaeon/profiles. GENERATED by\n'
        "`python -m services.sim.cost_fit --write`; do not edit (tests/sim/test_cost_fit.py re-fits and compares).\n"
        "How they are fitted: services/sim/cost_fit.py. Units: seconds; a, b, c, s as in services/sim/cost.py.\n\n"
        "Fit quality: relative error |predicted / measured - 1| over every profile point the fit\n"
        "uses (decode: all but the contaminated and empty ones; prefill: all, floor included),\n"
        "median / 90th percentile / max, and R^2 of the latencies.\n"
        f"{quality_table(fits)}\n"
        f"Profiles without the 4096-token prefill cap: {', '.join(f'{a} on {g}' for g, a in caps) or 'none'}.\n"
        '"""\n\n'
        "from services.sim.cost_steps import StepFit\n\n"
        "FITS: dict[str, dict[str, StepFit]] = {\n" + "\n".join(rows) + "\n}\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.sim.cost_fit", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=PROFILES, help="the profiles folder (default: %(default)s)")
    parser.add_argument("--write", action="store_true", help=f"regenerate {FITTED_MODULE.name}")
    parser.add_argument("--json", action="store_true", help="print coefficients and quality as JSON")
    args = parser.parse_args(argv)
    try:
        fits = fit_all(args.data)
    except SimError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({g: {a: asdict(f) for a, f in by.items()} for g, by in fits.items()}, indent=1))
    else:
        print(quality_table(fits))
    if args.write:
        FITTED_MODULE.write_text(render_module(fits))
        print(f"wrote {FITTED_MODULE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
