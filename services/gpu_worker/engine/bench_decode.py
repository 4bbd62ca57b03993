"""Decode throughput of our engine against Hugging Face ``model.generate``, same prompts, same run.

Both sides get the same B prompts (token ids from the model's own tokenizer, 28-36 tokens each),
greedy (or both sampling with the same temperature and top-p: SAMPLED), exactly N new tokens
per sequence. Only decode is timed: from the moment every
sequence has its first token (prefill done) to the moment every sequence has its N-th, so
tok/s = B * (N - 1) / that time. Our side stamps the clock after the engine step that produced
the last first token; Hugging Face's side stamps it in a streamer, which `generate` calls once
with the prompt and then once per step with the new tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median

import torch

from .engine import Engine
from .sequence import EngineRequest, SamplingParams

PROMPTS = (
    "The old lighthouse keeper climbed the spiral stairs every evening at dusk, counting each of the "
    "two hundred steps aloud, because his father had told him that a keeper who loses count loses the light.",
    "Explain in simple terms why the sky looks blue during the day but turns red and orange at sunset, "
    "and mention what role the thickness of the atmosphere plays in it.",
    "def merge_sorted(a, b):\n    \"\"\"Merge two sorted lists into one sorted list without using sort().\"\"\"\n"
    "    result = []\n    i = j = 0\n    while i < len(a) and j < len(b):\n",
    "Write a short, polite email to a landlord asking when the broken heating in the apartment on the "
    "third floor will be repaired, since the nights have become quite cold.",
    "In 1869 the Suez Canal opened, linking the Mediterranean Sea to the Red Sea and cutting the sea "
    "journey between Europe and South Asia by thousands of kilometres. Its effects on trade were",
    "List five practical tips for someone who wants to start running in the morning but keeps "
    "turning off the alarm clock and going back to sleep.",
    "Photosynthesis converts light energy into chemical energy. In the light-dependent reactions, "
    "water molecules are split, oxygen is released, and the energy carriers ATP and NADPH are",
    "Translate the following sentence into French and explain any word choices that are not literal: "
    "'We missed the last train, so we walked home under the stars.'",
    "SELECT customers.name, COUNT(orders.id) AS order_count FROM customers LEFT JOIN orders ON "
    "orders.customer_id = customers.id WHERE orders.created_at > '2023-01-01' GROUP BY",
    "My sourdough bread keeps coming out flat and dense even though the starter bubbles nicely. "
    "I bake it at 230 degrees for forty minutes. What could be going wrong?",
    "Once upon a time, in a village at the edge of a vast pine forest, there lived a clockmaker "
    "who could repair any clock except the one that hung above her own door.",
    "Compare the advantages and disadvantages of electric cars and petrol cars for a family that "
    "lives in the countryside and drives about sixty kilometres a day.",
    "The mitochondria are often called the powerhouse of the cell, but they also take part in "
    "signalling, cell death and the regulation of calcium. Describe one of these roles in detail.",
    "Summarise the plot of a heist movie in which a group of retired librarians plans to steal back "
    "a rare manuscript from a private collector who refuses to lend it to anyone.",
    "How does a hash table handle collisions? Describe separate chaining and open addressing, and "
    "say which one you would pick for a cache with many deletions.",
    "Dear diary, today the weather was strange: it snowed in the morning, the sun came out at noon, "
    "and by the evening a thunderstorm had knocked out the power in the whole street.",
    "The recipe calls for 250 grams of flour, 3 eggs, 500 millilitres of milk and a pinch of salt. "
    "How should I change the amounts to make pancakes for eleven people instead of four?",
    "Write a haiku sequence of three poems about a cat watching rain from a windowsill, one for the "
    "first drops, one for the downpour and one for the puddles afterwards.",
    "import numpy as np\n\ndef moving_average(x, window):\n    # Return the moving average of a 1-D "
    "array using a cumulative sum so that it runs in linear time.\n",
    "What are the main differences between the Roman Republic and the Roman Empire in the way "
    "power was shared, and which events marked the transition from one to the other?",
    "A train leaves the station at 14:10 travelling at 80 km/h, and a second train leaves the same "
    "station at 14:40 on a parallel track at 110 km/h. When does the second train catch up?",
    "Give me a packing list for a four-day hiking trip in the mountains in early autumn, when the "
    "days are warm but the nights can drop below freezing.",
    "The committee reviewed the proposal for the new library wing and raised three concerns: the "
    "cost of heating the glass atrium, the lack of parking, and the noise from the",
    "Describe how a bill becomes a law in a parliamentary system, from the first reading to royal "
    "assent or presidential signature, in no more than a few paragraphs.",
    "Why do cats purr? Summarise what scientists currently believe about the mechanism and about "
    "the reasons, including the idea that purring might help bones heal.",
    "The startup's first product was a smart umbrella that warned its owner when rain was forecast, "
    "but sales were disappointing until the team noticed that customers mostly used it to",
    "Write a function in JavaScript that debounces another function: it should wait until no call "
    "has happened for a given number of milliseconds before running the wrapped function.",
    "During the Apollo 13 mission an oxygen tank exploded two days after launch, and the crew had "
    "to use the lunar module as a lifeboat. Explain how they managed the carbon dioxide problem.",
    "I am learning to play the guitar and my fingertips hurt after ten minutes of practice. How "
    "long does it usually take to build calluses, and how should I practise meanwhile?",
    "Classify each of the following animals as a mammal, bird, reptile, amphibian or fish: dolphin, "
    "penguin, salamander, gecko, shark, bat, ostrich, frog, whale and crocodile.",
    "The city council announced that from next spring the main square will be closed to cars on "
    "weekends, and local shop owners have reacted with a mixture of enthusiasm and",
    "Explain the difference between a process and a thread in an operating system, and give an "
    "example of a program that benefits from using several threads instead of processes.",
)


def prompt_token_ids(tokenizer, batch: int) -> list[list[int]]:
    """B prompts of 28-36 tokens (mean about 32), cycling through PROMPTS."""
    prompts = []
    for i in range(batch):
        ids = tokenizer.encode(PROMPTS[i % len(PROMPTS)])
        length = 28 + (i * 5) % 9
        if i >= len(PROMPTS):  # a second pass over the texts starts further in, so prompts stay distinct
            ids = ids[: 1] + ids[1 + i // len(PROMPTS) :]
        prompts.append(ids[:length])
    return prompts


SAMPLED = {"temperature": 1.0, "top_p": 0.9}
"""The sampled comparison: OpenAI's default temperature with a common nucleus."""


@dataclass
class DecodeRun:
    tok_s: float
    prefill_s: float
    total_s: float
    token_ids: list[list[int]]


def ours_decode(
    engine: Engine, model: str, prompts: list[list[int]], new_tokens: int, tag: str, sampling: dict | None = None
) -> DecodeRun:
    ids = [f"{tag}-{i}" for i in range(len(prompts))]
    tokens: dict[str, list[int]] = {rid: [] for rid in ids}
    started = time.perf_counter()
    for i, (rid, prompt) in enumerate(zip(ids, prompts)):
        if sampling is None:
            params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
        else:
            params = SamplingParams(max_tokens=new_tokens, ignore_eos=True, seed=i, **sampling)
        engine.add_request(EngineRequest(rid, model, tuple(prompt), params))
    first_done = None
    waiting_first = len(ids)
    while engine.has_work(model):
        for out in engine.step():
            if out.index == 0:
                waiting_first -= 1
            tokens[out.request_id].append(out.token_id)
        if first_done is None and waiting_first == 0:
            first_done = time.perf_counter()
    finished = time.perf_counter()
    decoded = sum(len(t) - 1 for t in tokens.values())
    return DecodeRun(
        tok_s=decoded / (finished - first_done),
        prefill_s=first_done - started,
        total_s=finished - started,
        token_ids=[tokens[rid] for rid in ids],
    )


class HFDecoder:
    """The same checkpoint through transformers' AutoModelForCausalLM and generate()."""

    def __init__(self, path: Path, device: torch.device, dtype: torch.dtype):
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
        from transformers.generation.streamers import BaseStreamer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        self.device = device
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
        self.model.to(device).eval()
        # No EOS, like our ignore_eos: with one, min_new_tokens would mask the EOS logit and greedy
        # decoding would pick another token than ours whenever EOS is the argmax. generate() fills
        # unset fields from the model's generation config, so the EOS is removed there.
        self.model.generation_config.eos_token_id = None
        tokenizer = AutoTokenizer.from_pretrained(path)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        self._generation_config = GenerationConfig

        class Clock(BaseStreamer):
            """generate() calls put() once with the prompt, then once per step with the new tokens."""

            def __init__(self):
                self.stamps: list[float] = []

            def put(self, value):
                self.stamps.append(time.perf_counter())

            def end(self):
                pass

        self._clock = Clock

    def _inputs(self, prompts: list[list[int]]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer.pad({"input_ids": prompts}, padding=True, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    def _config(self, new_tokens: int, sampling: dict | None = None):
        return self._generation_config(
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            num_beams=1,
            pad_token_id=self.tokenizer.pad_token_id,
            **({"do_sample": False} if sampling is None else {"do_sample": True, "top_k": 0, **sampling}),
        )

    @torch.inference_mode()
    def decode(self, prompts: list[list[int]], new_tokens: int, sampling: dict | None = None) -> DecodeRun:
        inputs = self._inputs(prompts)
        clock = self._clock()
        started = time.perf_counter()
        out = self.model.generate(**inputs, generation_config=self._config(new_tokens, sampling), streamer=clock)
        finished = time.perf_counter()
        # stamps[0]: the prompt, before prefill; stamps[1]: every first token; stamps[-1]: every last token
        stamps = clock.stamps
        if len(stamps) != new_tokens + 1:
            raise RuntimeError(f"generate() streamed {len(stamps) - 1} steps, expected {new_tokens}")
        width = inputs["input_ids"].shape[1]
        return DecodeRun(
            tok_s=len(prompts) * (new_tokens - 1) / (stamps[-1] - stamps[1]),
            prefill_s=stamps[1] - started,
            total_s=finished - started,
            token_ids=out[:, width:].tolist(),
        )

    @torch.inference_mode()
    def generate_s(self, prompts: list[list[int]], new_tokens: int, sampling: dict | None = None) -> float:
        """Wall time of a plain generate() call, no streamer (for the by-difference estimate)."""
        inputs = self._inputs(prompts)
        started = time.perf_counter()
        self.model.generate(**inputs, generation_config=self._config(new_tokens, sampling))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - started

    def close(self) -> None:
        del self.model


def compare_batch(
    engine: Engine,
    model: str,
    hf: HFDecoder,
    prompts: list[list[int]],
    new_tokens: int,
    repeats: int,
    log,
    sampling: dict | None = None,
) -> dict:
    """Interleaves our runs with HF's (alternating who goes first) so machine noise hits both alike.
    With `sampling` both sides sample (SAMPLED) instead of decoding greedily."""
    batch = len(prompts)
    warm = min(new_tokens, 4)
    tag = "s" if sampling else "g"
    ours_decode(engine, model, prompts, warm, f"warm-{tag}{batch}", sampling)
    hf.decode(prompts, warm, sampling)
    ours_runs: list[DecodeRun] = []
    hf_runs: list[DecodeRun] = []
    hf_one_s: list[float] = []
    for r in range(repeats):
        order = ("ours", "hf") if r % 2 == 0 else ("hf", "ours")
        for side in order:
            if side == "ours":
                ours_runs.append(ours_decode(engine, model, prompts, new_tokens, f"{tag}{batch}-r{r}", sampling))
            else:
                hf_runs.append(hf.decode(prompts, new_tokens, sampling))
                hf_one_s.append(hf.generate_s(prompts, 1, sampling))
        log(
            f"decode{' sampled' if sampling else ''} B={batch} repeat {r + 1}/{repeats}: ours {ours_runs[-1].tok_s:.1f} tok/s, "
            f"hf {hf_runs[-1].tok_s:.1f} tok/s"
        )
    ours = median(run.tok_s for run in ours_runs)
    theirs = median(run.tok_s for run in hf_runs)
    by_difference = batch * (new_tokens - 1) / (median(r.total_s for r in hf_runs) - median(hf_one_s))
    same = sum(a == b for a, b in zip(ours_runs[-1].token_ids, hf_runs[-1].token_ids))
    row = {
        "batch": batch,
        "ours_tok_s": ours,
        "hf_tok_s": theirs,
        "ratio": ours / theirs,
        "ours_runs_tok_s": [run.tok_s for run in ours_runs],
        "hf_runs_tok_s": [run.tok_s for run in hf_runs],
        "ours_step_ms": 1000 * batch / ours,
        "hf_step_ms": 1000 * batch / theirs,
        "hf_tok_s_by_difference": by_difference,
        "ours_prefill_s": median(run.prefill_s for run in ours_runs),
        "hf_prefill_s": median(run.prefill_s for run in hf_runs),
        "prompt_tokens": [len(p) for p in prompts],
    }
    if sampling is None:  # sampled tokens differ by construction (different random streams)
        row["greedy_identical_sequences"] = f"{same}/{batch}"
    return row
