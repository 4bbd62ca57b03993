"""OpenAI response bodies and stream chunks for /v1/completions and /v1/chat/completions."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from shared.protocol import Usage

TokenText = Callable[[int], str]

DONE = b"data: [DONE]\n\n"


def new_request_id(endpoint: str) -> str:
    return ("chatcmpl-" if endpoint == "chat" else "cmpl-") + secrets.token_hex(16)


def sse(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def usage_body(usage: Usage) -> dict:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


@dataclass(frozen=True)
class ResponseHead:
    """What every body and chunk of one response repeats."""

    id: str
    endpoint: str
    created: int
    model: str

    def _base(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    # ---- whole responses ------------------------------------------------------------

    def response(self, text: str, finish_reason: str | None, usage: Usage, logprobs: dict | None) -> dict:
        if self.endpoint == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text}}
            body = self._base("chat.completion")
        else:
            choice = {"index": 0, "text": text}
            body = self._base("text_completion")
        choice |= {"logprobs": logprobs, "finish_reason": finish_reason}
        return body | {"choices": [choice], "usage": usage_body(usage)}

    # ---- stream chunks --------------------------------------------------------------

    def first_chunk(self) -> dict | None:
        """Chat streams open with the assistant role; completion streams have no opener."""
        if self.endpoint != "chat":
            return None
        return self._chunk({"role": "assistant", "content": ""}, None, None)

    def delta_chunk(self, text: str, finish_reason: str | None, logprobs: dict | None) -> dict:
        if self.endpoint == "chat":
            return self._chunk({"content": text} if text else {}, finish_reason, logprobs)
        return self._chunk(text, finish_reason, logprobs)

    def usage_chunk(self, usage: Usage) -> dict:
        obj = "chat.completion.chunk" if self.endpoint == "chat" else "text_completion"
        return self._base(obj) | {"choices": [], "usage": usage_body(usage)}

    def _chunk(self, delta, finish_reason: str | None, logprobs: dict | None) -> dict:
        if self.endpoint == "chat":
            choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
            return self._base("chat.completion.chunk") | {"choices": [choice]}
        choice = {"index": 0, "text": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        return self._base("text_completion") | {"choices": [choice]}

    # ---- logprobs -------------------------------------------------------------------

    def logprobs(self, token_ids: list[int], logprobs: list[float | None], token_text: TokenText, offset: int = 0):
        """The chosen tokens' logprobs in the endpoint's shape; `offset` is the text length before them."""
        pairs = [(token_text(t), lp) for t, lp in zip(token_ids, logprobs) if lp is not None]
        if self.endpoint == "chat":
            content = [
                {"token": s, "logprob": lp, "bytes": list(s.encode("utf-8")), "top_logprobs": []} for s, lp in pairs
            ]
            return {"content": content}
        offsets = []
        for s, _ in pairs:
            offsets.append(offset)
            offset += len(s)
        return {
            "tokens": [s for s, _ in pairs],
            "token_logprobs": [lp for _, lp in pairs],
            "top_logprobs": None,
            "text_offset": offsets,
        }
