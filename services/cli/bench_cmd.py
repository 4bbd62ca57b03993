"""``tokenpool bench engine``: decode vs Hugging Face, copy limit, switch and KV swap in one run.

``tokenpool bench serve`` (the whole stack against the engine alone) lives in bench_serve.py,
``tokenpool bench sched`` (token-level vs request-level scheduling) in bench_sched.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from services.cli import bench_chat, bench_fairness, bench_market, bench_sched, bench_serve
from shared.model_store import ModelStore

DEMO_MODELS = ("demo-llama", "demo-qwen2", "demo-mistral")


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks that print numbers and ratios")
    kinds = parser.add_subparsers(dest="bench", required=True, metavar="BENCH")
    p = kinds.add_parser(
        "engine",
        help="engine decode vs Hugging Face generate, copy limit, model switch, KV swap",
        description="Measures, in one run on this machine, decode tok/s of the engine and of "
        "transformers generate(), the host-to-device copy limit, switch times against it and KV swap "
        "bandwidth. See bench/README.md.",
    )
    p.add_argument("--model", default="smollm2-135m-instruct", help="model in the store (default: %(default)s)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--batches", type=_batches, default=(1, 8, 32), help="comma-separated batch sizes (default: 1,8,32)")
    p.add_argument("--tokens", type=int, default=64, help="new tokens per sequence (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="decode runs per side and batch size (default: %(default)s)")
    p.add_argument(
        "--memory-repeats", type=int, default=5, help="runs of each copy, switch and swap timing (default: %(default)s)"
    )
    p.add_argument("--other-model", help="model that decodes while --model is prefetched (default: a demo model)")
    p.add_argument("--swap-seqs", type=int, default=16, help="sequences in the KV swap test (default: %(default)s)")
    p.add_argument(
        "--swap-prompt-tokens", type=int, default=512, help="prompt tokens per KV swap sequence (default: %(default)s)"
    )
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument(
        "--synthetic-7b",
        action="store_true",
        help="also time decode, switch and KV swap of a random-weight 7B-class Llama written to a temp dir, "
        "with --model's tokenizer (for GPUs)",
    )
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="time random weights of each model's config, written to a temp dir: for a machine whose store "
        "holds the models' config and tokenizer files only (bench/README.md, on a lent GPU)",
    )
    p.add_argument(
        "--synthetic-only",
        action="store_true",
        help="with --synthetic-7b: skip --model's own sections (a second run after one that ran out of time)",
    )
    p.add_argument(
        "--synthetic-layers", type=int, default=32, help="layers of the synthetic model (default: %(default)s)"
    )
    p.add_argument(
        "--plain-matmul",
        action="store_true",
        help="decode with plain F.linear instead of oneDNN-packed weights (CPU; to see what packing buys)",
    )
    p.add_argument("--out", type=Path, help="also write the JSON object to this file")
    p.add_argument("--json", action="store_true", help="print the JSON object instead of a summary")
    p.set_defaults(handler=bench_engine)
    bench_serve.register(kinds)
    bench_sched.register(kinds)
    bench_market.register(kinds)
    bench_fairness.register(kinds)
    bench_chat.register(kinds)


def _batches(text: str) -> tuple[int, ...]:
    try:
        batches = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not batches or min(batches) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: batch sizes must be positive integers")
    return batches


def bench_engine(args: argparse.Namespace) -> int:
    import importlib.util

    import torch

    from services.gpu_worker.engine import bench

    if importlib.util.find_spec("transformers") is None:
        print("error: the Hugging Face baseline needs transformers: pip install -e '.[prepare]'", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    store = ModelStore.from_env()
    other = args.other_model or next(m for m in DEMO_MODELS if m != args.model)
    try:
        cfg = bench.BenchConfig(
            model=args.model,
            model_path=store.path(args.model),
            other_model=other,
            other_path=store.path(other),
            device=args.device,
            batches=args.batches,
            new_tokens=args.tokens,
            repeats=args.repeats,
            memory_repeats=args.memory_repeats,
            swap_seqs=args.swap_seqs,
            swap_prompt_tokens=args.swap_prompt_tokens,
            synthetic_layers=args.synthetic_layers if args.synthetic_7b else None,
            random_weights=args.random_weights,
            packed_matmul=not args.plain_matmul,
            synthetic_only=args.synthetic_only,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.random_weights:
        for path in (cfg.model_path, cfg.other_path):
            if not any(path.glob("*.safetensors")):
                print(f"error: {path} holds no weights (*.safetensors); --random-weights times random weights "
                      "of its config", file=sys.stderr)
                return 2
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    result = bench.run(
        cfg,
        log=lambda message: print(f"[bench] {message}", file=sys.stderr, flush=True),
        save=lambda so_far: _write_json(args.out, so_far) if args.out else None,
    )
    print(json.dumps(result, indent=2) if args.json else bench.format_report(result))
    return 1 if result["failed_sections"] else 0


def _write_json(path: Path, result: dict) -> None:
    """Replaces `path` whole, so a run killed mid-write leaves the previous section's JSON."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(result, indent=2) + "\n")
    partial.replace(path)
