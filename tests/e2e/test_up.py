"""`tokenpool up` starts the whole stack with an embedded nats-server and stops it without orphans."""

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import openai

from shared.nats_server import free_port

from .conftest import write_catalog


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _argv(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")


def test_up_serves_then_sigterm_stops_every_child(tmp_path, model_store):
    catalog = write_catalog(tmp_path / "up-catalog.toml", model_store.root, models=("demo-llama", "demo-qwen2"))
    port = free_port()
    cmd = [sys.executable, "-m", "services.cli", "up", "--port", str(port), "--workers", "1",
           "--config", str(catalog), "--run-dir", str(tmp_path / "run")]
    up = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=os.environ | {"PYTHONUNBUFFERED": "1"})
    try:
        ready, _, _ = select.select([up.stdout], [], [], 180)
        assert ready, "tokenpool up did not report serving within 180 s"
        line = up.stdout.readline()
        assert json.loads(line) == {"status": "serving", "url": f"http://127.0.0.1:{port}", "nats": json.loads(line)["nats"]}
        assert len(_processes_mentioning(str(catalog))) >= 4  # router, autoscaler, worker, gateway
        (worker,) = [argv for argv in map(_argv, _processes_mentioning(str(catalog))) if "services.gpu_worker" in argv]
        assert worker[worker.index("--threads") + 1] == str(max(1, os.cpu_count() - 1)), "a core is left to the rest"
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
        resp = client.completions.create(model="demo-llama", prompt="Hello", max_tokens=5, temperature=0)
        assert resp.usage.completion_tokens == 5
        assert (tmp_path / "run" / "nats" / "jetstream").is_dir()
    finally:
        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0
    assert _processes_mentioning(str(catalog)) == []
    assert _processes_mentioning(str(tmp_path / "run" / "nats")) == []


def test_worker_threads_leave_a_core_to_the_other_services_and_are_shared_among_workers():
    from services.cli.up_cmd import worker_threads

    assert worker_threads(None, workers=1, cores=2) == 1
    assert worker_threads(None, workers=1, cores=16) == 15
    assert worker_threads(None, workers=2, cores=16) == 7
    assert worker_threads(None, workers=4, cores=2) == 1
    assert worker_threads(None, workers=1, cores=None) == 1
    assert worker_threads(3, workers=1, cores=2) == 3


def test_autoscaled_workers_share_the_cores_among_the_most_that_may_run(monkeypatch):
    """The autoscaler starts later workers with the first ones' flags, so their thread count
    must already fit max_workers of them."""
    from services.cli.main import build_parser
    from services.cli.up_cmd import worker_args

    monkeypatch.setattr("os.cpu_count", lambda: 16)

    def threads(*argv):
        args = worker_args(build_parser().parse_args(["up", *argv]))
        return int(args[args.index("--threads") + 1])

    assert threads("--workers", "2") == 7
    assert threads("--workers", "1", "--autoscale", "--scaling", "max_workers=3") == 5
    assert threads("--workers", "4", "--autoscale", "--scaling", "max_workers=2") == 3, "never fewer than --workers"
    assert threads("--autoscale") == 1, "max_workers defaults to 64"
    assert threads("--autoscale", "--worker-threads", "4") == 4


def test_up_refuses_zero_worker_threads_before_starting_anything(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "services.cli", "up", "--worker-threads", "0", "--run-dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 2
    assert "--worker-threads must be at least 1, got 0" in run.stderr
    assert not (tmp_path / "run").exists()


def test_up_refuses_a_bad_autoscaler_setting_before_starting_anything(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "services.cli", "up", "--autoscale", "--scaling", "max_workrs=3", "--run-dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 2
    assert "no setting 'max_workrs'" in run.stderr
    assert not (tmp_path / "run").exists()
