"""`--issuer istiod`: sds-agent gets its identity from a (fake, strict) istiod the way istio-agent does, and two real
Envoys (1.40) do mTLS with it.

    client --HTTP--> client Envoy --mTLS--> server Envoy
                         |                       |
                  client sds-agent        server sds-agent      (each: key made in the agent, CSR + projected
                         \\                     /                 token over TLS to the fake istiod)
                          fake istiod (grpcio, TLS; JWT "TokenReview"; intermediate CA)

What the fake observes is the evidence: which tokens, cluster IDs, key types and TTLs reached it, and whether any
request arrived at all. Every wait is a poll with a deadline.
"""
from __future__ import annotations

import datetime
import os
import pathlib
import time

import grpc
import pytest
from cryptography import x509

from envoy_harness import SECRET_TIMEOUT, Envoy, HarnessError, serial_of_pem, start_mtls_pair, wait_for
from fake_istiod import ISTIOD_NAME, CA, FakeIstiod, pem
from sds_servers import TRUST_DOMAIN, ProcessServer, fetch_secrets, fetch_when_served, leaf_serial

SERVER_ID = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/server"
CLIENT_ID = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/client"
# Short enough that a rotation (at half-life, counted from receipt) happens within a test: ~10 s.
SVID_TTL = "20s"


@pytest.fixture
def istiod(short_dir):
    fake = FakeIstiod(short_dir, TRUST_DOMAIN).start()
    try:
        yield fake
    finally:
        fake.stop()


class IstiodAgent(ProcessServer):
    """sds-agent with --issuer istiod, its own token file (written with `write_token`)."""

    def __init__(self, agent_bin, workdir: pathlib.Path, label: str, spiffe_id: str, istiod: FakeIstiod,
                 extra: list[str] | None = None, ttl: str = SVID_TTL):
        self.token_path = workdir / f"{label}.token"
        args = ["--issuer", "istiod", "--ca-addr", istiod.address, "--ca-root-cert", str(istiod.root_cert_path),
                "--ca-server-name", ISTIOD_NAME, "--token-file", str(self.token_path), "--svid-ttl", ttl,
                *(extra or [])]
        super().__init__([str(agent_bin)], workdir / f"{label}.sock", workdir / f"{label}.state", spiffe_id,
                         workdir / f"{label}.log", args)

    def write_token(self, token: str) -> None:
        """Replaced atomically, as kubelet does (a new file renamed over the old one)."""
        self.token = token
        tmp = self.token_path.with_suffix(".tmp")
        tmp.write_text(token)
        os.replace(tmp, self.token_path)

    def serial(self) -> str:
        return leaf_serial(fetch_when_served(self.socket_path, ["default"])["default"])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def agents(sds_agent_bin, short_dir):
    started: list[IstiodAgent] = []

    def start(label: str, spiffe_id: str, istiod: FakeIstiod, token: str | None = None, **kwargs) -> IstiodAgent:
        agent = IstiodAgent(sds_agent_bin, short_dir, label, spiffe_id, istiod, **kwargs)
        agent.write_token(token if token is not None else istiod.token_for(spiffe_id))
        started.append(agent)
        return agent.start()

    yield start
    for agent in started:
        agent.stop()


def chain_of(secret) -> list[x509.Certificate]:
    chain = secret.tls_certificate.certificate_chain
    return x509.load_pem_x509_certificates(chain.inline_bytes or chain.inline_string.encode())


def roots_of(secret) -> list[x509.Certificate]:
    ca = secret.validation_context.trusted_ca
    return x509.load_pem_x509_certificates(ca.inline_bytes or ca.inline_string.encode())


def assert_request(pair, server_serial: str, client_serial: str) -> None:
    seen = pair.request()
    assert seen.status == 200, seen
    assert seen.server_saw_peer_id == CLIENT_ID
    assert seen.client_saw_peer_id == SERVER_ID
    assert seen.server_saw_peer_serial == client_serial
    assert seen.client_saw_peer_serial == server_serial


@pytest.mark.parametrize("key_type", ["ecdsa-p256", "rsa-2048"])
@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
def test_two_envoys_do_mtls_with_identities_from_istiod_and_rotate(istiod, agents, envoy_bin, short_dir, api_type,
                                                                   key_type):
    server = agents("server", SERVER_ID, istiod, extra=["--key-type", key_type])
    client = agents("client", CLIENT_ID, istiod, extra=["--key-type", key_type])
    stack: list[Envoy] = []
    try:
        pair = start_mtls_pair(envoy_bin, short_dir, "istio", api_type, TRUST_DOMAIN, str(server.socket_path),
                               SERVER_ID, str(client.socket_path), CLIENT_ID, stack)
        first = {a.spiffe_id: a.serial() for a in (server, client)}
        assert_request(pair, first[SERVER_ID], first[CLIENT_ID])

        # What istiod saw: our key type, the requested TTL, the cluster ID and each workload's own token.
        issued = istiod.issued()
        want_type = {"ecdsa-p256": "ec-secp256r1", "rsa-2048": "rsa-2048"}[key_type]
        assert {r.csr_key_type for r in issued} == {want_type}
        assert {r.requested_ttl for r in issued} == {20}
        assert {r.cluster_id for r in issued} == {"Kubernetes"}
        assert {r.serial for r in issued} >= {s.lstrip("0") for s in first.values()}

        # Served as istiod returned it: leaf + intermediate (the root goes to ROOTCA), our SPIFFE ID.
        secrets = fetch_secrets(server.socket_path, ["default", "ROOTCA"])
        chain = chain_of(secrets["default"])
        assert [c.subject for c in chain[1:]] == [istiod.intermediate.cert.subject]
        assert roots_of(secrets["ROOTCA"]) == [istiod.root.cert]
        for envoy, spiffe_id in ((pair.server, SERVER_ID), (pair.client, CLIENT_ID)):
            assert envoy.leaf_uri_sans() == {spiffe_id}
            assert envoy.ca_serials() == {format(istiod.root.cert.serial_number, "x")}

        # Rotation at half-life, without a signal: a new serial reaches each Envoy's /certs; no Envoy restart.
        pids = [e.process.pid for e in pair.envoys()]
        new = {}
        for agent, envoy in ((server, pair.server), (client, pair.client)):
            new[agent.spiffe_id] = wait_for(lambda a=agent: (s := a.serial()) != first[a.spiffe_id] and s, 30,
                                            f"{agent.spiffe_id} to rotate", agent.log_tail)
            envoy.wait_leaf_serial(new[agent.spiffe_id])
        assert [e.process.pid for e in pair.envoys()] == pids
        assert_request(pair, new[SERVER_ID], new[CLIENT_ID])
        for envoy in pair.envoys():
            assert all(v == 0 for v in envoy.sds_counter("update_rejected").values())
    finally:
        for envoy in reversed(stack):
            envoy.stop()


def test_a_replaced_token_file_is_sent_with_the_next_csr(istiod, agents):
    agent = agents("server", SERVER_ID, istiod)
    first = agent.serial()
    old_token = agent.token
    new_token = istiod.token_for(SERVER_ID, lifetime=datetime.timedelta(hours=11))
    assert new_token != old_token
    agent.write_token(new_token)
    agent.rotate()  # SIGHUP: the next CSR now rather than at half-life
    wait_for(lambda: agent.serial() != first, 15, "a rotation after SIGHUP", agent.log_tail)
    tokens = [r.token for r in istiod.issued()]
    assert tokens[0] == old_token and tokens[-1] == new_token
    # The token is a credential: never in our log.
    assert new_token not in agent.log() and old_token not in agent.log()


def test_a_bad_token_is_unauthenticated_reported_once_retried_and_envoy_is_held(istiod, agents, envoy_bin,
                                                                                short_dir):
    # Signed by another "API server": istiod's TokenReview rejects it.
    from fake_istiod import ApiServer
    forged = ApiServer().token("demo", "server")
    server = agents("server", SERVER_ID, istiod, token=forged)
    stack: list[Envoy] = []
    try:
        # Retried with back-off (1 s, 2 s, 4 s ...): at least three refused CSRs, each UNAUTHENTICATED.
        def refused():
            # Only answered ones: a request is recorded before the fake decides (a loaded machine shows the gap).
            rs = [r for r in istiod.snapshot() if r.token == forged and r.outcome]
            return len(rs) >= 3 and rs
        rs = wait_for(refused, 20, "three refused CSRs", server.log_tail)
        assert all(r.outcome.startswith("UNAUTHENTICATED") for r in rs)
        # Not retried in a tight loop: the rounds are spaced by the back-off.
        assert len(rs) < 10
        # Nothing is served meanwhile: a FetchSecrets for "default" is held, not answered.
        with pytest.raises(grpc.RpcError):
            fetch_secrets(server.socket_path, ["default"], timeout=1.0)
        # Reported once for the whole outage (one line per distinct failure).
        failures = [line for line in server.log().splitlines() if "issuance failed" in line]
        assert len(failures) == 1 and "unauthenticated" in failures[0], failures

        # An Envoy started now is held on its first start: no certificate yet.
        server_envoy = Envoy(envoy_bin, "server-envoy", _bootstrap("server", server, CLIENT_ID), short_dir)
        stack.append(server_envoy)
        server_envoy.start(wait_ready=False)
        time_held = time.monotonic() + 2
        while time.monotonic() < time_held:
            assert server_envoy.leaf_serials() == set()
            time.sleep(0.2)

        # A good token: the next round succeeds (the back-off is at most 30 s) and the held Envoy gets it.
        server.write_token(istiod.token_for(SERVER_ID))
        serial = wait_for(lambda: server.serial(), 40, "the agent to recover", server.log_tail)
        server_envoy.wait_leaf_serial(serial)
        assert "issuer recovered" in server.log()
    finally:
        for envoy in reversed(stack):
            envoy.stop()


def _bootstrap(role: str, agent: IstiodAgent, peer: str) -> str:
    from envoy_harness import example, substitute
    return substitute(example("istio", "GRPC", role).read_text(), {
        "SDS_SOCKET": str(agent.socket_path), "ADMIN_PORT": 0, "LISTENER_PORT": 0, "PEER_SPIFFE_ID": peer,
        "SPIFFE_ID": agent.spiffe_id, "TRUST_DOMAIN": TRUST_DOMAIN, "UPSTREAM_PORT": 1,
    })


def test_traffic_flows_while_istiod_is_down_and_the_next_rotation_succeeds(istiod, agents, envoy_bin, short_dir):
    # 30 s certificates rotating at ~15 s: istiod goes down for longer than the rotation point, not past expiry.
    server = agents("server", SERVER_ID, istiod, ttl="30s")
    client = agents("client", CLIENT_ID, istiod, ttl="30s")
    stack: list[Envoy] = []
    try:
        pair = start_mtls_pair(envoy_bin, short_dir, "istio", "GRPC", TRUST_DOMAIN, str(server.socket_path),
                               SERVER_ID, str(client.socket_path), CLIENT_ID, stack)
        first = {a.spiffe_id: a.serial() for a in (server, client)}
        issued_before = len(istiod.issued())
        istiod.stop()
        down_until = time.monotonic() + 17
        while time.monotonic() < down_until:
            # Traffic keeps flowing on the cached certificates.
            assert_request(pair, first[SERVER_ID], first[CLIENT_ID])
            time.sleep(1)
        assert len(istiod.issued()) == issued_before
        for agent in (server, client):
            assert "istiod" in agent.log() and "issuance failed" in agent.log(), agent.log_tail()
        istiod.start()
        new = {}
        for agent, envoy in ((server, pair.server), (client, pair.client)):
            new[agent.spiffe_id] = wait_for(lambda a=agent: (s := a.serial()) != first[a.spiffe_id] and s, 20,
                                            f"{agent.spiffe_id} to rotate after istiod returned", agent.log_tail)
            envoy.wait_leaf_serial(new[agent.spiffe_id])
        assert_request(pair, new[SERVER_ID], new[CLIENT_ID])
    finally:
        for envoy in reversed(stack):
            envoy.stop()


@pytest.mark.parametrize("case", ["untrusted-root", "wrong-server-name"])
def test_an_unverified_istiod_never_sees_a_request(istiod, agents, short_dir, case):
    extra = []
    if case == "untrusted-root":
        other = short_dir / "other-root.pem"
        other.write_text(pem(CA.root("another mesh").cert))
        extra = ["--ca-root-cert", str(other)]
    else:
        extra = ["--ca-server-name", "not-istiod.example"]
    agent = agents("server", SERVER_ID, istiod, extra=extra)
    wait_for(lambda: "issuance failed" in agent.log(), 15, "the agent to report the refused server", agent.log_tail)
    failure = next(line for line in agent.log().splitlines() if "issuance failed" in line)
    assert "certificate" in failure, failure
    # The report comes after the round's five tries: five handshakes refused, not one request (so no token) sent.
    assert istiod.snapshot() == []
    with pytest.raises(grpc.RpcError):
        fetch_secrets(agent.socket_path, ["default"], timeout=1.0)


@pytest.mark.parametrize("mode", ["wrong-id", "wrong-key"])
def test_a_chain_for_another_identity_or_key_is_refused_and_nothing_served(istiod, agents, mode):
    istiod.mode = mode
    agent = agents("server", SERVER_ID, istiod)
    wait_for(lambda: istiod.issued(), 15, "istiod to sign something", agent.log_tail)
    wait_for(lambda: "unusable certificate chain" in agent.log(), 15, "the agent to refuse the chain",
             agent.log_tail)
    with pytest.raises(grpc.RpcError):
        fetch_secrets(agent.socket_path, ["default"], timeout=1.0)
    # Once istiod behaves, the next round is served.
    istiod.mode = "normal"
    serial = wait_for(lambda: agent.serial(), 40, "a good chain to be served", agent.log_tail)
    assert serial.lstrip("0") == istiod.issued()[-1].serial


def test_rsa_key_generation_never_stalls_the_event_loop(istiod, agents):
    """RSA-4096 takes about a second of CPU per key: made on the loop, it would hold every PING that long. The loop
    keeps answering within milliseconds through several rotations (the key is made on a worker thread)."""
    from loop_probe import LoopProbe
    agent = agents("server", SERVER_ID, istiod, extra=["--key-type", "rsa-4096"], ttl="1h")
    first = wait_for(lambda: agent.serial(), 60, "the first RSA-4096 certificate", agent.log_tail)
    with LoopProbe(agent.socket_path) as probe:
        wait_for(lambda: len(probe.rtts) > 50, 10, "the probe to start")
        serial = first
        for rotation in range(3):
            # One SIGHUP per served certificate: a SIGHUP while a round is under way is that round.
            agent.rotate()
            serial = wait_for(lambda old=serial: (s := agent.serial()) != old and s, 60,
                              f"RSA rotation {rotation + 1}", agent.log_tail)
    assert probe.error is None, probe.error
    assert agent.serial() != first
    worst = max(probe.rtts)
    # How long each key took to make (the agent's debug log, timed on the worker thread): had it been made on the
    # loop, some PING would have waited at least that long. A shared machine adds its own jitter to every PING, so
    # the bound is half of the quickest generation, not a fixed number of milliseconds.
    import re
    generations = [float(ms) for ms in re.findall(r'key generated off the loop algorithm="RSA 4096" ms=([0-9.]+)',
                                                   agent.log())]
    assert len(generations) >= 4, agent.log_tail()
    quickest = min(generations[1:]) / 1000
    assert worst < quickest / 2, \
        f"the loop stalled {worst * 1000:.1f} ms; an RSA-4096 key took {quickest * 1000:.0f} ms at the quickest"
    print(f"\nloop probe: {len(probe.rtts)} PINGs, max {worst * 1000:.2f} ms during 3 RSA-4096 rotations "
          f"(keys took {', '.join(f'{g:.0f}' for g in generations[1:])} ms)")


def test_a_token_gone_bad_later_keeps_the_cached_certificate_serving(istiod, agents):
    from fake_istiod import ApiServer
    agent = agents("server", SERVER_ID, istiod)
    first = agent.serial()
    agent.write_token(ApiServer().token("demo", "server"))  # forged from now on
    agent.rotate()
    wait_for(lambda: any(r.token == agent.token for r in istiod.snapshot()), 15, "the forged token to reach istiod",
             agent.log_tail)
    refused = [r for r in istiod.snapshot() if r.token == agent.token]
    assert refused and all(r.outcome.startswith("UNAUTHENTICATED") for r in refused)
    # Still served, unchanged: a refused rotation never withdraws a certificate that has not expired.
    assert agent.serial() == first


def test_an_oversized_token_file_is_never_sent(istiod, agents):
    # 64 KiB is the bound (IstioCAConfiguration.maxTokenBytes): a projected token is ~1 KiB.
    agent = agents("server", SERVER_ID, istiod, token="x" * (64 * 1024 + 1))
    wait_for(lambda: "cannot read the token" in agent.log(), 15, "the agent to refuse the token file", agent.log_tail)
    assert istiod.snapshot() == [], "nothing reached istiod"
    # Within the bound again: issued.
    agent.write_token(istiod.token_for(SERVER_ID))
    wait_for(lambda: agent.serial(), 40, "issuance with a good token", agent.log_tail)


@pytest.mark.parametrize("key_type, reported", [("rsa-2048", "RSA 2048"), ("ecdsa-p384", "ECDSA P-384")])
def test_sds_dump_reports_the_key_type_istiod_certified(istiod, agents, sds_dump_bin, key_type, reported):
    import json
    import subprocess
    agent = agents("server", SERVER_ID, istiod, extra=["--key-type", key_type])
    agent.serial()
    run = subprocess.run([str(sds_dump_bin), "--fetch", "--json", "--socket", str(agent.socket_path), "default",
                          "ROOTCA"], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    document = json.loads(run.stdout.splitlines()[0])
    secrets = {s["name"]: s for s in document["secrets"]}
    assert secrets["default"]["private_key"]["type"] == reported
    assert secrets["default"]["certificates"][0]["key_type"] == reported
    assert secrets["default"]["chain_verified"] is True


def test_cluster_id_and_ca_headers_reach_istiod(istiod, agents, monkeypatch):
    # istio-agent's CA_HEADER_<K>=<v> becomes header k: v on every CSR; --cluster-id is ISTIO_META_CLUSTER_ID.
    monkeypatch.setenv("CA_HEADER_TENANT", "blue")
    istiod.cluster_id = "east"
    agent = agents("server", SERVER_ID, istiod, extra=["--cluster-id", "east"])
    agent.serial()
    issued = istiod.issued()
    assert issued and issued[0].cluster_id == "east" and issued[0].metadata.get("tenant") == "blue"


def test_rootca_adds_the_roots_of_the_root_cert_file(istiod, agents):
    """Istio's root rotation publishes the next root in istio-ca-root-cert before istiod signs with it: peers signed
    by either must be trusted, so ROOTCA carries the chain's root and every root of the file (re-read each CSR)."""
    agent = agents("server", SERVER_ID, istiod)
    first = agent.serial()
    assert roots_of(fetch_secrets(agent.socket_path, ["ROOTCA"])["ROOTCA"]) == [istiod.root.cert]
    next_root = CA.root("next mesh root").cert
    istiod.root_cert_path.write_text(pem(istiod.root.cert) + pem(next_root))
    agent.rotate()
    wait_for(lambda: agent.serial() != first, 15, "a rotation", agent.log_tail)
    assert roots_of(fetch_secrets(agent.socket_path, ["ROOTCA"])["ROOTCA"]) == [istiod.root.cert, next_root]


def test_a_host_name_in_ca_addr_is_resolved_off_the_loop(istiod, agents):
    """CA_ADDR is normally a name (istiod.istio-system.svc:15012): getaddrinfo runs on the worker thread, and every
    address it returns is tried in order (localhost may answer ::1 first, where the fake does not listen)."""
    agent = agents("server", SERVER_ID, istiod, extra=["--ca-addr", f"localhost:{istiod.port}"])
    agent.serial()
    assert istiod.issued()
