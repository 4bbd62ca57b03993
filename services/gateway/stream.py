"""From TokenChunks to text: reassembly by index, incremental detokenization, stop strings.

    text = TextStream(tokenizer, stop=("\\n\\n",), prompt_ids=prompt)
    for chunk in chunks:                      # in any order, duplicates allowed
        update = text.push(chunk)             # new text, new tokens, and how it ended
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from shared.protocol import ErrorInfo, TokenChunk, Usage

TopLogprobs = tuple[tuple[int, float], ...]
"""At one position: the most likely (token id, logprob), most likely first."""

PROMPT_CONTEXT_TOKENS = 5
"""Prompt tokens decoded ahead of the completion, so a first token's leading space survives."""


class Decoder(Protocol):
    def decode(self, ids: list[int]) -> str: ...


@dataclass
class Delivery:
    """Tokens that are next in order, and how the request ended if it did."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float | None] = field(default_factory=list)
    top_logprobs: list[TopLogprobs | None] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None
    error: ErrorInfo | None = None


class TokenReassembler:
    """Orders chunks by token index: drops what was already delivered, buffers what is ahead."""

    def __init__(self):
        self.next_index = 0
        self.done = False
        self.cached_tokens = 0
        """As the latest chunk with a usage said (the worker sends it before the last chunk)."""
        self._ahead: dict[int, TokenChunk] = {}

    def push(self, chunk: TokenChunk) -> Delivery:
        out = Delivery()
        if self.done:
            return out
        if chunk.error is not None:
            # An error ends the request at once; tokens that have not arrived never will.
            self.done = True
            out.error = chunk.error
            return out
        if chunk.index > self.next_index:
            kept = self._ahead.get(chunk.index)
            if kept is None or _end(chunk) > _end(kept) or chunk.finish_reason is not None:
                self._ahead[chunk.index] = chunk
            return out
        self._apply(chunk, out)
        while not self.done:
            ready = [i for i in self._ahead if i <= self.next_index]
            if not ready:
                break
            self._apply(self._ahead.pop(min(ready)), out)
        return out

    def _apply(self, chunk: TokenChunk, out: Delivery) -> None:
        skip = self.next_index - chunk.index
        new = chunk.token_ids[skip:]
        if chunk.usage is not None:
            self.cached_tokens = chunk.usage.cached_tokens
        out.token_ids.extend(new)
        _extend_aligned(out.logprobs, chunk.logprobs, skip, len(new))
        _extend_aligned(out.top_logprobs, chunk.top_logprobs, skip, len(new))
        self.next_index += len(new)
        if chunk.finish_reason is not None:
            self.done = True
            self._ahead.clear()
            out.finish_reason = chunk.finish_reason
            out.usage = chunk.usage


def _extend_aligned(out: list, values: tuple | None, skip: int, count: int) -> None:
    """Appends values[skip:] for `count` new tokens, None where the chunk has none."""
    if values is None:
        out.extend([None] * count)
        return
    part = values[skip : skip + count]
    out.extend(part)
    out.extend([None] * (count - len(part)))


def _end(chunk: TokenChunk) -> int:
    return chunk.index + len(chunk.token_ids)


class Detokenizer:
    """Decodes a growing token list into text deltas, holding back an incomplete UTF-8 character."""

    def __init__(self, tokenizer: Decoder, prompt_ids: tuple[int, ...] | list[int] = ()):
        self._tok = tokenizer
        self._ids = list(prompt_ids[-PROMPT_CONTEXT_TOKENS:]) if prompt_ids else []
        self._prefix = 0
        self._read = len(self._ids)

    def add(self, ids: list[int]) -> str:
        if not ids:
            return ""
        self._ids.extend(ids)
        before = self._tok.decode(self._ids[self._prefix : self._read])
        text = self._tok.decode(self._ids[self._prefix :])
        if len(text) <= len(before) or text.endswith("\ufffd"):
            return ""  # a multi-byte character is still incomplete (or the token printed nothing)
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(before) :]

    def flush(self) -> str:
        """Whatever is left at the end, replacement characters and all."""
        before = self._tok.decode(self._ids[self._prefix : self._read])
        text = self._tok.decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return text[len(before) :] if len(text) > len(before) else ""


class StopTrimmer:
    """Cuts text at the first stop string; holds back only a tail that could be the start of one."""

    def __init__(self, stop: tuple[str, ...]):
        self.stop = tuple(s for s in stop if s)
        self._hold = max((len(s) for s in self.stop), default=1) - 1
        self._pending = ""
        self.hit = False

    def feed(self, text: str, final: bool = False) -> str:
        if not self.stop:
            return text
        if self.hit:
            return ""
        pending = self._pending + text
        cut = min((i for i in (pending.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.hit = True
            self._pending = ""
            return pending[:cut]
        keep = 0 if final else self._partial_stop_suffix(pending)
        self._pending = pending[len(pending) - keep :]
        return pending[: len(pending) - keep]

    def _partial_stop_suffix(self, text: str) -> int:
        """Length of the longest end of `text` that some stop string begins with."""
        for k in range(min(self._hold, len(text)), 0, -1):
            if any(s.startswith(text[-k:]) for s in self.stop):
                return k
        return 0


@dataclass
class Update:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float | None] = field(default_factory=list)
    top_logprobs: list[TopLogprobs | None] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None
    error: ErrorInfo | None = None
    stopped_early: bool = False
    """A stop string ended the text before the worker said it finished: cancel the request upstream."""

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None or self.error is not None

    def extend(self, later: Update) -> None:
        """Appends the update that came right after this one (this one must not be finished)."""
        self.text += later.text
        self.token_ids += later.token_ids
        self.logprobs += later.logprobs
        self.top_logprobs += later.top_logprobs
        self.finish_reason, self.usage, self.error = later.finish_reason, later.usage, later.error
        self.stopped_early = later.stopped_early


class TextStream:
    def __init__(self, tokenizer: Decoder, stop: tuple[str, ...] = (), prompt_ids: tuple[int, ...] = ()):
        self._order = TokenReassembler()
        self._detok = Detokenizer(tokenizer, prompt_ids)
        self._trim = StopTrimmer(stop)
        self.prompt_tokens = len(prompt_ids)
        self.completion_tokens = 0
        self.done = False

    def push(self, chunk: TokenChunk) -> Update:
        if self.done:
            return Update()
        got = self._order.push(chunk)
        self.completion_tokens += len(got.token_ids)
        update = Update(token_ids=got.token_ids, logprobs=got.logprobs, top_logprobs=got.top_logprobs, error=got.error)
        if got.error is not None:
            self.done = True
            return update
        final = got.finish_reason is not None
        delta = self._detok.add(got.token_ids)
        if final:
            delta += self._detok.flush()
        update.text = self._trim.feed(delta, final)
        if self._trim.hit:
            update.finish_reason = "stop"
            update.stopped_early = not final
        elif final:
            update.finish_reason = got.finish_reason
        if update.finish_reason is not None:
            self.done = True
            update.usage = got.usage or Usage(self.prompt_tokens, self.completion_tokens, self._order.cached_tokens)
        return update
