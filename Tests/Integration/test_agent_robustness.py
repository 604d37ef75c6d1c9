"""sds-agent under bad input and load, as real peers see it: grpcio + xds-protos, hyper-h2 speaking raw HTTP/2,
and the CLI as a user runs it.

Every bad input gets a gRPC status or a clean connection close, never a crash or hang, and other clients keep
being served.
"""
from __future__ import annotations

import os
import random
import socket
import stat
import subprocess
import threading

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from sds_client import SECRET_TYPE_URL, SecretStream
from sds_servers import TRUST_DOMAIN, fetch_secrets, fetch_when_served, leaf_serial

WORKLOAD_ID = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/robust"
STREAM_PATH = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets"


@pytest.fixture
def agent(short_dir, sds_agent_bin):
    import sds_servers

    factory = sds_servers.ProcessFactory("agent", [str(sds_agent_bin)], short_dir)
    try:
        server = factory.start("agent", WORKLOAD_ID)
        fetch_when_served(server.socket_path, ["default"])
        yield server
    finally:
        factory.stop_all()


def still_serving(agent) -> None:
    secrets = fetch_secrets(agent.socket_path, ["default", "ROOTCA"])
    assert set(secrets) == {"default", "ROOTCA"}
    agent.check_alive()


class RawH2:
    """A raw HTTP/2 client (hyper-h2) on the agent's socket, for what grpcio will not send."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.flush()

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def grpc_headers(self, stream_id: int, path: str = STREAM_PATH):
        self.conn.send_headers(stream_id, [
            (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "sds-grpc"),
            ("content-type", "application/grpc"), ("te", "trailers")])
        self.flush()

    def send(self, stream_id: int, data: bytes, end: bool = False):
        self.conn.send_data(stream_id, data, end_stream=end)
        self.flush()

    def events_until(self, predicate, limit: int = 200):
        """Reads until `predicate(event)` holds; returns all events seen. The socket timeout bounds the wait."""
        seen = []
        for _ in range(limit):
            data = self.sock.recv(65536)
            if not data:
                seen.append("eof")
                return seen
            for event in self.conn.receive_data(data):
                seen.append(event)
                if predicate(event):
                    self.flush()
                    return seen
            self.flush()
        raise AssertionError(f"condition not met; saw {seen}")

    def close(self):
        self.sock.close()


def trailers_of(events, stream_id):
    for event in events:
        if isinstance(event, (h2.events.TrailersReceived, h2.events.ResponseReceived)) and event.stream_id == stream_id:
            headers = dict(event.headers)
            if "grpc-status" in headers:
                return headers
    return None


def test_a_100_mb_length_prefix_gets_resource_exhausted_at_once(agent):
    raw = RawH2(str(agent.socket_path))
    raw.grpc_headers(1)
    # The 5-byte prefix announces 100 MB; nothing follows. The agent must answer from the prefix alone.
    raw.send(1, b"\x00" + (100 * 1024 * 1024).to_bytes(4, "big"))
    events = raw.events_until(lambda e: isinstance(e, (h2.events.TrailersReceived, h2.events.ResponseReceived))
                              and "grpc-status" in dict(e.headers))
    status = trailers_of(events, 1)
    assert status["grpc-status"] == str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
    raw.close()
    still_serving(agent)


def test_a_garbage_message_gets_invalid_argument(agent):
    raw = RawH2(str(agent.socket_path))
    raw.grpc_headers(1)
    garbage = bytes(random.Random(7).getrandbits(8) for _ in range(64))
    raw.send(1, b"\x00" + len(garbage).to_bytes(4, "big") + garbage)
    events = raw.events_until(lambda e: hasattr(e, "headers") and "grpc-status" in dict(e.headers))
    status = trailers_of(events, 1)
    assert status["grpc-status"] == str(grpc.StatusCode.INVALID_ARGUMENT.value[0])
    assert "DiscoveryRequest" in status.get("grpc-message", "")
    raw.close()
    still_serving(agent)


def test_garbage_bytes_instead_of_http2_close_the_connection_cleanly(agent):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(agent.socket_path))
    sock.sendall(bytes(random.Random(11).getrandbits(8) for _ in range(4096)))
    received = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break  # the agent closed the connection (after its SETTINGS and a GOAWAY)
        received += chunk
    sock.close()
    assert received, "the agent spoke HTTP/2 (SETTINGS/GOAWAY) before closing"
    still_serving(agent)


def test_unknown_method_is_unimplemented(agent):
    with grpc.insecure_channel(f"unix:{agent.socket_path}") as channel:
        call = channel.unary_unary("/envoy.service.secret.v3.SecretDiscoveryService/NoSuchMethod",
                                   request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as failure:
            call(b"", timeout=5)
        assert failure.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_wrong_type_url_is_invalid_argument(agent):
    with grpc.insecure_channel(f"unix:{agent.socket_path}") as channel:
        stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
        with pytest.raises(grpc.RpcError) as failure:
            stub.FetchSecrets(discovery_pb2.DiscoveryRequest(
                resource_names=["default"], type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster"), timeout=5)
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_100_concurrent_streams_on_one_connection(agent):
    with grpc.insecure_channel(f"unix:{agent.socket_path}") as channel:
        stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
        results: list = [None] * 100
        done = threading.Barrier(101)

        def run(i):
            name = "default" if i % 2 == 0 else "ROOTCA"
            try:
                calls = stub.StreamSecrets(
                    iter([discovery_pb2.DiscoveryRequest(resource_names=[name], type_url=SECRET_TYPE_URL)]), timeout=20)
                response = next(calls)
                results[i] = (name, response.resources[0])
                calls.cancel()
            except Exception as e:  # noqa: BLE001 - recorded for the assertion below
                results[i] = e
            done.wait()

        for i in range(100):
            threading.Thread(target=run, args=(i,), daemon=True).start()
        done.wait(timeout=60)
    assert all(isinstance(r, tuple) for r in results), [r for r in results if not isinstance(r, tuple)][:3]
    still_serving(agent)


def test_sotw_stale_nonce_is_ignored(agent):
    stream = SecretStream(agent.socket_path, delta=False)
    stream.send(resource_names=["default"])
    first = stream.recv()
    stream.send(response_nonce=first.nonce, version_info=first.version_info, resource_names=["default"])
    agent.rotate()
    second = stream.recv()
    assert second.nonce != first.nonce
    # A request on the old nonce asking for other names is stale: ignored, not answered.
    stream.send(response_nonce=first.nonce, version_info=first.version_info, resource_names=["ROOTCA"])
    # Barrier: ACK the latest, then rotate; the next response must be `default` again, with nothing in between.
    stream.send(response_nonce=second.nonce, version_info=second.version_info, resource_names=["default"])
    agent.rotate()
    third = stream.recv()
    assert [r.type_url for r in third.resources] and third.version_info not in (first.version_info, second.version_info)
    from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
    secret = secret_pb2.Secret()
    third.resources[0].Unpack(secret)
    assert secret.name == "default"
    stream.close()


def test_socket_is_created_0600(agent):
    mode = stat.S_IMODE(os.stat(agent.socket_path).st_mode)
    assert mode == 0o600


def test_socket_mode_flag(short_dir, sds_agent_bin):
    import sds_servers

    factory = sds_servers.ProcessFactory("agent", [str(sds_agent_bin)], short_dir)
    try:
        server = factory.start("agent", WORKLOAD_ID, extra_args=["--socket-mode", "0660"])
        assert stat.S_IMODE(os.stat(server.socket_path).st_mode) == 0o660
    finally:
        factory.stop_all()


def test_sighup_rotation_keeps_serving_other_names(agent):
    before = leaf_serial(fetch_secrets(agent.socket_path, ["default"])["default"])
    agent.rotate()
    stream = SecretStream(agent.socket_path, delta=True)
    stream.send(resource_names_subscribe=["default"])
    after = stream.recv()
    stream.close()
    assert after.resources[0].name == "default"
    assert before  # the serial existed before the rotation


@pytest.mark.parametrize("args, flag", [
    (["--svid-ttl", "0"], "--svid-ttl"),
    (["--trust-domain", "Bad_Domain"], "--trust-domain"),
    (["--socket", "/proc/no-such-dir/agent.sock"], "--socket"),
    (["--rotate-ratio", "2"], "--rotate-ratio"),
    (["--log-format", "xml"], "--log-format"),
    (["--no-such-flag"], "--no-such-flag"),
    (["--spiffe-id", "spiffe://other.org/ns/a/sa/b", "--trust-domain", "example.org"], "--spiffe-id"),
])
def test_bad_flags_exit_2_with_one_line_naming_the_flag(sds_agent_bin, short_dir, args, flag):
    base = ["run", "--state-dir", str(short_dir / "state")]
    if "--socket" not in args:
        base += ["--socket", str(short_dir / "s.sock")]
    result = subprocess.run([str(sds_agent_bin), *base, *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert flag in lines[0]
    assert not os.path.exists(short_dir / "s.sock")


def test_corrupt_state_dir_is_a_one_line_error_naming_the_file(sds_agent_bin, short_dir):
    state = short_dir / "state"
    state.mkdir()
    (state / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\ntruncated")
    (state / "ca.key").write_text("-----BEGIN PRIVATE KEY-----\ntruncated")
    result = subprocess.run(
        [str(sds_agent_bin), "run", "--socket", str(short_dir / "s.sock"), "--state-dir", str(state),
         "--trust-domain", TRUST_DOMAIN, "--log-format", "json"],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "ca.pem" in result.stderr or "ca.key" in result.stderr
    assert not os.path.exists(short_dir / "s.sock"), "no socket is left behind"
    assert (state / "ca.key").read_text().endswith("truncated"), "the state dir is never silently replaced"


def test_socket_answers_a_grpc_dial_within_1s_before_any_svid_exists(short_dir, sds_agent_bin):
    """istio's pilot-agent dials the socket with a 1 s blocking gRPC dial and DELETES it if that fails: the agent must
    bind and complete the HTTP/2 handshake before it has an identity. With an upstream that does not exist yet, no SVID
    can exist; the dial must still succeed, and a request for `default` is held (deadline), never answered with an
    error (Envoy would back off for 30 s)."""
    import sds_servers
    import time

    factory = sds_servers.ProcessFactory("agent", [str(sds_agent_bin)], short_dir)
    try:
        server = factory.start(
            "agent", WORKLOAD_ID,
            extra_args=["--issuer", "workload-api", "--upstream-socket", f"unix://{short_dir}/no-upstream.sock"])
        started = time.monotonic()
        with grpc.insecure_channel(f"unix:{server.socket_path}") as channel:
            grpc.channel_ready_future(channel).result(timeout=1.0)
            assert time.monotonic() - started < 1.0
            stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
            with pytest.raises(grpc.RpcError) as held:
                stub.FetchSecrets(
                    discovery_pb2.DiscoveryRequest(resource_names=["default"], type_url=SECRET_TYPE_URL), timeout=1.0)
            assert held.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, "held, not refused"
        server.check_alive()
    finally:
        factory.stop_all()


def test_h2load_fetches_over_many_connections_and_streams(agent, short_dir):
    """nghttp2's own load client (h2load, Debian nghttp2-client) against the agent's HTTP/2 server: 2,000 unary
    FetchSecrets over 10 connections with 20 concurrent streams each; every one must succeed."""
    import shutil

    h2load = shutil.which("h2load")
    assert h2load, "h2load missing: `make deps` installs nghttp2-client"
    request = discovery_pb2.DiscoveryRequest(resource_names=["default"], type_url=SECRET_TYPE_URL).SerializeToString()
    body = short_dir / "fetch.bin"
    body.write_bytes(b"\x00" + len(request).to_bytes(4, "big") + request)
    result = subprocess.run(
        [h2load, "-B", f"unix:{agent.socket_path}", "-n", "2000", "-c", "10", "-m", "20", "-d", str(body),
         "-H", "content-type: application/grpc", "-H", "te: trailers",
         "http://sds-grpc/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2000 succeeded, 0 failed, 0 errored" in result.stdout, result.stdout
    still_serving(agent)
