"""``tokenpool generate``: run the engine in-process on one prompt and print the result."""

from __future__ import annotations

import argparse
import json
import time

from shared.model_store import ModelStore


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate text in-process with the engine (no services)")
    p.add_argument("--model", required=True, help="model name in the model store")
    p.add_argument("--prompt", required=True)
    p.add_argument("--chat", action="store_true", help="wrap the prompt as a user message in the chat template")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 disables top-k")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--logprobs", action="store_true", help="include the logprob of each chosen token")
    p.add_argument("--top-logprobs", type=int, default=0, help="with --logprobs: also the N most likely tokens (<= 20)")
    p.add_argument("--presence-penalty", type=float, default=0.0, help="-2 to 2, as OpenAI's")
    p.add_argument("--frequency-penalty", type=float, default=0.0, help="-2 to 2, as OpenAI's")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="(0, 2]; 1 is off")
    p.add_argument(
        "--logit-bias", action="append", default=[], type=_bias, metavar="ID=BIAS",
        help="add BIAS (-100 to 100) to token ID's logit (repeatable)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=generate)


def _bias(text: str) -> tuple[int, float]:
    token, sep, bias = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return int(token), float(bias)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not ID=BIAS, e.g. 42=-100") from None


def build_engine(store: ModelStore, names: list[str], device: str = "cpu", **config):
    from services.gpu_worker.engine.config import EngineConfig
    from services.gpu_worker.engine.engine import Engine

    return Engine(EngineConfig(device=device, **config), {n: store.path(n) for n in names})


def generate(args: argparse.Namespace) -> int:
    from services.gpu_worker.engine.generate import run_to_completion
    from services.gpu_worker.engine.sequence import EngineRequest, SamplingParams
    from shared.tokenizer import Tokenizer

    store = ModelStore.from_env()
    tokenizer = Tokenizer(store.path(args.model))
    if args.chat:
        prompt_ids = tokenizer.encode_chat([{"role": "user", "content": args.prompt}])
    else:
        prompt_ids = tokenizer.encode(args.prompt)
    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        stop=tuple(args.stop),
        logprobs=args.logprobs,
        top_logprobs=args.top_logprobs,
        presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty,
        repetition_penalty=args.repetition_penalty,
        logit_bias=tuple(args.logit_bias),
    )
    params.validate()  # before the model loads: a bad flag costs no load time
    engine = build_engine(store, [args.model], device=args.device)
    started = time.perf_counter()
    engine.activate(args.model)
    load_s = time.perf_counter() - started
    request = EngineRequest("generate-0", args.model, tuple(prompt_ids), params)
    done = run_to_completion(engine, [request])["generate-0"]
    engine.close()

    text = tokenizer.decode(done.token_ids)
    if done.finish_reason == "stop" and args.stop:
        cut = min((text.find(s) for s in args.stop if s in text), default=-1)
        text = text if cut < 0 else text[:cut]
    result = {
        "model": args.model,
        "prompt_tokens": len(prompt_ids),
        "token_ids": done.token_ids,
        "text": text,
        "finish_reason": done.finish_reason,
        "ttft_s": round(done.ttft_s or 0.0, 4),
        "tokens_per_s": round(done.decode_tokens_per_s, 2),
        "load_s": round(load_s, 3),
    }
    if args.logprobs:
        result["logprobs"] = done.logprobs
    if args.logprobs and args.top_logprobs:
        result["top_logprobs"] = [[list(pair) for pair in top] for top in done.top_logprobs]
    if args.json:
        print(json.dumps(result))
    else:
        print(text)
    return 0
