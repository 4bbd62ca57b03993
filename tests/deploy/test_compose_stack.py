"""compose.yaml's own commands and environment, run as local processes, serve an OpenAI request.

The services `docker compose up` would start with .env.example's COMPOSE_PROFILES run from
compose.yaml (see local_stack.py for the little that changes outside a container); nats-server
runs deploy/nats/single.conf with the compose passwords, so every service authenticates as its
own user and works within its subject permissions. The collector's OTLP port is served by a
small receiver that records what arrives; Prometheus' targets are fetched as it would.
"""

import json
import threading
import time
import tomllib
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest
import yaml

from services.supervisor import gateway_health
from shared.nats_server import free_port, wait_for_port

from .compose_file import COMPOSE_DIR, active_services, dotenv, load
from .local_stack import Mapping, local_process

NOT_TOKENPOOL = {"otel-collector", "jaeger", "prometheus"}


class OtlpReceiver:
    """Stands at the collector's OTLP/HTTP address and counts the export requests per path."""

    def __init__(self):
        self.posts: dict[str, int] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.posts[self.path] = receiver.posts.get(self.path, 0) + 1
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read().decode()


@pytest.fixture(scope="module")
def compose_stack(tmp_path_factory, model_store):
    tmp = tmp_path_factory.mktemp("compose")
    variables = dotenv(COMPOSE_DIR / ".env.example") | {"TOKENPOOL_MODEL_STORE_HOST": str(model_store.root)}
    tree = load(COMPOSE_DIR / "compose.yaml", variables)
    names = active_services(tree, set(variables["COMPOSE_PROFILES"].split(",")))
    otel = OtlpReceiver()
    ports = {"nats": {"4222": str(free_port()), "8222": str(free_port())}, "gateway": {"8000": str(free_port())},
             "router": {"9100": str(free_port())}}
    mapping = Mapping(
        addresses={"nats:4222": f"127.0.0.1:{ports['nats']['4222']}", "otel-collector:4318": f"127.0.0.1:{otel.port}"},
        listen_ports=ports,
        volumes_root=tmp / "volumes",
    )
    processes = {n: local_process(n, tree["services"][n], mapping, tmp) for n in names if n not in NOT_TOKENPOOL}
    stack = {"tree": tree, "variables": variables, "processes": processes, "ports": ports, "otel": otel}
    try:
        processes["nats"].start()
        assert wait_for_port("127.0.0.1", int(ports["nats"]["4222"]), 10), processes["nats"].log()
        for name, process in processes.items():
            if name != "nats":
                process.start()
        _wait_healthy(stack, timeout=180)
        yield stack
    finally:
        for name, process in reversed(list(processes.items())):
            if name != "nats":
                process.stop()
        processes["nats"].stop()
        otel.close()


def _wait_healthy(stack, timeout: float) -> None:
    url = f"http://127.0.0.1:{stack['ports']['gateway']['8000']}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = gateway_health(url)
        if status == 200 and body.get("workers"):
            return
        for p in stack["processes"].values():
            if not p.alive():
                raise RuntimeError(f"{p.name} exited with {p.process.returncode}:\n{p.log()}")
        time.sleep(0.3)
    logs = "\n".join(f"--- {p.name}\n{p.log()}" for p in stack["processes"].values())
    raise TimeoutError(f"compose stack not healthy after {timeout} s\n{logs}")


def test_compose_stack_serves_a_chat_completion(compose_stack):
    assert set(compose_stack["processes"]) == {"nats", "router", "autoscaler", "gpu_worker", "gateway"}
    base = f"http://127.0.0.1:{compose_stack['ports']['gateway']['8000']}/v1"
    client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=120)
    reply = client.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16,
        temperature=0,
    )
    assert "Paris" in reply.choices[0].message.content
    # The catalog compose mounts (../catalog.toml) is the one served.
    catalog = tomllib.loads((COMPOSE_DIR / compose_stack["variables"]["TOKENPOOL_CATALOG_HOST"]).read_text())
    assert {m.id for m in client.models.list()} == {m["name"] for m in catalog["models"]}


def test_each_service_is_its_own_nats_user_and_stays_within_its_permissions(compose_stack):
    monitor = f"http://127.0.0.1:{compose_stack['ports']['nats']['8222']}"
    _, body = _get(monitor + "/connz?auth=true&limit=100")
    users = {c.get("authorized_user") for c in json.loads(body)["connections"]}
    assert {"gateway", "router", "autoscaler", "gpu_worker"} <= users
    # nats-server logs a refused subject as "Publish Violation" / "Subscription Violation".
    for process in compose_stack["processes"].values():
        violations = [line for line in process.log(tail=1_000_000).splitlines() if "violation" in line.lower()]
        assert violations == [], f"{process.name}: {violations}"
    # The placement went through the KV bucket: written by the autoscaler, watched by the worker.
    assert "placement epoch" in compose_stack["processes"]["gpu_worker"].log(tail=1_000_000)


def test_prometheus_targets_serve_gateway_and_worker_metrics(compose_stack):
    config = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"][0] for job in config["scrape_configs"]}
    assert set(targets) == {"gateway", "router"}
    seen = {}
    for job, target in targets.items():
        host, port = target.split(":")
        status, text = _get(f"http://127.0.0.1:{compose_stack['ports'][host][port]}/metrics")
        assert status == 200
        seen[job] = text
    assert "tp_request_ttft_seconds" in seen["gateway"]
    assert 'worker="' in seen["router"] and "tp_worker_turns_total" in seen["router"]


def test_services_export_traces_to_the_collector(compose_stack):
    deadline = time.monotonic() + 15  # the batch span processor exports every 5 s
    while time.monotonic() < deadline and not compose_stack["otel"].posts:
        time.sleep(0.2)
    assert set(compose_stack["otel"].posts) == {"/v1/traces"}
