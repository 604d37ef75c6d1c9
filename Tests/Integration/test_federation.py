"""Federated trust domains: two real Envoys (1.40) in two trust domains, each fed by its own sds-agent with its own
local CA, do mTLS with exact SAN matching once each agent federates with the other through a bundle file
(`--federate-with <td>=<file>`); a workload from a third, unfederated domain is refused.

   client (cluster-a.test) ─ client Envoy ══mTLS══ server Envoy ─ (direct response) (cluster-b.test)
              │                                          │
      agent A (local CA of A)                   agent B (local CA of B)
      --federate-with cluster-b.test=<B's bundle>   --federate-with cluster-a.test=<A's bundle>

Names: `spire-all` (the SVID under its SPIFFE ID, `ALL` as Envoy's SPIFFE validator) and Istio's federation setup
(`default`, and `ROOTCA` as every domain's bundle: `--default-bundle-name null --default-all-bundles-name ROOTCA`).
The bundle files are what each agent's `sds-agent bundle show` prints (SPIFFE bundle documents with the X.509 and JWT
authorities; PEM for the Istio names), written after both agents started: the agents pick them up from their watched
files, as they would from a ConfigMap projection.
"""
from __future__ import annotations

import json
import pathlib
import re

import pytest

from envoy_harness import SECRET_TIMEOUT, Envoy, start_mtls_pair, wait_for
from sds_servers import ProcessFactory, fetch_when_served

DOMAIN_A, DOMAIN_B, DOMAIN_C = "cluster-a.test", "cluster-b.test", "cluster-c.test"
CLIENT_ID = f"spiffe://{DOMAIN_A}/ns/shop/sa/frontend"
SERVER_ID = f"spiffe://{DOMAIN_B}/ns/pay/sa/payment"
STRANGER_ID = f"spiffe://{DOMAIN_C}/ns/x/sa/stranger"
ISTIO_FEDERATION_NAMES = ["--default-bundle-name", "null", "--default-all-bundles-name", "ROOTCA"]


def bundle_show(sds_agent_bin, agent, fmt: str = "spiffe") -> bytes:
    """What an operator publishes for the other cluster: `sds-agent bundle show` over the agent's own state dir."""
    import subprocess

    result = subprocess.run(
        [str(sds_agent_bin), "bundle", "show", "--state-dir", str(agent.state_dir), "--trust-domain",
         agent_domain(agent), "--format", fmt], capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def own_bundle_pem(agent) -> bytes:
    """The PEM bundle an agent serves for its own trust domain (what an operator publishes for the other cluster)."""
    name = "spiffe://" + agent_domain(agent)
    secret = fetch_when_served(agent.socket_path, [name])[name]
    ca = secret.validation_context.trusted_ca
    return ca.inline_bytes or ca.inline_string.encode()


def agent_domain(agent) -> str:
    return agent.spiffe_id.split("/")[2]


def start_agent(factory: ProcessFactory, short_dir: pathlib.Path, label: str, spiffe_id: str, federate: list[str],
                names: list[str]):
    # Each agent has a CA of its own: an empty state dir of its own (the factory would copy the first one's).
    (short_dir / f"{label}.state").mkdir(mode=0o700)
    args = ["--trust-domain", spiffe_id.split("/")[2], *names]
    for entry in federate:
        args += ["--federate-with", entry]
    return factory.start(label, spiffe_id, args)


def served_domains(agent, name: str) -> set[str]:
    """The trust domains an all-bundles secret lists, from its SPIFFE validator config."""
    from envoy.extensions.transport_sockets.tls.v3 import tls_spiffe_validator_config_pb2 as spiffe_pb2

    secret = fetch_when_served(agent.socket_path, [name])[name]
    config = spiffe_pb2.SPIFFECertValidatorConfig()
    assert secret.validation_context.custom_validator_config.typed_config.Unpack(config), secret
    return {domain.name for domain in config.trust_domains}


@pytest.fixture(params=["spire-all", "istio"])
def names(request) -> str:
    return request.param


def test_two_trust_domains_federated_by_bundle_files_do_mtls_and_a_third_is_refused(
        sds_agent_bin, envoy_bin, short_dir, names):
    factory = ProcessFactory("agent", [str(sds_agent_bin)], short_dir)
    agent_names = ISTIO_FEDERATION_NAMES if names == "istio" else []
    all_bundles = "ROOTCA" if names == "istio" else "ALL"
    file_a, file_b = short_dir / "federation" / "a.pem", short_dir / "federation" / "b.pem"
    file_a.parent.mkdir()
    stack: list[Envoy] = []
    try:
        agent_a = start_agent(factory, short_dir, "agent-a", CLIENT_ID, [f"{DOMAIN_B}={file_b}"], agent_names)
        agent_b = start_agent(factory, short_dir, "agent-b", SERVER_ID, [f"{DOMAIN_A}={file_a}"], agent_names)
        stranger = start_agent(factory, short_dir, "agent-c", STRANGER_ID, [f"{DOMAIN_B}={file_b}"], agent_names)
        # Before the exchange each agent trusts its own domain only.
        assert served_domains(agent_a, all_bundles) == {DOMAIN_A}
        # SPIRE names get SPIFFE bundle documents, Istio names PEM: both forms a --federate-with file may hold.
        fmt = "pem" if names == "istio" else "spiffe"
        file_a.write_bytes(bundle_show(sds_agent_bin, agent_a, fmt))
        file_b.write_bytes(bundle_show(sds_agent_bin, agent_b, fmt))
        for agent, expected in ((agent_a, {DOMAIN_A, DOMAIN_B}), (agent_b, {DOMAIN_A, DOMAIN_B}),
                                (stranger, {DOMAIN_C, DOMAIN_B})):
            wait_for(lambda: served_domains(agent, all_bundles) == expected, SECRET_TIMEOUT,
                     f"{agent.spiffe_id}'s agent to serve {expected} under {all_bundles}")
        # The federated bundle is also served under its SPIFFE name, as the other domain's CA only.
        b_for_a = fetch_when_served(agent_a.socket_path, [f"spiffe://{DOMAIN_B}"])[f"spiffe://{DOMAIN_B}"]
        assert b_for_a.validation_context.trusted_ca.inline_bytes == own_bundle_pem(agent_b)

        style = "istio" if names == "istio" else "spire-all"
        pair = start_mtls_pair(envoy_bin, short_dir, style, "GRPC", DOMAIN_B, str(agent_b.socket_path), SERVER_ID,
                               str(agent_a.socket_path), CLIENT_ID, stack, client_trust_domain=DOMAIN_A)
        seen = pair.request()
        assert seen.status == 200, seen
        assert (seen.server_saw_peer_id, seen.client_saw_peer_id) == (CLIENT_ID, SERVER_ID)

        # cluster-c trusts B, but B does not trust C: B's Envoy refuses C's client certificate.
        refused = start_mtls_pair(envoy_bin, short_dir, style, "GRPC", DOMAIN_B, str(agent_b.socket_path),
                                  SERVER_ID, str(stranger.socket_path), STRANGER_ID, stack,
                                  client_trust_domain=DOMAIN_C)
        seen = refused.request()
        assert seen.status == 503, seen
        assert seen.server_saw_peer_id == "", "the handshake must not complete"
        counter = "listener.*ssl.fail_verify_error"
        wait_for(lambda: sum(v for k, v in refused.server.stats(r"ssl\.fail_verify_error$").items()) >= 1,
                 SECRET_TIMEOUT, f"B's server Envoy to count a chain verification failure ({counter})",
                 refused.server.diagnostics)
    finally:
        for envoy in reversed(stack):
            envoy.stop()
        factory.stop_all()


def test_a_bad_bundle_file_keeps_the_last_good_federated_bundle(sds_agent_bin, short_dir):
    factory = ProcessFactory("agent", [str(sds_agent_bin)], short_dir)
    bundle_file = short_dir / "b.pem"
    try:
        agent_b = start_agent(factory, short_dir, "agent-b", SERVER_ID, [], [])
        good = own_bundle_pem(agent_b)
        bundle_file.write_bytes(good)
        agent_a = start_agent(factory, short_dir, "agent-a", CLIENT_ID, [f"{DOMAIN_B}={bundle_file}"], [])
        name = f"spiffe://{DOMAIN_B}"
        first = fetch_when_served(agent_a.socket_path, [name])[name]
        assert first.validation_context.trusted_ca.inline_bytes == good
        bundle_file.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        wait_for(lambda: "federated bundle refused" in agent_a.log_path.read_text(), SECRET_TIMEOUT,
                 "the agent to read the broken file")
        again = fetch_when_served(agent_a.socket_path, [name])[name]
        assert again.validation_context.trusted_ca.inline_bytes == good
        assert served_domains(agent_a, "ALL") == {DOMAIN_A, DOMAIN_B}
        agent_a.check_alive()
    finally:
        factory.stop_all()


def test_federating_with_the_own_trust_domain_is_refused_with_one_line(sds_agent_bin, short_dir):
    import subprocess

    result = subprocess.run(
        [str(sds_agent_bin), "run", "--socket", str(short_dir / "s.sock"), "--state-dir", str(short_dir / "state"),
         "--trust-domain", DOMAIN_A, "--federate-with", f"{DOMAIN_A}=/etc/a.pem"],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--federate-with" in lines[0], result.stderr
    assert re.search(r"own trust domain", lines[0]), lines[0]
    assert not (short_dir / "s.sock").exists()


def test_relaying_spire_like_upstreams_that_federate_istio_names_do_mtls(sds_agent_bin, envoy_bin, short_dir):
    """Mode (a): each agent relays a SPIRE-like Workload API server (grpcio, workload_api_server.py) whose agent
    federates with the other domain; with Istio's SPIRE settings (`--default-bundle-name null
    --default-all-bundles-name ROOTCA`) istio-proxy's ROOTCA carries both domains and the Envoys do mTLS. A client of a
    third domain, whose upstream federates with B while B's does not federate with it, is refused."""
    from workload_api_server import WorkloadAPIServer

    upstream_a = WorkloadAPIServer(str(short_dir / "up-a.sock"), CLIENT_ID)
    upstream_b = WorkloadAPIServer(str(short_dir / "up-b.sock"), SERVER_ID)
    upstream_c = WorkloadAPIServer(str(short_dir / "up-c.sock"), STRANGER_ID)
    upstream_a.set_federated(f"spiffe://{DOMAIN_B}", upstream_b.ca.bundle_der)
    upstream_b.set_federated(f"spiffe://{DOMAIN_A}", upstream_a.ca.bundle_der)
    upstream_c.set_federated(f"spiffe://{DOMAIN_B}", upstream_b.ca.bundle_der)
    factory = ProcessFactory("agent", [str(sds_agent_bin)], short_dir)
    stack: list[Envoy] = []
    try:
        agents = {}
        for label, upstream, spiffe_id in (("a", upstream_a, CLIENT_ID), ("b", upstream_b, SERVER_ID),
                                           ("c", upstream_c, STRANGER_ID)):
            upstream.start()
            (short_dir / f"relay-{label}.state").mkdir(mode=0o700)
            agents[label] = factory.start(
                f"relay-{label}", spiffe_id,
                ["--trust-domain", spiffe_id.split("/")[2], "--issuer", "workload-api",
                 "--upstream-socket", f"unix://{upstream.socket_path}", *ISTIO_FEDERATION_NAMES])
        assert served_domains(agents["a"], "ROOTCA") == {DOMAIN_A, DOMAIN_B}
        assert served_domains(agents["b"], "ROOTCA") == {DOMAIN_A, DOMAIN_B}
        pair = start_mtls_pair(envoy_bin, short_dir, "istio", "DELTA_GRPC", DOMAIN_B, str(agents["b"].socket_path),
                               SERVER_ID, str(agents["a"].socket_path), CLIENT_ID, stack,
                               client_trust_domain=DOMAIN_A)
        seen = pair.request()
        assert seen.status == 200, seen
        assert (seen.server_saw_peer_id, seen.client_saw_peer_id) == (CLIENT_ID, SERVER_ID)
        refused = start_mtls_pair(envoy_bin, short_dir, "istio", "DELTA_GRPC", DOMAIN_B,
                                  str(agents["b"].socket_path), SERVER_ID, str(agents["c"].socket_path),
                                  STRANGER_ID, stack, client_trust_domain=DOMAIN_C)
        seen = refused.request()
        assert seen.status == 503, seen
        assert seen.server_saw_peer_id == ""
    finally:
        for envoy in reversed(stack):
            envoy.stop()
        factory.stop_all()
        for upstream in (upstream_a, upstream_b, upstream_c):
            upstream.stop()


def test_py_spiffe_validates_a_jwt_svid_of_domain_b_on_domain_as_socket(sds_agent_bin, short_dir):
    """A's agent federates with B through B's `bundle show` document (its jwt-svid keys included): py-spiffe fetches a
    JWT-SVID from B's socket and A's ValidateJWTSVID accepts it; A's FetchJWTBundles carries B's JWT bundle, with
    which py-spiffe verifies the token itself. Before the exchange A refuses it."""
    from spiffe import JwtSvid, TrustDomain, WorkloadApiClient

    factory = ProcessFactory("agent", [str(sds_agent_bin)], short_dir)
    bundle_file = short_dir / "b.json"
    try:
        agent_b = start_agent(factory, short_dir, "agent-b", SERVER_ID, [], [])
        agent_a = start_agent(factory, short_dir, "agent-a", CLIENT_ID, [f"{DOMAIN_B}={bundle_file}"], [])
        with WorkloadApiClient(f"unix:{agent_b.socket_path}") as b:
            token = wait_for(lambda: b.fetch_jwt_svid({"payments"}), SECRET_TIMEOUT, "a JWT-SVID from B").token
        with WorkloadApiClient(f"unix:{agent_a.socket_path}") as a:
            with pytest.raises(Exception):
                a.validate_jwt_svid(token, "payments")
            bundle_file.write_bytes(bundle_show(sds_agent_bin, agent_b))

            def validated():
                try:
                    return a.validate_jwt_svid(token, "payments")
                except Exception:  # noqa: BLE001 - not federated yet
                    return None
            svid = wait_for(validated, SECRET_TIMEOUT, "A to validate B's JWT-SVID")
            assert str(svid.spiffe_id) == SERVER_ID
            bundles = a.fetch_jwt_bundles()
            b_bundle = bundles.get_bundle_for_trust_domain(TrustDomain(DOMAIN_B))
            assert b_bundle is not None and b_bundle.jwt_authorities
            checked = JwtSvid.parse_and_validate(token, b_bundle, {"payments"})
            assert str(checked.spiffe_id) == SERVER_ID
            # The audience is still checked for a federated token.
            with pytest.raises(Exception):
                a.validate_jwt_svid(token, "other-audience")
    finally:
        factory.stop_all()


def test_disable_spiffe_cert_validation_gets_the_all_bundles_name_as_a_plain_ca_list(sds_agent_bin, envoy_bin,
                                                                                     short_dir):
    """SPIRE's per-Envoy switch: an Envoy whose node metadata sets `disable_spiffe_cert_validation: true` gets the
    all-bundles name as `trusted_ca` (every domain's roots), while other clients keep the SPIFFE validator config.
    Checked with a grpcio stream (node metadata set) and with a real Envoy, which then does mTLS with it."""
    from envoy.config.core.v3 import base_pb2
    from envoy.service.discovery.v3 import discovery_pb2
    from envoy.service.secret.v3 import sds_pb2_grpc
    from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
    from google.protobuf import struct_pb2
    import grpc

    factory = ProcessFactory("agent", [str(sds_agent_bin)], short_dir)
    file_b = short_dir / "b.json"
    stack: list[Envoy] = []
    try:
        file_a = short_dir / "a.json"
        agent_b = start_agent(factory, short_dir, "agent-b", SERVER_ID, [f"{DOMAIN_A}={file_a}"], [])
        file_b.write_bytes(bundle_show(sds_agent_bin, agent_b))
        agent_a = start_agent(factory, short_dir, "agent-a", CLIENT_ID, [f"{DOMAIN_B}={file_b}"], [])
        file_a.write_bytes(bundle_show(sds_agent_bin, agent_a))
        assert served_domains(agent_a, "ALL") == {DOMAIN_A, DOMAIN_B}, "a client without the switch"
        wait_for(lambda: served_domains(agent_b, "ALL") == {DOMAIN_A, DOMAIN_B}, SECRET_TIMEOUT,
                 "B to federate with A")

        metadata = struct_pb2.Struct()
        metadata.update({"disable_spiffe_cert_validation": True, "ISTIO_VERSION": "1.28.0"})
        node = base_pb2.Node(id="plain-envoy", cluster="test", metadata=metadata)
        with grpc.insecure_channel(f"unix:{agent_a.socket_path}") as channel:
            stream = sds_pb2_grpc.SecretDiscoveryServiceStub(channel).StreamSecrets(
                iter([discovery_pb2.DiscoveryRequest(node=node, resource_names=["ALL"],
                                                     type_url="type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret")]),
                timeout=10)
            response = next(stream)
            stream.cancel()
        secret = secret_pb2.Secret()
        assert response.resources[0].Unpack(secret)
        assert secret.name == "ALL"
        assert not secret.validation_context.HasField("custom_validator_config")
        ca = secret.validation_context.trusted_ca.inline_bytes
        assert own_bundle_pem(agent_a) in ca and own_bundle_pem(agent_b) in ca, "every domain's roots"

        # A real Envoy with the switch in its node metadata (spire-all names): it is given the plain list, and does
        # mTLS with B's server with it.
        def with_switch(bootstrap: str) -> str:
            assert "node:\n" in bootstrap
            return bootstrap.replace("node:\n", "node:\n  metadata: {disable_spiffe_cert_validation: true}\n", 1)
        pair = start_mtls_pair(envoy_bin, short_dir, "spire-all", "GRPC", DOMAIN_B, str(agent_b.socket_path),
                               SERVER_ID, str(agent_a.socket_path), CLIENT_ID, stack, client_trust_domain=DOMAIN_A,
                               client_bootstrap_edit=with_switch)
        seen = pair.request()
        assert seen.status == 200, seen
        assert (seen.server_saw_peer_id, seen.client_saw_peer_id) == (CLIENT_ID, SERVER_ID)
        dump = json.dumps(pair.client.admin_json("/config_dump?resource=dynamic_active_secrets"))
        assert "trusted_ca" in dump and "SPIFFECertValidatorConfig" not in dump, "the client Envoy got the plain list"
        server_dump = json.dumps(pair.server.admin_json("/config_dump?resource=dynamic_active_secrets"))
        assert "SPIFFECertValidatorConfig" in server_dump, "an Envoy without the switch keeps the validator config"
    finally:
        for envoy in reversed(stack):
            envoy.stop()
        factory.stop_all()
