"""Examples/federation run for real, as its README does it: two sds-agents in two trust domains (each its own local
CA, state dir and socket), each federating with the other through a bundle file that appears only later, and the
example's two Envoy bootstraps (Envoy 1.40) on top.

   curl ─ client Envoy (cluster-a.example.com) ══mTLS══ server Envoy (cluster-b.example.com) ─ 200
               │ default, ROOTCA                                 │ default, ROOTCA
          agent A --federate-with cluster-b.example.com=<file>   agent B --federate-with cluster-a.example.com=<file>

- Before the exchange each agent's ROOTCA holds its own domain only: the request fails (the client Envoy cannot
  verify the server's certificate). With only A holding B's bundle it still fails, now at the server. Once both
  files are written (no restart), the request passes and each side saw the other's exact SPIFFE ID.
- The exact SAN check: a client Envoy expecting another ID of cluster-b.example.com is refused though the bundles are
  trusted.

The bundle files are SPIFFE bundle documents, the format `sds-agent bundle show --format spiffe` prints; this test
makes them from the bundle each agent serves for its own domain over SDS (`spiffe://<td>`), so it does not depend on
`bundle show` being in the binary under test.
"""
from __future__ import annotations

import os
import pathlib
import re

from cryptography import x509

import spiffe_test_ca
from envoy_harness import EXAMPLES, SECRET_TIMEOUT, Envoy, MtlsPair, substitute, wait_for
from sds_servers import ProcessFactory, ProcessServer, fetch_when_served

FEDERATION = EXAMPLES / "federation"
DOMAIN_A, DOMAIN_B = "cluster-a.example.com", "cluster-b.example.com"
CLIENT_ID = f"spiffe://{DOMAIN_A}/ns/shop/sa/frontend"
SERVER_ID = f"spiffe://{DOMAIN_B}/ns/pay/sa/payment"
OTHER_B_ID = f"spiffe://{DOMAIN_B}/ns/pay/sa/other"
# Istio's federation names: ROOTCA is every trust domain's bundle (Envoy's SPIFFE validator config).
ISTIO_FEDERATION = ["--default-bundle-name", "null", "--default-all-bundles-name", "ROOTCA"]


# ------------------------------------------------------------------------------------------------------------------
# The README says what this test does
# ------------------------------------------------------------------------------------------------------------------


def readme() -> str:
    return (FEDERATION / "README.md").read_text()


def test_the_readme_runs_what_this_test_runs():
    text = readme()
    for needle in (" ".join(ISTIO_FEDERATION), f"CLIENT_ID={CLIENT_ID}", f"SERVER_ID={SERVER_ID}",
                   f"--trust-domain {DOMAIN_A}", f"--trust-domain {DOMAIN_B}",
                   f'--federate-with {DOMAIN_B}="$F/{DOMAIN_B}.json"',
                   f'--federate-with {DOMAIN_A}="$F/{DOMAIN_A}.json"',
                   "sds-agent bundle show --format spiffe", OTHER_B_ID):
        assert needle in text, f"Examples/federation/README.md lacks {needle!r}"
    # Each state dir and socket is one agent's own.
    assert len(set(re.findall(r'--state-dir "\$F/(\w+)\.state"', text))) == 2
    assert len(set(re.findall(r'--socket "\$F/(\w+)\.sock"', text))) == 2


def test_the_readme_fills_every_placeholder_of_each_bootstrap():
    """The README's `NAME=value ... envsubst < Examples/federation/<role>-envoy.yaml` sets exactly the placeholders
    the bootstrap has (envsubst leaves an unset one empty, silently)."""
    commands = re.findall(r"((?:[A-Z_]+=\S+\s+(?:\\\n\s*)?)+)envsubst < Examples/federation/(\w+-envoy\.yaml)",
                          readme())
    assert sorted(name for _, name in commands) == ["client-envoy.yaml", "server-envoy.yaml"]
    for assignments, name in commands:
        placeholders = set(re.findall(r"\$\{([A-Z_]+)\}", (FEDERATION / name).read_text()))
        assert set(re.findall(r"([A-Z_]+)=", assignments)) == placeholders, name


# ------------------------------------------------------------------------------------------------------------------
# Running it
# ------------------------------------------------------------------------------------------------------------------


def start_agent(factory: ProcessFactory, workdir: pathlib.Path, label: str, spiffe_id: str,
                bundle_file: pathlib.Path) -> ProcessServer:
    trust_domain = spiffe_id.split("/")[2]
    federated = bundle_file.name.removesuffix(".json")
    # A state dir of its own, so a CA of its own (the factory would copy the first agent's).
    (workdir / f"{label}.state").mkdir(mode=0o700)
    return factory.start(label, spiffe_id, ["--trust-domain", trust_domain, *ISTIO_FEDERATION,
                                            "--federate-with", f"{federated}={bundle_file}"])


def own_bundle_document(agent: ProcessServer) -> str:
    """The SPIFFE bundle document of the agent's own trust domain, from what it serves as `spiffe://<td>`: the
    authorities `sds-agent bundle show --format spiffe` prints."""
    name = "spiffe://" + agent.spiffe_id.split("/")[2]
    ca = fetch_when_served(agent.socket_path, [name])[name].validation_context.trusted_ca
    certs = x509.load_pem_x509_certificates(ca.inline_bytes or ca.inline_string.encode())
    return spiffe_test_ca.bundle_document(certs, sequence=1)


def publish(path: pathlib.Path, document: str) -> None:
    """Write, then rename into place (the README's `> tmp && mv`): the watching agent never reads half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(document)
    os.replace(tmp, path)


def served_trust_domains(agent: ProcessServer, name: str = "ROOTCA") -> set[str]:
    """The trust domains of an all-bundles secret (Envoy's SPIFFE validator config)."""
    from envoy.extensions.transport_sockets.tls.v3 import tls_spiffe_validator_config_pb2 as spiffe_pb2

    secret = fetch_when_served(agent.socket_path, [name])[name]
    config = spiffe_pb2.SPIFFECertValidatorConfig()
    assert secret.validation_context.custom_validator_config.typed_config.Unpack(config), secret
    return {domain.name for domain in config.trust_domains}


def start_server_envoy(envoy_bin: str, workdir: pathlib.Path, agent: ProcessServer, peer: str, stack: list) -> Envoy:
    server = Envoy(envoy_bin, "server-envoy", substitute((FEDERATION / "server-envoy.yaml").read_text(), {
        "SDS_SOCKET": agent.socket_path, "ADMIN_PORT": 0, "LISTENER_PORT": 0, "PEER_SPIFFE_ID": peer,
    }), workdir)
    stack.append(server)
    return server.start()


def start_client_envoy(envoy_bin: str, workdir: pathlib.Path, name: str, agent: ProcessServer, server: Envoy,
                       peer: str, stack: list) -> MtlsPair:
    client = Envoy(envoy_bin, name, substitute((FEDERATION / "client-envoy.yaml").read_text(), {
        "SDS_SOCKET": agent.socket_path, "ADMIN_PORT": 0, "LISTENER_PORT": 0,
        "UPSTREAM_PORT": server.listener_port("mtls_in"), "PEER_SPIFFE_ID": peer,
    }), workdir)
    stack.append(client)
    client.start()
    return MtlsPair(server, client, client.listener_port("http_in"))


def counter(envoy: Envoy, suffix: str) -> int:
    """The sum of one TLS counter over Envoy's listeners and clusters, e.g. `ssl.fail_verify_error`."""
    return sum(envoy.stats(re.escape(suffix) + "$").values())


def refused_with(pair: MtlsPair, envoy: Envoy, suffix: str) -> bool:
    """One request fails (503, no handshake completed) and `envoy` counted it under `suffix`: retried while a pushed
    bundle may still be on its way to Envoy."""
    before = counter(envoy, suffix)
    seen = pair.request()
    assert seen.status != 200, f"the request passed: {seen}"
    assert seen.status == 503 and seen.server_saw_peer_id == "", seen
    return counter(envoy, suffix) > before


def test_the_example_federates_two_trust_domains_and_checks_exact_ids(sds_agent_bin, envoy_bin, short_dir):
    factory = ProcessFactory("agent", [str(sds_agent_bin)], short_dir)
    file_a, file_b = short_dir / f"{DOMAIN_A}.json", short_dir / f"{DOMAIN_B}.json"
    stack: list[Envoy] = []
    try:
        # 1. Each agent federates with the other through a file not written yet.
        agent_a = start_agent(factory, short_dir, "a", CLIENT_ID, file_b)
        agent_b = start_agent(factory, short_dir, "b", SERVER_ID, file_a)
        assert served_trust_domains(agent_a) == {DOMAIN_A} and served_trust_domains(agent_b) == {DOMAIN_B}

        # 2. The example's Envoys: ready (each holds its own domain's ROOTCA), but no trust across domains yet.
        server = start_server_envoy(envoy_bin, short_dir, agent_b, CLIENT_ID, stack)
        pair = start_client_envoy(envoy_bin, short_dir, "client-envoy", agent_a, server, SERVER_ID, stack)
        wait_for(lambda: refused_with(pair, pair.client, "ssl.fail_verify_error"), SECRET_TIMEOUT,
                 "the client Envoy to refuse the server's certificate (CA of an untrusted domain)",
                 pair.client.diagnostics)

        # 3a. Only A trusts B: the client accepts the server now, the server still refuses the client.
        publish(file_b, own_bundle_document(agent_b))
        wait_for(lambda: served_trust_domains(agent_a) == {DOMAIN_A, DOMAIN_B}, SECRET_TIMEOUT,
                 "agent A to serve cluster-b in ROOTCA", agent_a.log_tail)
        wait_for(lambda: refused_with(pair, server, "ssl.fail_verify_error"), SECRET_TIMEOUT,
                 "the server Envoy to refuse the client's certificate (B does not trust A yet)", server.diagnostics)

        # 3b. Both ways: mTLS across the domains, each side saw the other's exact SPIFFE ID. No restart.
        publish(file_a, own_bundle_document(agent_a))
        wait_for(lambda: served_trust_domains(agent_b) == {DOMAIN_A, DOMAIN_B}, SECRET_TIMEOUT,
                 "agent B to serve cluster-a in ROOTCA", agent_b.log_tail)
        seen = wait_for(lambda: (lambda s: s if s.status == 200 else None)(pair.request()), SECRET_TIMEOUT,
                        "a request through both Envoys to pass",
                        lambda: pair.client.diagnostics() + server.diagnostics())
        assert (seen.server_saw_peer_id, seen.client_saw_peer_id) == (CLIENT_ID, SERVER_ID), seen
        assert seen.server_own_id == SERVER_ID
        assert seen.body == b"hello from the mTLS server\n"
        # Envoy holds one CA per trust domain in ROOTCA (/certs labels both with one domain's name: go by serial).
        roots = {format(cert.serial_number, "x") for document in (file_a, file_b)
                 for cert in spiffe_test_ca.bundle_document_authorities(document.read_text())}
        assert len(roots) == 2 and pair.client.ca_serials() == roots == server.ca_serials()

        # 4. The exact SAN check: a client expecting another workload of cluster-b is refused by its own Envoy,
        #    although cluster-b's CA is trusted.
        other = start_client_envoy(envoy_bin, short_dir, "client-envoy-other", agent_a, server, OTHER_B_ID, stack)
        wait_for(lambda: refused_with(other, other.client, "ssl.fail_verify_san"), SECRET_TIMEOUT,
                 "the client Envoy to refuse a server that is not the ID it expects", other.client.diagnostics)
        assert pair.request().status == 200, "the first client still passes"
        for agent in (agent_a, agent_b):
            agent.check_alive()
    finally:
        for envoy in reversed(stack):
            envoy.stop()
        factory.stop_all()
