"""The engine benchmark behind ``tokenpool bench engine``: one run, one machine, one JSON object.

Sections: `decode` (ours vs Hugging Face generate, per batch size, greedy and sampled),
`prefix_cache` (time to first token after a shared system prompt, with and without), `copy_limit` (the
bandwidth no switch can beat), `switch` (activate from host memory, without and with a
prefetch overlapped with another model's decode), `kv_swap` (KV pages to host and back) and
`machine`. bench/README.md explains each figure.
"""

from __future__ import annotations

import datetime
import gc
import os
import platform
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from shared.tokenizer import Tokenizer

from . import bench_decode, bench_memory, bench_prefix
from .config import EngineConfig, load_model_config
from .engine import Engine
from .random_checkpoint import write_random_checkpoint
from .scheduler import pages_needed

PREFIX_SYSTEM_TOKENS = 1024
PREFIX_QUESTIONS = 5
DECODE_TARGETS = {1: 1.0, 32: 1.5}
"""Batch size -> the ours/HF decode ratio the engine should reach on CPU."""


@dataclass(frozen=True)
class BenchConfig:
    model: str
    model_path: Path
    other_model: str
    """Decodes while `model` is prefetched, so the copy overlaps real compute."""
    other_path: Path
    device: str = "cpu"
    batches: tuple[int, ...] = (1, 8, 32)
    new_tokens: int = 64
    repeats: int = 3
    memory_repeats: int = 5
    swap_seqs: int = 16
    swap_prompt_tokens: int = 512
    synthetic_layers: int | None = None
    """Layers of the synthetic 7B-class checkpoint; None skips it."""
    random_weights: bool = False
    """Time random weights of each model's config (a machine with its config and tokenizer only)."""
    packed_matmul: bool = True
    """Decode with EngineConfig.packed_cpu_matmul (CPU); False times plain F.linear."""
    synthetic_only: bool = False
    """Skip `model`'s own sections: only the synthetic 7B-class ones (a second device call)."""

    def __post_init__(self):
        if self.new_tokens < 2:
            raise ValueError("--tokens must be at least 2: decode is timed after the first token")
        if self.repeats < 1 or self.memory_repeats < 1:
            raise ValueError("--repeats must be at least 1")
        if not self.batches or min(self.batches) < 1:
            raise ValueError("--batches must list positive batch sizes, e.g. 1,8,32")
        if self.model == self.other_model:
            raise ValueError("the other model (--other-model) must differ from --model")
        if self.synthetic_only and self.synthetic_layers is None:
            raise ValueError("--synthetic-only needs --synthetic-7b")


def run(cfg: BenchConfig, log=lambda message: None, save=lambda result: None) -> dict:
    """Runs every section. `save` gets the result so far after each one, so a run cut short
    (a device call's time limit) still leaves what it measured. A section that raises is
    recorded as {"error", "traceback"} and the next one runs: one CUDA out-of-memory in the 7B
    sections should not cost the SmolLM2 figures."""
    started = time.perf_counter()
    engine_config = EngineConfig(device=cfg.device)
    device = torch.device(cfg.device)
    result = {"bench": "engine", "finished": False, "machine": machine(device), "config": _config_json(cfg, engine_config)}
    sections = Sections(result, device, log, lambda: save(_rounded(result)))
    sections.save()
    with tempfile.TemporaryDirectory(prefix="tokenpool-bench-") as tmp:
        if cfg.random_weights:
            sections.run("random_weights", lambda: {
                "model_path": str(_random_copy(cfg.model_path, Path(tmp) / cfg.model, device, log)),
                "other_path": str(_random_copy(cfg.other_path, Path(tmp) / cfg.other_model, device, log)),
            })
            if "error" in result["random_weights"]:
                return _finish(result, sections, started, save)
            written = result["random_weights"]
            cfg = replace(cfg, model_path=Path(written["model_path"]), other_path=Path(written["other_path"]))
        if not cfg.synthetic_only:
            size = bench_memory.model_size(cfg.model, cfg.model_path, engine_config.torch_dtype)
            sections.run("decode", lambda: decode(cfg, engine_config, cfg.model, cfg.model_path, size, log))
            sections.run("prefix_cache", lambda: bench_prefix.prefix_cache(
                replace(engine_config, packed_cpu_matmul=cfg.packed_matmul), cfg.model, cfg.model_path,
                PREFIX_SYSTEM_TOKENS, PREFIX_QUESTIONS, cfg.repeats, log,
            ))
            memory_sections(sections, cfg, engine_config, cfg.model, cfg.model_path, size, log)
        if cfg.synthetic_layers is not None:
            sections.run("synthetic_7b", lambda: synthetic_7b(cfg, engine_config, Path(tmp), sections, log))
    return _finish(result, sections, started, save)


def _finish(result: dict, sections: Sections, started: float, save) -> dict:
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    result["elapsed_s"] = time.perf_counter() - started
    result["finished"] = True
    result["failed_sections"] = sections.failed
    save(_rounded(result))
    return _rounded(result)


class Sections:
    """Runs the benchmark's sections into one result dict, saving it after each."""

    def __init__(self, into: dict, device: torch.device, log, save, prefix: str = "", failed: list | None = None):
        self.into, self.device, self.log, self.save, self.prefix = into, device, log, save, prefix
        self.failed: list[str] = [] if failed is None else failed

    def nested(self, key: str, into: dict) -> Sections:
        """Sections inside this one's `key`, failing into the same list and saving the whole."""
        self.into[key] = into
        return Sections(into, self.device, self.log, self.save, f"{self.prefix}{key}.", self.failed)

    def run(self, key: str, measure) -> None:
        _release(self.device)  # the previous section's buffers, before this one allocates its own
        try:
            self.into[key] = measure()
        except Exception as e:  # noqa: BLE001 - recorded in the JSON, and the next section still runs
            self.into[key] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            self.failed.append(self.prefix + key)
            self.log(f"{self.prefix}{key} failed: {type(e).__name__}: {e}")
        self.save()


def _random_copy(source: Path, dest: Path, device: torch.device, log) -> Path:
    started = time.perf_counter()
    write_random_checkpoint(source, dest, device=device)
    log(f"wrote random weights of {source.name} in {time.perf_counter() - started:.1f} s")
    return dest


def decode(
    cfg: BenchConfig, engine_config: EngineConfig, name: str, path: Path, size: bench_memory.ModelSize, log
) -> dict:
    tokenizer = Tokenizer(path)
    prompts = {b: bench_decode.prompt_token_ids(tokenizer, b) for b in cfg.batches}
    longest = max(len(p) for ps in prompts.values() for p in ps)
    block_tokens = engine_config.kv_page_bytes // size.kv_bytes_per_token
    pages = max(cfg.batches) * pages_needed(longest + cfg.new_tokens, block_tokens) + 2
    engine = Engine(
        EngineConfig(
            device=cfg.device,
            weight_arena_bytes=size.weight_bytes + bench_memory.SLACK_BYTES,
            kv_arena_bytes=pages * engine_config.kv_page_bytes,
            kv_page_bytes=engine_config.kv_page_bytes,
            host_swap_bytes=engine_config.kv_page_bytes,
            max_batch_size=max(max(cfg.batches), engine_config.max_batch_size),
            packed_cpu_matmul=cfg.packed_matmul,
        ),
        {name: path},
    )
    read = bench_memory.read_limit(torch.device(cfg.device), size.weight_bytes, 3 * cfg.memory_repeats)
    read["step_s"] = size.weight_bytes / (read["gb_s"] * 1e9)
    log(f"weight read limit: {read['gb_s']:.2f} GB/s, {read['step_s'] * 1000:.1f} ms per decode step")
    engine.activate(name)
    hf = bench_decode.HFDecoder(path, torch.device(cfg.device), engine_config.torch_dtype)
    try:
        results = []
        for batch in cfg.batches:
            row = bench_decode.compare_batch(engine, name, hf, prompts[batch], cfg.new_tokens, cfg.repeats, log)
            if batch in DECODE_TARGETS and cfg.device == "cpu":  # the targets are the CPU's
                row["target_ratio"] = DECODE_TARGETS[batch]
                row["target_met"] = row["ratio"] >= DECODE_TARGETS[batch]
            row["read_limit_tok_s"] = batch / read["step_s"]
            row["ours_ratio_to_read_limit"] = row["ours_tok_s"] / row["read_limit_tok_s"]
            results.append(row)
        sampled = [
            bench_decode.compare_batch(
                engine, name, hf, prompts[batch], cfg.new_tokens, cfg.repeats, log, bench_decode.SAMPLED
            )
            for batch in cfg.batches
        ]
    finally:
        hf.close()
        engine.close()
    return {
        "dtype": str(engine_config.torch_dtype).removeprefix("torch."),
        "packed_matmul": engine.packs_matmul,
        "new_tokens": cfg.new_tokens,
        "repeats": cfg.repeats,
        "method": "tok/s = B*(N-1) / time from every sequence's first token to every sequence's last "
        "(prefill excluded); HF timed with a streamer inside generate(); medians over repeats, "
        "ours and HF interleaved",
        "read_limit": read,
        "results": results,
        "sampled": {"sampling": bench_decode.SAMPLED, "results": sampled},
        "target_met": {f"batch_{r['batch']}": r["target_met"] for r in results if "target_met" in r},
    }


def memory_sections(
    sections: Sections,
    cfg: BenchConfig,
    engine_config: EngineConfig,
    name: str,
    path: Path,
    size: bench_memory.ModelSize,
    log,
) -> None:
    """copy_limit, then switch and kv_swap, whose ratios are to it."""
    device = torch.device(cfg.device)
    sections.run("copy_limit", lambda: bench_memory.copy_limit(device, size.weight_bytes, 3 * cfg.memory_repeats))
    limit = sections.into["copy_limit"].get("gb_s")
    if limit is None:
        return
    log(f"copy limit: {limit:.2f} GB/s over {size.weight_bytes / 1e6:.0f} MB")
    sections.run(
        "switch",
        lambda: bench_memory.switch(
            engine_config, name, path, cfg.other_model, cfg.other_path, limit, cfg.memory_repeats, log
        ),
    )
    sections.run(
        "kv_swap",
        lambda: bench_memory.kv_swap(
            engine_config, name, path, limit, cfg.swap_seqs, cfg.swap_prompt_tokens, cfg.memory_repeats, log
        ),
    )


def _release(device: torch.device) -> None:
    """Frees the previous section's buffers before the next allocates its own (matters for 7B on a GPU)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def synthetic_7b(cfg: BenchConfig, engine_config: EngineConfig, tmp: Path, outer: Sections, log) -> dict:
    """Decode, switch and KV swap of a random-weight Llama of 7B shape (fewer layers with
    --synthetic-layers) that uses --model's tokenizer. Its sections fail and save one by one,
    like the top level's."""
    name = "synthetic-7b"
    started = time.perf_counter()
    config = synthetic_7b_config(cfg.synthetic_layers, load_model_config(cfg.model, cfg.model_path))
    path = write_random_checkpoint(cfg.model_path, tmp / name, config=config, device=torch.device(cfg.device))
    log(f"wrote {name} ({cfg.synthetic_layers} layers) in {time.perf_counter() - started:.1f} s")
    size = bench_memory.model_size(name, path, engine_config.torch_dtype)
    c = size.cfg
    section = {
        "model": {
            "name": name,
            "layers": c.num_layers,
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "heads": c.num_heads,
            "kv_heads": c.num_kv_heads,
            "vocab_size": c.vocab_size,
            "checkpoint_dtype": "bfloat16",
            "weight_bytes": size.weight_bytes,
        }
    }
    inner = outer.nested("synthetic_7b", section)
    inner.run("decode", lambda: decode(cfg, engine_config, name, path, size, log))
    memory_sections(inner, cfg, engine_config, name, path, size, log)
    return section


SYNTHETIC_7B = dict(hidden_size=4096, intermediate_size=14336, heads=32, kv_heads=8)
"""Llama-3-8B's and Mistral-7B's shapes; the vocabulary is the tokenizer's (SmolLM2's 49,152)."""


def synthetic_7b_config(layers: int, tokens_from) -> dict:
    """A Llama config of 7B shape whose vocabulary and special tokens are `tokens_from`'s
    (a ModelConfig), so that model's tokenizer drives it."""
    s = SYNTHETIC_7B
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": s["hidden_size"],
        "intermediate_size": s["intermediate_size"],
        "num_hidden_layers": layers,
        "num_attention_heads": s["heads"],
        "num_key_value_heads": s["kv_heads"],
        "head_dim": s["hidden_size"] // s["heads"],
        "vocab_size": tokens_from.vocab_size,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": tokens_from.bos_token_id,
        "eos_token_id": list(tokens_from.eos_token_ids) or None,
        "torch_dtype": "bfloat16",
    }


def machine(device: torch.device) -> dict:
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": _memory_gb(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": _version("transformers"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model(),
        "loadavg_start": list(os.getloadavg()),
    }
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return None


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _config_json(cfg: BenchConfig, engine_config: EngineConfig) -> dict:
    return {
        "model": cfg.model,
        "model_path": str(cfg.model_path),
        "other_model": cfg.other_model,
        "device": cfg.device,
        "dtype": str(engine_config.torch_dtype).removeprefix("torch."),
        "batches": list(cfg.batches),
        "new_tokens": cfg.new_tokens,
        "repeats": cfg.repeats,
        "memory_repeats": cfg.memory_repeats,
        "kv_page_bytes": engine_config.kv_page_bytes,
        "swap_seqs": cfg.swap_seqs,
        "swap_prompt_tokens": cfg.swap_prompt_tokens,
        "synthetic_layers": cfg.synthetic_layers,
        "random_weights": cfg.random_weights,
        "packed_matmul": cfg.packed_matmul,
        "synthetic_only": cfg.synthetic_only,
    }


def _rounded(value):
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def format_report(result: dict) -> str:
    """A few lines a person can read; the JSON has everything."""
    m, c = result["machine"], result["config"]
    lines = [
        f"tokenpool engine bench - {m['date']} - {m['device_name']} ({m['cores']} cores, "
        f"torch {m['torch']}, {m['torch_threads']} threads)",
        f"model {c['model']} ({c['dtype']}{', random weights' if c.get('random_weights') else ''}"
        f"{', packed matmul' if result.get('decode', {}).get('packed_matmul') else ''}), "
        f"{c['new_tokens']} new tokens, medians of {c['repeats']}",
    ]
    if not c.get("synthetic_only"):
        lines += ["", *_sections_lines(result, "")]
    if "synthetic_7b" in result:
        s = result["synthetic_7b"]
        if "model" in s:
            lines += ["", f"synthetic 7B-class ({s['model']['layers']} layers, {s['model']['weight_bytes'] / 1e9:.2f} GB):"]
            lines += _sections_lines(s, "  ")
        else:
            lines += ["", f"synthetic 7B-class: FAILED {s['error']}"]
    if result.get("failed_sections"):
        lines.append(f"\nfailed: {', '.join(result['failed_sections'])} (tracebacks in the JSON)")
    lines.append(f"\n({result['elapsed_s']:.0f} s)")
    return "\n".join(lines)


def _sections_lines(section: dict, indent: str) -> list[str]:
    """Each section that ran, in order; a failed one as its error."""
    lines = []
    for key, describe in (
        ("decode", _decode_lines),
        ("prefix_cache", _prefix_lines),
        ("copy_limit", _copy_limit_lines),
        ("switch", _switch_lines),
        ("kv_swap", _kv_swap_lines),
    ):
        if key not in section:
            continue
        if "error" in section[key]:
            lines.append(f"{indent}{key}: FAILED {section[key]['error']}")
        else:
            lines += describe(section[key], indent)
    return lines


def _decode_lines(decode: dict, indent: str) -> list[str]:
    lines = [f"{indent}{'batch':>5} {'ours tok/s':>11} {'hf tok/s':>9} {'ratio':>6} {'same tokens':>11}  target"]
    for row in decode["results"]:
        target = ""
        if "target_ratio" in row:
            target = f">= {row['target_ratio']}: {'met' if row['target_met'] else 'NOT met'}"
        lines.append(
            f"{indent}{row['batch']:>5} {row['ours_tok_s']:>11.1f} {row['hf_tok_s']:>9.1f} {row['ratio']:>6.2f} "
            f"{row['greedy_identical_sequences']:>11}  {target}"
        )
    if "sampled" in decode:
        lines.append(f"{indent}sampled ({', '.join(f'{k} {v}' for k, v in decode['sampled']['sampling'].items())}):")
        lines += [
            f"{indent}{row['batch']:>5} {row['ours_tok_s']:>11.1f} {row['hf_tok_s']:>9.1f} {row['ratio']:>6.2f}"
            for row in decode["sampled"]["results"]
        ]
    read = decode["read_limit"]
    lines.append(f"{indent}weight read limit {read['gb_s']:.2f} GB/s = {read['step_s'] * 1000:.1f} ms per decode step")
    return lines


def _met(section: dict) -> str:
    return f"target <= {section['target']}: {'met' if section['target_met'] else 'NOT met'}"


def _prefix_lines(p: dict, indent: str) -> list[str]:
    return [
        f"{indent}prefix cache: TTFT of a {p['prompt_tokens']}-token prompt after a {p['system_tokens']}-token "
        f"shared system prompt {p['ttft_s_with'] * 1000:.1f} ms, {p['ttft_s_without'] * 1000:.1f} ms without "
        f"({p['speedup']:.1f}x)"
    ]


def _copy_limit_lines(c: dict, indent: str) -> list[str]:
    return [f"{indent}copy limit       {c['gb_s']:.2f} GB/s ({c['method']})"]


def _switch_lines(s: dict, indent: str) -> list[str]:
    no, pre = s["no_prefetch"], s["prefetch"]
    return [
        f"{indent}switch, no prefetch {no['s'] * 1000:.1f} ms = {no['ratio_to_limit']:.2f} x limit "
        f"({s['limit_s'] * 1000:.1f} ms); {_met(no)}",
        f"{indent}switch, prefetched  stall {pre['visible_stall_s'] * 1000:.2f} ms "
        f"= {pre['visible_stall_ratio']:.3f} x limit; {_met(pre)}",
    ]


def _kv_swap_lines(k: dict, indent: str) -> list[str]:
    return [
        f"{indent}kv swap ({k['pages']} pages) out {k['swap_out_gb_s']:.2f} GB/s "
        f"({k['swap_out_ratio_to_copy_limit']:.2f} x limit), in {k['swap_in_gb_s']:.2f} GB/s "
        f"({k['swap_in_ratio_to_copy_limit']:.2f} x limit)"
    ]
