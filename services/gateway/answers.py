"""What the client gets from the Updates of every choice: one JSON body, or SSE events as they come.

Pure: the handler passes each (choice index, Update) in and writes out what comes back.

    answer = StreamedAnswer(head, choices, spec, model.token_text)
    events = answer.events(index, update)   # ... and answer.done once every choice has finished
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.gateway.choices import Choice, total_usage
from services.gateway.openai_schema import GenerationSpec
from services.gateway.responses import DONE, ResponseHead, TokenText, sse
from services.gateway.stream import TopLogprobs, Update
from shared.protocol import Usage


@dataclass
class _Collected:
    choice: Choice
    parts: list[str]
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float | None] = field(default_factory=list)
    top_logprobs: list[TopLogprobs | None] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None


class CollectedAnswer:
    """A non-streamed response: every choice's text and tokens, in one body once all have finished."""

    def __init__(self, head: ResponseHead, choices: list[Choice], spec: GenerationSpec, token_text: TokenText):
        self.head, self.spec, self.token_text = head, spec, token_text
        self._choices = {c.index: _Collected(c, [c.echo]) for c in choices}

    def add(self, index: int, update: Update) -> None:
        c = self._choices[index]
        c.parts.append(update.text)
        c.token_ids += update.token_ids
        c.logprobs += update.logprobs
        c.top_logprobs += update.top_logprobs
        if update.finish_reason is not None:
            c.finish_reason, c.usage = update.finish_reason, update.usage

    def body(self) -> dict:
        choices = sorted(self._choices.values(), key=lambda c: c.choice.index)
        bodies = [self.head.choice(c.choice.index, "".join(c.parts), c.finish_reason, self._logprobs(c)) for c in choices]
        return self.head.response(bodies, total_usage((c.choice, c.usage) for c in choices))

    def _logprobs(self, c: _Collected) -> dict | None:
        if not self.spec.logprobs:
            return None
        return self.head.logprobs(c.token_ids, c.logprobs, c.top_logprobs, self.token_text, self.spec.top_logprobs)


@dataclass
class _Shown:
    choice: Choice
    echo: str
    """Still to be sent: it goes in the choice's first chunk."""
    opened: bool = False
    chars: int = 0
    usage: Usage | None = None


class StreamedAnswer:
    """A streamed response: each choice's chunks as its updates come, each with its own index;
    the usage chunk and [DONE] once the last choice has finished."""

    def __init__(self, head: ResponseHead, choices: list[Choice], spec: GenerationSpec, token_text: TokenText):
        self.head, self.spec, self.token_text = head, spec, token_text
        self._shown = {c.index: _Shown(c, c.echo) for c in choices}
        self._left = len(choices)

    @property
    def done(self) -> bool:
        return self._left == 0

    def events(self, index: int, update: Update) -> list[bytes]:
        head, shown = self.head, self._shown[index]
        events = []
        if not shown.opened:
            shown.opened = True
            if (opener := head.first_chunk(index)) is not None:
                events.append(sse(opener))
        text = update.text
        if shown.echo:
            text, shown.echo = shown.echo + text, ""
        chosen = None
        if self.spec.logprobs and update.token_ids:
            offset = shown.chars + len(text) - len(update.text)
            chosen = head.logprobs(
                update.token_ids, update.logprobs, update.top_logprobs, self.token_text, self.spec.top_logprobs, offset
            )
        if text or chosen:
            events.append(sse(head.delta_chunk(index, text, None, chosen)))
            shown.chars += len(text)
        if update.finish_reason is not None:
            events.append(sse(head.delta_chunk(index, "", update.finish_reason, None)))
            shown.usage = update.usage
            self._left -= 1
            if self._left == 0:
                events += self._closing()
        return events

    def _closing(self) -> list[bytes]:
        events = []
        if self.spec.include_usage:
            usage = total_usage((s.choice, s.usage) for s in self._shown.values())
            events.append(sse(self.head.usage_chunk(usage)))
        events.append(DONE)
        return events
