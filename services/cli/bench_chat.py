"""``tokenpool bench chat``: multi-turn chats on a model replicated on two workers, with the
router's prefix-aware choice of worker and without it (load only), in one run.

    tokenpool bench chat [--conversations 24] [--turns 4] [--think-s 6] [--answer-tokens 16]
                         [--slots 12] [--repeats 1] [--model smollm2-135m-instruct] [--json] [--out PATH]

Each policy gets its own stack (nats-server, router, two gpu_workers, gateway; runs alternate
between the policies). The model is placed on both workers, as the autoscaler places a hot model,
so the router chooses between two replicas. Every conversation has its own system prompt and
sends its turns one after another, each with the whole chat so far, so a turn's prompt starts
with the previous turn's prompt and answer: the worker that computed them holds them in its
prefix cache. The figures: the share of later turns' prompt tokens that came from a cache
(usage.prompt_tokens_details.cached_tokens) and their time to the first token.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from services.cli.bench_run import machine_brief, run_async, run_bench
from services.router.slo.attainment import percentile

POLICIES = {"prefix": [], "load": ["--no-prefix-routing"]}
"""Policy name -> the router's flags."""
WORDS = (
    "harbour ledger lantern copper orchard meadow signal archive compass valley timber quarry "
    "granite river beacon market garden winter summer bridge tower engine cargo voyage island "
    "mountain forest station letter museum library workshop festival courier weather journal "
    "village canal mill ferry chapel glacier desert marble spruce falcon heron otter"
).split()


@dataclass(frozen=True)
class Chat:
    system: str
    questions: tuple[str, ...]
    think_s: tuple[float, ...]
    """Seconds before each question is sent (the first: when the chat starts)."""


def register(kinds) -> None:
    p = kinds.add_parser(
        "chat",
        help="multi-turn chats on two replicas: prefix-aware routing vs load only, cache hits and TTFT",
        description="Starts a stack with two workers per routing policy, runs the same multi-turn chats "
        "through each and reports the share of later turns' prompt tokens served from a prefix cache and "
        "their time to first token. See bench/README.md.",
    )
    p.add_argument("--conversations", type=int, default=24, help="chats at once (default: %(default)s)")
    p.add_argument("--turns", type=int, default=4, help="turns per chat (default: %(default)s)")
    p.add_argument("--answer-tokens", type=int, default=16, help="max_tokens of each answer (default: %(default)s)")
    p.add_argument("--system-words", type=int, default=90, help="words in each chat's system prompt (default: %(default)s)")
    p.add_argument("--think-s", type=float, default=6.0, help="a chat waits a random 0 to this many seconds "
                   "before each turn, as a user reads and types (default: %(default)s)")
    p.add_argument("--slots", type=int, default=12, help="requests per worker (router --max-running-per-worker) "
                   "(default: %(default)s)")
    p.add_argument("--prefix-load-slack", type=float, help="the router's --prefix-load-slack in the prefix-aware "
                   "runs (default: the router's)")
    p.add_argument("--repeats", type=int, default=1, help="runs per policy, alternating (default: %(default)s)")
    p.add_argument("--model", default="smollm2-135m-instruct", help="model in the store (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="of the chats' words (default: %(default)s)")
    p.add_argument("--startup-timeout-s", type=float, default=180.0, help="wait for /health (default: %(default)s)")
    p.add_argument("--out", type=Path, help="also write the JSON object to this file")
    p.add_argument("--json", action="store_true", help="print the JSON object instead of a summary")
    p.set_defaults(handler=bench_chat)


LIMITS = {
    "conversations": (1, 200, "chats"),
    "turns": (2, 20, "(the figures are about the turns after the first)"),
    "answer_tokens": (1, 256, "tokens"),
    "system_words": (0, 2000, "words"),
    "think_s": (0, 60, "seconds"),
    "slots": (1, 256, "requests per worker"),
    "prefix_load_slack": (0, 1, "(a share of a worker's slots)"),
    "repeats": (1, 10, "runs per policy"),
}
"""Flag (as an attribute) -> (lowest, highest, what it counts)."""


def _check(args: argparse.Namespace) -> str | None:
    for name, (low, high, unit) in LIMITS.items():
        value = getattr(args, name)
        if value is not None and not low <= value <= high:
            return f"--{name.replace('_', '-')} {value}: use {low} to {high} {unit}"
    if args.startup_timeout_s <= 0:
        return f"--startup-timeout-s {args.startup_timeout_s}: must be positive"
    return None


def bench_chat(args: argparse.Namespace) -> int:
    if problem := _check(args):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from shared.model_store import ModelStore

    model_path = ModelStore.from_env().path(args.model)  # ModelNotFoundError: a one-line error from main
    return run_bench("chat", lambda tmp: _run(args, model_path, tmp), args, format_report)


def _log(message: str) -> None:
    print(f"[bench chat] {message}", file=sys.stderr, flush=True)


def chats(seed: int, conversations: int, turns: int, system_words: int, think_s: float) -> list[Chat]:
    """The same for the same arguments."""
    rng = random.Random(seed)
    out = []
    for c in range(conversations):
        words = " ".join(rng.choice(WORDS) for _ in range(system_words))
        system = f"You are the clerk of desk {c}. Keep to these notes: {words}."
        questions = tuple(f"Question {t + 1}: what should the {rng.choice(WORDS)} do about the {rng.choice(WORDS)}?"
                          for t in range(turns))
        out.append(Chat(system, questions, tuple(rng.uniform(0, think_s) for _ in range(turns))))
    return out


def _run(args, model_path: Path, tmp: Path) -> dict:
    from services.cli.bench_serve_stack import ServeStack, write_catalog

    catalog = write_catalog(tmp / "catalog.toml", args.model, model_path)
    worker_args = ["--models", args.model, "--threads", "1", "--kv-arena-bytes", "1GiB"]
    workload = chats(args.seed, args.conversations, args.turns, args.system_words, args.think_s)
    runs: dict[str, list[dict]] = {name: [] for name in POLICIES}
    for repeat in range(args.repeats):
        for name, flags in POLICIES.items():
            run_dir = tmp / f"{name}-{repeat}"
            run_dir.mkdir()
            router_args = ["--max-running-per-worker", str(args.slots), *flags]
            if name == "prefix" and args.prefix_load_slack is not None:
                router_args += ["--prefix-load-slack", str(args.prefix_load_slack)]
            stack = ServeStack(run_dir, args.model, model_path, worker_args, router_args, catalog=catalog, workers=2)
            try:
                stack.start()
                stack.wait_healthy(args.startup_timeout_s)
                run_async(_prepare(stack.nats.url, stack.worker_ids, args.model, args.startup_timeout_s))
                _log(f"{name} routing, run {repeat + 1}: {args.conversations} chats x {args.turns} turns")
                started = time.perf_counter()
                turns = run_async(_talk(stack.base_url, args.model, workload, args.answer_tokens))
                runs[name].append(summarize(turns, time.perf_counter() - started))
            finally:
                stack.stop()
            _log(f"{name}: {_line(runs[name][-1])}")
    return report(args, runs)


async def _prepare(nats_url: str, workers: list[str], model: str, timeout_s: float) -> None:
    """Waits until every worker says it is ready (the gateway's /health counts workers that
    report, ready or not), then places the model on every worker, as the autoscaler places a
    hot one, and gives the router a moment to read it."""
    import nats

    from shared import subjects
    from shared.bus import placement_bucket
    from shared.protocol import Placement, WorkerPlacement, WorkerState, decode, encode

    ready: set[str] = set()
    all_ready = asyncio.Event()

    async def on_state(msg) -> None:
        state = decode(msg.data, WorkerState)
        if state.ready:
            ready.add(state.worker_id)
        if ready >= set(workers):
            all_ready.set()

    nc = await nats.connect(nats_url)
    try:
        await nc.subscribe(subjects.WORKER_STATE, cb=on_state)
        try:
            await asyncio.wait_for(all_ready.wait(), timeout_s)
        except TimeoutError:
            raise TimeoutError(f"workers {sorted(set(workers) - ready)} were not ready after {timeout_s:g} s") from None
        placement = Placement(1, tuple(WorkerPlacement(w, (model,)) for w in workers), time.time())
        await (await placement_bucket(nc)).put("placement", encode(placement))
    finally:
        await nc.close()
    await asyncio.sleep(1.0)


async def _talk(base_url: str, model: str, workload, answer_tokens: int) -> list[dict]:
    import logging

    from openai import AsyncOpenAI

    for name in ("httpx", "httpx2", "openai"):
        logging.getLogger(name).setLevel(logging.WARNING)  # (one line per request otherwise)

    client = AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=600)
    try:
        done = await asyncio.gather(*(
            _conversation(client, model, c, chat, answer_tokens) for c, chat in enumerate(workload)
        ))
    finally:
        await client.close()
    return [turn for conversation in done for turn in conversation]


async def _conversation(client, model: str, c: int, chat: Chat, answer_tokens: int) -> list[dict]:
    """The chat's turns; a turn the stack fails ends the run with a RuntimeError naming it."""
    from openai import APIError

    try:
        return await _turns(client, model, c, chat, answer_tokens)
    except APIError as e:
        raise RuntimeError(f"chat {c}: the stack failed a turn: {e}") from None


async def _turns(client, model: str, c: int, chat: Chat, answer_tokens: int) -> list[dict]:
    messages = [{"role": "system", "content": chat.system}]
    turns = []
    for t, (question, think_s) in enumerate(zip(chat.questions, chat.think_s)):
        await asyncio.sleep(think_s)
        messages.append({"role": "user", "content": question})
        sent = time.perf_counter()
        first = None
        parts, usage = [], None
        stream = await client.chat.completions.create(
            model=model, messages=messages, max_tokens=answer_tokens, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.perf_counter()
                parts.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
        end = time.perf_counter()
        if usage is None:
            raise RuntimeError(f"chat {c}, turn {t + 1}: the stream ended without its usage")
        messages.append({"role": "assistant", "content": "".join(parts)})
        details = usage.prompt_tokens_details
        turns.append({
            "conversation": c,
            "turn": t,
            "prompt_tokens": usage.prompt_tokens,
            "cached_tokens": details.cached_tokens if details is not None else 0,
            "ttft_s": (first or end) - sent,
            "latency_s": end - sent,
        })
    return turns


def summarize(turns: list[dict], wall_s: float) -> dict:
    def part(rows: list[dict]) -> dict:
        prompt = sum(r["prompt_tokens"] for r in rows)
        cached = sum(r["cached_tokens"] for r in rows)
        ttft = sorted(r["ttft_s"] for r in rows)
        p90 = percentile(ttft, 90)
        return {
            "turns": len(rows),
            "prompt_tokens": prompt,
            "cached_tokens": cached,
            "cached_share": round(cached / prompt, 4) if prompt else 0.0,
            "ttft_ms_p50": round(1000 * statistics.median(ttft), 1) if ttft else None,
            "ttft_ms_p90": round(1000 * p90, 1) if p90 is not None else None,
            "latency_ms_p50": round(1000 * statistics.median(r["latency_s"] for r in rows), 1) if rows else None,
        }

    return {
        "wall_s": round(wall_s, 2),
        "first_turns": part([r for r in turns if r["turn"] == 0]),
        "later_turns": part([r for r in turns if r["turn"] > 0]),
    }


def report(args, runs: dict[str, list[dict]]) -> dict:
    def median_of(name: str, key: str) -> float:
        return statistics.median(r["later_turns"][key] for r in runs[name])

    prefix_ttft, load_ttft = median_of("prefix", "ttft_ms_p50"), median_of("load", "ttft_ms_p50")
    return {
        "bench": "chat",
        "machine": machine_brief(),
        "config": {
            "model": args.model, "workers": 2, "conversations": args.conversations, "turns": args.turns,
            "answer_tokens": args.answer_tokens, "system_words": args.system_words, "think_s": args.think_s,
            "slots": args.slots, "prefix_load_slack": args.prefix_load_slack,
            "repeats": args.repeats, "seed": args.seed,
        },
        "policies": runs,
        "later_turns": {
            "cached_share": {name: median_of(name, "cached_share") for name in runs},
            "ttft_ms_p50": {"prefix": prefix_ttft, "load": load_ttft},
            "ttft_load_over_prefix": round(load_ttft / prefix_ttft, 3) if prefix_ttft else None,
        },
        "method": "Medians over the runs of each policy; a run's figures cover the turns after each chat's "
        "first (their prompts start with the chat so far). cached_share: prompt tokens the workers' prefix "
        "caches served over all prompt tokens of those turns.",
    }


def _line(run: dict) -> str:
    later = run["later_turns"]
    return (f"later turns: {100 * later['cached_share']:.0f} % of prompt tokens cached, TTFT p50 "
            f"{later['ttft_ms_p50']} ms, p90 {later['ttft_ms_p90']} ms; wall {run['wall_s']} s")


def format_report(result: dict) -> str:
    later = result["later_turns"]
    lines = [f"bench chat: {result['config']['conversations']} chats x {result['config']['turns']} turns, "
             f"two replicas of {result['config']['model']}"]
    for name, runs in result["policies"].items():
        for i, run in enumerate(runs):
            lines.append(f"  {name:6} run {i + 1}: {_line(run)}")
    lines.append(f"  later turns' TTFT p50, load-only over prefix-aware: {later['ttft_load_over_prefix']}x; "
                 f"cached share {later['cached_share']['prefix']:.2f} against {later['cached_share']['load']:.2f}")
    return "\n".join(lines)
