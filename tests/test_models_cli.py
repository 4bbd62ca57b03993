import json
import os
import subprocess
import sys
from pathlib import Path

TOKENPOOL = Path(sys.executable).parent / "tokenpool"


def tokenpool(*args: str, store: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENPOOL_MODEL_STORE": str(store)}
    return subprocess.run([str(TOKENPOOL), *args], env=env, capture_output=True, text=True, timeout=60)


def test_models_list_json_shows_prepared_models(model_store):
    result = tokenpool("models", "list", "--json", store=model_store.root)

    assert result.returncode == 0, result.stderr
    models = {m["name"]: m for m in json.loads(result.stdout)}
    smollm = models["smollm2-135m-instruct"]
    assert smollm["architecture"] == "LlamaForCausalLM"
    assert abs(smollm["parameters"] - 134.5e6) < 0.1e6
    assert smollm["dtype"] == "float32"
    assert smollm["bytes"] == 4 * smollm["parameters"]
    assert smollm["context_length"] == 8192
    assert Path(smollm["path"]) == model_store.root / "smollm2-135m-instruct"
    assert models["demo-llama"]["architecture"] == "LlamaForCausalLM"
    assert models["demo-qwen2"]["architecture"] == "Qwen2ForCausalLM"
    assert models["demo-mistral"]["architecture"] == "MistralForCausalLM"


def test_models_list_table_has_a_row_per_model(model_store):
    result = tokenpool("models", "list", store=model_store.root)

    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()
    assert rows[0].split()[:2] == ["NAME", "ARCHITECTURE"]
    assert {row.split()[0] for row in rows[1:]} >= {"smollm2-135m-instruct", "demo-llama", "demo-qwen2", "demo-mistral"}


def test_corrupt_checkpoint_is_one_line_error_naming_the_file(tmp_path):
    model_dir = tmp_path / "broken"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    (model_dir / "model.safetensors").write_bytes(b"\x10\x00")

    result = tokenpool("models", "list", "--json", store=tmp_path)

    assert result.returncode == 2
    assert result.stderr.startswith("error: corrupt checkpoint")
    assert str(model_dir / "model.safetensors") in result.stderr
    assert "Traceback" not in result.stderr
