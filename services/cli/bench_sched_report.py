"""What `tokenpool bench sched` prints: per policy SLO figures, router turn counts, and ratios.

Pure: records and /metrics text in, a JSON-ready dict and a table out. Every request is
measured with services.router.slo.attainment, the same definition the gateway, the router
and the simulator use; METHOD says how to read the figures.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from services.cli.bench_sched_load import Sent
from services.router.slo.attainment import RequestSlo, request_slo, summarize

METHOD = (
    "Both policies face the same seeded open-loop arrivals (one streaming /v1/completions per arrival, "
    "ignore_eos, exactly config.tokens tokens each) on a fresh stack each: nats-server, router "
    "(--scheduling token, then request), one gpu_worker serving every model, gateway. The client stamps every "
    "token (events list their tokens through logprobs; tokens of one event share its time). Per request, "
    "services.router.slo.attainment: token k is due at arrival + TTFT + k*TBT, re-anchored at a late token; "
    "attainment = 1 - overdue seconds / service seconds; strict = TTFT <= TTFT SLO and mean TBT <= TBT SLO. "
    "A request that failed or was still open drain_s after the last arrival counts as attainment 0, not strict. "
    "mean_attainment and strict_attainment are over all requests sent; TTFT and TBT percentiles over the "
    "requests that got tokens (TBT: every gap, 0 within an event). ratios = token / request. router: deltas "
    "of the router's /metrics over the load (turns by how they ended, turns that switched model or KV in, "
    "switch seconds, worker idle seconds; 'switches' counts every turn that spent any time activating). "
    "turns: the RunTurns and TurnReports on the bus during the load (bench_sched_turns): compute seconds of "
    "prefill turns (until_prefilled) and of the others ('decode'; request-level turns also prefill the requests "
    "that join them), the longest turns, model_changes = consecutive turns of different models."
)


def failed_slo() -> RequestSlo:
    """How a request that did not complete counts: no tokens, attainment 0, not strict."""
    return request_slo(0.0, (), 1.0, 1.0)


def measure(item: Sent, ttft_s: float, tbt_s: float) -> RequestSlo:
    r = item.record
    if r.error is not None:
        return failed_slo()
    times = [t for t, n in r.events for _ in range(n)]
    return request_slo(r.started, times, ttft_s, tbt_s)


def policy_figures(
    scheduling: str, sent: Sequence[Sent], ttft_s: float, tbt_s: float, router: dict | None, models: Sequence[str] = ()
) -> dict:
    """One policy's figures: over all requests, per model (those of `models` that got requests,
    in that order, then any other), and the router's turn counts (None when its /metrics could
    not be read)."""
    slos = [measure(item, ttft_s, tbt_s) for item in sent]
    errors: dict[str, int] = {}
    for item in sent:
        if item.record.error is not None:
            errors[item.record.error] = errors.get(item.record.error, 0) + 1
    span = max((item.record.ended for item in sent), default=0.0)
    tokens = sum(item.record.tokens for item in sent if item.record.error is None)
    by_model: dict[str, dict] = {}
    arrived = {item.arrival.model for item in sent}
    for model in dict.fromkeys([m for m in models if m in arrived] + sorted(arrived)):
        mine = [(item, s) for item, s in zip(sent, slos) if item.arrival.model == model]
        by_model[model] = _slo_figures([s for _, s in mine], [item for item, _ in mine])
    return {
        "scheduling": scheduling,
        **_slo_figures(slos, sent),
        "errors_by_kind": errors,
        "tokens": tokens,
        "elapsed_s": round(span, 3),
        "tokens_per_s": round(tokens / span, 2) if span > 0 else 0.0,
        "by_model": by_model,
        "router": router,
    }


def _slo_figures(slos: list[RequestSlo], sent: Sequence[Sent]) -> dict:
    s = summarize(slos)
    return {
        "requests": s.requests,
        "completed": sum(item.record.error is None for item in sent),
        "mean_attainment": _round(s.mean_attainment, 4),
        "strict_attainment": _round(s.strict_fraction, 4),
        "ttft_ms": {"p50": _ms(s.ttft_p50_s), "p99": _ms(s.ttft_p99_s)},
        "tbt_ms": {"p50": _ms(s.tbt_p50_s), "p99": _ms(s.tbt_p99_s)},
    }


def ratios(token: dict, request: dict) -> dict:
    """token / request of the headline figures; None where a side has no value or a zero divisor."""
    pairs = {
        "mean_attainment": (token["mean_attainment"], request["mean_attainment"]),
        "strict_attainment": (token["strict_attainment"], request["strict_attainment"]),
        "ttft_p50": (token["ttft_ms"]["p50"], request["ttft_ms"]["p50"]),
        "ttft_p99": (token["ttft_ms"]["p99"], request["ttft_ms"]["p99"]),
        "tbt_p50": (token["tbt_ms"]["p50"], request["tbt_ms"]["p50"]),
        "tbt_p99": (token["tbt_ms"]["p99"], request["tbt_ms"]["p99"]),
    }
    return {name: (None if a is None or not b else round(a / b, 3)) for name, (a, b) in pairs.items()}


def build_report(config: dict, machine: dict, token: dict, request: dict) -> dict:
    return {
        "config": config,
        "machine": machine,
        "policies": {"token": token, "request": request},
        "ratios": ratios(token, request),
        "token_beats_request": {
            "mean_attainment": _greater(token["mean_attainment"], request["mean_attainment"]),
            "strict_attainment": _greater(token["strict_attainment"], request["strict_attainment"]),
        },
        "method": METHOD,
    }


def _greater(a: float | None, b: float | None) -> bool | None:
    return None if a is None or b is None else a > b


# ---- the router's /metrics ----------------------------------------------------------------


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Samples of a Prometheus text exposition: (name, labels, value); comments skipped."""
    samples = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, rest = head.partition("{")
        labels = {}
        for pair in _split_labels(rest.rstrip("}")):
            key, _, quoted = pair.partition("=")
            labels[key.strip()] = quoted.strip().strip('"')
        try:
            samples.append((name, labels, float(value)))
        except ValueError:
            continue
    return samples


def _split_labels(text: str) -> Iterable[str]:
    part, quoted = "", False
    for ch in text:
        if ch == '"' and not part.endswith("\\"):
            quoted = not quoted
        if ch == "," and not quoted:
            yield part
            part = ""
        else:
            part += ch
    if part:
        yield part


def router_counts(text: str) -> dict:
    """Turn figures from the router's /metrics, summed over workers and models."""
    counts = {"turns": 0.0, "turns_by_reason": {}, "switches": 0.0, "switch_s": 0.0, "idle_s": 0.0}
    for name, labels, value in parse_metrics(text):
        if name == "tp_worker_turns_total":
            counts["turns"] += value
            reason = labels.get("reason", "?")
            counts["turns_by_reason"][reason] = counts["turns_by_reason"].get(reason, 0.0) + value
        elif name == "tp_worker_switches_total":
            counts["switches"] += value
        elif name == "tp_worker_switch_seconds_total":
            counts["switch_s"] += value
        elif name == "tp_worker_idle_seconds_total":
            counts["idle_s"] += value
    return counts


def counts_delta(after: dict, before: dict) -> dict:
    """What happened between two router_counts, rounded for printing."""
    reasons = sorted(set(after["turns_by_reason"]) | set(before["turns_by_reason"]))
    by_reason = {r: int(after["turns_by_reason"].get(r, 0) - before["turns_by_reason"].get(r, 0)) for r in reasons}
    return {
        "turns": int(after["turns"] - before["turns"]),
        "turns_by_reason": {r: n for r, n in by_reason.items() if n},
        "switches": int(after["switches"] - before["switches"]),
        "switch_s": round(after["switch_s"] - before["switch_s"], 3),
        "idle_s": round(after["idle_s"] - before["idle_s"], 3),
    }


# ---- the table ---------------------------------------------------------------------------


def format_report(r: dict) -> str:
    c, token, request = r["config"], r["policies"]["token"], r["policies"]["request"]
    lines = [
        f"bench sched: {c['engine']} engine, 1 worker, {len(c['models'])} models ({c['popularity']}), "
        f"{c['requests']} requests at {c['rate_per_s']:g}/s over {c['duration_s']:g} s, {c['tokens']} tokens each; "
        f"SLO TTFT {c['ttft_s']:g} s, TBT {c['tbt_s']:g} s",
        "",
        f"  {'':24} {'token':>12} {'request':>12} {'token/request':>14}",
    ]
    rows = [
        ("requests completed", lambda p: f"{p['completed']}/{p['requests']}", None),
        ("mean attainment", lambda p: _pct(p["mean_attainment"]), "mean_attainment"),
        ("strict attainment", lambda p: _pct(p["strict_attainment"]), "strict_attainment"),
        ("TTFT p50 (ms)", lambda p: _num(p["ttft_ms"]["p50"]), "ttft_p50"),
        ("TTFT p99 (ms)", lambda p: _num(p["ttft_ms"]["p99"]), "ttft_p99"),
        ("TBT p50 (ms)", lambda p: _num(p["tbt_ms"]["p50"]), "tbt_p50"),
        ("TBT p99 (ms)", lambda p: _num(p["tbt_ms"]["p99"]), "tbt_p99"),
        ("tokens/s", lambda p: _num(p["tokens_per_s"]), None),
    ]
    if token["router"] is not None and request["router"] is not None:
        rows += [
            ("turns", lambda p: str(p["router"]["turns"]), None),
            ("switches", lambda p: str(p["router"]["switches"]), None),
            ("switch seconds", lambda p: _num(p["router"]["switch_s"]), None),
            ("worker idle seconds", lambda p: _num(p["router"]["idle_s"]), None),
        ]
    if token.get("turns") and request.get("turns"):
        rows += [
            ("model changes", lambda p: str(p["turns"]["model_changes"]), None),
            ("prefill turn p50/max ms", lambda p: _pair(p["turns"]["prefill"]), None),
            ("decode turn p50/max ms", lambda p: _pair(p["turns"]["decode"]), None),
        ]
    for label, cell, ratio in rows:
        value = r["ratios"].get(ratio) if ratio else None
        lines.append(f"  {label:24} {cell(token):>12} {cell(request):>12} {_num(value) if ratio else '':>14}")
    lines += ["", "  mean attainment by model:"]
    for model in token["by_model"]:
        t, q = token["by_model"][model], request["by_model"].get(model)
        lines.append(
            f"    {model:24} {_pct(t['mean_attainment']):>8} {_pct(q['mean_attainment']) if q else 'n/a':>8}"
            f"   TTFT p99 {_num(t['ttft_ms']['p99'])} / {_num(q['ttft_ms']['p99']) if q else 'n/a'} ms"
            f"   ({t['requests']} requests)"
        )
    for name, p in (("token", token), ("request", request)):
        longest = (p.get("turns") or {}).get("longest_turns")
        if longest:
            t = longest[0]
            lines.append(
                f"  {name}: longest turn {t['compute_ms']:g} ms, {t['kind']} of {t['model']} "
                f"({t['requests']} requests, {t['prefill_tokens']} prompt tokens, {t['decode_steps']} decode steps)"
            )
    for name, p in (("token", token), ("request", request)):
        if p["errors_by_kind"]:
            lines.append(f"  {name}: failed requests {p['errors_by_kind']}")
    verdict = r["token_beats_request"]
    lines.append(
        f"  token-level beats request-level: mean attainment {_yes(verdict['mean_attainment'])}, "
        f"strict {_yes(verdict['strict_attainment'])}"
    )
    return "\n".join(lines)


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _num(value) -> str:
    return "n/a" if value is None else f"{value:g}"


def _pair(seconds: dict) -> str:
    return f"{_num(seconds['p50_ms'])}/{_num(seconds['max_ms'])}"


def _yes(value: bool | None) -> str:
    return "n/a" if value is None else ("yes" if value else "no")
