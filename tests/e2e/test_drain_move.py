"""The autoscaler's drain order carried out by real processes: a request streaming on a worker
being drained moves to another worker mid-stream, and the client sees the same text as if it
had never moved. The order is written to the placement bucket here, as the autoscaler writes it
(its decision to move is tested in tests/autoscaler/test_decide.py)."""

import asyncio
import time

import openai

from shared.bus import placement_bucket
from shared.protocol import DrainOrder, Placement, RequestMove, WorkerPlacement, encode
from shared.tokenizer import Tokenizer

from .conftest import Stack, StateWatcher

SMOL = "smollm2-135m-instruct"
STORY = [{"role": "user", "content": "Tell me a long story about a dragon who learns to paint."}]
MAX_TOKENS = 48


def put_placement(nats_url: str, placement: Placement) -> None:
    import nats

    async def put():
        nc = await nats.connect(nats_url)
        try:
            await (await placement_bucket(nc)).put("placement", encode(placement))
        finally:
            await nc.close()

    asyncio.run(put())


def test_a_drain_order_moves_a_streaming_request_to_another_worker_and_the_text_is_unchanged(
    tmp_path, catalog, model_store, greedy_reference
):
    stack = Stack(tmp_path, catalog).start(workers=2)
    watcher = None
    try:
        stack.wait_healthy(workers=2)
        watcher = StateWatcher(stack.nats.url)
        client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)
        models = tuple(sorted(stack.health()[1]["models"]))
        parts, request_id, moved_at = [], None, None
        stream = client.chat.completions.create(
            model=SMOL, messages=STORY, max_tokens=MAX_TOKENS, temperature=0, stream=True
        )
        for chunk in stream:
            request_id = chunk.id
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content or "")
            if len(parts) == 8 and moved_at is None:
                source = watcher.holder_of(request_id)
                assert source is not None, "no worker reported the request"
                target = "worker-1" if source == "worker-0" else "worker-0"
                put_placement(stack.nats.url, Placement(
                    epoch=1,
                    workers=(WorkerPlacement(source, models), WorkerPlacement(target, models)),
                    ts=time.time(),
                    drains=(DrainOrder(source, (RequestMove(request_id, target),)),),
                ))
                moved_at = len(parts)
        tok = Tokenizer(model_store.path(SMOL))
        expected = tok.decode(greedy_reference(SMOL, tuple(tok.encode_chat(STORY)), MAX_TOKENS))

        assert "".join(parts) == expected, "the moved request's text differs from an unmoved run"
        # (a worker reports on every change, so the target's report of taking it is never skipped;
        # polling for it between chunks missed it on a loaded machine)
        assert target in watcher.ran_on.get(request_id, set()), f"the request never ran on {target} after the move"
        # the drained worker takes no new request: the next one runs on the target
        follow = client.chat.completions.create(model=SMOL, messages=STORY, max_tokens=40, temperature=0, stream=True)
        seen = set()
        for chunk in follow:
            holder = watcher.holder_of(chunk.id, timeout=0.01)
            if holder:
                seen.add(holder)
        assert seen == {target}, f"a drained worker took a new request: {seen}"
    finally:
        if watcher is not None:
            watcher.close()
        stack.stop()
