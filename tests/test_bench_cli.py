"""Smoke test of `tokenpool bench engine`: it runs end to end and reports every section.

No timing thresholds here: performance targets live in the benchmark's own output.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

TOKENPOOL = Path(sys.executable).parent / "tokenpool"


def test_bench_engine_json_has_every_section_with_positive_numbers(model_store, tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "TOKENPOOL_MODEL_STORE": str(model_store.root)}
    args = ["bench", "engine", "--json", "--batches", "1", "--tokens", "4", "--repeats", "1", "--model", "demo-llama"]
    args += ["--out", str(out)]
    result = subprocess.run([str(TOKENPOOL), *args], env=env, capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert json.loads(out.read_text()) == report
    assert report["config"]["model"] == "demo-llama"
    assert report["decode"]["packed_matmul"] is True
    assert report["machine"]["cores"] >= 1 and report["machine"]["torch"]

    (row,) = report["decode"]["results"]
    assert row["batch"] == 1
    assert row["ours_tok_s"] > 0 and row["hf_tok_s"] > 0
    assert abs(row["ratio"] - row["ours_tok_s"] / row["hf_tok_s"]) < 0.01 * row["ratio"]
    assert isinstance(row["target_met"], bool)
    assert isinstance(report["decode"]["target_met"]["batch_1"], bool)
    sampled = report["decode"]["sampled"]
    assert sampled["sampling"] == {"temperature": 1.0, "top_p": 0.9}
    (row,) = sampled["results"]
    assert row["batch"] == 1 and row["ours_tok_s"] > 0 and row["hf_tok_s"] > 0

    prefix = report["prefix_cache"]
    assert prefix["ttft_s_with"] > 0 and prefix["ttft_s_without"] > 0 and prefix["hit_tokens_per_request"] > 0
    assert abs(prefix["speedup"] - prefix["ttft_s_without"] / prefix["ttft_s_with"]) < 0.01 * prefix["speedup"]

    assert report["copy_limit"]["gb_s"] > 0
    switch = report["switch"]
    assert switch["limit_s"] > 0 and switch["weight_bytes"] > 0
    assert switch["no_prefetch"]["s"] > 0 and switch["no_prefetch"]["ratio_to_limit"] > 0
    assert switch["prefetch"]["visible_stall_s"] >= 0 and switch["prefetch"]["visible_stall_ratio"] >= 0
    assert switch["prefetch"]["other_model"] != "demo-llama"
    kv = report["kv_swap"]
    assert kv["pages"] >= 16 and kv["bytes"] == kv["pages"] * kv["page_bytes"]
    assert kv["swap_out_gb_s"] > 0 and kv["swap_in_gb_s"] > 0 and kv["swap_out_ratio_to_copy_limit"] > 0


def test_bench_engine_rejects_a_single_token(model_store):
    env = {**os.environ, "TOKENPOOL_MODEL_STORE": str(model_store.root)}
    result = subprocess.run(
        [str(TOKENPOOL), "bench", "engine", "--tokens", "1", "--model", "demo-llama"],
        env=env, capture_output=True, text=True, timeout=60,
    )

    assert result.returncode == 2
    assert "at least 2" in result.stderr and "Traceback" not in result.stderr


def config_only_store(model_store, root: Path, names) -> Path:
    """What travels to a lent GPU: each model's config and tokenizer files, no weights."""
    for name in names:
        (root / name).mkdir(parents=True)
        for f in model_store.path(name).iterdir():
            if f.suffix in (".json", ".jinja") and f.name not in ("prepared.json", "model.safetensors.index.json"):
                (root / name / f.name).write_bytes(f.read_bytes())
    return root


def test_bench_engine_times_random_weights_of_a_store_without_weights(model_store, tmp_path):
    store = config_only_store(model_store, tmp_path / "store", ("demo-llama", "demo-qwen2"))
    env = {**os.environ, "TOKENPOOL_MODEL_STORE": str(store)}
    base = [str(TOKENPOOL), "bench", "engine", "--model", "demo-llama", "--other-model", "demo-qwen2"]
    quick = ["--batches", "1", "--tokens", "4", "--repeats", "1", "--memory-repeats", "1", "--swap-seqs", "2"]

    refused = subprocess.run(base + quick, env=env, capture_output=True, text=True, timeout=120)
    timed = subprocess.run(base + quick + ["--random-weights", "--plain-matmul", "--json"], env=env, capture_output=True, text=True,
                           timeout=300)

    assert refused.returncode == 2 and "holds no weights" in refused.stderr and "--random-weights" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert timed.returncode == 0, timed.stderr
    report = json.loads(timed.stdout)
    assert report["config"]["random_weights"] is True
    assert report["decode"]["packed_matmul"] is False
    (row,) = report["decode"]["results"]
    assert row["ours_tok_s"] > 0 and row["hf_tok_s"] > 0
    assert report["switch"]["no_prefetch"]["s"] > 0 and report["kv_swap"]["swap_in_gb_s"] > 0
    assert sorted(p.name for p in store.iterdir()) == ["demo-llama", "demo-qwen2"]
    assert not any(store.rglob("*.safetensors")), "the random weights go to a temp dir, not the store"


def bench_engine(model_store, *args, timeout=300):
    env = {**os.environ, "TOKENPOOL_MODEL_STORE": str(model_store.root)}
    quick = ["--model", "demo-llama", "--batches", "1", "--tokens", "4", "--repeats", "1", "--memory-repeats", "1"]
    return subprocess.run([str(TOKENPOOL), "bench", "engine", *quick, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


# More KV pages than any machine can hold: the kv_swap section's allocation fails for real,
# as a CUDA out-of-memory would on a GPU.
SWAP_TOO_BIG = ["--swap-seqs", "100000000"]


def test_bench_engine_reports_a_failed_section_and_still_runs_the_others(model_store, tmp_path):
    out = tmp_path / "bench.json"

    result = bench_engine(model_store, *SWAP_TOO_BIG, "--json", "--out", str(out))

    assert result.returncode == 1
    assert "kv_swap failed: RuntimeError" in result.stderr and "allocate" in result.stderr
    report = json.loads(result.stdout)
    assert json.loads(out.read_text()) == report
    assert report["finished"] is True and report["failed_sections"] == ["kv_swap"]
    assert "allocate" in report["kv_swap"]["error"] and "Traceback" in report["kv_swap"]["traceback"]
    assert report["decode"]["results"][0]["ours_tok_s"] > 0
    assert report["copy_limit"]["gb_s"] > 0 and report["switch"]["no_prefetch"]["s"] > 0


def test_bench_engine_synthetic_only_skips_the_model_and_names_a_failed_synthetic_section(model_store):
    result = bench_engine(model_store, "--synthetic-7b", "--synthetic-only", "--synthetic-layers", "1", *SWAP_TOO_BIG)

    assert result.returncode == 1
    assert "synthetic 7B-class (1 layers" in result.stdout
    assert "kv_swap: FAILED RuntimeError" in result.stdout and "failed: synthetic_7b.kv_swap" in result.stdout
    assert "switch, no prefetch" in result.stdout, "the sections before the failed one are reported"
    assert "[bench] decode B=1" in result.stderr and result.stderr.count("[bench] decode B=") == 1, (
        "only the synthetic model decodes"
    )


def test_bench_engine_synthetic_only_needs_the_synthetic_model(model_store):
    result = bench_engine(model_store, "--synthetic-only", timeout=60)

    assert result.returncode == 2
    assert "--synthetic-only needs --synthetic-7b" in result.stderr and "Traceback" not in result.stderr


def test_bench_engine_killed_midway_leaves_the_sections_it_finished(model_store, tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "TOKENPOOL_MODEL_STORE": str(model_store.root)}
    args = ["--model", "demo-llama", "--batches", "1", "--tokens", "4", "--repeats", "1", "--out", str(out)]
    proc = subprocess.Popen([str(TOKENPOOL), "bench", "engine", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:  # the copy limit is logged once it is saved, after decode
            if line.startswith("[bench] copy limit:"):
                break
        proc.kill()
    finally:
        proc.kill()
        proc.wait(timeout=30)

    partial = json.loads(out.read_text())
    assert partial["finished"] is False
    assert partial["decode"]["results"][0]["ours_tok_s"] > 0 and partial["copy_limit"]["gb_s"] > 0
    assert "kv_swap" not in partial
