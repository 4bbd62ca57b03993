"""The autoscaler against a real nats-server: reports in, placement in the KV bucket out."""

import asyncio
import json
import logging
import struct
import time
from dataclasses import replace

from services.autoscaler.config import AutoscalerConfig
from services.autoscaler.observe import ModelFacts
from services.autoscaler.orders import STATE_KEY, decode_state
from services.autoscaler.service import AutoscalerService
from services.autoscaler.sizes import model_sizes
from shared import bus, subjects
from shared.catalog import load_catalog
from shared.nats_server import NatsServer
from shared.protocol import ModelLoad, Placement, RouterState, WorkerPlacement, WorkerState, decode, encode


def write_checkpoint(model_dir, floats: int) -> None:
    model_dir.mkdir(parents=True)
    header = json.dumps({"w": {"dtype": "F32", "shape": [floats], "data_offsets": [0, 4 * floats]}}).encode()
    (model_dir / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(4 * floats))


def write_catalog(tmp_path, models: dict[str, int]):
    lines = []
    for name, floats in models.items():
        if floats:
            write_checkpoint(tmp_path / "store" / name, floats)
        lines += ["[[models]]", f'name = "{name}"', ""]
    (tmp_path / "catalog.toml").write_text("\n".join(lines))
    return load_catalog(tmp_path / "catalog.toml", tmp_path / "store")


def test_sizes_come_from_the_safetensors_headers_and_missing_models_are_named(tmp_path, caplog):
    catalog = write_catalog(tmp_path, {"m1": 1024, "m2": 256, "absent": 0})
    with caplog.at_level(logging.WARNING):
        assert model_sizes(catalog) == {"m1": 4096, "m2": 1024}
    assert "absent" in caplog.text and "left out" in caplog.text


def worker_state(worker_id: str, seq: int) -> WorkerState:
    return WorkerState(worker_id, True, ("m1", "m2"), (), None, (), 8, 8, "cpu", seq, time.time())


def facts(catalog) -> dict[str, ModelFacts]:
    return {m: ModelFacts(size, catalog.slo(m).tbt_s) for m, size in model_sizes(catalog).items()}


def test_fixed_pool_placement_lands_in_the_kv_bucket_changes_with_the_pool_and_survives_a_restart(tmp_path):
    catalog = write_catalog(tmp_path, {"m1": 1024, "m2": 1024})
    config = AutoscalerConfig(nats="-", catalog=tmp_path / "catalog.toml", interval_s=0.2, host_budget_bytes=8192)

    phase = ["connecting"]  # where a stuck run stopped, for the failure message

    async def scenario(url):
        nc = await bus.connect(url, "test")
        kv = await bus.placement_bucket(nc)
        workers = ["w1"]

        async def report(seq: int) -> None:
            for w in workers:
                await nc.publish(subjects.WORKER_STATE, encode(worker_state(w, seq)))
            load = (ModelLoad("m1", 3, 1, seq, 16 * seq), ModelLoad("m2", 0, 0, 0, 0))
            state = RouterState("router", True, tuple(workers), load, 3, time.time(), attainment=1.0)
            await nc.publish(subjects.ROUTER_STATE, encode(state))

        async def placement() -> tuple[Placement, int] | None:
            try:
                entry = await kv.get(subjects.PLACEMENT_KEY)
            except Exception:  # noqa: BLE001 - not written yet
                return None
            return decode(entry.value, Placement), entry.revision

        async def until(check, what: str):
            for seq in range(1, 200):
                await report(seq)
                if (found := await placement()) and check(found[0]):
                    return found
                await asyncio.sleep(0.1)
            raise AssertionError(f"no placement with {what}; last: {await placement()}")

        phase.append("first autoscaler up")
        async with AutoscalerService(replace(config, nats=url), facts(catalog)):
            first, revision = await until(lambda p: p.workers, "a worker")
            phase.append("first placement read")
            assert first.epoch == 1 and first.workers == (WorkerPlacement("w1", ("m1", "m2")),)
            for seq in range(200, 210):  # the same pool: nothing new is written
                await report(seq)
                await asyncio.sleep(0.1)
            assert await placement() == (first, revision)

            workers.append("w2")  # a second worker joins: the fixed pool never drains one
            second, _ = await until(lambda p: len(p.workers) == 2, "two workers")
            assert second.epoch == 2 and second.drains == ()
            assert {m for w in second.workers for m in w.models} == {"m1", "m2"}
            for seq in range(210, 220):  # let the layout settle (a cold copy may follow a tick later)
                await report(seq)
                await asyncio.sleep(0.1)
            last, _ = await placement()
            state_entry = await kv.get(STATE_KEY)
            phase.append("second placement settled; stopping the first autoscaler")

        # a restarted autoscaler reads its state and the placement back and changes nothing
        phase.append("first autoscaler stopped")
        async with AutoscalerService(replace(config, nats=url), facts(catalog)) as again:
            phase.append("second autoscaler up")
            assert again.placement == last
            for seq in range(300, 320):
                await report(seq)
                await asyncio.sleep(0.1)
            assert (await placement())[0] == last
            assert decode_state((await kv.get(STATE_KEY)).value).placement == decode_state(state_entry.value).placement
            phase.append("restart checked; stopping the second autoscaler")
        await nc.close()

    # About 5 s alone. Fresh-clone runs of the suite now and then stuck while an autoscaler was
    # stopping: its planning loop outlived its cancel (Python 3.11's wait_for swallows a cancel
    # that lands as a KV put completes: 114 of 300 cancels in a tight put loop, against 0 with
    # shared/periodic.every). A stuck run still names the phase it reached.
    with NatsServer(tmp_path / "nats") as server:
        try:
            asyncio.run(asyncio.wait_for(scenario(server.url), 60))
        except TimeoutError:
            raise AssertionError(f"the scenario was stuck for 60 s; phases reached: {phase}") from None
