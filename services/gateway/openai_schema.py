"""Validation of OpenAI request bodies into a typed GenerationSpec; every mistake is an ApiError.

Pure: no tokenizer, no I/O. The service tokenizes afterwards and calls `resolve_max_tokens`
with the prompt length and the model's context window.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from services.gateway.errors import invalid
from services.gateway.schema_fields import Fields, json_type

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_COMPLETION_LOGPROBS = 5


@dataclass(frozen=True)
class GenerationSpec:
    """One validated request of either endpoint."""

    endpoint: str
    """"completions" or "chat"."""
    model: str
    prompt: str | tuple[int, ...] | None
    """Completions: text or token ids."""
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
    ignore_eos: bool = False
    tenant: str = ""
    """OpenAI's `user`: who asked. A full pool is shared fairly among tenants (router)."""


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
    prompt = _prompt(f.required("prompt"))
    f.refuse_unless("echo", lambda v: v is False, "the prompt is never echoed back")
    f.refuse_unless("suffix", lambda v: v == "", "insertion (suffix) is not implemented")
    f.refuse_unless("best_of", lambda v: _is_number(v) and v == 1, "only best_of=1 is implemented")
    logprobs = f.integer("logprobs", None, 0, MAX_COMPLETION_LOGPROBS)
    return GenerationSpec(
        "completions", model, prompt, None, f.integer("max_tokens", 16, 1), logprobs=logprobs is not None,
        **_sampling(f),
    )


def parse_chat(body: dict) -> GenerationSpec:
    f = Fields(body)
    model = _model(f)
    messages = _messages(f.required("messages"))
    if f.present("max_completion_tokens"):
        max_tokens = f.integer("max_completion_tokens", None, 1)
    else:
        max_tokens = f.integer("max_tokens", None, 1)
    logprobs = f.boolean("logprobs")
    top_logprobs = f.integer("top_logprobs", 0, 0, 20)
    if top_logprobs:
        raise invalid("'top_logprobs' > 0 is not supported: only the chosen token's logprob is returned", "top_logprobs")
    f.refuse_unless("tools", lambda v: v == [], "tool calling is not implemented")
    f.refuse_unless("functions", lambda v: v == [], "function calling is not implemented")
    f.refuse_unless(
        "response_format",
        lambda v: isinstance(v, dict) and v.get("type") == "text",
        'only {"type": "text"} is implemented',
    )
    return GenerationSpec("chat", model, None, messages, max_tokens, logprobs=logprobs, **_sampling(f))


def _sampling(f: Fields) -> dict:
    f.refuse_unless("n", lambda v: _is_number(v) and v == 1, "only n=1 is implemented; send one request per choice")
    for penalty in ("presence_penalty", "frequency_penalty"):
        f.refuse_unless(penalty, lambda v: _is_number(v) and v == 0, "penalties are not implemented")
    f.refuse_unless("logit_bias", lambda v: v == {}, "logit_bias is not implemented")
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


def _prompt(value) -> str | tuple[int, ...]:
    # OpenAI accepts a string, a token array, or a batch of either; one prompt per request here.
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, list)):
        value = value[0]
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        if any(t < 0 for t in value):
            raise invalid("'prompt' token ids must be non-negative integers", "prompt")
        return tuple(value)
    if isinstance(value, list) and len(value) > 1 and all(isinstance(p, (str, list)) for p in value):
        raise invalid(f"'prompt' holds {len(value)} prompts; send one prompt per request", "prompt")
    if value == []:
        raise invalid("'prompt' must not be empty", "prompt")
    raise invalid(f"'prompt' must be a string or an array of token ids, got {json_type(value)}", "prompt")


def _messages(value) -> tuple[dict, ...]:
    if not isinstance(value, list):
        raise invalid(f"'messages' must be an array, got {json_type(value)}", "messages")
    if not value:
        raise invalid("'messages' must contain at least one message", "messages")
    return tuple(_message(i, m) for i, m in enumerate(value))


def _message(i: int, m) -> dict:
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise invalid(f"'{where}' must be an object, got {json_type(m)}", where)
    role = m.get("role")
    if role not in ROLES:
        shown = role if isinstance(role, str) else json_type(role)
        raise invalid(f"'{where}.role' must be one of system, developer, user, assistant, got {shown!r}", f"{where}.role")
    return {"role": ROLES[role], "content": _content(where, m.get("content"))}


def _content(where: str, content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else json_type(part)
                raise invalid(
                    f"'{where}.content[{j}]' must be {{\"type\": \"text\", \"text\": string}} (got {kind!r}); "
                    "only text content is supported",
                    f"{where}.content",
                )
            texts.append(part["text"])
        return "".join(texts)
    raise invalid(
        f"'{where}.content' must be a string or an array of text parts, got {json_type(content)}", f"{where}.content"
    )


def resolve_max_tokens(spec: GenerationSpec, prompt_tokens: int, context_window: int) -> int:
    """The completion budget; a prompt plus max_tokens beyond the window is a 400 naming both."""
    prompt_param = "messages" if spec.endpoint == "chat" else "prompt"
    if prompt_tokens == 0:
        raise invalid(f"'{prompt_param}' is empty after tokenization; send at least one token", prompt_param)
    if prompt_tokens >= context_window:
        raise invalid(
            f"this model's maximum context length is {context_window} tokens, but the {prompt_param} has "
            f"{prompt_tokens} tokens and no room is left for the completion; shorten it",
            prompt_param,
            "context_length_exceeded",
        )
    if spec.max_tokens is None:
        return context_window - prompt_tokens
    if prompt_tokens + spec.max_tokens > context_window:
        raise invalid(
            f"this model's maximum context length is {context_window} tokens, but you requested "
            f"{prompt_tokens + spec.max_tokens} tokens ({prompt_tokens} in the {prompt_param}, {spec.max_tokens} "
            f"for the completion); lower max_tokens to at most {context_window - prompt_tokens}",
            "max_tokens",
            "context_length_exceeded",
        )
    return spec.max_tokens
