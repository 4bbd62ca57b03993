"""Validation of OpenAI request bodies into a typed GenerationSpec; every mistake is an ApiError.

Pure: no tokenizer, no I/O. The service tokenizes afterwards and calls `resolve_max_tokens`
with the prompt length and the model's context window.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from services.gateway.errors import invalid
from services.gateway.schema_fields import Fields, json_type
from services.gateway.schema_inputs import Prompt, parse_messages, parse_prompts

MAX_COMPLETION_LOGPROBS = 5
MAX_TOP_LOGPROBS = 20
MAX_CHOICES = 128
"""Of one request: its prompts times n."""
PENALTY_RANGE = 2.0


@dataclass(frozen=True)
class GenerationSpec:
    """One validated request of either endpoint."""

    endpoint: str
    """"completions" or "chat"."""
    model: str
    prompts: tuple[Prompt, ...] | None
    """Completions: one or more prompts, each text or token ids."""
    messages: tuple[dict, ...] | None
    """Chat: {"role", "content"} with content flattened to text."""
    max_tokens: int | None
    """None: as many as the context window leaves (chat without max_tokens)."""
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    """With logprobs: the this-many most likely tokens at each position too."""
    ignore_eos: bool = False
    tenant: str = ""
    """OpenAI's `user`: who asked. A full pool is shared fairly among tenants (router)."""
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    """(token id, bias) by id; the ids are checked against the model's vocabulary later."""
    n: int = 1
    """Choices per prompt."""
    echo: bool = False
    """Completions: each choice's text starts with its prompt."""


def parse_json_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise invalid("the request body is not UTF-8 text") from None
    except ValueError as e:
        raise invalid(f"the request body is not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise invalid(f"the request body must be a JSON object, got {json_type(body)}")
    return body


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def parse_completion(body: dict) -> GenerationSpec:
    f = Fields(body)
    model = _model(f)
    prompts = parse_prompts(f.required("prompt"))
    n = _n(f, len(prompts))
    f.refuse_unless("suffix", lambda v: v == "", "insertion (suffix) is not implemented")
    f.refuse_unless("best_of", lambda v: _is_number(v) and v == n, f"only best_of equal to n ({n}) is implemented")
    # logprobs=k: the chosen token's logprob and the k most likely, at each position.
    top = f.integer("logprobs", None, 0, MAX_COMPLETION_LOGPROBS)
    echo = f.boolean("echo")
    if echo and top is not None:
        raise invalid("'echo' with 'logprobs' is not supported: the prompt's logprobs are not returned", "echo")
    return GenerationSpec(
        "completions", model, prompts, None, f.integer("max_tokens", 16, 1), logprobs=top is not None,
        top_logprobs=top or 0, n=n, echo=echo, **_sampling(f),
    )


def parse_chat(body: dict) -> GenerationSpec:
    f = Fields(body)
    model = _model(f)
    messages = parse_messages(f.required("messages"))
    if f.present("max_completion_tokens"):
        max_tokens = f.integer("max_completion_tokens", None, 1)
    else:
        max_tokens = f.integer("max_tokens", None, 1)
    logprobs = f.boolean("logprobs")
    top = f.integer("top_logprobs", 0, 0, MAX_TOP_LOGPROBS)
    if top and not logprobs:
        raise invalid("'top_logprobs' requires 'logprobs' to be true", "top_logprobs")
    f.refuse_unless("tools", lambda v: v == [], "tool calling is not implemented")
    f.refuse_unless("functions", lambda v: v == [], "function calling is not implemented")
    f.refuse_unless(
        "response_format",
        lambda v: isinstance(v, dict) and v.get("type") == "text",
        'only {"type": "text"} is implemented',
    )
    return GenerationSpec(
        "chat", model, None, messages, max_tokens, logprobs=logprobs, top_logprobs=top, n=_n(f, 1), **_sampling(f)
    )


def _n(f: Fields, prompts: int) -> int:
    n = f.integer("n", 1, 1, MAX_CHOICES)
    if prompts * n > MAX_CHOICES:
        raise invalid(
            f"{prompts} prompts with n={n} make {prompts * n} choices; a request makes at most {MAX_CHOICES}",
            "n" if n > 1 else "prompt",
        )
    return n


def _sampling(f: Fields) -> dict:
    stream = f.boolean("stream")
    return dict(
        tenant=_tenant(f),
        temperature=f.number("temperature", 1.0, 0.0, 2.0),
        top_p=f.number("top_p", 1.0, 0.0, 1.0, lo_open=True),
        top_k=f.integer("top_k", 0, 0),
        seed=f.seed(),
        stop=f.stop(),
        stream=stream,
        include_usage=f.stream_options(stream),
        ignore_eos=f.boolean("ignore_eos"),
        presence_penalty=f.number("presence_penalty", 0.0, -PENALTY_RANGE, PENALTY_RANGE),
        frequency_penalty=f.number("frequency_penalty", 0.0, -PENALTY_RANGE, PENALTY_RANGE),
        repetition_penalty=f.number("repetition_penalty", 1.0, 0.0, PENALTY_RANGE, lo_open=True),
        logit_bias=f.logit_bias(),
    )


MAX_TENANT_CHARS = 256


def _tenant(f: Fields) -> str:
    tenant = f.string("user", "")
    if len(tenant) > MAX_TENANT_CHARS:
        raise invalid(f"'user' must be at most {MAX_TENANT_CHARS} characters, got {len(tenant)}", "user")
    return tenant


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _model(f: Fields) -> str:
    model = f.required("model")
    if not isinstance(model, str) or not model:
        raise invalid(f"'model' must be a non-empty string, got {json_type(model)}", "model")
    return model


def resolve_max_tokens(spec: GenerationSpec, prompt_tokens: int, context_window: int, which: str = "") -> int:
    """The completion budget; a prompt plus max_tokens beyond the window is a 400 naming both.

    `which` names the prompt in the message when a request has several ("prompt[2]")."""
    param = "messages" if spec.endpoint == "chat" else "prompt"
    which = which or param
    if prompt_tokens == 0:
        raise invalid(f"'{which}' is empty after tokenization; send at least one token", param)
    if prompt_tokens >= context_window:
        raise invalid(
            f"this model's maximum context length is {context_window} tokens, but the {which} has "
            f"{prompt_tokens} tokens and no room is left for the completion; shorten it",
            param,
            "context_length_exceeded",
        )
    if spec.max_tokens is None:
        return context_window - prompt_tokens
    if prompt_tokens + spec.max_tokens > context_window:
        raise invalid(
            f"this model's maximum context length is {context_window} tokens, but you requested "
            f"{prompt_tokens + spec.max_tokens} tokens ({prompt_tokens} in the {which}, {spec.max_tokens} "
            f"for the completion); lower max_tokens to at most {context_window - prompt_tokens}",
            "max_tokens",
            "context_length_exceeded",
        )
    return spec.max_tokens
