"""Fair and scoped: what one client (or one hostile peer) may take from the agent, and what the agent gives out.

One test per promise, each through real peers (grpcio + xds-protos, py-spiffe, curl, prometheus_client's parser and
promtool, the SPIRE stand-in `workload_api_server.py`, hyper-h2 in `hostile_h2.py`), each printing what it measured:

1. `--issuer workload-api`: FetchJWTSVID is scoped to `--spiffe-id` (the upstream entitles the pod to two IDs).
2. NACK metric labels come from a bounded set; label values are escaped byte by byte; `/metrics` stays small.
3. `jwt-svid:` names: a new name mints only itself; one connection holds at most 32 `jwt-svid:`/`file-*` names.
4. The status listener: at its cap a newcomer takes a silent connection's place; one slot is kept for loopback.
5. The SDS socket: at `--max-connections` the oldest preface-less, then call-less connection makes room.
6. `file-*` names refused for lack of room are served once room frees.
7. Logs: requests cost a summary line; repeated warnings cost a line a minute (the agent's stderr bytes measured).
8. `file-root:` serves certificates only, never a key block.
9. Private key files that others may read stop the start (exit 1, one line).
Then all the hostile clients at once, while an Envoy-like client is served and `/live` answers.

Hostile clients of the combined test run as separate processes (this file as a script: `python
test_fair_and_scoped.py <case> ...`, JSON lines out like `hostile_h2.py`), so the test process stays free to time the
good client. Every loop is bounded in count and time.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import queue
import select
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.rpc import status_pb2
from spiffe._proto import workload_pb2, workload_pb2_grpc

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from sds_client import NODE, SECRET_TYPE_URL, certs_of, pem_of  # noqa: E402
from sds_servers import TRUST_DOMAIN, fetch_when_served  # noqa: E402

WORKLOAD = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/fair"
# The second identity the SPIRE stand-in entitles the pod to (JWT-SVIDs only): never ours to hand out.
SECOND_ID = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/second"
SECURITY_HEADER = ("workload.spiffe.io", "true")
PER_CONNECTION = 32  # SecretDiscoveryService.maxOnDemandNamesPerConnection
FILE_ROOM = 64  # FileAccessPolicy.maxNames
STATUS_CAP = 16  # StatusLimits.defaultMaxConnections
SERVED_WITHIN_S = 0.050
NACK_LABELS = {"default", "ROOTCA", "ALL", WORKLOAD, f"spiffe://{TRUST_DOMAIN}", "file-cert", "file-root", "jwt-svid",
               "federated", "other"}
RUN_TIMEOUT = 15.0


# ------------------------------------------------------------------------------------------------------------------
# Clients
# ------------------------------------------------------------------------------------------------------------------


def own_channel(socket_path) -> grpc.Channel:
    """A channel on a connection of its own: grpcio otherwise shares one connection among the channels of a process
    that have the same target and arguments (its global subchannel pool), and budgets here are per connection."""
    return grpc.insecure_channel(f"unix:{socket_path}", options=[("grpc.use_local_subchannel_pool", 1)])


_END = object()


class Stream:
    """One StreamSecrets or DeltaSecrets call on a given channel (several may share one connection)."""

    def __init__(self, channel: grpc.Channel, delta: bool):
        self.delta = delta
        stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
        self._requests: queue.Queue = queue.Queue()
        self._responses: queue.Queue = queue.Queue()
        self._call = (stub.DeltaSecrets if delta else stub.StreamSecrets)(self._iterate())
        self._first = True
        self.ended: grpc.RpcError | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _iterate(self):
        while (item := self._requests.get()) is not _END:
            yield item

    def _read(self):
        try:
            for response in self._call:
                self._responses.put(response)
        except grpc.RpcError as error:
            self.ended = error
            self._responses.put(error)
        self._responses.put(_END)

    def send(self, **fields):
        if self._first:
            fields.setdefault("node", NODE)
            self._first = False
        fields.setdefault("type_url", SECRET_TYPE_URL)
        if isinstance(fields.get("error_detail"), str):
            fields["error_detail"] = status_pb2.Status(code=13, message=fields["error_detail"])
        cls = discovery_pb2.DeltaDiscoveryRequest if self.delta else discovery_pb2.DiscoveryRequest
        self._requests.put(cls(**fields))

    def recv(self, timeout: float = 10.0):
        try:
            item = self._responses.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no response within {timeout} s") from None
        if item is _END:
            raise AssertionError("stream ended")
        if isinstance(item, grpc.RpcError):
            raise AssertionError(f"stream failed: {item.code()} {item.details()}")
        return item

    def end_status(self, timeout: float = 10.0) -> grpc.StatusCode:
        """Waits for the stream to end; its status (responses before the end are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = self._responses.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"stream still open after {timeout} s") from None
            if isinstance(item, grpc.RpcError):
                return item.code()
            if item is _END:
                return grpc.StatusCode.OK

    def silent(self, window: float) -> bool:
        """Nothing arrives within `window` s (absence cannot be awaited: the one bounded wait)."""
        try:
            item = self._responses.get(timeout=window)
        except queue.Empty:
            return True
        self._responses.put(item)
        return False

    def close(self):
        self._requests.put(_END)
        self._call.cancel()


def fetch(channel: grpc.Channel, names: list[str], timeout: float = 5.0):
    """FetchSecrets → (status code, response or None)."""
    try:
        response = sds_pb2_grpc.SecretDiscoveryServiceStub(channel).FetchSecrets(
            discovery_pb2.DiscoveryRequest(resource_names=names, type_url=SECRET_TYPE_URL, node=NODE),
            timeout=timeout)
        return grpc.StatusCode.OK, response
    except grpc.RpcError as error:
        return error.code(), None


def secrets_of(resources) -> dict[str, secret_pb2.Secret]:
    out = {}
    for r in resources:
        any_secret = r.resource if isinstance(r, discovery_pb2.Resource) else r
        s = secret_pb2.Secret()
        assert any_secret.Unpack(s), any_secret.type_url
        out[s.name] = s
    return out


class EnvoyLike:
    """What Envoy does with an SDS cluster: one connection, one StreamSecrets stream per secret (node on the first
    message, every response ACKed); `fetch()` times a FetchSecrets on that same connection."""

    def __init__(self, socket_path, names=("default", "ROOTCA"), timeout: float = 10.0):
        started = time.monotonic()
        self.names = list(names)
        self.channel = own_channel(socket_path)
        self.streams = {name: Stream(self.channel, delta=False) for name in self.names}
        for name, stream in self.streams.items():
            stream.send(resource_names=[name])
        self.versions = {}
        for name, stream in self.streams.items():
            response = stream.recv(timeout)
            assert list(secrets_of(response.resources)) == [name], response
            stream.send(response_nonce=response.nonce, version_info=response.version_info, resource_names=[name])
            self.versions[name] = response.version_info
        self.first_served_s = time.monotonic() - started

    def fetch(self) -> float:
        started = time.monotonic()
        code, response = fetch(self.channel, self.names)
        assert code == grpc.StatusCode.OK and len(response.resources) == len(self.names), code
        return time.monotonic() - started

    def assert_streams_open(self) -> None:
        for name, stream in self.streams.items():
            assert stream.ended is None, f"the {name} stream ended: {stream.ended.code()} {stream.ended.details()}"

    def next_push_of(self, name: str, timeout: float = 10.0) -> dict[str, secret_pb2.Secret]:
        """The next response on `name`'s stream (ACKed)."""
        response = self.streams[name].recv(timeout)
        self.streams[name].send(response_nonce=response.nonce, version_info=response.version_info,
                                resource_names=[name])
        return secrets_of(response.resources)

    def close(self):
        for stream in self.streams.values():
            stream.close()
        self.channel.close()


def wait_until(predicate, timeout: float, what: str, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def curl(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
    """(HTTP status, body) as curl reports them; status 0 when curl got no answer."""
    run = subprocess.run(["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "5",
                          f"http://{host}:{port}{path}"], capture_output=True, timeout=RUN_TIMEOUT)
    body, _, code = run.stdout.rpartition(b"\n")
    return int(code or 0), body


# ------------------------------------------------------------------------------------------------------------------
# Hostile clients: functions used in process by the single tests and as child processes by the combined test
# ------------------------------------------------------------------------------------------------------------------


def jwt_names(prefix: str, start: int, count: int) -> list[str]:
    return [f"jwt-svid:{prefix}-{i}" for i in range(start, start + count)]


def nack_storm(socket_path, total: int, seconds: float, prefix: str = "nack") -> dict:
    """NACKs `total` distinct `jwt-svid:` names on one StreamSecrets stream, 32 at a time (the per-connection
    budget): subscribe a batch, take the response, NACK it while asking for the next batch."""
    channel = own_channel(socket_path)
    stream = Stream(channel, delta=False)
    deadline = time.monotonic() + seconds
    nacked = 0
    try:
        batch = jwt_names(prefix, 0, min(PER_CONNECTION, total))
        stream.send(resource_names=batch)
        while True:
            response = stream.recv(10)
            assert len(response.resources) == len(batch), (len(response.resources), len(batch))
            nacked += len(batch)
            if nacked >= total or time.monotonic() > deadline:
                # The last NACK moves the stream to ROOTCA: its answer says the NACK has been read (and counted).
                stream.send(response_nonce=response.nonce, resource_names=["ROOTCA"], error_detail="rejected")
                assert list(secrets_of(stream.recv(10).resources)) == ["ROOTCA"]
                break
            batch = jwt_names(prefix, nacked, min(PER_CONNECTION, total - nacked))
            stream.send(response_nonce=response.nonce, resource_names=batch, error_detail="rejected")
    finally:
        stream.close()
        channel.close()
    return {"nacked": nacked}


def over_budget(socket_path, count: int, seconds: float) -> dict:
    """FetchSecrets asking 33 fresh `jwt-svid:` names, `count` times: each must end RESOURCE_EXHAUSTED."""
    channel = own_channel(socket_path)
    codes: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    try:
        for i in range(count):
            if time.monotonic() > deadline:
                break
            code, _ = fetch(channel, jwt_names(f"over{i}", 0, PER_CONNECTION + 1))
            codes[code.name] = codes.get(code.name, 0) + 1
    finally:
        channel.close()
    return {"codes": codes}


def headerless(socket_path, count: int, seconds: float) -> dict:
    """Workload API FetchJWTSVID calls without the `workload.spiffe.io` header: each must be INVALID_ARGUMENT."""
    channel = own_channel(socket_path)
    stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
    codes: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    try:
        for _ in range(count):
            if time.monotonic() > deadline:
                break
            try:
                stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=["db"]), timeout=5)
                code = grpc.StatusCode.OK
            except grpc.RpcError as error:
                code = error.code()
            codes[code.name] = codes.get(code.name, 0) + 1
    finally:
        channel.close()
    return {"codes": codes}


def big_request_names(tag: str, approx_bytes: int = 900 << 10) -> list[str]:
    """`jwt-svid:` names of ~140 bytes each, ~`approx_bytes` of them in all (thousands)."""
    names, size, i = [], 0, 0
    while size < approx_bytes:
        name = f"jwt-svid:{tag}-{i:06d}-" + "a" * 120
        names.append(name)
        size += len(name) + 3  # the field's tag and length
        i += 1
    return names


def big_requests(socket_path, count: int, seconds: float) -> dict:
    """`count` StreamSecrets streams, each opening with one ~900 KiB request of thousands of names."""
    channel = own_channel(socket_path)
    codes: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    try:
        for i in range(count):
            if time.monotonic() > deadline:
                break
            stream = Stream(channel, delta=False)
            stream.send(resource_names=big_request_names(f"big{i}"))
            code = stream.end_status(10)
            stream.close()
            codes[code.name] = codes.get(code.name, 0) + 1
    finally:
        channel.close()
    return {"codes": codes}


def file_root_names(directory: pathlib.Path, count: int) -> list[str]:
    return [f"file-root:{directory}/root-{i}.pem" for i in range(count)]


class FileHog:
    """Holds `FILE_ROOM` file-root names: two connections × one Delta stream × 32 names (the per-connection budget)."""

    def __init__(self, socket_path, directory: pathlib.Path):
        names = file_root_names(directory, FILE_ROOM)
        self.channels = [own_channel(socket_path) for _ in range(FILE_ROOM // PER_CONNECTION)]
        self.streams = []
        for i, channel in enumerate(self.channels):
            stream = Stream(channel, delta=True)
            part = names[i * PER_CONNECTION:(i + 1) * PER_CONNECTION]
            stream.send(resource_names_subscribe=part)
            served: set[str] = set()
            while served != set(part):
                response = stream.recv(10)
                assert not response.removed_resources, f"refused: {list(response.removed_resources)[:3]}"
                served |= {r.name for r in response.resources}
                stream.send(response_nonce=response.nonce)
            self.streams.append(stream)

    def close(self):
        for stream in self.streams:
            stream.close()
        for channel in self.channels:
            channel.close()


def hold_idle_status(host: str, port: int, count: int, seconds: float, stop: threading.Event | None,
                     ready=lambda: None) -> dict:
    """Keeps `count` connections to the status listener that never send a byte, opening a new one for each the agent
    closes (evicted or timed out), until `stop` is set, stdin gives a line (as a child) or `seconds` pass."""
    socks = [socket.create_connection((host, port), timeout=5) for _ in range(count)]
    ready()
    reopened = 0
    deadline = time.monotonic() + seconds
    watch_stdin = stop is None
    try:
        while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
            readable, _, _ = select.select(socks + ([sys.stdin] if watch_stdin else []), [], [], 0.05)
            for sock in readable:
                if sock is sys.stdin:
                    return {"reopened": reopened}
                try:
                    data = sock.recv(4096)
                except OSError:
                    data = b""
                if data:
                    continue
                sock.close()
                socks[socks.index(sock)] = socket.create_connection((host, port), timeout=5)
                reopened += 1
        return {"reopened": reopened}
    finally:
        for sock in socks:
            sock.close()


# ------------------------------------------------------------------------------------------------------------------
# Helpers of the tests below
# ------------------------------------------------------------------------------------------------------------------


def log_bytes(agent) -> int:
    return agent.log_path.stat().st_size


def write_roots(directory: pathlib.Path, count: int) -> bytes:
    from spiffe_test_ca import SpiffeRoot, organization, pem_cert
    root = SpiffeRoot.create("files.example", organization("file CA"), datetime.timedelta(days=1),
                             datetime.timedelta(minutes=1))
    directory.mkdir(parents=True, exist_ok=True)
    pem = pem_cert(root.cert)
    for i in range(count):
        (directory / f"root-{i}.pem").write_bytes(pem)
    return pem


# ------------------------------------------------------------------------------------------------------------------
# 1. The JWT relay is scoped to --spiffe-id
# ------------------------------------------------------------------------------------------------------------------


def test_relayed_jwt_svids_are_only_ever_the_agents_own(agent_factory, short_dir):
    """The SPIRE stand-in entitles the pod to two SPIFFE IDs for JWT-SVIDs. Through the agent, py-spiffe asking with
    no subject gets exactly one JWT-SVID, for `--spiffe-id`; asking for the other ID is PERMISSION_DENIED naming
    the reason, and never reaches the upstream; the agent asks the upstream for its own ID only."""
    import jwt as pyjwt
    from spiffe import SpiffeId, WorkloadApiClient
    from workload_api_server import WorkloadAPIServer

    upstream = WorkloadAPIServer(str(short_dir / "up.sock"), WORKLOAD).start()
    try:
        upstream.state.jwt_extra_ids = [SECOND_ID]
        # The stand-in does entitle the pod to both (so an agent relaying as it is would hand out both).
        with grpc.insecure_channel(f"unix:{upstream.socket_path}") as channel:
            direct = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel).FetchJWTSVID(
                workload_pb2.JWTSVIDRequest(audience=["db"]), metadata=[SECURITY_HEADER], timeout=5)
        assert sorted(s.spiffe_id for s in direct.svids) == sorted([WORKLOAD, SECOND_ID])
        upstream.state.jwt_requested_ids.clear()

        agent = agent_factory.start(
            "agent", WORKLOAD, ["--issuer", "workload-api", "--upstream-socket", f"unix://{upstream.socket_path}"])
        with WorkloadApiClient(f"unix:{agent.socket_path}") as client:
            svids = wait_until(lambda: _try(lambda: client.fetch_jwt_svids({"db"})), 20, "relayed JWT-SVIDs")
            print(f"\nno subject: {len(svids)} JWT-SVID(s) for {[str(s.spiffe_id) for s in svids]}")
            assert [str(s.spiffe_id) for s in svids] == [WORKLOAD]
            assert pyjwt.decode(svids[0].token, options={"verify_signature": False})["sub"] == WORKLOAD
            ours = client.fetch_jwt_svids({"db"}, subject=SpiffeId(WORKLOAD))
            assert [str(s.spiffe_id) for s in ours] == [WORKLOAD]

        with upstream.state.cond:
            calls_before = upstream.state.jwt_calls
        try:
            with grpc.insecure_channel(f"unix:{agent.socket_path}") as channel:
                handed = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel).FetchJWTSVID(
                    workload_pb2.JWTSVIDRequest(audience=["db"], spiffe_id=SECOND_ID), metadata=[SECURITY_HEADER],
                    timeout=5)
            raise AssertionError(f"JWT-SVIDs handed out for {[s.spiffe_id for s in handed.svids]}")
        except grpc.RpcError as error:
            print(f"spiffe_id={SECOND_ID}: {error.code().name} {error.details()!r}")
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error
            assert "--spiffe-id" in error.details() and WORKLOAD in error.details(), error.details()
        with upstream.state.cond:
            assert upstream.state.jwt_calls == calls_before, "a refused request went upstream"
            requested = list(upstream.state.jwt_requested_ids)
        print(f"spiffe_id the agent sent upstream: {sorted(set(requested))} ({len(requested)} calls)")
        assert requested and set(requested) == {WORKLOAD}, requested
    finally:
        upstream.stop()


def _try(call):
    try:
        return call()
    except Exception:  # noqa: BLE001 - not served yet: wait_until asks again until its deadline
        return None


# ------------------------------------------------------------------------------------------------------------------
# 2. Metric labels
# ------------------------------------------------------------------------------------------------------------------


def test_nack_labels_are_a_bounded_set_and_the_page_stays_small_and_parseable(agent_factory, short_dir):
    """20,000 distinct `jwt-svid:` names NACKed (32 at a time), `default` and ROOTCA NACKed, and a `file-cert:` name
    whose paths hold CR LF, a quote and a would-be sample line, held and NACKed: `/metrics` stays under 64 KB, parses
    with prometheus_client and promtool, has no forged sample, NACK labels come from the bounded set (jwt-svid counted
    20,000 times), and the file-cert expiry label is the name with CR as `?` (LF and quote escaped)."""
    from prometheus_client.parser import text_string_to_metric_families
    from spiffe_test_ca import SpiffeRoot, organization, pem_cert, pem_key

    certs = short_dir / "certs"
    weird = certs / 'x\r\nsds_agent_forged_total{a="b"} 1\r\n"q'
    weird.mkdir(parents=True)
    ca = SpiffeRoot.create("files.example", organization("file CA"), datetime.timedelta(days=1),
                           datetime.timedelta(minutes=1))
    cert, key = ca.issue("spiffe://files.example/gw", organization("gw"), datetime.timedelta(days=1),
                         datetime.timedelta(minutes=1))
    (weird / "cert.pem").write_bytes(pem_cert(cert))
    (weird / "key.pem").write_bytes(pem_key(key))
    port = free_port()
    agent = agent_factory.start("agent", WORKLOAD, ["--file-dirs", str(certs), "--status-addr", f"127.0.0.1:{port}",
                                                    "--log-level", "info"])
    started = time.monotonic()
    storm = nack_storm(agent.socket_path, 20_000, 60)
    print(f"\nNACKed {storm['nacked']} distinct jwt-svid names in {time.monotonic() - started:.1f} s")
    assert storm["nacked"] == 20_000

    channel = own_channel(agent.socket_path)
    weird_name = f"file-cert:{weird}/cert.pem~{weird}/key.pem"
    streams = {name: Stream(channel, delta=False) for name in ("default", "ROOTCA")}
    held = Stream(channel, delta=True)
    try:
        # Each first response NACKed by a request that also moves the stream to the other name: its answer says
        # the NACK has been read (and counted).
        for (name, stream), then in zip(streams.items(), ("ROOTCA", "default")):
            stream.send(resource_names=[name])
            response = stream.recv(10)
            stream.send(response_nonce=response.nonce, resource_names=[then], error_detail="rejected")
            assert list(secrets_of(stream.recv(10).resources)) == [then]
        held.send(resource_names_subscribe=[weird_name])
        response = held.recv(10)
        assert [r.name for r in response.resources] == [weird_name]
        held.send(response_nonce=response.nonce, error_detail="rejected")
        held.send(resource_names_subscribe=["ROOTCA"])  # after the NACK on the same stream
        assert "ROOTCA" in secrets_of(held.recv(10).resources)

        code, body = curl(port, "/metrics")
        assert code == 200
        print(f"/metrics: {len(body)} bytes")
        assert len(body) < 64 * 1024, f"/metrics is {len(body)} bytes after 20,000 NACKed names"
        families = list(text_string_to_metric_families(body.decode()))
        assert not [f.name for f in families if "forged" in f.name]
        nacks = {s.labels["secret"]: s.value for f in families if f.name == "sds_agent_nacks"
                 for s in f.samples if s.name == "sds_agent_nacks_total"}
        print(f"sds_agent_nacks_total: {nacks}")
        assert set(nacks) <= NACK_LABELS, set(nacks) - NACK_LABELS
        assert nacks.get("jwt-svid") == 20_000 and nacks.get("default") == 1 and nacks.get("ROOTCA") == 1, nacks
        assert nacks.get("file-cert") == 1, nacks
        expiry = [s.labels["secret"] for f in families if f.name == "sds_agent_certificate_expiry_timestamp_seconds"
                  for s in f.samples]
        assert weird_name.replace("\r", "?") in expiry, expiry
        assert b"\r" not in body and body.count(b"\nsds_agent_forged") == 0

        promtool = shutil.which("promtool")
        assert promtool, "promtool missing: `make deps` installs Debian's prometheus package"
        run = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=RUN_TIMEOUT)
        assert run.returncode == 0 and run.stdout == b"" and run.stderr == b"", run
    finally:
        for stream in [*streams.values(), held]:
            stream.close()
        channel.close()


# ------------------------------------------------------------------------------------------------------------------
# 3. jwt-svid: names: minted one by one; 32 per connection
# ------------------------------------------------------------------------------------------------------------------


def test_jwt_svid_names_mint_only_themselves_and_a_connection_holds_at_most_32(agent_factory):
    """62 connections hold 32 `jwt-svid:` names each (1,984 names). Then a Delta stream adds 32 names one by one:
    each is answered within 20 ms (median; re-publishing every held name on each new one took 300-650 ms
    here), each response carries the new name only, and the first name's token is never re-minted meanwhile. A
    33rd distinct name on that connection ends the stream that asks RESOURCE_EXHAUSTED (another stream there, or
    FetchSecrets) while another connection is served; the budget frees as the connection's streams release names or
    end."""
    agent = agent_factory.start("agent", WORKLOAD, ["--log-level", "warning"])
    holders = []
    conn = own_channel(agent.socket_path)
    other = own_channel(agent.socket_path)
    names = jwt_names("aud", 0, PER_CONNECTION)
    stream = Stream(conn, delta=True)
    try:
        started = time.monotonic()
        for c in range(62):
            channel = own_channel(agent.socket_path)
            holder = Stream(channel, delta=True)
            holders.append((channel, holder))
            part = jwt_names(f"held{c}", 0, PER_CONNECTION)
            holder.send(resource_names_subscribe=part)
            served: set[str] = set()
            while served != set(part):
                response = holder.recv(30)
                served |= {r.name for r in response.resources}
                holder.send(response_nonce=response.nonce)
        built = time.monotonic() - started

        tokens = {}
        extra_pushes = 0
        latencies = []
        for name in names:
            asked = time.monotonic()
            stream.send(resource_names_subscribe=[name])
            response = stream.recv(10)
            latencies.append(time.monotonic() - asked)
            pushed = secrets_of(response.resources)
            extra_pushes += len(set(pushed) - {name})
            assert name in pushed, list(pushed)
            tokens.update({n: s.generic_secret.secret.inline_bytes for n, s in pushed.items()})
            stream.send(response_nonce=response.nonce)
        # A re-mint of held names would be pushed to this stream (a new token is new content).
        quiet = stream.silent(0.5)
        code, fetched = fetch(other, [names[0]])
        assert code == grpc.StatusCode.OK
        first_token = secrets_of(fetched.resources)[names[0]].generic_secret.secret.inline_bytes
        median = statistics.median(latencies)
        print(f"\n1,984 names held on 62 connections in {built:.1f} s; 32 more added one by one: median "
              f"{median * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms each; {extra_pushes} other names pushed "
              f"along; first token unchanged: {first_token == tokens[names[0]]}")
        assert median < 0.020, f"a new name costs {median * 1000:.0f} ms with 1,984 others held"
        assert extra_pushes == 0 and quiet, "adding a name re-minted names already held"
        assert first_token == tokens[names[0]]

        # The 33rd distinct name on this connection: the stream that asks ends RESOURCE_EXHAUSTED.
        asking = Stream(conn, delta=True)
        asking.send(resource_names_subscribe=jwt_names("extra", 0, 1))
        asked_status = asking.end_status(10)
        fetch_status, _ = fetch(conn, jwt_names("extra", 1, 1))
        same_names_status, _ = fetch(conn, names[:5])  # already held on this connection: no new name
        other_status, _ = fetch(other, jwt_names("extra", 0, 1))
        print(f"33rd name: Delta {asked_status.name}, FetchSecrets {fetch_status.name}; held names again: "
              f"{same_names_status.name}; on another connection: {other_status.name}")
        assert asked_status == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert fetch_status == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert same_names_status == grpc.StatusCode.OK and other_status == grpc.StatusCode.OK
        assert stream.ended is None, "the stream holding 32 names is untouched"

        # Releasing names frees the budget (ROOTCA subscribed in the same request: its answer orders the two).
        stream.send(resource_names_unsubscribe=names[:4], resource_names_subscribe=["ROOTCA"])
        assert "ROOTCA" in secrets_of(stream.recv(10).resources)
        assert fetch(conn, jwt_names("extra", 2, 4))[0] == grpc.StatusCode.OK
        # Ending the stream frees it all: 32 fresh names on this connection (its cancel travels asynchronously).
        stream.close()
        wait_until(lambda: fetch(conn, jwt_names("fresh", 0, PER_CONNECTION))[0] == grpc.StatusCode.OK, 5,
                   "32 fresh names once the stream holding 32 ended")
    finally:
        stream.close()
        conn.close()
        other.close()
        for channel, holder in holders:
            holder.close()
            channel.close()


# ------------------------------------------------------------------------------------------------------------------
# 4. The status listener's cap: silent connections make room; a slot for loopback
# ------------------------------------------------------------------------------------------------------------------


def test_status_probes_are_answered_while_idle_connections_fill_the_cap(agent_factory):
    """16 connections that never send a byte, each reopened as soon as the agent closes it, hold the status
    listener's cap; 24 `/live` probes with curl are all answered 200, each taking a silent connection's place. Then
    32 such connections (twice the cap, so 16 are always on their way back in) and 48 probes: still all 200."""
    port = free_port()
    agent = agent_factory.start("agent", WORKLOAD, ["--status-addr", f"127.0.0.1:{port}"])
    failures = []
    for idle, probes in ((STATUS_CAP, 24), (2 * STATUS_CAP, 48)):
        stop = threading.Event()
        opened = threading.Event()
        result: dict = {}
        holder = threading.Thread(target=lambda: result.update(
            hold_idle_status("127.0.0.1", port, idle, 30, stop, ready=opened.set)), daemon=True)
        holder.start()
        try:
            assert opened.wait(10), "the idle connections could not be opened"
            codes = [curl(port, "/live")[0] for _ in range(probes)]
        finally:
            stop.set()
            holder.join(10)
        print(f"\n/live under {idle} idle connections reopened as they close: {codes.count(200)}/{probes} answered "
              f"200 (others: {sorted(c for c in codes if c != 200)}); idle connections closed by the agent and "
              f"reopened: {result.get('reopened')}")
        # The cap was full: probes took a silent connection's place (or the slot kept for requests that have
        # arrived), so the agent closed idle connections along the way.
        assert result.get("reopened", 0) >= 1, result
        if codes != [200] * probes:
            failures.append(f"{idle} idle: {probes - codes.count(200)} of {probes} probes unanswered")
    assert not failures, failures
    agent.check_alive()


class PeerHost:
    """A peer host of our own: a network namespace joined to this one by a veth pair (10.213.<n>.0/30), so the agent
    sees connections from a non-loopback address while every packet stays inside this machine."""

    def __init__(self, index: int):
        self.ns = f"sdsit{os.getpid()}x{index}"
        self.host_if, self.peer_if = f"sdh{os.getpid() % 10000}x{index}", f"sdp{os.getpid() % 10000}x{index}"
        self.host_ip, self.peer_ip = f"10.213.{index}.1", f"10.213.{index}.2"

    def __enter__(self) -> "PeerHost":
        steps = [
            ["ip", "netns", "add", self.ns],
            ["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.peer_if],
            ["ip", "link", "set", self.peer_if, "netns", self.ns],
            ["ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if],
            ["ip", "link", "set", self.host_if, "up"],
            ["ip", "netns", "exec", self.ns, "ip", "addr", "add", f"{self.peer_ip}/30", "dev", self.peer_if],
            ["ip", "netns", "exec", self.ns, "ip", "link", "set", self.peer_if, "up"],
            ["ip", "netns", "exec", self.ns, "ip", "link", "set", "lo", "up"],
        ]
        for step in steps:
            result = subprocess.run(step, capture_output=True, text=True)
            if result.returncode != 0:
                self.__exit__(None, None, None)
                pytest.skip(f"no network namespace for a test host here: {' '.join(step)}: {result.stderr.strip()}")
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)

    def popen(self, argv: list[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], **kwargs)


def slow_peers_from_test_host(target: str, port: int, count: int, stop_after: float) -> None:
    """In the test host: `count` connections, each with part of a request head; prints how many the agent closed
    once that number has been the same for a while (or `stop_after` seconds passed), then holds them until stdin
    closes."""
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.settimeout(5)
        sock.connect((target, port))
        try:
            sock.sendall(b"GET /live HTTP/1.1\r\nX-Slow: ")
        except OSError:
            pass
        socks.append(sock)

    def closed_ones() -> int:
        closed = 0
        for sock in socks:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                try:
                    closed += sock.recv(1, socket.MSG_PEEK) == b""
                except OSError:
                    closed += 1
        return closed
    deadline = time.monotonic() + stop_after
    while closed_ones() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    print(json.dumps({"closed": closed_ones(), "count": count}), flush=True)
    sys.stdin.read()


def test_status_listener_keeps_a_slot_for_loopback(agent_factory):
    """17 peers from a non-loopback address (a test host of our own, in a network namespace), each having sent part
    of a request (so not silent, not evictable), fill the cap for non-loopback peers (15) and the one slot above it
    kept for requests that have arrived; the 17th is turned away, and loopback probes are still answered."""
    port = free_port()
    with PeerHost(1) as host:
        # All addresses: the test host's peers reach it on the veth, the probes below on loopback.
        agent = agent_factory.start("agent", WORKLOAD, ["--status-addr", f"0.0.0.0:{port}"])
        peers = host.popen(
            [sys.executable, __file__, "slow-peers", "--target", host.host_ip, "--port", str(port), "--count",
             str(STATUS_CAP + 1)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            line = peers.stdout.readline()
            assert line, "the test host's peers reported nothing"
            result = json.loads(line)
            codes = [curl(port, "/live")[0] for _ in range(3)]
            print(f"\n{result['count']} peers from {host.peer_ip}: {result['count'] - result['closed']} held, "
                  f"{result['closed']} turned away; loopback /live: {codes}")
            assert result["closed"] == 1, f"{result} : non-loopback peers may hold 15 + 1"
            assert codes == [200, 200, 200], codes
        finally:
            peers.stdin.close()
            peers.wait(10)
    agent.check_alive()


# ------------------------------------------------------------------------------------------------------------------
# 5. The SDS socket's connection cap: preface-less, then call-less connections make room
# ------------------------------------------------------------------------------------------------------------------


class Hostile:
    """A hostile peer process (`hostile_h2.py`, or this file as a script): JSON lines out, a line in to let go."""

    def __init__(self, argv: list[str]):
        self.process = subprocess.Popen([sys.executable, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, cwd=HERE)

    @classmethod
    def h2(cls, socket_path, case: str, *args: str) -> "Hostile":
        return cls([str(HERE / "hostile_h2.py"), case, "--socket", str(socket_path), *args])

    @classmethod
    def ours(cls, case: str, *args: str) -> "Hostile":
        return cls([str(pathlib.Path(__file__).resolve()), case, *args])

    def read(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            raise AssertionError(f"hostile peer {self.process.args[1:3]} silent for {timeout} s")
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(5)
            raise AssertionError(f"hostile peer {self.process.args[1:3]} exited {self.process.returncode}: "
                                 f"{self.process.stderr.read()[-2000:]}")
        return json.loads(line)

    def release(self) -> None:
        try:
            self.process.stdin.write("go\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            pass

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            stream.close()


def raw_h2_idle(socket_path, timeout: float = 10.0) -> socket.socket:
    """A connection that sent the full client preface and SETTINGS, saw them acknowledged (the agent has its
    preface), and opens no call."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(str(socket_path))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    while True:
        data = sock.recv(65536)
        assert data, "the agent closed an idle connection before acknowledging its SETTINGS"
        events = conn.receive_data(data)
        sock.sendall(conn.data_to_send())
        if any(isinstance(e, h2.events.SettingsAcknowledged) for e in events):
            return sock


def is_closed(sock: socket.socket, timeout: float = 0.0) -> bool:
    """The peer closed `sock` (EOF or reset), reading and dropping what it sent before (SETTINGS, GOAWAY)."""
    deadline = time.monotonic() + timeout
    while True:
        readable, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            return False
        try:
            if sock.recv(65536) == b"":
                return True
        except OSError:
            return True


def test_connection_cap_evicts_preface_less_then_call_less_connections(agent_factory):
    """At the default cap (256), 500 connections stalled mid-preface cannot lock Envoy out: a new Envoy-like client
    (StreamSecrets default + ROOTCA) is served within 1 s, while one connected before keeps its streams. At
    `--max-connections 8`, with 7 idle connections that finished their preface, each newcomer takes the place of the
    oldest idle one — never of the oldest connection, whose streams are open."""
    agent = agent_factory.start("agent", WORKLOAD)
    before = EnvoyLike(agent.socket_path)
    hostile = Hostile.h2(agent.socket_path, "stalled-preface", "--count", "500", "--hold", "12")
    newcomer = None
    try:
        ready = hostile.read(30)
        assert ready["opened"] == 500, ready
        newcomer = EnvoyLike(agent.socket_path)
        latency = statistics.median(before.fetch() for _ in range(5))
        print(f"\n500 stalled prefaces ({ready['closed_at_once']} closed within 1 s): a new Envoy-like client "
              f"served in {newcomer.first_served_s * 1000:.0f} ms; the earlier one's FetchSecrets "
              f"{latency * 1000:.1f} ms (median of 5)")
        assert newcomer.first_served_s < 1.0
        assert latency < SERVED_WITHIN_S
        before.assert_streams_open()
    finally:
        hostile.close()
        before.close()
        if newcomer:
            newcomer.close()

    small = agent_factory.start("small", WORKLOAD, ["--max-connections", "8"])
    oldest = EnvoyLike(small.socket_path)  # connection 1: the oldest, with open calls
    idle = [raw_h2_idle(small.socket_path) for _ in range(7)]
    served = []
    try:
        for turn in range(3):
            served.append(EnvoyLike(small.socket_path))
            closed = [i for i, sock in enumerate(idle) if i >= turn and is_closed(sock, 2.0 if i == turn else 0)]
            print(f"newcomer {turn + 1} served in {served[-1].first_served_s * 1000:.0f} ms; idle connections "
                  f"closed: {closed}")
            assert closed == [turn], f"newcomer {turn + 1}: closed {closed}, expected the oldest idle ({turn})"
            assert served[-1].first_served_s < 1.0
        oldest.assert_streams_open()
        assert oldest.fetch() < SERVED_WITHIN_S
    finally:
        for sock in idle:
            sock.close()
        for client in [oldest, *served]:
            client.close()


# ------------------------------------------------------------------------------------------------------------------
# 6. file-* names refused for room are served once room frees
# ------------------------------------------------------------------------------------------------------------------


def test_file_names_refused_for_room_are_served_when_room_frees(agent_factory, short_dir):
    """One grpcio client holds 64 `file-root:` names (two connections × 32): the room is full, and a 65th name asked
    by another client over Delta is refused (removed_resources). When the first client leaves, that same stream
    gets the 65th name, and a new client is served another of the freed names."""
    certs = short_dir / "certs"
    pem = write_roots(certs, FILE_ROOM + 1)
    agent = agent_factory.start("agent", WORKLOAD, ["--file-dirs", str(certs)])
    hog = FileHog(agent.socket_path, certs)
    late = file_root_names(certs, FILE_ROOM + 1)[-1]
    channel = own_channel(agent.socket_path)
    stream = Stream(channel, delta=True)
    try:
        stream.send(resource_names_subscribe=[late])
        response = stream.recv(10)
        print(f"\n64 names held; the 65th: removed_resources={list(response.removed_resources)}, "
              f"resources={[r.name for r in response.resources]}")
        assert list(response.removed_resources) == [late] and not response.resources
        stream.send(response_nonce=response.nonce)
        left = time.monotonic()
        hog.close()
        response = stream.recv(10)
        served = secrets_of(response.resources)
        print(f"after the 64 were released: {list(served)} served in {(time.monotonic() - left) * 1000:.0f} ms")
        assert list(served) == [late]
        assert pem_of(served[late].validation_context.trusted_ca) == pem
        code, fetched = fetch(own_channel(agent.socket_path), file_root_names(certs, 1))
        assert code == grpc.StatusCode.OK and len(fetched.resources) == 1
    finally:
        hog.close()
        stream.close()
        channel.close()


# ------------------------------------------------------------------------------------------------------------------
# 7. Log volume
# ------------------------------------------------------------------------------------------------------------------


def test_log_volume_is_bounded_per_request_and_per_kind_of_repeated_warning(agent_factory):
    """At the default level (info), one ~900 KiB request of thousands of names costs < 4 KB of the agent's stderr:
    `jwt-svid:` names over SotW and over Delta (each ends RESOURCE_EXHAUSTED), and names the agent never serves
    (another workload's SPIFFE IDs; SotW holds them in silence). At `--log-level warning`: 2,000 Workload API calls
    without the security header, 2,000 NACKs and 2,000 failed calls (each seen failing by its client) cost at most a
    handful of lines: one per kind, the rest counted. Every figure is printed before the test fails on any."""
    agent = agent_factory.start("info", WORKLOAD, ["--log-level", "info"])
    channel = own_channel(agent.socket_path)
    over: list[str] = []  # every figure is measured and printed before the test fails on any
    try:
        for delta in (False, True):
            names = big_request_names(f"log{int(delta)}")
            request = (discovery_pb2.DeltaDiscoveryRequest(resource_names_subscribe=names) if delta
                       else discovery_pb2.DiscoveryRequest(resource_names=names))
            before = log_bytes(agent)
            stream = Stream(channel, delta=delta)
            if delta:
                stream.send(resource_names_subscribe=names)
            else:
                stream.send(resource_names=names)
            status = stream.end_status(10)
            stream.close()
            assert fetch(channel, ["ROOTCA"])[0] == grpc.StatusCode.OK  # after the request: its lines are written
            grown = log_bytes(agent) - before
            print(f"\n{'Delta' if delta else 'SotW'} request of {len(names)} names ({request.ByteSize()} bytes, "
                  f"{status.name}): {grown} bytes of log")
            assert request.ByteSize() > 850 << 10
            if grown >= 4096:
                over.append(f"{grown} bytes logged for one {'Delta' if delta else 'SotW'} request")
        # Names this agent never serves (another workload's identities): the cheapest a client can invent.
        names = [f"spiffe://other.example/ns/x/sa/{i:06d}-" + "a" * 100 for i in range(6400)]
        before = log_bytes(agent)
        stream = Stream(channel, delta=False)
        stream.send(resource_names=names)
        held = stream.silent(0.3)  # SotW holds never-served names in silence: nothing to await
        stream.close()
        assert fetch(channel, ["ROOTCA"])[0] == grpc.StatusCode.OK
        grown = log_bytes(agent) - before
        print(f"SotW request of {len(names)} never-served names ({'held' if held else 'answered'}): "
              f"{grown} bytes of log")
        if grown >= 4096:
            over.append(f"{grown} bytes logged for one request of never-served names")
    finally:
        channel.close()

    quiet = agent_factory.start("warning", WORKLOAD, ["--log-level", "warning"])
    channel = own_channel(quiet.socket_path)
    try:
        before = log_bytes(quiet)
        lines_before = quiet.log_path.read_bytes().count(b"\n")
        started = time.monotonic()
        calls = headerless(quiet.socket_path, 2000, 30)
        assert calls["codes"] == {"INVALID_ARGUMENT": 2000}, calls

        # 2,000 NACKs on one stream: each response NACKed while asking for the other of two names.
        stream = Stream(channel, delta=False)
        names = ["default", "ROOTCA"]
        stream.send(resource_names=[names[0]])
        for i in range(2000):
            response = stream.recv(10)
            stream.send(response_nonce=response.nonce, resource_names=[names[(i + 1) % 2]], error_detail="no")
        stream.recv(10)
        stream.close()

        # 2,000 failed calls: FetchSecrets with another type URL (INVALID_ARGUMENT).
        stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
        failed = {}
        for _ in range(2000):
            try:
                stub.FetchSecrets(discovery_pb2.DiscoveryRequest(
                    resource_names=["default"], type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster"),
                    timeout=5)
                code = "OK"
            except grpc.RpcError as error:
                code = error.code().name
            failed[code] = failed.get(code, 0) + 1
        assert failed == {"INVALID_ARGUMENT": 2000}, failed
        assert fetch(channel, ["ROOTCA"])[0] == grpc.StatusCode.OK
        grown = log_bytes(quiet) - before
        lines = quiet.log_path.read_bytes().count(b"\n") - lines_before
        print(f"2,000 header-less calls + 2,000 NACKs + 2,000 failed calls in {time.monotonic() - started:.1f} s: "
              f"{lines} lines, {grown} bytes of log")
        if lines > 6 or grown >= 4096:
            over.append(f"{lines} lines ({grown} bytes) for 6,000 repeated warnings")
    finally:
        channel.close()
    assert not over, over


# ------------------------------------------------------------------------------------------------------------------
# 8. file-root: serves certificates only
# ------------------------------------------------------------------------------------------------------------------


def test_file_root_and_file_cert_never_serve_a_key_block(agent_factory, short_dir):
    """A bundle file holding two certificates, three private keys (SEC1, PKCS#8, PKCS#1) and text: `file-root:`
    serves exactly the two certificates, no key block. A `file-cert:` chain file with a key between its
    certificates: the chain served holds the certificates only; the key is the key file's."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from spiffe_test_ca import SpiffeRoot, organization, pem_cert, pem_key

    day, minute = datetime.timedelta(days=1), datetime.timedelta(minutes=1)
    a = SpiffeRoot.create("a.example", organization("a"), day, minute)
    b = SpiffeRoot.create("b.example", organization("b"), day, minute)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sec1 = ec_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    pkcs8 = ec_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    pkcs1 = rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption())
    certs = short_dir / "certs"
    certs.mkdir()
    (certs / "mixed.pem").write_bytes(b"operator notes\n" + pem_cert(a.cert) + sec1 + pkcs8 + pem_cert(b.cert) + pkcs1)
    leaf, leaf_key = a.issue("spiffe://a.example/gw", organization("gw"), day, minute)
    (certs / "chain.pem").write_bytes(pem_cert(leaf) + pem_key(leaf_key) + pem_cert(a.cert))
    (certs / "key.pem").write_bytes(pem_key(leaf_key))
    agent = agent_factory.start("agent", WORKLOAD, ["--file-dirs", str(certs)])
    root_name = f"file-root:{certs}/mixed.pem"
    cert_name = f"file-cert:{certs}/chain.pem~{certs}/key.pem"
    with own_channel(agent.socket_path) as channel:
        code, response = fetch(channel, [root_name, cert_name])
    assert code == grpc.StatusCode.OK, code
    secrets = secrets_of(response.resources)
    bundle = pem_of(secrets[root_name].validation_context.trusted_ca)
    chain = pem_of(secrets[cert_name].tls_certificate.certificate_chain)
    print(f"\nfile-root: file {(certs / 'mixed.pem').stat().st_size} bytes, served {len(bundle)} bytes, "
          f"{bundle.count(b'-----BEGIN ')} PEM blocks; file-cert: chain served {chain.count(b'-----BEGIN ')} blocks")
    assert b"PRIVATE KEY" not in bundle and b"operator notes" not in bundle
    assert bundle.count(b"-----BEGIN CERTIFICATE-----") == bundle.count(b"-----BEGIN ") == 2
    assert [c.serial_number for c in certs_of(secrets[root_name].validation_context.trusted_ca)] == \
        [a.cert.serial_number, b.cert.serial_number]
    assert b"PRIVATE KEY" not in chain
    assert [c.serial_number for c in certs_of(secrets[cert_name].tls_certificate.certificate_chain)] == \
        [leaf.serial_number, a.cert.serial_number]
    served_key = serialization.load_pem_private_key(pem_of(secrets[cert_name].tls_certificate.private_key), None)
    assert served_key.public_key().public_numbers() == leaf.public_key().public_numbers()


# ------------------------------------------------------------------------------------------------------------------
# 9. Private key files readable by others stop the start
# ------------------------------------------------------------------------------------------------------------------



@pytest.mark.parametrize("which, mode", [("ca.key", 0o644), ("jwt-key.pem", 0o640), ("--ca-key", 0o644),
                                          ("ca.key", 0o604)])
def test_private_key_readable_by_others_stops_the_start(agent_factory, sds_agent_bin, short_dir, which, mode):
    """A state dir's `ca.key` / `jwt-key.pem` or the operator's `--ca-key` that group or others may read: exit 1
    with one line naming the file, its mode and `chmod 600`; nothing served. At 0400 the same files start."""
    from test_envoy_mtls import write_shared_operator_ca

    extra: list[str] = []
    if which == "--ca-key":
        operator = short_dir / "operator"
        operator.mkdir()
        extra = write_shared_operator_ca(operator)
        key = pathlib.Path(extra[extra.index("--ca-key") + 1])
        state = short_dir / "state"
    else:
        first = agent_factory.start("first", WORKLOAD)
        first.stop()
        state = first.state_dir
        key = state / which
        assert key.exists(), f"{key} not created by the first start"
    key.chmod(mode)
    socket_path = short_dir / "s.sock"
    argv = [str(sds_agent_bin), "run", "--socket", str(socket_path), "--state-dir", str(state), "--trust-domain",
            TRUST_DOMAIN, "--spiffe-id", WORKLOAD, *extra]
    try:
        run = subprocess.run(argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as timeout:
        raise AssertionError(f"{which} at {mode:04o}: the agent started anyway (still running after 10 s); "
                             f"stderr: {timeout.stderr!r}") from None
    lines = run.stderr.strip().splitlines()
    print(f"\n{which} at {mode:04o}: exit {run.returncode}: {run.stderr.strip()}")
    assert run.returncode == 1, run
    assert len(lines) == 1, lines
    assert str(key) in lines[0] and f"0{mode:o}" in lines[0] and "chmod 600" in lines[0], lines[0]
    assert not socket_path.exists()

    # At 0400 the same key starts (for the state dir: a copy of it, as the factory starts every later agent).
    key.chmod(0o400)
    agent = agent_factory.start("again", WORKLOAD, extra)
    assert "default" in fetch_when_served(agent.socket_path, ["default"])


# ------------------------------------------------------------------------------------------------------------------
# All at once
# ------------------------------------------------------------------------------------------------------------------


def test_an_envoy_like_client_is_served_under_all_the_hostile_clients_at_once(agent_factory, short_dir):
    """Seven hostile clients at once, each a process bounded in count and time: 500 connections stalled mid-preface,
    16 idle status connections reopened as they close, 5,000 `jwt-svid:` names NACKed, 300 requests over the
    per-connection budget, 2,000 Workload API calls without the header, five ~900 KiB requests, and the file room
    held full. Meanwhile an Envoy-like client connected before (StreamSecrets default + ROOTCA, ACKed) times a
    FetchSecrets of both every 10 ms: p99 < 50 ms (max printed); `/live` probed with curl every 100 ms answers
    200 every time; its streams stay open and take the next rotation."""
    certs = short_dir / "certs"
    write_roots(certs, FILE_ROOM)
    port = free_port()
    agent = agent_factory.start("agent", WORKLOAD, ["--status-addr", f"127.0.0.1:{port}", "--file-dirs", str(certs),
                                                    "--log-level", "info"])
    sock = str(agent.socket_path)
    envoy = EnvoyLike(sock)
    hostiles = {
        "stalled-preface": Hostile.h2(sock, "stalled-preface", "--count", "500", "--hold", "15"),
        "status-idle": Hostile.ours("status-idle", "--port", str(port), "--count", str(STATUS_CAP),
                                    "--seconds", "20"),
        "nack-storm": Hostile.ours("nack-storm", "--socket", sock, "--count", "5000", "--seconds", "15"),
        "over-budget": Hostile.ours("over-budget", "--socket", sock, "--count", "300", "--seconds", "15"),
        "headerless": Hostile.ours("headerless", "--socket", sock, "--count", "2000", "--seconds", "15"),
        "big-requests": Hostile.ours("big-requests", "--socket", sock, "--count", "5", "--seconds", "15"),
        "file-hog": Hostile.ours("file-hog", "--socket", sock, "--dir", str(certs), "--seconds", "15"),
    }
    live_codes: list[int] = []
    stop_probing = threading.Event()

    def probe_live():
        while not stop_probing.wait(0.1):
            live_codes.append(curl(port, "/live")[0])

    prober = threading.Thread(target=probe_live, daemon=True)
    latencies: list[float] = []
    results: dict[str, dict] = {}
    try:
        for name, hostile in hostiles.items():
            assert hostile.read(30)["event"] == "ready", name
        prober.start()
        # While any hostile client is at work (each bounded by its own count and seconds; 30 s at most here).
        pending = {name: hostile for name, hostile in hostiles.items() if name not in ("status-idle", "file-hog")}
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            latencies.append(envoy.fetch())
            for name, hostile in list(pending.items()):
                if select.select([hostile.process.stdout], [], [], 0)[0]:
                    results[name] = hostile.read(1)
                    del pending[name]
            time.sleep(0.01)  # the good client's pace, not a wait for anything
        assert not pending, f"hostile clients still at work after 30 s: {list(pending)}"
        for name in ("status-idle", "file-hog"):
            hostiles[name].release()
            results[name] = hostiles[name].read(10)
    finally:
        stop_probing.set()
        if prober.is_alive():
            prober.join(10)
        for hostile in hostiles.values():
            hostile.close()

    try:
        latencies.sort()
        p50 = latencies[len(latencies) // 2]
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(f"\nEnvoy-like FetchSecrets(default, ROOTCA) under load: {len(latencies)} fetches, p50 "
              f"{p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
        print(f"/live: {live_codes.count(200)}/{len(live_codes)} answered 200")
        for name, result in results.items():
            print(f"  {name}: {result}")
        problems = []
        if p99 >= SERVED_WITHIN_S:
            problems.append(f"p99 {p99 * 1000:.1f} ms")
        if not live_codes or live_codes != [200] * len(live_codes):
            problems.append(f"/live unanswered {len(live_codes) - live_codes.count(200)} of {len(live_codes)} times")
        assert results["nack-storm"]["nacked"] == 5000, results["nack-storm"]
        assert results["over-budget"]["codes"] == {"RESOURCE_EXHAUSTED": 300}, results["over-budget"]
        assert results["headerless"]["codes"] == {"INVALID_ARGUMENT": 2000}, results["headerless"]
        assert results["big-requests"]["codes"] == {"RESOURCE_EXHAUSTED": 5}, results["big-requests"]
        envoy.assert_streams_open()
        agent.rotate()
        assert "default" in envoy.next_push_of("default"), "the rotation reached the earlier streams"
        agent.check_alive()
        assert not problems, problems
    finally:
        envoy.close()


# ------------------------------------------------------------------------------------------------------------------
# As a script: one hostile client (the combined test's children)
# ------------------------------------------------------------------------------------------------------------------


def _say(**fields) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("case", choices=["status-idle", "nack-storm", "over-budget", "headerless", "big-requests",
                                         "file-hog", "slow-peers"])
    parser.add_argument("--target")
    parser.add_argument("--socket")
    parser.add_argument("--port", type=int)
    parser.add_argument("--dir")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    if args.case == "slow-peers":
        slow_peers_from_test_host(args.target, args.port, args.count, 3.0)
    elif args.case == "status-idle":
        _say(event="done", **hold_idle_status("127.0.0.1", args.port, args.count, args.seconds, None,
                                              ready=lambda: _say(event="ready")))
    elif args.case == "file-hog":
        hog = FileHog(args.socket, pathlib.Path(args.dir))
        _say(event="ready")
        select.select([sys.stdin], [], [], args.seconds)
        hog.close()
        _say(event="done", held=FILE_ROOM)
    else:
        work = {"nack-storm": nack_storm, "over-budget": over_budget, "headerless": headerless,
                "big-requests": big_requests}[args.case]
        _say(event="ready")
        _say(event="done", **work(args.socket, args.count, args.seconds))


if __name__ == "__main__":
    main()
