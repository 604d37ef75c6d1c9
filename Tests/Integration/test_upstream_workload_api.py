"""Acceptance tests of `sds-agent run --issuer workload-api`: SVIDs pulled from a SPIFFE Workload API (a SPIRE agent
stand-in we did not write the client of: grpcio + py-spiffe's servicer, workload_api_server.py) and served to Envoy.

    upstream (WorkloadAPIServer)  <--FetchX509SVID/FetchX509Bundles--  sds-agent  <--SDS--  server Envoy, client Envoy
       own test CA, rotate(),                                          one agent, one socket: both Envoys take the
       set_federated(), set_has_identity(), stop()/start()             same identity and talk mTLS to each other

The command line assumed:
    sds-agent run --socket S --state-dir D --trust-domain example.org --spiffe-id ID --log-level debug \
                  --issuer workload-api --upstream-socket unix:///abs/upstream.sock

$SDS_AGENT names the binary (default .build/release/sds-agent); SDS_UPSTREAM_READY=0 skips the module. Every test ends by checking the agent sent `workload.spiffe.io: true` on every call.
"""
from __future__ import annotations

import os
import socket
import threading
import time

import pytest
from cryptography import x509

from envoy_harness import SECRET_TIMEOUT, Envoy, example, start_mtls_pair, substitute, wait_for
from sds_client import SecretStream, certs_of, unpack_secrets
from sds_servers import TRUST_DOMAIN, ProcessFactory, fetch_secrets, fetch_when_served, leaf_serial
import workload_api_server as wapi
from workload_api_server import WorkloadAPIServer

UPSTREAM_READY = os.environ.get("SDS_UPSTREAM_READY", "1") == "1"
pytestmark = pytest.mark.skipif(not UPSTREAM_READY, reason="SDS_UPSTREAM_READY=0: upstream tests skipped on request")

WORKLOAD_ID = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/upstream"
FEDERATED = "spiffe://other.org"  # Workload API maps key bundles by the trust domain's SPIFFE ID
OUTAGE_SECONDS = 20.0  # the spec: an upstream outage of 20 s must not disturb traffic


def hex_serial(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def upstream_leaf_serial(upstream: WorkloadAPIServer) -> str:
    with upstream.state.cond:
        return hex_serial(upstream.state.leaf)


def assert_upstream_saw_only_proper_calls(upstream: WorkloadAPIServer) -> None:
    with upstream.state.cond:
        calls, bad = upstream.state.calls, upstream.state.calls_without_header
    assert calls >= 1, "the agent never called the Workload API"
    assert bad == 0, f"{bad} of {calls} Workload API calls lacked the `workload.spiffe.io: true` header"


# ------------------------------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture(params=["GRPC", "DELTA_GRPC"])
def api_type(request) -> str:
    return request.param


@pytest.fixture
def upstream(short_dir):
    server = WorkloadAPIServer(str(short_dir / "upstream.sock"), WORKLOAD_ID).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_agent(sds_agent_bin, short_dir, upstream):
    """Starts sds-agent on the upstream (call it after arranging the upstream's state); stops it at teardown."""
    factory = ProcessFactory("agent", [str(sds_agent_bin)], short_dir)

    def start():
        return factory.start("agent", WORKLOAD_ID, ["--issuer", "workload-api",
                                                     "--upstream-socket", f"unix://{upstream.socket_path}"])
    try:
        yield start
    finally:
        factory.stop_all()


@pytest.fixture
def agent(start_agent):
    return start_agent()


@pytest.fixture
def envoys(short_dir):
    """Every Envoy a test starts goes on this stack; all are stopped at teardown, even after a failed wait."""
    stack: list[Envoy] = []
    try:
        yield stack
    finally:
        for envoy in reversed(stack):
            envoy.stop()


@pytest.fixture
def pair_for(envoy_bin, short_dir, agent, envoys):
    """Both Envoys of the mTLS pair take the one identity the agent serves (istio or spire names)."""
    def start(style: str, api_type: str):
        sock = str(agent.socket_path)
        return start_mtls_pair(envoy_bin, short_dir, style, api_type, TRUST_DOMAIN, sock, WORKLOAD_ID, sock,
                               WORKLOAD_ID, envoys)
    return start


def assert_request_uses(pair, serial: str) -> None:
    seen = pair.request()
    assert seen.status == 200, seen
    assert seen.server_saw_peer_id == WORKLOAD_ID and seen.client_saw_peer_id == WORKLOAD_ID, seen
    assert seen.server_saw_peer_serial == serial and seen.client_saw_peer_serial == serial, \
        f"a handshake used another certificate than {serial}: {seen}"


def assert_no_rejections(envoy: Envoy) -> None:
    rejected = envoy.sds_counter("update_rejected")
    assert all(v == 0 for v in rejected.values()), f"{envoy.name} rejected an SDS update: {rejected}"


# ------------------------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["istio", "spire"])
def test_first_svid_from_upstream_reaches_envoy(pair_for, agent, upstream, style, api_type):
    pair = pair_for(style, api_type)
    serial = upstream_leaf_serial(upstream)
    for envoy in pair.envoys():
        envoy.wait_leaf_serial(serial)
        assert envoy.leaf_uri_sans() == {WORKLOAD_ID}
        assert envoy.ca_serials() == {hex_serial(upstream.ca.cert)}, "the bundle is the upstream's"
        assert_no_rejections(envoy)
    assert leaf_serial(fetch_secrets(agent.socket_path, ["default"])["default"]) == serial
    assert_request_uses(pair, serial)
    assert_upstream_saw_only_proper_calls(upstream)


def test_upstream_rotation_reaches_envoy(pair_for, upstream, api_type):
    pair = pair_for("istio", api_type)
    old = upstream_leaf_serial(upstream)
    assert_request_uses(pair, old)
    pids = [e.process.pid for e in pair.envoys()]

    new = hex_serial(upstream.rotate())
    assert new != old
    for envoy in pair.envoys():
        envoy.wait_leaf_serial(new)
        assert_no_rejections(envoy)
    assert [e.process.pid for e in pair.envoys()] == pids, "Envoy restarted"
    assert_request_uses(pair, new)
    assert_upstream_saw_only_proper_calls(upstream)


def test_federated_bundle_added_then_removed_shows_in_delta(agent, upstream):
    other = wapi.TestCA("other.org")
    upstream.set_federated(FEDERATED, other.bundle_der)
    # The agent learns it from its upstream stream: wait until it serves the name, then watch it over Delta.
    fetch_when_served(agent.socket_path, [FEDERATED], timeout=SECRET_TIMEOUT)
    with SecretStream(agent.socket_path, delta=True) as stream:
        stream.send(resource_names_subscribe=[FEDERATED])
        first = stream.recv()
        assert [r.name for r in first.resources] == [FEDERATED] and not first.removed_resources, first
        bundle = unpack_secrets(first.resources)[FEDERATED]
        assert bundle.WhichOneof("type") == "validation_context"
        assert [hex_serial(c) for c in certs_of(bundle.validation_context.trusted_ca)] == [hex_serial(other.cert)]
        stream.send(response_nonce=first.nonce)  # ACK

        upstream.set_federated(FEDERATED, None)
        removal = stream.recv(timeout=SECRET_TIMEOUT)
        assert list(removal.removed_resources) == [FEDERATED] and not removal.resources, removal
    assert_upstream_saw_only_proper_calls(upstream)


def test_a_large_federation_never_stalls_the_event_loop(agent, upstream):
    """OpenSSL 3.0 spends ~0.1 ms on each certificate. 100 federated trust domains of 20 roots each are 2,000
    certificates on each of the upstream's two streams: parsed on the agent's event loop they would hold every PING
    for at least 2 x 2,000 x 0.1 ms, and again at each rotation, since SPIRE resends every bundle. The agent parses
    them on a worker thread, takes unchanged bundles over instead of parsing them again, and the loop keeps
    answering PINGs in milliseconds while the bundles arrive, through three rotations and while every bundle
    changes."""
    from cryptography.hazmat.primitives import serialization
    from loop_probe import ProcessLoopProbe

    def federation(generation: int) -> dict[str, bytes]:
        roots = [wapi.TestCA(f"fed{generation}-{i}.org").cert.public_bytes(serialization.Encoding.DER)
                 for i in range(20)]
        return {f"spiffe://fed{t}.org": b"".join(roots) for t in range(100)}

    def served_roots(name: str) -> list[str]:
        secret = fetch_when_served(agent.socket_path, [name], timeout=SECRET_TIMEOUT)[name]
        return [hex_serial(c) for c in certs_of(secret.validation_context.trusted_ca)]

    first, second = federation(1), federation(2)
    with SecretStream(agent.socket_path, delta=False) as watcher, ProcessLoopProbe(agent.socket_path) as probe:
        watcher.send(resource_names=["default"])
        response = watcher.recv(timeout=SECRET_TIMEOUT)
        watcher.send(resource_names=["default"], response_nonce=response.nonce, version_info=response.version_info)
        serial = leaf_serial(unpack_secrets(response.resources)["default"])
        wait_for(lambda: probe.count() > 50, 10, "the loop probe to start")

        upstream.set_federated_many(first)
        wait_for(lambda: len(served_roots("spiffe://fed99.org")) == 20, SECRET_TIMEOUT, "the federation to be served")
        for rotation in range(3):
            upstream.rotate()
            while True:
                response = watcher.recv(timeout=SECRET_TIMEOUT)
                watcher.send(resource_names=["default"], response_nonce=response.nonce,
                             version_info=response.version_info)
                new = leaf_serial(unpack_secrets(response.resources)["default"])
                if new != serial:
                    serial = new
                    break
        old_roots = served_roots("spiffe://fed99.org")
        upstream.set_federated_many(second)
        wait_for(lambda: served_roots("spiffe://fed99.org") != old_roots, SECRET_TIMEOUT,
                 "the changed federation to be served")
        # The last messages change nothing served: the window closes once the loop has answered 200 more PINGs.
        last = probe.mark()
        wait_for(lambda: probe.count() > last + 200, 10, "200 more PINGs after the last change")
    assert probe.error is None, probe.error
    worst = max(probe.rtts)
    print(f"\nloop probe: {len(probe.rtts)} PINGs, max {worst * 1000:.1f} ms while 2 x 2,000 federated roots "
          f"arrived, through three rotations and a change of every bundle")
    assert worst < 0.050, f"the loop stalled {worst * 1000:.1f} ms"
    assert_upstream_saw_only_proper_calls(upstream)


def test_upstream_outage_keeps_traffic_and_agent_reconnects(pair_for, agent, upstream, api_type):
    pair = pair_for("istio", api_type)
    serial = upstream_leaf_serial(upstream)
    assert_request_uses(pair, serial)
    with upstream.state.cond:
        calls_before_outage = upstream.state.calls

    upstream.stop()
    # The outage lasts its full 20 s (the spec); traffic and the agent's own SDS answers are checked throughout.
    pacing = threading.Event()  # never set: wait() is the pace of the checks, not a wait for an event
    deadline = time.monotonic() + OUTAGE_SECONDS
    checks = 0
    while time.monotonic() < deadline:
        agent.check_alive()
        assert_request_uses(pair, serial)
        assert leaf_serial(fetch_secrets(agent.socket_path, ["default"])["default"]) == serial, \
            "the agent keeps serving the SVID it has while the upstream is gone"
        checks += 1
        pacing.wait(1.0)
    assert checks >= 10

    upstream.start()
    # The agent reconnects by itself (no signal, no restart): the upstream sees new calls ...
    wait_for(lambda: upstream.state.calls > calls_before_outage, SECRET_TIMEOUT,
             "sds-agent to call the Workload API again after it came back", agent.log_tail)
    agent.check_alive()
    # ... and the next rotation arrives over the new stream.
    new = hex_serial(upstream.rotate())
    for envoy in pair.envoys():
        envoy.wait_leaf_serial(new)
        assert_no_rejections(envoy)
    assert_request_uses(pair, new)
    assert_upstream_saw_only_proper_calls(upstream)


def test_permission_denied_holds_envoy_until_an_identity_appears(envoy_bin, short_dir, start_agent, upstream, envoys,
                                                                 api_type):
    upstream.set_has_identity(False)
    agent = start_agent()  # binds at once, before it has any SVID
    envoy = Envoy(envoy_bin, "server-envoy", substitute(example("istio", api_type, "server").read_text(), {
        "SDS_SOCKET": str(agent.socket_path), "ADMIN_PORT": 0, "LISTENER_PORT": 0, "PEER_SPIFFE_ID": WORKLOAD_ID,
        "SPIFFE_ID": WORKLOAD_ID, "TRUST_DOMAIN": TRUST_DOMAIN,
    }), short_dir)
    envoys.append(envoy)
    envoy.start(wait_ready=False)
    # Envoy is connected to the agent, and the agent has asked the upstream (and been refused) ...
    wait_for(lambda: envoy.stats(r"^cluster\.sds-grpc\.upstream_cx_active$").get(
        "cluster.sds-grpc.upstream_cx_active", 0) >= 1, SECRET_TIMEOUT, "Envoy's SDS connection", envoy.diagnostics)
    wait_for(lambda: upstream.state.calls >= 1, SECRET_TIMEOUT, "sds-agent to call the Workload API", agent.log_tail)
    # ... so Envoy is held: no certificate, not ready. (Absence cannot be awaited: a bounded look of 3 s.)
    look_until = time.monotonic() + 3.0
    while time.monotonic() < look_until:
        agent.check_alive()
        assert envoy.admin_get("/ready")[0] == 503, "Envoy became ready without an identity"
        assert envoy.leaf_serials() == set(), "Envoy holds a certificate the upstream never issued"
        threading.Event().wait(0.2)
    assert_no_rejections(envoy)

    upstream.set_has_identity(True)
    envoy.wait_ready()
    envoy.wait_leaf_serial(upstream_leaf_serial(upstream))
    assert envoy.leaf_uri_sans() == {WORKLOAD_ID}
    assert_no_rejections(envoy)
    assert_upstream_saw_only_proper_calls(upstream)


def test_every_upstream_call_carries_the_security_header(agent, upstream):
    fetch_when_served(agent.socket_path, ["default", "ROOTCA"], timeout=SECRET_TIMEOUT)
    upstream.rotate()
    wait_for(lambda: leaf_serial(fetch_secrets(agent.socket_path, ["default"])["default"])
             == upstream_leaf_serial(upstream), SECRET_TIMEOUT, "the rotated SVID at the agent", agent.log_tail)
    assert_upstream_saw_only_proper_calls(upstream)


def test_cached_svid_serves_until_expiry_then_requests_are_held(sds_agent_bin, short_dir):
    """Upstream gone: the cached SVID keeps serving until it expires — and not after (Envoy would accept an expired
    certificate and fail every handshake). At expiry the agent withdraws it: Delta streams hear `removed_resources`,
    new requests are held until the upstream delivers again."""
    import datetime
    import time

    import grpc
    from envoy.service.discovery.v3 import discovery_pb2
    from envoy.service.secret.v3 import sds_pb2_grpc

    ttl = datetime.timedelta(seconds=4)
    upstream = WorkloadAPIServer(str(short_dir / "upstream.sock"), WORKLOAD_ID, svid_ttl=ttl).start()
    factory = ProcessFactory("agent", [str(sds_agent_bin)], short_dir)
    try:
        agent = factory.start("agent", WORKLOAD_ID, ["--issuer", "workload-api",
                                                     "--upstream-socket", f"unix://{upstream.socket_path}"])
        served = fetch_when_served(agent.socket_path, ["default"])
        assert leaf_serial(served["default"]) == upstream_leaf_serial(upstream)
        stream = SecretStream(agent.socket_path, delta=True)
        stream.send(resource_names_subscribe=["default"])
        first = stream.recv()
        assert [r.name for r in first.resources] == ["default"]
        stream.send(response_nonce=first.nonce)
        upstream.stop()
        # Still served from the cache while valid.
        assert "default" in fetch_secrets(agent.socket_path, ["default"])
        withdrawn = stream.recv(timeout=ttl.total_seconds() + 10)
        assert withdrawn.removed_resources == ["default"]
        with grpc.insecure_channel(f"unix:{agent.socket_path}") as channel:
            stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
            with pytest.raises(grpc.RpcError) as held:
                stub.FetchSecrets(discovery_pb2.DiscoveryRequest(
                    resource_names=["default"], type_url="type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"),
                    timeout=1.0)
            assert held.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The upstream comes back with a fresh, long-lived SVID: served again, and pushed to the stream that stayed
        # subscribed.
        upstream.state.svid_ttl = datetime.timedelta(hours=1)
        upstream.rotate()
        upstream.start()
        back = stream.recv(timeout=40)
        assert [r.name for r in back.resources] == ["default"]
        stream.close()
        agent.check_alive()
    finally:
        factory.stop_all()
        upstream.stop()


class SilentUpstream:
    """A wedged SPIRE agent: accepts connections and reads whatever comes, never writes a byte."""

    def __init__(self, socket_path: str):
        self.socket_path = socket_path
        if os.path.exists(socket_path):
            os.unlink(socket_path)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(socket_path)
        self.listener.listen(16)
        self.lock = threading.Lock()
        self.accepted = 0
        self.closed_by_peer = 0
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return  # closed
            with self.lock:
                self.accepted += 1
            threading.Thread(target=self._read, args=(connection,), daemon=True).start()

    def _read(self, connection) -> None:
        with connection:
            try:
                while connection.recv(65536):
                    pass
            except OSError:
                return
            with self.lock:
                self.closed_by_peer += 1

    def counts(self) -> tuple[int, int]:
        with self.lock:
            return self.accepted, self.closed_by_peer

    def stop(self) -> None:
        """Closes the listener and removes its socket file (once: a real upstream may own the path later)."""
        if self.stopped:
            return
        self.stopped = True
        self.listener.close()
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)


def test_silent_upstream_is_reported_dropped_and_retried(sds_agent_bin, short_dir):
    """An upstream that accepts the connection but never answers FetchX509SVID (SPIRE answers at once) is given up
    after the 10 s first-response deadline: reported once, the connection closed, retried; once a real upstream takes
    the socket over, the agent gets its SVID without a restart."""
    socket_path = str(short_dir / "upstream.sock")
    silent = SilentUpstream(socket_path)
    factory = ProcessFactory("agent", [str(sds_agent_bin)], short_dir)
    upstream = None
    try:
        agent = factory.start("agent", WORKLOAD_ID, ["--issuer", "workload-api",
                                                     "--upstream-socket", f"unix://{socket_path}"])
        wait_for(lambda: silent.counts()[0] >= 1, SECRET_TIMEOUT, "sds-agent to connect", agent.log_tail)
        # The deadline (10 s) passes: the agent closes the connection and dials again after its backoff.
        wait_for(lambda: silent.counts()[1] >= 1, 20, "sds-agent to drop the silent connection", agent.log_tail)
        wait_for(lambda: silent.counts()[0] >= 2, 5, "sds-agent to dial again", agent.log_tail)
        log = agent.log_path.read_text(errors="replace")
        expected = f"no response from the Workload API at {socket_path} within 10 s"
        assert log.count(expected) == 1, agent.log_tail()
        agent.check_alive()

        # A real upstream on the same path: the next retry (the deadline + backoff at most) gets the SVID.
        silent.stop()
        upstream = WorkloadAPIServer(socket_path, WORKLOAD_ID).start()
        served = fetch_when_served(agent.socket_path, ["default"], timeout=45)
        assert leaf_serial(served["default"]) == upstream_leaf_serial(upstream)
        assert_upstream_saw_only_proper_calls(upstream)
    finally:
        factory.stop_all()
        silent.stop()
        if upstream is not None:
            upstream.stop()
