"""From an AssignRequest to an engine request, and from engine outputs to TokenChunks.

A resumed request (resume_token_ids produced elsewhere) is re-prefilled with its prompt
plus those tokens; its output indices, max_tokens and usage count them as already sent.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.gpu_worker.engine.engine import StepOutput
from services.gpu_worker.engine.errors import InvalidRequestError, UnknownModelError
from services.gpu_worker.engine.sequence import EngineRequest, SamplingParams
from shared.protocol import AssignRequest, ErrorInfo, TokenChunk, Usage


@dataclass
class Assignment:
    """A request this worker holds."""

    request_id: str
    model: str
    token_subject: str
    prompt_tokens: int
    """Length of the client's prompt, without resumed tokens."""
    resumed: int
    """Tokens produced before this worker took the request over."""
    produced: int = 0
    """Tokens this worker produced so far."""

    @property
    def next_index(self) -> int:
        return self.resumed + self.produced


def assignment(msg: AssignRequest) -> Assignment:
    req = msg.request
    return Assignment(req.id, req.model, req.token_subject, len(req.prompt_token_ids), len(msg.resume_token_ids))


def engine_request(msg: AssignRequest, context_length: int | None) -> EngineRequest | None:
    """The request for the engine; None when the resumed tokens already used up max_tokens.

    Raises InvalidRequestError when the catalog's context_length cannot hold the request
    (the engine itself checks the model's own window and the sampling values).
    """
    req, resume = msg.request, tuple(msg.resume_token_ids)
    prompt = tuple(req.prompt_token_ids) + resume
    s = req.sampling
    max_tokens = s.max_tokens
    if isinstance(max_tokens, int) and max_tokens > 0:
        max_tokens -= len(resume)
        if max_tokens <= 0:
            return None
        if context_length is not None:
            if len(prompt) >= context_length:
                raise InvalidRequestError(
                    f"the prompt has {len(prompt)} tokens; model {req.model!r} is served with a context "
                    f"window of {context_length} tokens, which must also hold at least one new token"
                )
            max_tokens = min(max_tokens, context_length - len(prompt))
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        seed=s.seed,
        stop=tuple(s.stop),
        stop_token_ids=tuple(s.stop_token_ids),
        ignore_eos=s.ignore_eos,
        logprobs=s.logprobs,
        top_logprobs=s.top_logprobs,
        presence_penalty=s.presence_penalty,
        frequency_penalty=s.frequency_penalty,
        repetition_penalty=s.repetition_penalty,
        logit_bias=s.logit_bias,
    )
    return EngineRequest(req.id, req.model, prompt, params, resumed=len(resume))


def token_chunk(a: Assignment, out: StepOutput, worker_id: str) -> TokenChunk:
    """Counts the token into `a` and wraps it for the bus."""
    index = a.next_index
    first = a.produced == 0
    a.produced += 1
    cached = min(out.cached_tokens, a.prompt_tokens)  # (a resumed request re-prefilled its own tokens too)
    # The first token's chunk carries the usage so far too: a gateway that ends the request on
    # a stop string before the last chunk still knows the cached tokens.
    usage = Usage(a.prompt_tokens, a.next_index, cached) if first or out.finish_reason is not None else None
    logprobs = (out.logprob,) if out.logprob is not None else None
    top = (out.top_logprobs,) if out.top_logprobs is not None else None
    return TokenChunk(a.request_id, index, (out.token_id,), logprobs, out.finish_reason, usage, None, worker_id, top)


def finished_chunk(a: Assignment, worker_id: str) -> TokenChunk:
    """The end of a resumed request whose earlier tokens already reached max_tokens."""
    return TokenChunk(a.request_id, a.next_index, (), None, "length", Usage(a.prompt_tokens, a.next_index), None, worker_id)


def error_chunk(a: Assignment, error: ErrorInfo, worker_id: str) -> TokenChunk:
    # The index is the next one the client expects, so that the gateway does not drop it.
    return TokenChunk(a.request_id, a.next_index, error=error, worker_id=worker_id)


def error_info(exc: BaseException) -> ErrorInfo:
    if isinstance(exc, InvalidRequestError):
        return ErrorInfo(400, "invalid_request_error", str(exc))
    if isinstance(exc, UnknownModelError):
        return ErrorInfo(404, "invalid_request_error", str(exc))
    return ErrorInfo(500, "server_error", f"{type(exc).__name__}: {exc}")


