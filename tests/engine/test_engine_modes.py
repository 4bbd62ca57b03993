"""Chunked prefill, bfloat16 and the `tokenpool generate` command."""

import json
import subprocess
import sys

import torch

from services.gpu_worker.engine.engine import Engine
from services.gpu_worker.engine.generate import run_to_completion
from services.gpu_worker.engine.sequence import EngineRequest, SamplingParams

from .conftest import NEW_TOKENS, SMOLLM, small_config

GREEDY = SamplingParams(max_tokens=NEW_TOKENS, temperature=0)


def test_chunked_prefill_of_long_prompts_keeps_parity(model_store, prompt_ids, hf_greedy):
    engine = Engine(small_config(max_batch_tokens=7), {"demo-qwen2": model_store.path("demo-qwen2")})
    requests = [EngineRequest(f"r{i}", "demo-qwen2", ids, GREEDY) for i, ids in enumerate(prompt_ids)]
    assert max(len(ids) for ids in prompt_ids) > 3 * 7, "prompts should need several chunks"
    done = run_to_completion(engine, requests)
    assert [done[f"r{i}"].token_ids for i in range(len(prompt_ids))] == hf_greedy("demo-qwen2")


def test_bfloat16_engine_answers_like_float32(model_store, tokenizer):
    prompt = tuple(tokenizer.encode_chat([{"role": "user", "content": "What is the capital of France?"}]))
    engine = Engine(small_config(dtype=torch.bfloat16), {SMOLLM: model_store.path(SMOLLM)})
    done = run_to_completion(engine, [EngineRequest("r", SMOLLM, prompt, SamplingParams(max_tokens=12, temperature=0))])
    assert engine.arena.buffer.dtype == torch.bfloat16
    assert "Paris" in tokenizer.decode(done["r"].token_ids)


def test_generate_command_prints_one_json_object(model_store):
    cmd = [sys.executable, "-m", "services.cli", "generate", "--model", SMOLLM, "--chat",
           "--prompt", "What is the capital of France?", "--max-tokens", "16", "--json"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["model"] == SMOLLM and "Paris" in out["text"]
    assert out["finish_reason"] in ("stop", "length") and 0 < len(out["token_ids"]) <= 16
    assert out["ttft_s"] > 0 and out["tokens_per_s"] > 0


def test_generate_command_reports_bad_input_in_one_line(model_store):
    base = [sys.executable, "-m", "services.cli", "generate", "--prompt", "hi", "--json"]
    unknown = subprocess.run(base + ["--model", "nope"], capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and "model 'nope' not found" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    bad_temp = subprocess.run(base + ["--model", "demo-llama", "--temperature", "-1"], capture_output=True, text=True, timeout=120)
    assert bad_temp.returncode == 2 and "temperature=-1.0 is invalid" in bad_temp.stderr
    bad_bias = subprocess.run(base + ["--model", "demo-llama", "--logit-bias", "7"], capture_output=True, text=True, timeout=120)
    assert bad_bias.returncode == 2 and "'7' is not ID=BIAS" in bad_bias.stderr
    far_bias = subprocess.run(base + ["--model", "demo-llama", "--logit-bias", "99999999=1"], capture_output=True, text=True, timeout=120)
    assert far_bias.returncode == 2 and "logit_bias token ids [99999999] are outside the vocabulary" in far_bias.stderr


def test_generate_command_takes_openais_sampling_parameters(model_store):
    cmd = [sys.executable, "-m", "services.cli", "generate", "--model", SMOLLM, "--prompt", "1, 2, 3, 4, 5,",
           "--max-tokens", "3", "--logit-bias", "28=100", "--logprobs", "--top-logprobs", "2",
           "--frequency-penalty", "0.5", "--json"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["token_ids"] == [28, 28, 28]
    assert len(out["top_logprobs"]) == 3 and all(len(top) == 2 for top in out["top_logprobs"])
    assert out["top_logprobs"][0][0][1] >= out["top_logprobs"][0][1][1]


def test_sharded_checkpoint_loads_like_a_single_file(model_store, tmp_path, prompt_ids, hf_greedy):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(model_store.path("demo-qwen2")), dtype=torch.float32)
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20MB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) >= 3
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    engine = Engine(small_config(), {"sharded": tmp_path / "sharded"})
    done = run_to_completion(engine, [EngineRequest("r", "sharded", prompt_ids[4], GREEDY)])
    assert done["r"].token_ids == hf_greedy("demo-qwen2")[4]
