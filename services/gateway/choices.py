"""The choices of one request: one GenerateRequest each, for n choices of each prompt.

Pure: the gateway submits the plan, reads every choice's tokens and answers with all of them.
Choice k (OpenAI's index: prompt i's choice j is i * n + j) gets its own request id and, when
the request has a seed, seed + k: the choices differ, and the same request gives the same ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from services.gateway.openai_schema import GenerationSpec
from services.gateway.schema_fields import SEED_LIMIT
from shared.protocol import GenerateRequest, Sampling, Usage


@dataclass(frozen=True)
class Choice:
    index: int
    request: GenerateRequest
    echo: str = ""
    """Completions with echo: the prompt's text, which the choice's text starts with."""
    counts_prompt: bool = True
    """The first choice of its prompt: usage counts each prompt's tokens once, not once per choice."""


def sampling_of(spec: GenerationSpec) -> Sampling:
    """The request's sampling; plan_choices sets max_tokens and seed per choice."""
    return Sampling(
        temperature=spec.temperature,
        top_p=spec.top_p,
        top_k=spec.top_k,
        seed=spec.seed,
        stop=spec.stop,
        ignore_eos=spec.ignore_eos,
        logprobs=spec.logprobs,
        top_logprobs=spec.top_logprobs if spec.logprobs else 0,
        presence_penalty=spec.presence_penalty,
        frequency_penalty=spec.frequency_penalty,
        repetition_penalty=spec.repetition_penalty,
        logit_bias=spec.logit_bias,
    )


def plan_choices(
    base: GenerateRequest, prompts: Sequence[tuple[int, ...]], max_tokens: Sequence[int], n: int,
    echoes: Sequence[str] = (),
) -> list[Choice]:
    """Choices in index order; `base` is the request with the response's id, `max_tokens` per prompt.
    A lone choice keeps the response's id as its request id."""
    many = len(prompts) * n > 1
    choices = []
    for i, (prompt, budget) in enumerate(zip(prompts, max_tokens, strict=True)):
        for j in range(n):
            k = i * n + j
            sampling = replace(base.sampling, max_tokens=budget, seed=choice_seed(base.sampling.seed, k))
            request = replace(base, id=f"{base.id}-{k}" if many else base.id, prompt_token_ids=prompt, sampling=sampling)
            choices.append(Choice(k, request, echoes[i] if echoes else "", j == 0))
    return choices


def choice_seed(seed: int | None, k: int) -> int | None:
    return None if seed is None else (seed + k) % SEED_LIMIT


def total_usage(finished: Iterable[tuple[Choice, Usage]]) -> Usage:
    """Of the whole response: each prompt's tokens once (and its cached tokens as that choice
    found them), every choice's completion tokens."""
    prompt = completion = cached = 0
    for choice, usage in finished:
        if choice.counts_prompt:
            prompt += usage.prompt_tokens
            cached += usage.cached_tokens
        completion += usage.completion_tokens
    return Usage(prompt, completion, cached)
