"""How services connect to NATS: several URLs, user/password, nkey, TLS, from the environment."""

import asyncio
import os
import shutil
import subprocess
import sys

import nkeys
import pytest

from shared import bus, env
from shared.nats_server import free_port, nats_server_binary, wait_for_port

from .compose_file import REPO
from .conftest import auth_of, run_async


def test_password_without_user_is_a_clear_error():
    with pytest.raises(env.EnvError, match="TOKENPOOL_NATS_PASSWORD is set but TOKENPOOL_NATS_USER is not"):
        env.nats_auth({env.NATS_PASSWORD: "secret"})


def test_two_ways_of_authenticating_at_once_is_a_clear_error(tmp_path):
    seed = tmp_path / "seed.nk"
    seed.write_text("SU...")
    with pytest.raises(env.EnvError, match="TOKENPOOL_NATS_USER and TOKENPOOL_NATS_NKEY_SEED are both set"):
        env.nats_auth({env.NATS_USER: "gateway", env.NATS_PASSWORD: "x", env.NATS_NKEY_SEED: str(seed)})


def test_a_missing_credentials_file_is_named(tmp_path):
    missing = tmp_path / "gateway.creds"
    with pytest.raises(env.EnvError, match=f"TOKENPOOL_NATS_CREDS='{missing}': no such file"):
        env.nats_auth({env.NATS_CREDS: str(missing)})


def test_a_client_certificate_needs_its_key(tmp_path):
    cert = tmp_path / "client.pem"
    cert.write_text("")
    with pytest.raises(env.EnvError, match="TOKENPOOL_NATS_TLS_CERT is set but TOKENPOOL_NATS_TLS_KEY is not"):
        env.nats_auth({env.NATS_TLS_CERT: str(cert)})


@pytest.mark.parametrize("value", ["0", "7", "three"])
def test_replicas_out_of_range_is_a_clear_error(value):
    with pytest.raises(env.EnvError, match=f"TOKENPOOL_NATS_REPLICAS='{value}'"):
        env.nats_replicas({env.NATS_REPLICAS: value})


def test_server_urls_are_comma_separated_and_none_is_an_error():
    assert bus.split_servers(" nats://a:4222, nats://b:4222 ,") == ["nats://a:4222", "nats://b:4222"]
    with pytest.raises(env.EnvError, match="no NATS server URL given"):
        bus.split_servers(" , ")


def _roundtrip(url: str, auth: env.NatsAuth) -> bytes:
    async def go():
        nc = await bus.connect(url, "test", auth)
        try:
            sub = await nc.subscribe("tp.test")
            await nc.publish("tp.test", b"hello")
            return (await sub.next_msg(timeout=5)).data
        finally:
            await nc.close()

    return run_async(asyncio.wait_for(go(), 20))


def test_a_down_server_in_the_list_is_skipped(single_nats):
    dead = f"nats://127.0.0.1:{free_port()}"
    assert _roundtrip(f"{dead},{single_nats.url}", auth_of("admin")) == b"hello"


def _server(tmp_path, config: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    (tmp_path / "server.conf").write_text(config)
    log = open(tmp_path / "server.log", "ab")
    process = subprocess.Popen([nats_server_binary(), "-c", str(tmp_path / "server.conf"), "-a", "127.0.0.1", "-p", str(port)],
                               stdout=log, stderr=subprocess.STDOUT)
    log.close()
    assert wait_for_port("127.0.0.1", port, 10), (tmp_path / "server.log").read_text()
    return process, port


def _user_seed(path) -> str:
    """Writes a new user nkey seed to `path`; returns its public key."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    path.write_bytes(seed)
    return nkeys.from_seed(bytearray(seed)).public_key.decode()


def test_nkey_seed_from_the_environment_authenticates(tmp_path):
    public = _user_seed(tmp_path / "worker.nk")
    _user_seed(tmp_path / "stranger.nk")
    process, port = _server(tmp_path, f"authorization {{ users: [ {{ nkey: {public} }} ] }}\n")
    try:
        url = f"nats://127.0.0.1:{port}"
        assert _roundtrip(url, env.nats_auth({env.NATS_NKEY_SEED: str(tmp_path / "worker.nk")})) == b"hello"
        with pytest.raises(bus.NatsConnectError, match="refused these credentials"):
            _roundtrip(url, env.nats_auth({env.NATS_NKEY_SEED: str(tmp_path / "stranger.nk")}))
    finally:
        process.terminate()
        process.wait(10)


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make certificates")
def test_tls_with_the_ca_from_the_environment(tmp_path):
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=tokenpool test CA", cwd=tmp_path)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=tmp_path)
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "san.ext", cwd=tmp_path)
    process, port = _server(tmp_path, f'tls {{ cert_file: "{tmp_path}/server.pem", key_file: "{tmp_path}/server.key" }}\n')
    try:
        url = f"tls://127.0.0.1:{port}"
        with_ca = env.nats_auth({env.NATS_TLS_CA: str(tmp_path / "ca.pem")})
        assert _roundtrip(url, with_ca) == b"hello"
        assert _roundtrip(f"nats://127.0.0.1:{port}", with_ca) == b"hello"  # the CA alone turns TLS on
        with pytest.raises(bus.NatsConnectError, match="is not trusted .*; check TOKENPOOL_NATS_TLS_CA"):
            _roundtrip(url, env.nats_auth({}))
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.parametrize("service", ["services.gateway", "services.router", "services.autoscaler", "services.gpu_worker"])
def test_every_service_names_a_bad_nats_variable_and_exits_2(service, tmp_path):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TOKENPOOL_")} | {
        "TOKENPOOL_NATS_REPLICAS": "9", "TOKENPOOL_NATS_URL": f"nats://127.0.0.1:{free_port()}"}
    done = subprocess.run([sys.executable, "-m", service, "--catalog", str(REPO / "deploy" / "catalog.toml")],
                          env=environ, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "error: TOKENPOOL_NATS_REPLICAS='9': use a number of replicas from 1 to 5" in done.stderr


def test_close_sends_what_was_published_before_closing(single_nats):
    async def go():
        listener = await bus.connect(single_nats.url, "listener", auth_of("admin"))
        sub = await listener.subscribe("tp.test.close")
        await listener.flush()
        nc = await bus.connect(single_nats.url, "test", auth_of("admin"))
        for i in range(100):
            await nc.publish("tp.test.close", str(i).encode())
        await bus.close(nc, "test")
        got = [(await sub.next_msg(timeout=5)).data for _ in range(100)]
        await listener.close()
        return nc.is_closed, got

    closed, got = run_async(asyncio.wait_for(go(), 30))

    assert closed and got == [str(i).encode() for i in range(100)]


def test_close_gives_up_draining_a_callback_that_never_returns(single_nats):
    """nats-py's drain waits up to 30 s for every subscription callback; a stopping service
    closes after its bound instead."""

    async def go():
        nc = await bus.connect(single_nats.url, "test", auth_of("admin"))
        entered, never = asyncio.Event(), asyncio.Event()

        async def stuck(msg):
            entered.set()
            await never.wait()

        await nc.subscribe("tp.test.stuck", cb=stuck)
        await nc.publish("tp.test.stuck", b"x")
        await nc.publish("tp.test.stuck", b"y")  # queued behind the stuck callback
        await asyncio.wait_for(entered.wait(), 5)
        started = asyncio.get_running_loop().time()
        await bus.close(nc, "test", timeout_s=1.0)
        return nc.is_closed, asyncio.get_running_loop().time() - started

    closed, took = run_async(asyncio.wait_for(go(), 30))

    assert closed
    assert took < 10, f"close took {took:.1f} s"
