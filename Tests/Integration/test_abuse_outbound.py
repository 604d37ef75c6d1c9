"""sds-agent's outbound side against hostile and stuck peers (issue #11), as real peers see it.

- A peer that opens hundreds of streams and never reads costs one response per stream however often secrets rotate
  (RSS from /proc), while a well-behaved grpcio client keeps being served at once; the stalled peer is cut off after
  `--write-stall-timeout`, or within a second when it makes more than `--max-queued-bytes` wait and takes none of it.
- `grpc-timeout` is honoured: a held call ends DEADLINE_EXCEEDED when it runs out; a malformed one is INTERNAL.
- SIGTERM drains: the two-step GOAWAY, every stream's UNAVAILABLE trailers reach its client, exit 0 well within
  `--drain-timeout`.

Every loop is bounded in count and time (socket timeouts, deadlines).
"""
from __future__ import annotations

import queue
import socket
import statistics
import struct
import time

import grpc
import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from envoy.service.discovery.v3 import discovery_pb2

from sds_client import NODE, SECRET_TYPE_URL, SecretStream
from sds_servers import TRUST_DOMAIN, fetch_secrets, fetch_when_served

WORKLOAD_ID = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/abuse"
STREAM_PATH = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets"
FETCH_PATH = "/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets"
DELTA_PATH = "/envoy.service.secret.v3.SecretDiscoveryService/DeltaSecrets"
# A name the agent serves but can never produce: a file-backed certificate whose files do not exist (held, not
# refused, as istio-agent holds mounted files that have not appeared yet).
# Inside a default --file-dirs directory but never created: held (as a mount that has not appeared yet), not refused.
NEVER_READY = "file-cert:/etc/certs/sds-it-never/cert.pem~/etc/certs/sds-it-never/key.pem"

GRPC_DEADLINE_EXCEEDED = 4
GRPC_INTERNAL = 13
GOAWAY_NOTICE_LAST_STREAM = 2**31 - 1


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def grpc_message(request) -> bytes:
    body = request.SerializeToString()
    return b"\x00" + len(body).to_bytes(4, "big") + body


def discovery_request(names: list[str]) -> bytes:
    return grpc_message(discovery_pb2.DiscoveryRequest(node=NODE, resource_names=names, type_url=SECRET_TYPE_URL))


def grpc_headers(path: str, extra: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    return [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "sds-grpc"),
            ("content-type", "application/grpc"), ("te", "trailers"), *(extra or [])]


class RawPeer:
    """A raw HTTP/2 client (hyper-h2) on the agent's socket; `receive_window` is its SETTINGS_INITIAL_WINDOW_SIZE."""

    def __init__(self, path, receive_window: int = 65535):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: receive_window})
        self.conn.initiate_connection()
        self.flush()
        # The server's SETTINGS first, so what follows obeys its limits.
        self.events_until(lambda e: isinstance(e, h2.events.RemoteSettingsChanged))

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def events_until(self, predicate, limit: int = 500):
        seen = []
        for _ in range(limit):
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError(f"connection closed; saw {seen}")
            for event in self.conn.receive_data(data):
                seen.append(event)
                if predicate(event):
                    self.flush()
                    return seen
            self.flush()
        raise AssertionError(f"condition not met; saw {seen}")

    def start_call(self, path: str, message: bytes, end: bool, extra: list[tuple[str, str]] | None = None) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, grpc_headers(path, extra))
        self.conn.send_data(stream_id, message, end_stream=end)
        self.flush()
        return stream_id

    def status_of(self, stream_id: int) -> tuple[dict, float]:
        """Waits for the stream's grpc-status (trailers or trailers-only); returns the headers and when they came."""
        def done(event):
            return (isinstance(event, (h2.events.TrailersReceived, h2.events.ResponseReceived))
                    and event.stream_id == stream_id and "grpc-status" in dict(event.headers))
        events = self.events_until(done)
        return dict(events[-1].headers), time.monotonic()

    def wait_closed(self, timeout: float) -> float:
        """Reads (and discards) until the agent closes the connection; returns when. Bounded by `timeout`."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                if not self.sock.recv(65536):
                    return time.monotonic()
            except (ConnectionResetError, BrokenPipeError):
                return time.monotonic()
            except socket.timeout:
                break
        raise AssertionError(f"the agent did not close the connection within {timeout}s")

    def close(self):
        self.sock.close()


def open_stalled_peer(path, streams: int) -> RawPeer:
    """`streams` streams for `default` (SotW and Delta in turn) on one connection with a 1-byte receive window, then
    no more reads."""
    peer = RawPeer(path, receive_window=1)
    sotw = discovery_request(["default"])
    delta = grpc_message(discovery_pb2.DeltaDiscoveryRequest(
        node=NODE, type_url=SECRET_TYPE_URL, resource_names_subscribe=["default"]))
    for index in range(streams):
        stream_id = peer.conn.get_next_available_stream_id()
        peer.conn.send_headers(stream_id, grpc_headers(DELTA_PATH if index % 2 else STREAM_PATH))
        peer.conn.send_data(stream_id, delta if index % 2 else sotw)
    peer.flush()
    return peer


def ack(stream: SecretStream, response) -> None:
    stream.send(version_info=response.version_info, resource_names=["default"], response_nonce=response.nonce)


# ------------------------------------------------------------------------------------------------------------------
# (a) A peer that never reads
# ------------------------------------------------------------------------------------------------------------------


def test_a_peer_that_never_reads_costs_bounded_memory_and_is_cut_off_after_the_stall_timeout(agent_factory):
    stall = 10.0
    # As many streams as one connection may open (SETTINGS_MAX_CONCURRENT_STREAMS, 128).
    streams, rotations = 128, 200
    agent = agent_factory.start("agent", WORKLOAD_ID, ["--write-stall-timeout", f"{stall:g}s", "--log-level", "info"])
    fetch_when_served(agent.socket_path, ["default"])
    pid = agent.process.pid
    with SecretStream(agent.socket_path, delta=False) as good:
        good.send(resource_names=["default"])
        ack(good, good.recv())
        before = rss_kb(pid)

        stalled = open_stalled_peer(agent.socket_path, streams)
        stalled_since = time.monotonic()
        latencies = []
        for _ in range(rotations):
            sent = time.monotonic()
            agent.rotate()
            response = good.recv(timeout=5)
            latencies.append(time.monotonic() - sent)
            ack(good, response)
        after = rss_kb(pid)
        measured_at = time.monotonic() - stalled_since
        assert measured_at < stall, f"rotations took {measured_at:.1f}s: the stalled peer may be gone already"

        growth_mb = (after - before) / 1024
        p95 = statistics.quantiles(latencies, n=20)[-1]
        print(f"\nRSS {before / 1024:.1f} MB -> {after / 1024:.1f} MB (+{growth_mb:.1f} MB) over {rotations} "
              f"rotations with {streams} stalled streams; push to the good client: median "
              f"{statistics.median(latencies) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")
        assert growth_mb < 8, f"RSS grew {growth_mb:.1f} MB"
        assert p95 <= 0.050, f"the good client waited {p95 * 1000:.1f} ms (p95)"

        closed_at = stalled.wait_closed(timeout=2 * stall + 10)
        waited = closed_at - stalled_since
        assert waited >= stall - 0.5, f"cut off after {waited:.1f}s, before the {stall}s stall timeout"
        stalled.close()

        # The good client is still served.
        agent.rotate()
        ack(good, good.recv(timeout=5))
    agent.check_alive()


def test_a_peer_making_more_than_the_budget_wait_is_cut_off_at_once(agent_factory):
    agent = agent_factory.start("agent", WORKLOAD_ID, ["--max-queued-bytes", "65536", "--log-level", "info"])
    fetch_when_served(agent.socket_path, ["default"])
    # 128 responses (the per-connection stream cap) of ~2 KB wait behind a 1-byte window: far more than 64 KiB. The
    # stall timeout (30 s) is not it.
    stalled = open_stalled_peer(agent.socket_path, 128)
    opened = time.monotonic()
    closed_at = stalled.wait_closed(timeout=10)
    assert closed_at - opened < 10
    stalled.close()
    assert set(fetch_secrets(agent.socket_path, ["default", "ROOTCA"])) == {"default", "ROOTCA"}


# ------------------------------------------------------------------------------------------------------------------
# (b) grpc-timeout
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def agent(agent_factory):
    server = agent_factory.start("agent", WORKLOAD_ID)
    fetch_when_served(server.socket_path, ["default"])
    return server


def test_a_held_fetch_gets_deadline_exceeded_when_its_grpc_timeout_runs_out(agent):
    peer = RawPeer(agent.socket_path)
    started = time.monotonic()
    stream_id = peer.start_call(FETCH_PATH, discovery_request([NEVER_READY]), end=True,
                                extra=[("grpc-timeout", "200m")])
    status, at = peer.status_of(stream_id)
    waited = at - started
    assert status["grpc-status"] == str(GRPC_DEADLINE_EXCEEDED), status
    assert 0.19 <= waited <= 0.6, f"answered after {waited * 1000:.0f} ms"
    peer.close()


def test_a_stream_gets_deadline_exceeded_when_its_grpc_timeout_runs_out(agent):
    peer = RawPeer(agent.socket_path)
    started = time.monotonic()
    stream_id = peer.start_call(STREAM_PATH, discovery_request(["default"]), end=False,
                                extra=[("grpc-timeout", "300000u")])
    status, at = peer.status_of(stream_id)
    assert status["grpc-status"] == str(GRPC_DEADLINE_EXCEEDED), status
    assert 0.29 <= at - started <= 0.7
    peer.close()


@pytest.mark.parametrize("value", ["1.5S", "123456789m", "5s", "-1S", "S"])
def test_a_malformed_grpc_timeout_is_internal(agent, value):
    peer = RawPeer(agent.socket_path)
    stream_id = peer.start_call(FETCH_PATH, discovery_request(["default"]), end=True, extra=[("grpc-timeout", value)])
    status, _ = peer.status_of(stream_id)
    assert status["grpc-status"] == str(GRPC_INTERNAL), status
    assert "grpc-timeout" in status.get("grpc-message", "")
    peer.close()


def test_a_fetch_answered_before_its_grpc_timeout_is_ok(agent):
    peer = RawPeer(agent.socket_path)
    stream_id = peer.start_call(FETCH_PATH, discovery_request(["default"]), end=True, extra=[("grpc-timeout", "5S")])
    status, _ = peer.status_of(stream_id)
    assert status["grpc-status"] == "0", status
    peer.close()


# ------------------------------------------------------------------------------------------------------------------
# (c) SIGTERM drain
# ------------------------------------------------------------------------------------------------------------------


def final_status(stream: SecretStream, timeout: float):
    """The status a grpcio stream ended with (its reader thread queues the RpcError), waiting at most `timeout`."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            item = stream._responses.get(timeout=left)
        except queue.Empty:
            break
        if isinstance(item, grpc.RpcError):
            return item.code()
        if not isinstance(item, (discovery_pb2.DiscoveryResponse, discovery_pb2.DeltaDiscoveryResponse)):
            return None  # ended without a status
    raise AssertionError(f"no final status within {timeout}s")


def read_goaways_until_closed(peer: RawPeer, timeout: float) -> list[int]:
    """Below hyper-h2 (which stops at the first GOAWAY): reads frames until EOF, answers PINGs, and returns the
    last-stream-id of every GOAWAY."""
    buffer = b""
    goaways = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        peer.sock.settimeout(left)
        try:
            data = peer.sock.recv(65536)
        except ConnectionResetError:
            return goaways
        if not data:
            return goaways
        buffer += data
        while len(buffer) >= 9:
            length = int.from_bytes(buffer[:3], "big")
            if len(buffer) < 9 + length:
                break
            kind, flags = buffer[3], buffer[4]
            payload = buffer[9:9 + length]
            buffer = buffer[9 + length:]
            if kind == 0x7:  # GOAWAY
                goaways.append(int.from_bytes(payload[:4], "big") & 0x7FFF_FFFF)
            elif kind == 0x6 and not flags & 0x1:  # PING: answer it, as any client would
                peer.sock.sendall(struct.pack(">I", 8)[1:] + bytes([0x6, 0x1]) + b"\0\0\0\0" + payload)
    raise AssertionError(f"the agent did not close within {timeout}s; GOAWAYs so far {goaways}")


def test_sigterm_drains_every_stream_with_unavailable_and_exits_zero_within_the_drain_timeout(agent_factory):
    drain = 5.0
    agent = agent_factory.start("agent", WORKLOAD_ID, ["--drain-timeout", f"{drain:g}s"])
    fetch_when_served(agent.socket_path, ["default"])
    clients = [SecretStream(agent.socket_path, delta=delta) for delta in (False, True, False, True)]
    try:
        for client in clients:
            if client.delta:
                client.send(resource_names_subscribe=["default", "ROOTCA"])
            else:
                client.send(resource_names=["default"])
            assert client.recv().resources
        raw = RawPeer(agent.socket_path)
        raw_stream = raw.start_call(STREAM_PATH, discovery_request(["default"]), end=False)
        raw.events_until(lambda e: isinstance(e, h2.events.DataReceived) and e.stream_id == raw_stream)

        started = time.monotonic()
        agent.process.terminate()
        goaways = read_goaways_until_closed(raw, timeout=drain + 5)
        assert goaways[:1] == [GOAWAY_NOTICE_LAST_STREAM], goaways
        assert len(goaways) == 2 and goaways[1] == raw_stream, f"two-step GOAWAY expected, got {goaways}"
        for client in clients:
            assert final_status(client, timeout=drain) == grpc.StatusCode.UNAVAILABLE
        code = agent.process.wait(timeout=drain + 5)
        took = time.monotonic() - started
        agent.process = None
        assert code == 0
        assert took < drain, f"the drain took {took:.1f}s: it waited for its timeout instead of its peers"
        raw.close()
    finally:
        for client in clients:
            client.close()


@pytest.mark.parametrize("value", ["inf", "infinity", "1e300", "601s", "nan"])
def test_an_unbounded_drain_timeout_is_refused_with_exit_2(sds_agent_bin, short_dir, value):
    import subprocess

    result = subprocess.run(
        [str(sds_agent_bin), "run", "--socket", str(short_dir / "a.sock"), "--state-dir", str(short_dir / "state"),
         "--trust-domain", TRUST_DOMAIN, "--drain-timeout", value],
        capture_output=True, text=True, timeout=10)
    assert result.returncode == 2
    assert "--drain-timeout" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
