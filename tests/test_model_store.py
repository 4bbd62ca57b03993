import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from shared.model_store import (
    CorruptCheckpointError,
    ModelNotFoundError,
    ModelStore,
    read_safetensors_header,
)

TENSORS = {
    "embed.weight": torch.zeros(10, 4, dtype=torch.bfloat16),
    "layer.weight": torch.zeros(4, 4, dtype=torch.bfloat16),
    "layer.bias": torch.zeros(4, dtype=torch.float32),
}


def write_model(root: Path, name: str, tensors=TENSORS, config=None) -> Path:
    model_dir = root / name
    model_dir.mkdir(parents=True)
    config = config or {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "max_position_embeddings": 512}
    (model_dir / "config.json").write_text(json.dumps(config))
    save_file(tensors, model_dir / "model.safetensors", metadata={"format": "pt"})
    return model_dir


def test_header_gives_dtype_shape_and_bytes_of_each_tensor(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(TENSORS, path)

    header = read_safetensors_header(path)

    assert set(header) == set(TENSORS)
    assert header["embed.weight"].shape == (10, 4)
    assert header["embed.weight"].dtype == "BF16"
    assert header["embed.weight"].nbytes == 80
    assert header["layer.bias"].nbytes == 16


def test_info_counts_parameters_and_bytes_without_loading(tmp_path):
    write_model(tmp_path, "tiny")

    info = ModelStore(tmp_path).info("tiny")

    assert info.parameters == 40 + 16 + 4
    assert info.bytes == 80 + 32 + 16
    assert info.dtype == "bfloat16"
    assert info.architecture == "LlamaForCausalLM"
    assert info.context_length == 512


def test_info_falls_back_to_model_type_without_architectures(tmp_path):
    write_model(tmp_path, "tiny", config={"model_type": "mistral"})

    info = ModelStore(tmp_path).info("tiny")

    assert info.architecture == "mistral"
    assert info.context_length is None


def test_sharded_checkpoint_sums_every_shard(tmp_path):
    model_dir = tmp_path / "sharded"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"model_type": "llama"}))
    save_file({"a": torch.zeros(3, 5)}, model_dir / "model-00001-of-00002.safetensors")
    save_file({"b": torch.zeros(7), "c": torch.zeros(2, 2)}, model_dir / "model-00002-of-00002.safetensors")
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors",
                  "c": "model-00002-of-00002.safetensors"}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))

    info = ModelStore(tmp_path).info("sharded")

    assert info.parameters == 15 + 7 + 4
    assert info.bytes == 4 * (15 + 7 + 4)


@pytest.mark.parametrize("keep", [0, 5, 50, -1])
def test_truncated_file_is_corrupt_and_named(tmp_path, keep):
    model_dir = write_model(tmp_path, "tiny")
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:keep])

    with pytest.raises(CorruptCheckpointError) as e:
        ModelStore(tmp_path).info("tiny")

    assert str(weights) in str(e.value)


def test_garbage_header_is_corrupt(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes((12).to_bytes(8, "little") + b"not json!!!!" + b"\0" * 16)

    with pytest.raises(CorruptCheckpointError, match="not valid JSON"):
        read_safetensors_header(path)


def test_missing_shard_is_corrupt_and_named(tmp_path):
    model_dir = tmp_path / "sharded"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    (model_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))

    with pytest.raises(CorruptCheckpointError, match="gone.safetensors"):
        ModelStore(tmp_path).info("sharded")


def test_unknown_model_lists_available_ones(tmp_path):
    write_model(tmp_path, "alpha")
    write_model(tmp_path, "beta")
    (tmp_path / "not-a-model").mkdir()

    with pytest.raises(ModelNotFoundError) as e:
        ModelStore(tmp_path).path("gamma")

    assert e.value.available == ["alpha", "beta"]
    assert "'gamma'" in str(e.value) and "alpha, beta" in str(e.value)


def test_names_skip_hidden_and_config_less_folders(tmp_path):
    write_model(tmp_path, "alpha")
    write_model(tmp_path, ".alpha.123.tmp")
    (tmp_path / "empty").mkdir()

    store = ModelStore(tmp_path)

    assert store.names() == ["alpha"]
    assert [i.name for i in store.list()] == ["alpha"]


def test_missing_root_is_an_empty_store(tmp_path):
    assert ModelStore(tmp_path / "nowhere").names() == []
