"""Worker configuration: validation messages, automatic arena sizes, command-line flags."""

import argparse
import tempfile
from pathlib import Path

import pytest
import torch

from services.gpu_worker.__main__ import build_parser, config_from_args, parse_bytes
from services.gpu_worker.config import (
    CPU_KV_ARENA_BYTES,
    WorkerConfig,
    default_worker_id,
    engine_threads,
    plan_engine,
)
from shared import env
from shared.catalog import load_catalog, parse_catalog

from .conftest import CATALOG, MODELS


@pytest.fixture(scope="module")
def catalog(model_store):
    return load_catalog(CATALOG, model_store.root)


def test_default_worker_id_is_a_valid_subject_token():
    WorkerConfig(worker_id=default_worker_id())
    assert "." not in default_worker_id()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(worker_id="gpu.0"), "only letters, digits, - and _"),
        (dict(worker_id=""), "only letters, digits, - and _"),
        (dict(device="gpu"), "not cpu, cuda or cuda:N"),
        (dict(dtype="float64"), "is not one of auto"),
        (dict(kv_arena_bytes=0), "kv_arena_bytes must be a positive"),
        (dict(report_interval_s=0), "report_interval_s must be positive"),
        (dict(nats=" "), "pass --nats"),
        (dict(threads=0), "threads must be at least 1"),
    ],
)
def test_bad_config_says_what_to_fix(overrides, message):
    with pytest.raises(ValueError, match=message):
        WorkerConfig(**overrides)


def test_default_arenas_fit_every_served_model(catalog, model_store):
    plan = plan_engine(WorkerConfig(models=MODELS), catalog)
    weights = sum(model_store.info(m).bytes for m in MODELS)  # float32 checkpoints, float32 on CPU
    assert weights <= plan.engine.weight_arena_bytes <= weights * 1.01
    assert plan.engine.kv_arena_bytes == CPU_KV_ARENA_BYTES
    assert plan.engine.host_swap_bytes == 2 * CPU_KV_ARENA_BYTES
    assert set(plan.paths) == set(MODELS)


def test_cuda_kv_arena_defaults_to_half_of_what_the_weights_leave(catalog):
    plan = plan_engine(WorkerConfig(models=MODELS, device="cuda"), catalog, free_device_bytes=80 << 30)
    assert plan.engine.torch_dtype == torch.bfloat16
    assert plan.engine.kv_arena_bytes == ((80 << 30) - plan.engine.weight_arena_bytes) // 2 >> 20 << 20


def test_host_swap_is_twice_the_kv_arena_but_at_most_a_quarter_of_host_memory(catalog):
    """On an 80 GB GPU the KV arena is ~35 GB: twice that, pinned, would take most of a host."""
    roomy = plan_engine(WorkerConfig(models=MODELS, device="cuda"), catalog, free_device_bytes=80 << 30,
                        host_bytes=1 << 40)
    assert roomy.engine.host_swap_bytes == 2 * roomy.engine.kv_arena_bytes
    tight = plan_engine(WorkerConfig(models=MODELS, device="cuda"), catalog, free_device_bytes=80 << 30,
                        host_bytes=128 << 30)
    assert tight.engine.host_swap_bytes == 32 << 30
    asked = plan_engine(WorkerConfig(models=MODELS, device="cuda", host_swap_bytes=100 << 30), catalog,
                        free_device_bytes=80 << 30, host_bytes=128 << 30)
    assert asked.engine.host_swap_bytes == 100 << 30, "an explicit size is taken as given"


def test_a_worker_asks_for_32_requests_on_cpu_and_256_on_cuda_unless_told():
    from services.gpu_worker.config import max_running

    assert max_running(WorkerConfig()) == 32
    assert max_running(WorkerConfig(device="cuda:1")) == 256
    assert max_running(WorkerConfig(device="cuda", max_running=100)) == 100
    with pytest.raises(ValueError, match="max_running must be at least 1, got 0"):
        WorkerConfig(max_running=0)


def test_weight_arena_too_small_for_a_model_is_refused(catalog):
    with pytest.raises(ValueError, match="cannot hold model 'demo-qwen2'.*--weight-arena-bytes"):
        plan_engine(WorkerConfig(models=MODELS, weight_arena_bytes=1 << 20), catalog)


def test_unknown_model_names_the_catalog_models(catalog):
    with pytest.raises(ValueError, match="nope are not in catalog .*demo-llama"):
        plan_engine(WorkerConfig(models=("demo-llama", "nope")), catalog)


def test_models_with_different_dtypes_need_an_explicit_dtype(model_store):
    raw = {"models": [{"name": "demo-llama", "dtype": "float32"}, {"name": "demo-qwen2", "dtype": "bfloat16"}]}
    catalog = parse_catalog(raw, model_store.root)
    with pytest.raises(ValueError, match="different dtypes.*pass --dtype"):
        plan_engine(WorkerConfig(), catalog)
    assert plan_engine(WorkerConfig(dtype="bfloat16"), catalog).engine.torch_dtype == torch.bfloat16


def test_flags_and_environment(monkeypatch):
    monkeypatch.setenv("TOKENPOOL_WORKER_ID", "from-env")
    monkeypatch.setenv("TOKENPOOL_DEVICE", "cpu")
    args = build_parser().parse_args(
        ["--nats", "nats://a:4222,nats://b:4222", "--catalog", "x.toml", "--models", "demo-llama, demo-qwen2",
         "--kv-arena-bytes", "64MiB"]
    )
    config = config_from_args(args)
    assert config.worker_id == "from-env"
    assert config.nats == "nats://a:4222,nats://b:4222"
    assert config.catalog == Path("x.toml")
    assert config.models == ("demo-llama", "demo-qwen2")
    assert config.kv_arena_bytes == 64 << 20
    assert config.prefix_caching, "on by default"
    assert config_from_args(build_parser().parse_args(["--worker-id", "w7"])).worker_id == "w7"
    assert not config_from_args(build_parser().parse_args(["--no-prefix-cache"])).prefix_caching


def test_the_prefix_cache_setting_reaches_the_engine(model_store):
    catalog = parse_catalog({"models": [{"name": "demo-llama"}]}, model_store.root)
    assert plan_engine(WorkerConfig(), catalog).engine.prefix_caching
    assert not plan_engine(WorkerConfig(prefix_caching=False), catalog).engine.prefix_caching


@pytest.mark.parametrize("text, value", [("1024", 1024), ("256MiB", 256 << 20), ("2GiB", 2 << 30), ("1.5g", 3 << 29)])
def test_sizes_take_units(text, value):
    assert parse_bytes(text) == value


def test_a_size_without_a_known_unit_is_refused():
    with pytest.raises(argparse.ArgumentTypeError, match="256MiB"):
        parse_bytes("256 bananas")


def test_the_kv_handoff_area_comes_from_the_flag_else_the_environment_else_shared_memory(monkeypatch):
    monkeypatch.setenv("TOKENPOOL_KV_HANDOFF_DIR", "/tmp/from-env")
    assert config_from_args(build_parser().parse_args([])).kv_handoff_dir == Path("/tmp/from-env")
    flag = build_parser().parse_args(["--kv-handoff-dir", "/tmp/from-flag"])
    assert config_from_args(flag).kv_handoff_dir == Path("/tmp/from-flag")
    default = env.kv_handoff_dir({})
    assert default.name == "tokenpool-kv"
    assert default.parent == (Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir()))


def test_a_cpu_engine_leaves_a_core_to_the_rest_unless_told_otherwise(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    base = dict(nats="nats://x:4222", worker_id="w")

    assert engine_threads(WorkerConfig(**base)) == 7
    assert engine_threads(WorkerConfig(**base, threads=3)) == 3
    assert engine_threads(WorkerConfig(**base, device="cuda")) is None  # torch's default
    assert engine_threads(WorkerConfig(**base, engine="echo")) is None  # no math to thread
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert engine_threads(WorkerConfig(**base)) == 1
