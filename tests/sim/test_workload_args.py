"""The workload flags `tokenpool sim` and `tokenpool plan` share: each source by name or by its file."""

import argparse
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from services.cli.main import main
from services.cli.workload_args import add_workload_arguments, workload_from_args
from services.sim.errors import SimError

DATA = Path(__file__).resolve().parents[2] / "../shared/data"
AZURE = DATA / "traces/azure_llm_code_2023.csv"
SERVEGEN = DATA / "traces/servegen/m-large"
PAPER_8 = DATA / "aegaeon/workloads/synth-8-0.1-1.0-1.0.csv"
needs_data = pytest.mark.skipif(
    not (AZURE.exists() and SERVEGEN.exists() and PAPER_8.exists()), reason="the traces are not in ../shared/data"
)


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_workload_arguments(parser)
    return parser.parse_args(list(argv))


def load(*argv):
    return workload_from_args(parse(*argv))


@needs_data
def test_each_source_by_name():
    azure = load("--workload", "azure", "--models", "4", "--zipf", "0", "--window", "10m:5m")
    assert azure.name.startswith("azure-") and len(azure.models) == 4 and azure.duration_s < 300
    servegen = load("--workload", "servegen", "--clients", "61,142", "--window", "20h:10m", "--rate", "2")
    assert servegen.models == ["client_061", "client_142"] and len(servegen.arrivals) == pytest.approx(1200, rel=0.15)
    busiest = load("--workload", "servegen", "--models", "3", "--rate-scale", "0.01")
    assert len(busiest.models) == 3 and "@0s+3600s" in busiest.name  # the first hour unless told
    bursty = load("--workload", "synthetic", "--models", "5", "--cv", "2", "--duration", "60", "--seed", "3")
    assert len(bursty.models) == 5 and "cv2" in bursty.name


@needs_data
def test_a_path_is_told_apart_by_its_header_or_as_a_folder(tmp_path):
    copy = tmp_path / "my-trace.csv"
    shutil.copy(AZURE, copy)
    assert load("--workload", str(copy), "--models", "2").name.startswith("azure-my-trace-2models")
    assert load("--workload", str(SERVEGEN), "--clients", "5", "--window", "0:10m").models == ["client_005"]
    paper = load("--workload", str(PAPER_8), "--window", "30:1m", "--rate-scale", "2")
    assert len(paper.models) == 8 and paper.duration_s < 30


@needs_data
def test_max_requests_keeps_the_first_ones():
    whole = load("--workload", "azure")
    first = load("--workload", "azure", "--max-requests", "25")
    assert first.arrivals == whole.arrivals[:25] and first.models == whole.models


@pytest.mark.parametrize(
    "argv, problem",
    [
        (["--workload", "azure", "--cv", "2"], "--cv applies to synthetic workloads, not to an Azure trace (azure)"),
        (
            ["--workload", "synthetic", "--clients", "1"],
            "--clients applies to ServeGen workloads, not to synthetic (synthetic)",
        ),
        (
            ["--workload", "servegen", "--zipf", "1"],
            "--zipf applies to Azure and synthetic workloads, not to a ServeGen folder (servegen)",
        ),
        (
            ["--workload", "servegen", "--models", "3", "--clients", "1"],
            "give --models (the busiest N clients) or --clients",
        ),
        (["--workload", "azure", "--rate", "2", "--rate-scale", "3"], "give a rate scale or a target rate, not both"),
    ],
)
def test_flags_that_do_not_fit_the_source_are_refused(argv, problem):
    with pytest.raises(SimError) as error:
        load(*argv)
    assert problem in str(error.value)


def test_a_csv_of_neither_format_names_both_headers(tmp_path):
    path = tmp_path / "w.csv"
    path.write_text("time,model\n1,m0\n")
    with pytest.raises(SimError, match="lacks column.*the paper's format.*TIMESTAMP,ContextTokens,GeneratedTokens"):
        load("--workload", str(path))


@pytest.mark.parametrize(
    "flag, value, problem",
    [
        ("--window", "5", "is not START:DURATION, such as 20h:1h or 0:1d"),
        ("--window", "1x:2", "'1x' is not a time such as 90, 90s, 30m, 1.5h or 1d"),
        ("--window", "1h:0", "the window's duration must be positive"),
        ("--clients", "a,b", "is not a comma-separated list of client ids"),
        ("--max-requests", "0", "must be at least 1, got 0"),
        ("--rate-scale", "-2", "must be a positive number"),
    ],
)
def test_malformed_flag_values_are_named(capsys, flag, value, problem):
    with pytest.raises(SystemExit):
        parse("--workload", "synthetic", flag, value)
    assert problem in capsys.readouterr().err


def test_window_units():
    assert parse("--workload", "x", "--window", "20h:1h").window == (72000, 3600)
    assert parse("--workload", "x", "--window", "1.5d:").window == (129600, None)
    assert parse("--workload", "x", "--window", ":30m").window == (0, 1800)


@needs_data
def test_tokenpool_sim_runs_a_servegen_hour(capsys):
    code = main(
        [
            "sim",
            "--workload",
            "servegen",
            "--models",
            "6",
            "--window",
            "20h:1h",
            "--rate",
            "0.5",
            "--gpus",
            "1",
            "--json",
        ]
    )
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["models"] == 6
    assert summary["requests"] == summary["completed"] == pytest.approx(1800, rel=0.15)


def test_tokenpool_sim_names_a_missing_servegen_folder(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code = main(["sim", "--workload", str(tmp_path / "empty")])
    assert code == 2 and "holds no chunk-<client>-trace.csv file" in capsys.readouterr().err


def test_the_old_synthetic_flag_still_names_the_models():
    w = load("--workload", "synthetic", "--synthetic-models", "3", "--duration", "50", "--seed", "2")
    assert sorted(Counter(a.model for a in w.arrivals)) == ["model_00", "model_01", "model_02"]
