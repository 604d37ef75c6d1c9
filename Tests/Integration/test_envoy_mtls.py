"""Two real Envoys (1.40) take their SVIDs and bundle over SDS and talk mTLS through the Examples/ bootstraps.

client --HTTP--> client Envoy --mTLS--> server Envoy (direct_response echoing the peer's identity)
                     |                        |
               client SDS socket        server SDS socket      (one SDS server per workload, one shared CA)

Parametrized over the SDS server (`reference` in process, `agent` = sds-agent), api_type (GRPC = SotW,
DELTA_GRPC = Delta) and naming style (istio: default/ROOTCA; spire: <SPIFFE ID>/spiffe://<td>; spire-all:
<SPIFFE ID>/ALL, the bundles as Envoy's SPIFFE certificate validator config).
"""
from __future__ import annotations

import datetime
import pathlib
import re
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from envoy_harness import SECRET_TIMEOUT, Envoy, MtlsPair, start_mtls_pair, wait_for
from sds_servers import TRUST_DOMAIN, ProcessFactory, ReferenceFactory, fetch_when_served, leaf_serial

SERVER_ID = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/server"
CLIENT_ID = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/client"


@dataclass
class Workload:
    """One Envoy with its own SDS server."""

    envoy: Envoy
    sds: object  # InProcessServer | ProcessServer
    spiffe_id: str
    cert_name: str  # the name Envoy asks for its certificate

    def sds_serial(self) -> str:
        """The serial of the leaf the SDS server serves now (asked with FetchSecrets, as any client may)."""
        return leaf_serial(fetch_when_served(self.sds.socket_path, [self.cert_name])[self.cert_name])

    def wait_sds_serial_not(self, old: str) -> str:
        """After a rotation request: the server's new serial (rotation is asynchronous for a process)."""
        return wait_for(lambda: (s := self.sds_serial()) != old and s, SECRET_TIMEOUT,
                        f"{self.spiffe_id}'s SDS server to serve a leaf other than {old}")


@dataclass
class Topology:
    pair: MtlsPair
    server: Workload
    client: Workload

    def workloads(self) -> tuple[Workload, Workload]:
        return self.server, self.client


@pytest.fixture(params=["GRPC", "DELTA_GRPC"])
def api_type(request) -> str:
    return request.param


@pytest.fixture(params=["istio", "spire", "spire-all"])
def style(request) -> str:
    return request.param


@pytest.fixture
def topology(sds_factory, envoy_bin, short_dir, style, api_type):
    server_sds = sds_factory.start("server-sds", SERVER_ID)
    client_sds = sds_factory.start("client-sds", CLIENT_ID)
    stack: list[Envoy] = []
    try:
        pair = start_mtls_pair(envoy_bin, short_dir, style, api_type, TRUST_DOMAIN,
                               str(server_sds.socket_path), SERVER_ID, str(client_sds.socket_path), CLIENT_ID, stack)

        def cert_name(spiffe_id):
            return "default" if style == "istio" else spiffe_id

        yield Topology(pair, Workload(pair.server, server_sds, SERVER_ID, cert_name(SERVER_ID)),
                       Workload(pair.client, client_sds, CLIENT_ID, cert_name(CLIENT_ID)))
    finally:
        for envoy in reversed(stack):
            envoy.stop()


def assert_sds_healthy(envoy: Envoy) -> None:
    """Both secrets arrived and Envoy never rejected an update."""
    success = envoy.sds_counter("update_success")
    rejected = envoy.sds_counter("update_rejected")
    assert len(success) == 2 and all(v >= 1 for v in success.values()), f"{envoy.name} sds stats: {success}"
    assert all(v == 0 for v in rejected.values()), f"{envoy.name} rejected an SDS update: {rejected}"


def assert_request_uses(t: Topology, server_serial: str, client_serial: str) -> None:
    seen = t.pair.request()
    assert seen.status == 200, seen
    assert seen.server_saw_peer_id == CLIENT_ID
    assert seen.client_saw_peer_id == SERVER_ID
    assert seen.server_own_id == SERVER_ID
    # A new handshake per request (the client example sets max_requests_per_connection: 1).
    assert seen.server_saw_peer_serial == client_serial, "the server Envoy saw another client certificate"
    assert seen.client_saw_peer_serial == server_serial, "the client Envoy saw another server certificate"


def test_each_envoy_sees_the_other_spiffe_id(topology):
    t = topology
    for w in t.workloads():
        assert w.envoy.leaf_uri_sans() == {w.spiffe_id}
        assert w.envoy.leaf_serials() == {w.sds_serial()}
        assert len(w.envoy.ca_serials()) == 1, "one CA in the bundle"
    assert t.server.envoy.ca_serials() == t.client.envoy.ca_serials()
    assert_request_uses(t, t.server.sds_serial(), t.client.sds_serial())
    for w in t.workloads():
        assert_sds_healthy(w.envoy)


def test_rotation_reaches_both_envoys_without_restart(topology):
    t = topology
    pids = [w.envoy.process.pid for w in t.workloads()]
    old = {w.spiffe_id: w.sds_serial() for w in t.workloads()}
    assert_request_uses(t, old[SERVER_ID], old[CLIENT_ID])

    for w in t.workloads():
        w.sds.rotate()
    new = {w.spiffe_id: w.wait_sds_serial_not(old[w.spiffe_id]) for w in t.workloads()}
    for w in t.workloads():
        w.envoy.wait_leaf_serial(new[w.spiffe_id])

    assert [w.envoy.process.pid for w in t.workloads()] == pids, "Envoy restarted"
    # A new handshake uses the new certificates, on both sides.
    assert_request_uses(t, new[SERVER_ID], new[CLIENT_ID])
    for w in t.workloads():
        assert_sds_healthy(w.envoy)


def test_traffic_survives_sds_server_restart_and_next_rotation_arrives(topology):
    t = topology
    before = {w.spiffe_id: w.sds_serial() for w in t.workloads()}

    for w in t.workloads():
        w.sds.kill()
    # Envoy keeps the secrets it has: new handshakes still work while the SDS server is gone.
    assert_request_uses(t, before[SERVER_ID], before[CLIENT_ID])

    for w in t.workloads():
        w.sds.start()
    # Envoy reconnects (after its backoff) and holds whatever the restarted server serves.
    after_restart = {w.spiffe_id: w.sds_serial() for w in t.workloads()}
    for w in t.workloads():
        w.envoy.wait_leaf_serial(after_restart[w.spiffe_id])

    for w in t.workloads():
        w.sds.rotate()
    rotated = {w.spiffe_id: w.wait_sds_serial_not(after_restart[w.spiffe_id]) for w in t.workloads()}
    for w in t.workloads():
        w.envoy.wait_leaf_serial(rotated[w.spiffe_id])
    assert_request_uses(t, rotated[SERVER_ID], rotated[CLIENT_ID])
    for w in t.workloads():
        assert_sds_healthy(w.envoy)


def test_rotating_one_side_shows_in_the_next_handshake_of_both(topology):
    """Only the server rotates: the client must see the new server certificate at once (no TLS session resumption
    handing it the old one), and the server still sees the client's unchanged certificate."""
    t = topology
    client_serial = t.client.sds_serial()
    old = t.server.sds_serial()
    assert_request_uses(t, old, client_serial)
    t.server.sds.rotate()
    new = t.server.wait_sds_serial_not(old)
    t.server.envoy.wait_leaf_serial(new)
    assert_request_uses(t, new, client_serial)
    assert t.client.envoy.leaf_serials() == {client_serial}
    for w in t.workloads():
        assert_sds_healthy(w.envoy)


def test_envoy_opens_one_stream_per_secret_and_sends_its_node_once(envoy_bin, short_dir, api_type):
    """The wire shape sds-agent relies on (ENVOY-SDS-FACTS.md), observed by the reference server."""
    factory = ReferenceFactory(short_dir)
    stack: list[Envoy] = []
    try:
        server_sds = factory.start("server-sds", SERVER_ID)
        client_sds = factory.start("client-sds", CLIENT_ID)
        pair = start_mtls_pair(envoy_bin, short_dir, "istio", api_type, TRUST_DOMAIN, str(server_sds.socket_path),
                               SERVER_ID, str(client_sds.socket_path), CLIENT_ID, stack)
        server_sds.rotate()
        # A push after the first response: its ACK must not carry the node either.
        pair.server.wait_leaf_serial(leaf_serial(fetch_when_served(server_sds.socket_path, ["default"])["default"]))
        kind = {"GRPC": "sotw", "DELTA_GRPC": "delta"}[api_type]
        for sds, node in ((server_sds, "sds-demo-server"), (client_sds, "sds-demo-client")):
            envoy_streams = sds.streams  # FetchSecrets (the test's own calls) opens no stream
            assert sorted(tuple(s.names) for s in envoy_streams) == [("ROOTCA",), ("default",)]
            for s in envoy_streams:
                assert s.kind == kind
                assert s.node_ids == [node], "set_node_on_first_message_only: the node on the first message only"
                assert s.acks >= 1 and s.nacks == 0
    finally:
        for envoy in reversed(stack):
            envoy.stop()
        factory.stop_all()


# ------------------------------------------------------------------------------------------------------------------
# spire-all: the ALL secret drives Envoy's SPIFFE certificate validator
# ------------------------------------------------------------------------------------------------------------------


def start_spire_all_pair(sds_factory, envoy_bin, short_dir, api_type, stack, client_expects=None) -> MtlsPair:
    server_sds = sds_factory.start("server-sds", SERVER_ID)
    client_sds = sds_factory.start("client-sds", CLIENT_ID)
    return start_mtls_pair(envoy_bin, short_dir, "spire-all", api_type, TRUST_DOMAIN, str(server_sds.socket_path),
                           SERVER_ID, str(client_sds.socket_path), CLIENT_ID, stack, client_expects=client_expects)


def test_all_secret_is_envoys_spiffe_validator_config(sds_factory, envoy_bin, short_dir, api_type):
    """Envoy accepted ALL as a custom_validator_config and validates with the SPIFFE validator, per trust domain
    (not with a trusted_ca: /certs names the bundle's trust domain only for the SPIFFE validator)."""
    stack: list[Envoy] = []
    try:
        pair = start_spire_all_pair(sds_factory, envoy_bin, short_dir, api_type, stack)
        for envoy in pair.envoys():
            assert envoy.sds_counter("update_success").get("ALL", 0) >= 1, envoy.sds_stats()
            assert envoy.sds_counter("update_rejected").get("ALL") == 0, envoy.sds_stats()
            secrets = {s["name"]: s["secret"]
                       for s in envoy.admin_json("/config_dump?resource=dynamic_active_secrets")["configs"]}
            validator = secrets["ALL"]["validation_context"]["custom_validator_config"]
            assert validator["name"] == "envoy.tls.cert_validator.spiffe"
            assert [td["name"] for td in validator["typed_config"]["trust_domains"]] == [TRUST_DOMAIN]
            ca_paths = [ca["path"] for ctx in envoy.admin_json("/certs")["certificates"]
                        for ca in ctx.get("ca_cert", [])]
            assert ca_paths == [f"{TRUST_DOMAIN}: <inline>"], "the SPIFFE validator holds the bundle"
        assert pair.request().status == 200
    finally:
        for envoy in reversed(stack):
            envoy.stop()


def test_all_secret_keeps_the_exact_spiffe_id_check(sds_factory, envoy_bin, short_dir, api_type):
    """combined_validation_context merges ALL over default_validation_context: the SAN matcher still applies, so a
    server with a valid SVID but another SPIFFE ID than the client demands is refused."""
    stack: list[Envoy] = []
    try:
        pair = start_spire_all_pair(sds_factory, envoy_bin, short_dir, api_type, stack,
                                    client_expects=f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/someone-else")
        seen = pair.request()
        assert seen.status == 503, seen
        assert seen.server_saw_peer_id == "", "the handshake must not complete"
        wait_for(lambda: pair.client.stats(r"^cluster\.mtls_server\.ssl\.fail_verify_san$")
                 .get("cluster.mtls_server.ssl.fail_verify_san", 0) >= 1,
                 SECRET_TIMEOUT, "client Envoy to count a SAN verification failure", pair.client.diagnostics)
        for envoy in pair.envoys():
            assert_sds_healthy(envoy)
    finally:
        for envoy in reversed(stack):
            envoy.stop()


FOREIGN_TRUST_DOMAIN = "other.org"
FOREIGN_CLIENT_ID = f"spiffe://{FOREIGN_TRUST_DOMAIN}/ns/demo/sa/client"


def write_shared_operator_ca(directory: pathlib.Path) -> list[str]:
    """One CA (no SPIFFE ID of its own) that sds-agents of two trust domains sign with; their --ca-cert/--ca-key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CA shared by two trust domains")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "shared-ca.pem", directory / "shared-ca.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return ["--ca-cert", str(cert_path), "--ca-key", str(key_path)]


@pytest.mark.parametrize("bundle_style", ["spire", "spire-all"])
def test_all_secret_trusts_a_ca_only_for_its_own_trust_domain(sds_agent_bin, envoy_bin, short_dir, api_type,
                                                              bundle_style):
    """What sets ALL apart from a plain bundle. One CA signs for example.org and for other.org: with the plain bundle
    (trusted_ca) each Envoy accepts the other; with ALL, Envoy's SPIFFE validator trusts that CA only for the trust
    domain it is listed under, so the client (other.org) refuses the server (example.org)."""
    ca_args = write_shared_operator_ca(short_dir)
    factory = ProcessFactory("agent", [str(sds_agent_bin)], short_dir)
    stack: list[Envoy] = []
    try:
        server_sds = factory.start("server-sds", SERVER_ID, ca_args)
        # The CA comes from --ca-cert/--ca-key, not from the first agent's state dir: nothing to copy from it.
        (short_dir / "client-sds.state").mkdir()
        client_sds = factory.start("client-sds", FOREIGN_CLIENT_ID,
                                   ["--trust-domain", FOREIGN_TRUST_DOMAIN, *ca_args])
        pair = start_mtls_pair(envoy_bin, short_dir, bundle_style, api_type, TRUST_DOMAIN,
                               str(server_sds.socket_path), SERVER_ID, str(client_sds.socket_path),
                               FOREIGN_CLIENT_ID, stack, client_trust_domain=FOREIGN_TRUST_DOMAIN)
        seen = pair.request()
        if bundle_style == "spire":
            assert seen.status == 200, seen
            assert (seen.server_saw_peer_id, seen.client_saw_peer_id) == (FOREIGN_CLIENT_ID, SERVER_ID)
        else:
            assert seen.status == 503, seen
            counter = "cluster.mtls_server.ssl.fail_verify_error"
            wait_for(lambda: pair.client.stats(rf"^{re.escape(counter)}$").get(counter, 0) >= 1, SECRET_TIMEOUT,
                     "client Envoy to count a chain verification failure", pair.client.diagnostics)
        for envoy in pair.envoys():
            assert_sds_healthy(envoy)
    finally:
        for envoy in reversed(stack):
            envoy.stop()
        factory.stop_all()
