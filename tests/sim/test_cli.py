"""`tokenpool sim` as a user runs it: one JSON object out, clear errors for bad input."""

import json
from pathlib import Path

import pytest

from services.cli.main import main

PAPER_WORKLOAD = Path(__file__).resolve().parents[2] / "../shared/data/aegaeon/workloads/synth-8-0.1-1.0-1.0.csv"


def run(capsys, *args):
    code = main(["sim", *args])
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path, text):
    path = tmp_path / "w.csv"
    path.write_text(text)
    return str(path)


HEADER = "Request Time,Model Name,Input Length,Output Length\n"


def test_json_output_has_the_promised_fields(capsys, tmp_path):
    path = write(tmp_path, HEADER + "00:00:00.500,m0,100,20\n00:00:01.000,m1,200,30\n00:00:01.250,m0,50,10\n")
    code, out, _ = run(
        capsys, "--workload", path, "--gpus", "1", "--policy", "request", "--ttft", "5", "--tbt", "0.2", "--json"
    )
    assert code == 0
    summary = json.loads(out)
    for key in (
        "policy",
        "gpus",
        "models",
        "requests",
        "attainment",
        "strict_attainment",
        "ttft_p99_s",
        "tbt_p99_s",
        "switches",
    ):
        assert key in summary
    assert (summary["policy"], summary["gpus"], summary["models"], summary["requests"]) == ("request", 1, 2, 3)
    assert (summary["ttft_slo_s"], summary["tbt_slo_s"], summary["completed"]) == (5.0, 0.2, 3)
    assert 0 <= summary["attainment"] <= 1


@pytest.mark.skipif(not PAPER_WORKLOAD.exists(), reason="the paper's workloads are not in ../shared/data")
def test_a_paper_workload_runs_under_both_policies(capsys):
    for policy in ("token", "request"):
        code, out, _ = run(capsys, "--workload", str(PAPER_WORKLOAD), "--gpus", "2", "--policy", policy, "--json")
        summary = json.loads(out)
        assert code == 0 and summary["requests"] == summary["completed"] == 81 and summary["models"] == 8


def test_compare_runs_both_policies_on_one_workload_and_token_level_attains_more(capsys):
    args = ["--workload", "synthetic", "--synthetic-models", "8", "--duration", "60", "--rate", "0.8", "--seed", "1"]
    code, out, _ = run(capsys, *args, "--gpus", "1", "--compare", "--json")
    result = json.loads(out)
    token, request = result["token"], result["request"]
    assert code == 0 and token["policy"] == "token" and request["policy"] == "request"
    assert token["requests"] == request["requests"] == token["completed"] == request["completed"]
    assert token["attainment"] > request["attainment"]
    assert result["ratios"]["attainment"] == pytest.approx(token["attainment"] / request["attainment"], abs=1e-3)


def test_a_synthetic_workload_prints_a_summary(capsys):
    code, out, _ = run(capsys, "--workload", "synthetic", "--synthetic-models", "3", "--duration", "30", "--seed", "2")
    assert code == 0 and "attainment" in out and "3 models" in out


def test_a_missing_workload_file_is_named(capsys, tmp_path):
    code, _, err = run(capsys, "--workload", str(tmp_path / "nope.csv"))
    assert code == 2 and "nope.csv does not exist" in err


@pytest.mark.parametrize(
    "row, problem",
    [
        ("00:00:01.000,m0,abc,10", "line 2: Input Length 'abc' is not a whole number"),
        ("00:00:01.000,m0,10,0", "line 2: Output Length is 0; it must be at least 1"),
        ("yesterday,m0,10,10", "line 2: Request Time 'yesterday' is not a time"),
        ("00:00:01.000,m0", "line 2: 2 fields, expected 4"),
        ("00:00:01.000,,10,10", "line 2: the Model Name is empty"),
    ],
)
def test_a_malformed_csv_row_is_named_with_its_line(capsys, tmp_path, row, problem):
    code, _, err = run(capsys, "--workload", write(tmp_path, HEADER + row + "\n"))
    assert code == 2 and problem in err


def test_a_csv_without_the_expected_header_says_which_columns_lack(capsys, tmp_path):
    code, _, err = run(capsys, "--workload", write(tmp_path, "time,model\n1,m0\n"))
    assert code == 2 and "lacks column(s) Request Time, Model Name, Input Length, Output Length" in err


def test_an_unknown_gpu_profile_lists_the_known_ones(capsys):
    code, _, err = run(capsys, "--workload", "synthetic", "--gpu-profile", "B300")
    assert code == 2 and "unknown GPU profile 'B300'; known profiles: H100" in err


def test_zero_gpus_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sim", "--workload", "synthetic", "--gpus", "0"])
    assert exit_info.value.code == 2
    assert "argument --gpus: must be at least 1, got 0" in capsys.readouterr().err


def test_prefill_gpus_must_leave_a_decode_gpu(capsys):
    code, _, err = run(capsys, "--workload", "synthetic", "--gpus", "2", "--prefill-gpus", "2")
    assert code == 2 and "prefill_gpus must be >= 0 and leave at least one of the 2 GPUs to decode" in err
