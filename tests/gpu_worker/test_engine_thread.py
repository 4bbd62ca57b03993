"""The engine thread on its own: a failing step fails only its model's requests, and the loop goes on."""

import queue

from services.gpu_worker.config import WorkerConfig, plan_engine
from services.gpu_worker.engine.engine import Engine
from services.gpu_worker.commands import Assign, Outbox, Stop
from services.gpu_worker.engine_thread import EngineThread
from shared.catalog import load_catalog
from shared.protocol import AssignRequest, GenerateRequest, TokenChunk

from .conftest import CATALOG, GREEDY, MODELS


class EngineWithOneBadStep(Engine):
    """A real engine whose first step of demo-qwen2 raises, as a CUDA error or a bug would."""

    failed = False

    def step(self):
        if self.active == "demo-qwen2" and not self.failed:
            self.failed = True
            raise RuntimeError("simulated device fault")
        return super().step()


def assign(request_id, model, prompt):
    return Assign(AssignRequest(GenerateRequest(request_id, model, prompt, GREEDY, f"tp.tokens.{request_id}")))


def run_until_done(outboxes: queue.Queue, request_ids: set[str]) -> dict[str, list[TokenChunk]]:
    chunks: dict[str, list[TokenChunk]] = {r: [] for r in request_ids}
    open_ids = set(request_ids)
    while open_ids:
        outbox: Outbox = outboxes.get(timeout=60)
        assert outbox.fatal is None, outbox.fatal
        for _, chunk in outbox.chunks:
            chunks[chunk.request_id].append(chunk)
            if chunk.finish_reason or chunk.error:
                open_ids.discard(chunk.request_id)
    return chunks


def test_a_failing_step_fails_its_requests_with_500_and_the_worker_goes_on(model_store, prompt_ids):
    plan = plan_engine(WorkerConfig(models=MODELS, catalog=CATALOG), load_catalog(CATALOG, model_store.root))
    outboxes = queue.Queue()
    thread = EngineThread(
        lambda: EngineWithOneBadStep(plan.engine, plan.paths), list(MODELS), plan.context_lengths, "w", 4, outboxes.put
    )
    thread.start()
    thread.submit(assign("ok-llama", "demo-llama", prompt_ids))
    thread.submit(assign("doomed-qwen", "demo-qwen2", prompt_ids))
    first = run_until_done(outboxes, {"ok-llama", "doomed-qwen"})
    thread.submit(assign("later-qwen", "demo-qwen2", prompt_ids))
    later = run_until_done(outboxes, {"later-qwen"})
    thread.submit(Stop())
    assert thread.join(30)

    doomed = first["doomed-qwen"][-1]
    assert doomed.error.code == 500 and "simulated device fault" in doomed.error.message
    assert first["ok-llama"][-1].finish_reason == "length" and len(first["ok-llama"]) == GREEDY.max_tokens
    assert later["later-qwen"][-1].finish_reason == "length" and len(later["later-qwen"]) == GREEDY.max_tokens
