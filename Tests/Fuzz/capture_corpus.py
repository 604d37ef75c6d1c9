"""Regenerates the fuzz seed corpora (Tests/Fuzz/Corpus/<target>/) from real traffic and real certificates.

    SDS_AGENT=.build/release/sds-agent .venv/bin/python Tests/Fuzz/capture_corpus.py [corpus dir]

- server-request-path: the bytes real clients wrote to the agent's socket, one file per connection: Envoy 1.40
  (every Examples/ bootstrap style, SotW and Delta, through a rotation) and grpcio + xds-protos clients (Fetch,
  SotW with ACK and NACK, Delta subscribe/unsubscribe, names never served, a wrong type URL). They are recorded by
  a capture proxy on a Unix socket between the clients and an unmodified sds-agent (nothing in the agent captures).
- wire-decoders: each gRPC message of those connections, both directions (split out with hyper-h2), plus the
  Workload API messages below.
- workload-api-responses: the X509SVIDResponse / X509BundlesResponse messages the repo's Workload API server
  (py-spiffe's servicer, Tests/Integration/workload_api_server.py) streams, as records for the fuzz target.
- pki-parsing: certificates, chains and keys from that server's CA and from the agent's own CA, in every form the
  agent parses (PEM, DER, PKCS#8), and whole SVIDs in the Workload API and file forms.
- text-parsing: the secret names the clients asked for, SPIFFE IDs and durations.

A rerun replaces every seed-* file (new certificates, nonces and versions make new bytes); the regression inputs
the fuzzer found (crash-*, see docs/security.md) are kept.
"""
from __future__ import annotations

import datetime
import hashlib
import os
import pathlib
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "Tests" / "Integration"))

import grpc  # noqa: E402
import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from envoy.service.discovery.v3 import discovery_pb2  # noqa: E402
from envoy.service.secret.v3 import sds_pb2_grpc  # noqa: E402

import envoy_harness  # noqa: E402
import sds_servers  # noqa: E402
import workload_api_server as wapi  # noqa: E402

CORPUS = HERE / "Corpus"
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
TRUST_DOMAIN = "example.org"
SPIFFE_ID = "spiffe://example.org/ns/default/sa/fuzz"
# Seeds stay small: the fuzzer mutates them, and `make test` replays them all.
MAX_SEED_BYTES = 16 * 1024
EPOCH_2020 = 1_577_836_800


def write_seed(target: str, data: bytes) -> None:
    data = data[:MAX_SEED_BYTES]
    if not data:
        return
    directory = CORPUS / target
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ("seed-" + hashlib.sha1(data).hexdigest()[:16])).write_bytes(data)


# ------------------------------------------------------------------------------------------------------------------
# The capture proxy
# ------------------------------------------------------------------------------------------------------------------


class CaptureProxy:
    """Accepts on `listen_path`, forwards each connection to `upstream_path`, records both directions."""

    def __init__(self, listen_path: str, upstream_path: str):
        self.listen_path, self.upstream_path = listen_path, upstream_path
        self.connections: list[dict[str, bytearray]] = []
        self.pumps: list[threading.Thread] = []
        self.lock = threading.Lock()
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(listen_path)
        self.server.listen(64)
        self.stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopping:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.upstream_path)
            record = {"c2s": bytearray(), "s2c": bytearray()}
            with self.lock:
                self.connections.append(record)
            for args in ((client, upstream, record["c2s"]), (upstream, client, record["s2c"])):
                pump = threading.Thread(target=self._pump, args=args, daemon=True)
                self.pumps.append(pump)
                pump.start()

    def _pump(self, source: socket.socket, sink: socket.socket, recorded: bytearray) -> None:
        try:
            while data := source.recv(65536):
                with self.lock:
                    recorded += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self, timeout: float = 10.0) -> None:
        """Stops accepting and waits (bounded) until every recorded connection has closed."""
        self.stopping = True
        self.server.close()
        deadline = time.monotonic() + timeout
        for pump in list(self.pumps):
            pump.join(max(0.0, deadline - time.monotonic()))


# ------------------------------------------------------------------------------------------------------------------
# Clients
# ------------------------------------------------------------------------------------------------------------------


def run_envoys(envoy_bin: str, work: pathlib.Path, socket_path: str, agent: subprocess.Popen) -> None:
    for style in ("istio", "spire", "spire-all"):
        for api_type in ("GRPC", "DELTA_GRPC"):
            stack: list = []
            try:
                pair = envoy_harness.start_mtls_pair(
                    # One agent, one identity: both Envoys are that workload (SPIRE-style names are its ID).
                    envoy_bin, work / f"{style}-{api_type}", style, api_type, TRUST_DOMAIN, socket_path, SPIFFE_ID,
                    socket_path, SPIFFE_ID, stack)
                serials = pair.server.leaf_serials()
                agent.send_signal(signal.SIGHUP)  # a rotation: Envoy ACKs the push
                envoy_harness.wait_for(lambda: pair.server.leaf_serials() != serials, 30, "rotation reaches Envoy")
            finally:
                for envoy in reversed(stack):
                    envoy.stop()
            print(f"captured Envoy {style} {api_type}", flush=True)


def run_grpc_clients(socket_path: str) -> None:
    def request(names, version="", nonce="", type_url=SECRET_TYPE, error=None):
        r = discovery_pb2.DiscoveryRequest(
            version_info=version, resource_names=names, type_url=type_url, response_nonce=nonce)
        r.node.id = "fuzz-capture"
        r.node.cluster = "grpcio"
        if error:
            r.error_detail.code = 3
            r.error_detail.message = error
        return r

    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
        for names in (["default"], ["ROOTCA"], ["default", "ROOTCA", "ALL"], [SPIFFE_ID, "spiffe://example.org"],
                      ["kubernetes://nope"], ["file-root:system"]):
            try:
                stub.FetchSecrets(request(names), timeout=5)
            except grpc.RpcError:
                pass
        try:
            stub.FetchSecrets(request(["default"], type_url="type.googleapis.com/wrong"), timeout=5)
        except grpc.RpcError:
            pass

    # SotW: request, ACK, NACK, change of names, then the client goes away.
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
        sent: list = []
        cond = threading.Condition()

        def requests():
            yield request(["default", "ROOTCA"])
            with cond:
                cond.wait_for(lambda: sent, 5)
            first = sent[0]
            yield request(["default", "ROOTCA"], first.version_info, first.nonce)
            yield request(["default", "ROOTCA"], first.version_info, first.nonce, error="bad certificate")
            yield request(["ALL"], first.version_info, first.nonce)

        call = stub.StreamSecrets(requests(), timeout=5)
        try:
            for response in call:
                with cond:
                    sent.append(response)
                    cond.notify_all()
                if len(sent) >= 2:
                    call.cancel()
        except grpc.RpcError:
            pass

    # Delta: subscribe, ACK, unsubscribe, subscribe a name never served.
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
        got: list = []
        cond = threading.Condition()

        def delta_requests():
            r = discovery_pb2.DeltaDiscoveryRequest(type_url=SECRET_TYPE, resource_names_subscribe=["default", "ROOTCA"])
            r.node.id = "fuzz-capture"
            yield r
            with cond:
                cond.wait_for(lambda: got, 5)
            yield discovery_pb2.DeltaDiscoveryRequest(type_url=SECRET_TYPE, response_nonce=got[0].nonce)
            yield discovery_pb2.DeltaDiscoveryRequest(
                type_url=SECRET_TYPE, resource_names_unsubscribe=["ROOTCA"],
                resource_names_subscribe=["spiffe://other.org/x"], initial_resource_versions={"default": "1"})

        call = stub.DeltaSecrets(delta_requests(), timeout=5)
        try:
            for response in call:
                with cond:
                    got.append(response)
                    cond.notify_all()
                if len(got) >= 2:
                    call.cancel()
        except grpc.RpcError:
            pass
    print("captured grpcio clients", flush=True)


# ------------------------------------------------------------------------------------------------------------------
# Splitting connections into gRPC messages
# ------------------------------------------------------------------------------------------------------------------


def grpc_messages(c2s: bytes, s2c: bytes) -> list[bytes]:
    """Every length-prefixed gRPC message of one recorded connection, both directions."""
    messages: list[bytes] = []
    for data, client_side in ((c2s, False), (s2c, True)):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=client_side, validate_inbound_headers=False))
        conn.initiate_connection()
        streams: dict[int, bytearray] = {}
        try:
            events = conn.receive_data(bytes(data))
        except Exception:  # a truncated tail is fine: keep what parsed
            events = []
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                streams.setdefault(event.stream_id, bytearray()).extend(event.data)
        for buffer in streams.values():
            while len(buffer) >= 5:
                length = struct.unpack(">I", buffer[1:5])[0]
                messages.append(bytes(buffer[5:5 + length]))
                del buffer[:5 + length]
    return messages


# ------------------------------------------------------------------------------------------------------------------
# Workload API, PKI and text seeds
# ------------------------------------------------------------------------------------------------------------------


def now_field() -> bytes:
    return struct.pack("<I", int(time.time()) - EPOCH_2020)


def record(opcode: int, payload: bytes = b"", random_byte: int = 0x80) -> bytes:
    if opcode in (0, 1):
        return bytes([opcode, random_byte]) + struct.pack("<H", len(payload)) + payload
    return bytes([opcode, random_byte]) + payload


def workload_api_seeds() -> list[bytes]:
    """Records for the workload-api-responses target; also returns the raw messages for wire-decoders."""
    ca = wapi.TestCA(TRUST_DOMAIN)
    other = wapi.TestCA("other.org")
    state = wapi.WorkloadAPIState(SPIFFE_ID, ca, datetime.timedelta(hours=1))
    svid = state.svid_response().SerializeToString()
    bundles = state.bundles_response().SerializeToString()
    state.set_federated("spiffe://other.org", other.bundle_der)
    svid_federated = state.svid_response().SerializeToString()
    bundles_federated = state.bundles_response().SerializeToString()
    state.rotate()
    svid_rotated = state.svid_response().SerializeToString()
    state.set_federated("spiffe://other.org", None)
    bundles_removed = state.bundles_response().SerializeToString()
    messages = [svid, bundles, svid_federated, bundles_federated, svid_rotated, bundles_removed]
    for m in messages:
        write_seed("wire-decoders", m)
    t = now_field()
    seeds = [
        t + record(0, svid),
        t + record(0, svid) + record(1, bundles),
        t + record(0, svid_federated) + record(1, bundles_federated) + record(0, svid_rotated) + record(1, bundles_removed),
        t + record(0, svid) + record(2, bytes([14, 0])) + record(3) + record(0, svid_rotated),  # UNAVAILABLE, reconnect
        t + record(2, bytes([7, 0])) + record(3) + record(0, svid),  # PERMISSION_DENIED first (no identity yet)
        t + record(5) + record(3) + record(4) + record(3) + record(0, svid),  # silent peer, lost connection
        t + record(0, svid) + record(0x80, svid_rotated) + record(6) + record(7),  # stale attempt, failed dial
        t + record(1, bundles_federated) + record(0, svid) + record(1, bundles),
        t + record(0, svid[: len(svid) // 2]) + record(3) + record(0, svid),  # a truncated message
    ]
    for seed in seeds:
        write_seed("workload-api-responses", seed)
    return [svid, svid_rotated]


def pki_seeds(agent_state: pathlib.Path) -> None:
    ca = wapi.TestCA(TRUST_DOMAIN)
    leaf, key_der = ca.issue(SPIFFE_ID)
    leaf_der = leaf.public_bytes(serialization.Encoding.DER)
    leaf_pem = leaf.public_bytes(serialization.Encoding.PEM)
    root_der = ca.bundle_der
    root_pem = ca.cert.public_bytes(serialization.Encoding.PEM)
    key_pem = serialization.load_der_private_key(key_der, None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    t = now_field()
    seeds = [
        b"\x00" + leaf_pem, b"\x00" + leaf_pem + root_pem, b"\x01" + leaf_der, b"\x01" + leaf_der + root_der,
        b"\x02" + key_der, b"\x03" + key_pem,
        b"\x04" + t + struct.pack("<H", len(leaf_der)) + leaf_der + struct.pack("<H", len(key_der)) + key_der + root_der,
        b"\x05" + t + leaf_pem + key_pem + root_pem,
        b"\x07" + root_pem,
    ]
    # The agent's own CA (its state dir) and a CSR made by openssl.
    for path in sorted(agent_state.rglob("*.pem")):
        text = path.read_bytes()
        seeds.append((b"\x03" if b"PRIVATE KEY" in text else b"\x00") + text)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-subj", "/O=fuzz", "-addext", f"subjectAltName=URI:{SPIFFE_ID}", "-keyout", f"{tmp}/k.pem",
                        "-outform", "DER", "-out", f"{tmp}/csr.der"], check=True, capture_output=True)
        seeds.append(b"\x06" + pathlib.Path(f"{tmp}/csr.der").read_bytes())
    for seed in seeds:
        write_seed("pki-parsing", seed)


def text_seeds(names: set[str]) -> None:
    texts = set(names) | {
        "spiffe://example.org/ns/default/sa/fuzz", "spiffe://example.org", "example.org", "spiffe://EXAMPLE.org/x",
        "spiffe://example.org:8080/x", "spiffe://user@example.org/x", "spiffe://example.org/a/../b",
        "spiffe://example.org/a//b", "spiffe://example.org/a/", "spiffe://example.org/x?q#f", "https://example.org/x",
        "file-cert:/etc/certs/cert.pem~/etc/certs/key.pem", "file-root:/etc/certs/root.pem", "file-root:system",
        "1h", "30m", "1h30m", "90s", "500ms", "3600", " 12h ", "1.5h", "1e400", "-1h", "h", "1d",
    }
    for text in texts:
        write_seed("text-parsing", text.encode())


# ------------------------------------------------------------------------------------------------------------------


def main() -> int:
    global CORPUS
    if len(sys.argv) > 1:
        CORPUS = pathlib.Path(sys.argv[1])
    agent_bin = os.environ.get("SDS_AGENT", str(ROOT / ".build" / "release" / "sds-agent"))
    envoy_bin = shutil.which("envoy", path=str(ROOT / ".venv" / "bin")) or "envoy"
    for old in CORPUS.glob("*/seed-*"):
        old.unlink()
    with tempfile.TemporaryDirectory(prefix="fuzzcap", dir="/tmp") as tmp:
        work = pathlib.Path(tmp)
        agent_sock, capture_sock, state = str(work / "agent.sock"), str(work / "capture.sock"), work / "state"
        log = open(work / "agent.log", "wb")
        agent = subprocess.Popen(
            [agent_bin, "run", "--socket", agent_sock, "--state-dir", str(state), "--trust-domain", TRUST_DOMAIN,
             "--spiffe-id", SPIFFE_ID], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            envoy_harness.wait_for(lambda: sds_servers.socket_accepts(agent_sock), 30, "sds-agent to listen")
            proxy = CaptureProxy(capture_sock, agent_sock)
            run_grpc_clients(capture_sock)
            run_envoys(envoy_bin, work, capture_sock, agent)
            proxy.stop()
            names: set[str] = set()
            for connection in proxy.connections:
                write_seed("server-request-path", bytes(connection["c2s"]))
                for message in grpc_messages(bytes(connection["c2s"]), bytes(connection["s2c"])):
                    write_seed("wire-decoders", message)
                    for parse in (discovery_pb2.DiscoveryRequest, discovery_pb2.DeltaDiscoveryRequest):
                        try:
                            request = parse.FromString(message)
                        except Exception:
                            continue
                        names.update(getattr(request, "resource_names", []))
                        names.update(getattr(request, "resource_names_subscribe", []))
            workload_api_seeds()
            pki_seeds(state)
            text_seeds(names)
        finally:
            agent.terminate()
            agent.wait(10)
    for target in sorted(p.name for p in CORPUS.iterdir()):
        files = list((CORPUS / target).iterdir())
        print(f"{target}: {len(files)} files, {sum(f.stat().st_size for f in files)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
