import json

from services.gpu_worker.engine.prepare import DEMOS, SMOLLM2, prepare_all


def test_second_prepare_skips_every_model(model_store):
    results = prepare_all(model_store)

    assert [r.name for r in results] == [SMOLLM2, *(d.name for d in DEMOS)]
    assert all(r.skipped for r in results)


def test_every_model_has_the_smollm2_chat_template_and_tokenizer(model_store):
    template = (model_store.path(SMOLLM2) / "chat_template.jinja").read_text()
    assert "<|im_start|>" in template
    for name in [SMOLLM2, *(d.name for d in DEMOS)]:
        model_dir = model_store.path(name)
        assert (model_dir / "chat_template.jinja").read_text() == template
        assert (model_dir / "tokenizer.json").is_file()
        generation = json.loads((model_dir / "generation_config.json").read_text())
        assert (generation["bos_token_id"], generation["eos_token_id"]) == (1, 2)


def test_demo_llama_keeps_llama3_rope_scaling(model_store):
    config = json.loads((model_store.path("demo-llama") / "config.json").read_text())

    assert config["rope_parameters"] == {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 1024,
    }
