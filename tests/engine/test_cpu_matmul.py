"""oneDNN-packed projection weights on CPU (cpu_matmul.py): made once when a model loads into
host memory, kept while the host copy is, and decoding exactly what plain F.linear decodes."""

import pytest
import torch

from services.gpu_worker.engine import cpu_matmul
from services.gpu_worker.engine.engine import Engine
from services.gpu_worker.engine.generate import run_to_completion
from services.gpu_worker.engine.sequence import EngineRequest, SamplingParams

from .conftest import DEMOS, SMOLLM, small_config

GREEDY = SamplingParams(max_tokens=24, temperature=0)


def test_this_torch_build_packs_float32_weights():
    # CI's CPU build has oneDNN; losing the ops would silently halve decode speed, so it fails here
    assert cpu_matmul.supported(torch.float32)


def test_a_build_without_onednn_falls_back_to_plain_linear(monkeypatch):
    cpu_matmul.supported.cache_clear()
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    try:
        assert not cpu_matmul.supported(torch.float32)
    finally:
        cpu_matmul.supported.cache_clear()


@pytest.mark.parametrize("model", [SMOLLM, *DEMOS])
def test_packed_and_plain_engines_decode_the_same_tokens_alone_and_batched(model_store, prompt_ids, model):
    outputs = {}
    for packed in (True, False):
        engine = Engine(small_config(packed_cpu_matmul=packed), {model: model_store.path(model)})
        try:
            assert engine.packs_matmul is packed
            alone = [run_to_completion(engine, [EngineRequest("a", model, ids, GREEDY)])["a"].token_ids
                     for ids in prompt_ids[:3]]
            batch = run_to_completion(engine, [EngineRequest(f"b{i}", model, ids, GREEDY) for i, ids in enumerate(prompt_ids)])
            outputs[packed] = (alone, [batch[f"b{i}"].token_ids for i in range(len(prompt_ids))])
            assert engine.stats().free_pages == engine.stats().total_pages
        finally:
            engine.close()
    assert outputs[True] == outputs[False]


def test_packed_weights_live_as_long_as_the_host_copy(model_store):
    engine = Engine(small_config(), {m: model_store.path(m) for m in DEMOS[:2]})
    a, b = DEMOS[:2]
    try:
        engine.activate(a)
        packed = engine.slot(a).packed
        assert set(packed) >= {"layers.0.qkv", "layers.0.o", "layers.0.gate_up", "layers.0.down", "lm_head"}
        engine.evict(a)
        engine.activate(b)
        engine.activate(a)
        assert engine.slot(a).packed is packed, "switching back in must not pack again"
        engine.unload(a)
        assert engine.slot(a).packed is None and engine.slot(a).host is None
        assert engine.slot(a).host_bytes == 0
        engine.activate(a)
        assert engine.slot(a).packed is not None and engine.slot(a).packed is not packed
    finally:
        engine.close()


def test_without_packing_no_packed_copy_is_made(model_store):
    engine = Engine(small_config(packed_cpu_matmul=False), {SMOLLM: model_store.path(SMOLLM)})
    try:
        engine.activate(SMOLLM)
        assert engine.slot(SMOLLM).packed is None
        assert engine.slot(SMOLLM).host_bytes == engine.slot(SMOLLM).weight_bytes
    finally:
        engine.close()


@pytest.mark.parametrize("model", [SMOLLM, *DEMOS])
def test_the_packed_copies_count_in_the_host_memory_a_model_takes(model_store, model):
    """What the worker reports and the autoscaler places by: the projections again, nearly
    every weight (the norms, and the embedding of an untied model, are not packed)."""
    engine = Engine(small_config(), {model: model_store.path(model)})
    try:
        engine.load(model)
        slot = engine.slot(model)
        assert 1.4 * slot.weight_bytes < slot.host_bytes < 2 * slot.weight_bytes
    finally:
        engine.close()
