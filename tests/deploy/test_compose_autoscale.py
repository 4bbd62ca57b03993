"""compose.autoscale.yaml: the autoscaler runs the compose connector on this project's own compose files.

No Docker engine runs here. The files are read and merged as Compose does (compose_file.py); the
autoscaler's command goes through its own argument parser and makes its real connector; the workers'
command runs in a real shell with the real gpu_worker, and the id that worker reports is compared with
the one the connector reads from a `docker inspect` record of such a container.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

from services.autoscaler.__main__ import build_parser, make_connector
from services.autoscaler.connectors.compose import ComposeConnector, compose_worker_id
from services.autoscaler.scaling_args import scaling_config

from .compose_file import (COMPOSE_DIR, REPO, InterpolationError, active_services, dotenv, environment, interpolate,
                           load, merge, mounts, variables_used)

AUTOSCALE = COMPOSE_DIR / "compose.autoscale.yaml"
DEPLOY_DIR = str(REPO / "deploy")
SHELL_VARIABLES = {"HOME"}
"""Variables the override takes from the shell that runs compose, not from .env."""
WORKERS = ("gpu_worker", "gpu_worker_1", "cpu_worker")


def _variables(**extra: str) -> dict[str, str]:
    """.env.example set up for autoscaling: no worker profile, the deploy folder's path."""
    return dotenv(COMPOSE_DIR / ".env.example") | {"COMPOSE_PROFILES": "", "TOKENPOOL_DEPLOY_DIR": DEPLOY_DIR,
                                                   "HOME": "/home/operator"} | extra


def _model(variables: dict[str, str]) -> dict:
    """`docker compose -f compose.yaml -f compose.gpus.yaml -f compose.autoscale.yaml`, with the
    template's command and volumes given to the services of compose.gpus.yaml (their `extends`)."""
    base = load(COMPOSE_DIR / "compose.yaml", variables)
    gpus = load(COMPOSE_DIR / "compose.gpus.yaml", variables)
    for spec in gpus["services"].values():
        template = base["services"][spec.pop("extends")["service"]]
        spec |= {k: v for k, v in template.items() if k not in spec}
    return merge(merge(base, gpus), load(AUTOSCALE, variables))


def _arguments(model: dict):
    command = model["services"]["autoscaler"]["command"]
    assert command[:3] == ["python", "-m", "services.autoscaler"], command
    return build_parser().parse_args(command[3:])


def _reserved_gpus(service: dict) -> list[str]:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return [gpu for d in devices if "gpu" in d["capabilities"] for gpu in d["device_ids"]]


def test_the_override_is_valid_compose_and_asks_for_the_deploy_folder():
    schema = json.loads((resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    for tree in (load(AUTOSCALE, _variables()), _model(_variables())):
        assert [e.message for e in validator.iter_errors(tree)] == []
    without = {k: v for k, v in _variables().items() if k != "TOKENPOOL_DEPLOY_DIR"}
    with pytest.raises(InterpolationError, match="TOKENPOOL_DEPLOY_DIR is required: set it in .env to the absolute path"):
        interpolate(AUTOSCALE.read_text(), without)


def test_the_autoscaler_gets_the_docker_socket_and_an_image_with_the_docker_cli():
    autoscaler = _model(_variables())["services"]["autoscaler"]
    by_target = {m.target: m for m in mounts(autoscaler)}
    assert by_target["/var/run/docker.sock"].source == "/var/run/docker.sock"
    assert {"/models", "/etc/tokenpool/catalog.toml"} <= set(by_target), "compose.yaml's mounts are kept"
    assert autoscaler["user"] == "root", "the host's socket belongs to root and the docker group"
    assert autoscaler["image"] != _variables()["TOKENPOOL_IMAGE"], "two builds must not share one image name"

    build = autoscaler["build"]
    dockerfile = (COMPOSE_DIR / build["context"] / build["dockerfile"]).read_text()
    stage = re.search(rf"^FROM\s+(\S+)\s+AS\s+{build['target']}\n(.*?)(?=^FROM|\Z)", dockerfile, re.M | re.S)
    assert stage, f"no stage {build['target']!r} in the Dockerfile"
    assert stage.group(1) == "service", "the autoscaler image is the service image plus the docker CLI"
    copied = re.findall(r"^COPY --from=\S+ \S+ (\S+)$", stage.group(2), re.M)
    assert "/usr/local/bin/docker" in copied
    # One of the folders where the docker CLI looks for plugins: `docker compose` runs this one.
    assert "/usr/local/libexec/docker/cli-plugins/docker-compose" in copied


def test_the_autoscaler_command_is_the_compose_connector_on_the_per_gpu_services():
    model = _model(_variables())
    args = _arguments(model)
    connector = make_connector(args)
    assert isinstance(connector, ComposeConnector)
    assert connector.project == model["name"] == "tokenpool"
    assert args.initial_workers == 0, "a restarted autoscaler would start that many more; the planner starts the first"

    slots = connector.services
    assert slots == ("gpu_worker", "gpu_worker_1", "gpu_worker_2", "gpu_worker_3")
    assert [s for s in slots if s not in model["services"]] == [], "slots compose.yaml and compose.gpus.yaml lack"
    gpus = [gpu for s in slots for gpu in _reserved_gpus(model["services"][s])]
    assert len(gpus) == len(set(gpus)) == len(slots), f"each slot must hold a GPU of its own: {gpus}"
    assert scaling_config(args.scaling).max_workers == len(slots)
    for name in slots:
        assert set(model["services"][name]["profiles"]) <= set(connector.profiles), f"its `ps` would not see {name}"

    files = [f"{DEPLOY_DIR}/compose/compose.yaml", f"{DEPLOY_DIR}/compose/compose.gpus.yaml"]
    assert connector.compose("ps")[:8] == ["docker", "compose", "-f", files[0], "-f", files[1], "-p", "tokenpool"]


def test_on_the_cpu_demo_the_autoscaler_scales_cpu_worker():
    model = _model(_variables(TOKENPOOL_AUTOSCALE_SLOTS="", TOKENPOOL_AUTOSCALE_MAX_WORKERS="2"))
    args = _arguments(model)
    connector = make_connector(args)
    assert connector.slots == () and connector.services == ("cpu_worker",), "no slots: `up --scale cpu_worker=N`"
    assert set(model["services"]["cpu_worker"]["profiles"]) <= set(connector.profiles)
    assert scaling_config(args.scaling).max_workers == 2


def test_the_compose_files_are_mounted_where_they_are_on_the_host():
    """Compose resolves their relative paths (../catalog.toml, ../nats) against their folder: the
    same folder inside and outside, so the host's docker engine gets the host's paths."""
    autoscaler = _model(_variables())["services"]["autoscaler"]
    binds = [m for m in mounts(autoscaler) if m.bind]
    for path in _arguments(_model(_variables())).compose_file:
        mount = next((m for m in binds if path.is_relative_to(m.target)), None)
        assert mount is not None, f"{path} is in no folder mounted into the autoscaler: {binds}"
        host = (COMPOSE_DIR / mount.source).resolve()
        assert host == Path(mount.target), f"{mount.source} is mounted at {mount.target}, not at its own path"
        assert (host / path.relative_to(mount.target)).is_file()


def test_compose_up_starts_no_worker_the_autoscaler_owns():
    model = _model(_variables())
    owned = set(make_connector(_arguments(model)).services) | {"cpu_worker"}
    started = active_services(model, set(filter(None, _variables()["COMPOSE_PROFILES"].split(","))))
    assert {"nats", "router", "gateway", "autoscaler"} <= set(started)
    assert owned & set(started) == set()


def _run_worker_command(command: list[str], hostname: str, worker_id: str | None, log: Path) -> subprocess.Popen:
    """The worker's command as the container runs it: HOSTNAME is what docker sets, python is the
    test's interpreter, NATS is a closed port (the worker names itself in every connection error)."""
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "HOSTNAME": hostname,
           "TOKENPOOL_NATS_URL": "nats://127.0.0.1:1", "PYTHONUNBUFFERED": "1"}
    if worker_id:
        env["TOKENPOOL_WORKER_ID"] = worker_id
    assert Path(sys.executable).with_name("python").exists(), "the command runs `python`"
    with open(log, "wb") as out:
        return subprocess.Popen(command, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


def _reported_id(process: subprocess.Popen, log: Path, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if found := re.search(r"gpu_worker (\S+): NATS error", log.read_text(errors="replace")):
                return found.group(1)
            time.sleep(0.1)
        raise AssertionError(f"the worker named no id (exit status {process.poll()}):\n{log.read_text()[-3000:]}")
    finally:
        process.kill()
        process.wait()


def _inspect(service_name: str, service: dict, number: int, image_env: list[str]) -> dict:
    """`docker inspect` of the container compose makes: the host is named after the short id;
    Config.Env holds the image's and the service's variables (HOSTNAME is added at run time)."""
    cid = hashlib.sha256(f"{service_name}-{number}".encode()).hexdigest()
    labels = {"com.docker.compose.project": "tokenpool", "com.docker.compose.service": service_name,
              "com.docker.compose.container-number": str(number), "com.docker.compose.oneoff": "False"}
    env = image_env + [f"{k}={v}" for k, v in environment(service).items()]
    return {"Id": cid, "Name": f"/tokenpool-{service_name}-{number}",
            "Config": {"Hostname": cid[:12], "Env": env, "Cmd": service["command"], "Entrypoint": None,
                       "Image": service["image"], "Labels": labels}}


def test_a_worker_reports_the_id_the_compose_connector_reads_from_its_container(tmp_path):
    model = _model(_variables())
    commands = {json.dumps(model["services"][name]["command"]) for name in WORKERS}
    assert len(commands) == 1, f"every worker service runs the same command: {commands}"
    for name in WORKERS:
        assert "TOKENPOOL_WORKER_ID" not in environment(model["services"][name]), f"{name}: its replicas would share an id"

    image_env = ["PATH=/usr/local/bin:/usr/bin:/bin", "PYTHONUNBUFFERED=1", "TOKENPOOL_MODEL_STORE=/models"]
    plain = _inspect("cpu_worker", model["services"]["cpu_worker"], 2, image_env)
    named = _inspect("gpu_worker_1", model["services"]["gpu_worker_1"], 1, image_env + ["TOKENPOOL_WORKER_ID=gpu-a-1"])
    command = model["services"]["cpu_worker"]["command"]
    runs = [(record, _run_worker_command(command, record["Config"]["Hostname"], worker_id, tmp_path / f"{i}.log"),
             tmp_path / f"{i}.log") for i, (record, worker_id) in enumerate(((plain, None), (named, "gpu-a-1")))]
    reported = [_reported_id(process, log) for _, process, log in runs]

    assert reported == [f"worker-{plain['Id'][:12]}", "gpu-a-1"]
    assert [compose_worker_id(record) for record, _, _ in runs] == reported


def test_env_example_documents_the_autoscale_variables():
    text = (COMPOSE_DIR / ".env.example").read_text()
    documented = dict(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=(.*)$", text, re.M))
    override = AUTOSCALE.read_text()
    used = variables_used(override) - SHELL_VARIABLES
    assert sorted(used - set(documented)) == []
    for name, default in re.findall(r"\$\{([A-Z0-9_]+):?-([^}]*)\}", override):
        assert documented[name] == default, f".env.example shows {name}={documented[name]}, the override's default is {default}"
