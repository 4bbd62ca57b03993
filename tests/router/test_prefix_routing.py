"""Prefix-aware routing: among workers that could take a request alike, the router prefers the
one whose prefix cache probably holds the start of its prompt (prefix_index.py), so that a
chat's next turn finds its earlier turns where they were computed."""

from dataclasses import replace

import pytest

from services.router.config import PolicyConfig
from services.router.decisions import Assign
from services.router.prefix_index import PrefixIndex, page_keys
from shared.protocol import Placement, WorkerPlacement

from .builders import MODELS, request, state, tokens
from .test_policy import policy

BLOCK = 4
SYSTEM = tuple(range(100, 112))  # three full pages


def test_keys_cover_the_full_pages_before_the_last_token_and_chain_their_prefix():
    assert len(page_keys("m", range(12), BLOCK)) == 2  # the page with the last token is left to compute
    assert len(page_keys("m", range(13), BLOCK)) == 3
    assert page_keys("m", range(3), BLOCK) == [] and page_keys("m", range(50), 0) == []
    a, b = page_keys("m", (1, 2, 3, 4, 5, 6, 7, 8, 9), BLOCK), page_keys("m", (9, 9, 9, 9, 5, 6, 7, 8, 9), BLOCK)
    assert a[0] != b[0] and a[1] != b[1], "the same page after another prefix is another page"
    assert page_keys("other", (1, 2, 3, 4, 5), BLOCK) != page_keys("m", (1, 2, 3, 4, 5), BLOCK)


def test_the_index_matches_leading_pages_and_drops_the_least_recently_used_beyond_capacity():
    index = PrefixIndex()
    first, second = page_keys("m", range(13), BLOCK), page_keys("m", range(50, 63), BLOCK)
    index.add(first, capacity=6)
    assert index.match(first) == 3 and index.match(first[:1] + second[1:]) == 1 and index.match(second) == 0
    index.add(second, capacity=6)
    index.add(first[:1], capacity=6)  # used again: now the most recent
    index.add(page_keys("m", range(80, 85), BLOCK), capacity=6)
    assert len(index) == 6
    assert index.match(first) == 1, "first's later pages were the least recently used"
    assert index.match(second) == 3


def report(worker: str, seq: int, **fields):
    return state(worker, seq, tiers={m: "host" for m in MODELS}, block_tokens=BLOCK, **fields)


def two_holders(**config):
    """w1 and w2 both hold requests of model a, one each (each takes at most 4). Prefill groups
    of one, so that a waiting prefill group does not decide (`_pick`)."""
    p = policy(max_running_per_worker=4, max_prefill_group=1, **config)
    for w in ("w1", "w2"):
        p.on_worker_state(report(w, 1), now=0.0)
    for i in range(4):
        assert p.submit(request(f"bg{i}"), now=0.1)[0].worker_id == "w1"  # model affinity fills w1
    assert p.submit(request("bg4"), now=0.1)[0].worker_id == "w2"  # w1 is full: a light model spills
    for i in range(3):
        p.on_tokens(tokens(f"bg{i}", 0, (7,), "w1", finish="stop"), now=0.2)
    return p


def turn(rid: str, prompt: tuple[int, ...]):
    return replace(request(rid), prompt_token_ids=prompt)


FIRST = turn("chat-1", SYSTEM + (1, 2, 3, 4, 5))
ANSWER = (61, 62, 63, 64, 65)
SECOND = turn("chat-2", FIRST.prompt_token_ids + ANSWER + (9, 9))


def assigned(decisions) -> list[str]:
    return [d.worker_id for d in decisions if isinstance(d, Assign)]


def chat_after_load_moved(p) -> tuple[str, str]:
    """A first turn goes to w1 (a tie: the smaller id) and is answered; then w1 gets busier
    than w2 by one request, and the chat's next turn arrives. The workers of both turns."""
    [first] = assigned(p.submit(FIRST, now=0.3))
    p.on_tokens(tokens("chat-1", 0, ANSWER, first, finish="stop"), now=0.4)
    assert assigned(p.submit(request("bg5"), now=0.5)) == ["w1"]  # 1 against 1: the tie again
    assert assigned(p.submit(request("bg6"), now=0.5)) == ["w2"]
    assert assigned(p.submit(request("bg7"), now=0.5)) == ["w1"]  # 3 against 2
    [second] = assigned(p.submit(SECOND, now=0.6))
    return first, second


def test_a_chats_next_turn_goes_where_its_first_was_computed_within_the_load_slack():
    p = two_holders(prefix_load_slack=0.25)  # one request of 4 slots
    assert chat_after_load_moved(p) == ("w1", "w1")


def test_without_prefix_routing_or_beyond_the_slack_the_least_loaded_holder_takes_it():
    for config in ({"prefix_routing": False}, {"prefix_load_slack": 0.0}):
        p = two_holders(**config)
        assert chat_after_load_moved(p) == ("w1", "w2"), config


def test_a_prompt_nobody_computed_goes_by_load_and_a_restarted_or_gone_worker_is_forgotten():
    p = two_holders(prefix_load_slack=0.25)
    chat_after_load_moved(p)  # 4 against 2: chat-2 runs on w1
    p.on_tokens(tokens("chat-2", 0, (7,), "w1", finish="stop"), now=0.7)  # 3 against 2
    assert assigned(p.submit(turn("other", tuple(range(200, 217))), now=0.8)) == ["w2"]  # by load
    index = p.policy._prefixes["w1"]
    assert index.match(page_keys("a", SECOND.prompt_token_ids + (7, 8), BLOCK)) == 6, "chat-2 and its answer"
    # w1 restarts (its report counter goes back, its clock on): its cache is gone, so is the index.
    p.on_worker_state(report("w1", 0, ts=5.0, running=("bg3", "bg5", "bg7")), now=1.0)
    assert "w1" not in p.policy._prefixes
    # A worker that goes silent is forgotten with its index (autoscaled workers come and go).
    assert "w2" in p.policy._prefixes
    p.tick(now=10.0)
    assert "w2" not in p.policy._workers and "w2" not in p.policy._prefixes


def replica_after_chat(**config) -> str:
    """The autoscaler placed model a on both workers; a replica fills its batch (2 here) before
    the next takes requests. The chat's first turn went to w2, as w1's batch was full; then w1
    has room again. The worker the chat's next turn goes to."""
    p = policy(max_batch_size=2, max_prefill_group=1, **config)
    for w in ("w1", "w2"):
        p.on_worker_state(report(w, 1), now=0.0)
    p.on_placement(Placement(1, (WorkerPlacement("w1", ("a",)), WorkerPlacement("w2", ("a",))), 0.0), now=0.0)
    assert [assigned(p.submit(request(f"bg{i}"), now=0.1)) for i in range(2)] == [["w1"], ["w1"]]
    assert assigned(p.submit(FIRST, now=0.2)) == ["w2"]
    p.on_tokens(tokens("chat-1", 0, ANSWER, "w2", finish="stop"), now=0.3)
    p.on_tokens(tokens("bg1", 0, (7,), "w1", finish="stop"), now=0.4)
    [worker] = assigned(p.submit(SECOND, now=0.5))
    return worker


def test_an_idle_replica_that_computed_the_chat_takes_its_next_turn_from_a_busy_holder():
    """A replica whose cache probably holds the prompt counts as a holder of the model."""
    assert replica_after_chat() == "w2"
    assert replica_after_chat(prefix_routing=False) == "w1", "without prefix routing: the holder's batch"


def test_a_bad_slack_is_refused_by_name():
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="prefix_load_slack"):
            PolicyConfig(prefix_load_slack=bad)


def test_a_request_joins_an_open_prefill_group_unless_another_worker_holds_more_of_its_prompt():
    """Prefill groups (grouped FCFS, up to 4 here) still gather requests whose prompts share
    no more than both workers hold (a chat template's first page); a request whose chat only
    one worker computed goes there instead of joining the group."""
    p = policy(max_running_per_worker=1, max_prefill_group=4, prefix_load_slack=0.0)
    for w in ("w1", "w2"):
        p.on_worker_state(report(w, 1), now=0.0)
    assert [assigned(p.submit(request(f"bg{i}"), now=0.05)) for i in range(2)] == [["w1"], ["w2"]]  # both hold a
    for i, worker in enumerate(("w1", "w2")):
        p.on_tokens(tokens(f"bg{i}", 0, (7,), worker), now=0.06)
    p.policy.config = replace(p.policy.config, max_running_per_worker=8)
    template = (1, 2, 3, 4)
    sent = (("t1", template + (9,), "w1"), ("c1", FIRST.prompt_token_ids, "w2"), ("t2", template + (9,), "w1"),
            ("t3", template + (9,), "w2"))
    for rid, prompt, worker in sent:
        assert assigned(p.submit(turn(rid, prompt), now=0.1)) == [worker]  # the least loaded (a tie: w1)
        p.on_tokens(tokens(rid, 0, (7,), worker), now=0.15)  # prefilled: no group open
    # Each holds 3; both hold the template's page, only w2 holds the chat.
    assert assigned(p.submit(turn("g1", template + (5, 6)), now=0.2)) == ["w1"]  # by load: a group opens
    assert assigned(p.submit(turn("g2", template + (7, 8)), now=0.21)) == ["w1"], "it joins the open group"
    chat = turn("c2", FIRST.prompt_token_ids + ANSWER + (9,))
    p.policy.config = replace(p.policy.config, prefix_load_slack=0.5)
    assert assigned(p.submit(chat, now=0.22)) == ["w2"], "its chat is on w2, not in w1's group"
