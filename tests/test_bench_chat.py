"""`tokenpool bench chat`: the same chats through two replicas with and without prefix-aware
routing, from one run; bad flags say what is wrong. No timing thresholds (the comparison lives
in the benchmark's own output)."""

import json
import os
import subprocess

import pytest

from services.cli.bench_chat import chats
from tests.cli_processes import TOKENPOOL, processes_mentioning


def test_both_policies_serve_every_turn_and_the_prefix_aware_one_finds_the_chats_cached(model_store, tmp_path):
    out = tmp_path / "results" / "chat.json"
    env = {**os.environ, "TOKENPOOL_MODEL_STORE": str(model_store.root), "TMPDIR": str(tmp_path)}
    args = ["bench", "chat", "--conversations", "2", "--turns", "2", "--answer-tokens", "3", "--system-words", "40",
            "--think-s", "0", "--slots", "4", "--json", "--out", str(out)]
    result = subprocess.run([str(TOKENPOOL), *args], env=env, capture_output=True, text=True, timeout=400)

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert json.loads(out.read_text()) == report
    assert set(report["policies"]) == {"prefix", "load"}
    for runs in report["policies"].values():
        [run] = runs
        assert run["first_turns"]["turns"] == run["later_turns"]["turns"] == 2
        assert run["first_turns"]["cached_tokens"] == 0, "every chat has its own system prompt"
        assert run["later_turns"]["prompt_tokens"] > run["first_turns"]["prompt_tokens"]
        assert run["later_turns"]["ttft_ms_p90"] >= run["later_turns"]["ttft_ms_p50"] > 0
    # The second turn starts with the first turn's prompt and answer, which its worker computed.
    assert report["policies"]["prefix"][0]["later_turns"]["cached_share"] > 0.5
    assert set(report["later_turns"]) == {"cached_share", "ttft_ms_p50", "ttft_load_over_prefix"}
    assert processes_mentioning(str(tmp_path)) == []  # nothing it started outlives it


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--conversations", "0"], "--conversations 0"),
        (["--turns", "1"], "--turns 1"),
        (["--think-s", "-1"], "--think-s -1.0"),
        (["--slots", "0"], "--slots 0"),
        (["--prefix-load-slack", "2"], "--prefix-load-slack 2.0"),
        (["--answer-tokens", "0"], "--answer-tokens 0"),
    ],
)
def test_bad_flags_get_a_one_line_error(flags, says):
    result = subprocess.run([str(TOKENPOOL), "bench", "chat", *flags], capture_output=True, text=True, timeout=60)

    assert result.returncode == 2
    assert says in result.stderr and "Traceback" not in result.stderr


def test_the_chats_are_the_same_for_the_same_seed_and_each_has_its_own_system_prompt():
    first, again = chats(3, 5, 4, 20, 2.0), chats(3, 5, 4, 20, 2.0)
    assert first == again and chats(4, 5, 4, 20, 2.0) != first
    assert len({c.system for c in first}) == 5
    assert all(len(c.questions) == len(c.think_s) == 4 and all(0 <= t <= 2.0 for t in c.think_s) for c in first)
