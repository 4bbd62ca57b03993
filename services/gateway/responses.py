"""OpenAI response bodies and stream chunks for /v1/completions and /v1/chat/completions."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from services.gateway.stream import TopLogprobs
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
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
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

    def response(self, choices: list[dict], usage: Usage) -> dict:
        body = self._base("chat.completion" if self.endpoint == "chat" else "text_completion")
        return body | {"choices": choices, "usage": usage_body(usage)}

    def choice(self, index: int, text: str, finish_reason: str | None, logprobs: dict | None) -> dict:
        if self.endpoint == "chat":
            choice = {"index": index, "message": {"role": "assistant", "content": text}}
        else:
            choice = {"index": index, "text": text}
        return choice | {"logprobs": logprobs, "finish_reason": finish_reason}

    # ---- stream chunks --------------------------------------------------------------

    def first_chunk(self, index: int) -> dict | None:
        """Chat streams open each choice with the assistant role; completion streams have no opener."""
        if self.endpoint != "chat":
            return None
        return self._chunk(index, {"role": "assistant", "content": ""}, None, None)

    def delta_chunk(self, index: int, text: str, finish_reason: str | None, logprobs: dict | None) -> dict:
        if self.endpoint == "chat":
            return self._chunk(index, {"content": text} if text else {}, finish_reason, logprobs)
        return self._chunk(index, text, finish_reason, logprobs)

    def usage_chunk(self, usage: Usage) -> dict:
        obj = "chat.completion.chunk" if self.endpoint == "chat" else "text_completion"
        return self._base(obj) | {"choices": [], "usage": usage_body(usage)}

    def _chunk(self, index: int, delta, finish_reason: str | None, logprobs: dict | None) -> dict:
        if self.endpoint == "chat":
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
            return self._base("chat.completion.chunk") | {"choices": [choice]}
        choice = {"index": index, "text": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        return self._base("text_completion") | {"choices": [choice]}

    # ---- logprobs -------------------------------------------------------------------

    def logprobs(
        self, token_ids: list[int], logprobs: list[float | None], top_logprobs: list[TopLogprobs | None],
        token_text: TokenText, top: int = 0, offset: int = 0,
    ) -> dict:
        """The tokens' logprobs in the endpoint's shape, with the `top` most likely at each position;
        `offset` is the length of the choice's text before them."""
        rows = [
            (token_text(t), _finite(lp), alternatives[:top] if alternatives and top else ())
            for t, lp, alternatives in zip(token_ids, logprobs, top_logprobs)
            if lp is not None
        ]
        if self.endpoint == "chat":
            content = [
                _chat_entry(s, lp) | {"top_logprobs": [_chat_entry(token_text(a), _finite(alp)) for a, alp in alts]}
                for s, lp, alts in rows
            ]
            return {"content": content}
        offsets = []
        for s, _, _ in rows:
            offsets.append(offset)
            offset += len(s)
        return {
            "tokens": [s for s, _, _ in rows],
            "token_logprobs": [lp for _, lp, _ in rows],
            "top_logprobs": [_legacy_top(alts, token_text) for _, _, alts in rows] if top else None,
            "text_offset": offsets,
        }


def _chat_entry(text: str, logprob: float) -> dict:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def _legacy_top(alternatives: TopLogprobs, token_text: TokenText) -> dict[str, float]:
    """Completions' {token text: logprob}; of two ids with the same text, the more likely stays."""
    top: dict[str, float] = {}
    for t, lp in alternatives:
        top.setdefault(token_text(t), _finite(lp))
    return top


LOGPROB_FLOOR = -9999.0


def _finite(logprob: float) -> float:
    # A masked-out token's logprob is -inf, which JSON cannot carry; vLLM answers -9999.0 too.
    return logprob if logprob >= LOGPROB_FLOOR else LOGPROB_FLOOR
