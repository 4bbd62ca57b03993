"""The inputs of a request body: completions' prompts and chat's messages, each mistake a 400 naming the field."""

from __future__ import annotations

from services.gateway.errors import invalid
from services.gateway.schema_fields import json_type

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}

Prompt = str | tuple[int, ...]
"""Text, or token ids."""


def parse_prompts(value) -> tuple[Prompt, ...]:
    """OpenAI's forms: a string, an array of token ids, or an array of either (a batch)."""
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list):
        raise invalid(f"'prompt' must be a string or an array of token ids, got {json_type(value)}", "prompt")
    if value == []:
        raise invalid("'prompt' must not be empty", "prompt")
    if all(isinstance(p, (str, list)) for p in value):
        return tuple(_one_prompt(f"prompt[{i}]", p) for i, p in enumerate(value))
    return (_token_ids("prompt", value),)


def _one_prompt(where: str, value) -> Prompt:
    if isinstance(value, str):
        return value
    if value == []:
        raise invalid(f"'{where}' must not be empty", "prompt")
    return _token_ids(where, value)


def _token_ids(where: str, value: list) -> tuple[int, ...]:
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise invalid(
            f"'{where}' must be a string or an array of token ids, got an array holding "
            f"{json_type(next(t for t in value if not isinstance(t, int) or isinstance(t, bool)))}",
            "prompt",
        )
    if any(t < 0 for t in value):
        raise invalid(f"'{where}' token ids must be non-negative integers", "prompt")
    return tuple(value)


def parse_messages(value) -> tuple[dict, ...]:
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
