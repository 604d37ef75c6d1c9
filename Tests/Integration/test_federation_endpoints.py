"""Federated bundles from bundle endpoints (SPIFFE Federation: `https_web` and `https_spiffe`), served by a strict
Python fake of another domain's SPIRE server (bundle_endpoint_server.py).

    bundle endpoint (b.test) <──GET, TLS──  sds-agent (a.test) ──SDS──> a SotW stream on spiffe://b.test
                                                               ──Workload API──> py-spiffe X509Source

A changed bundle reaches the open SDS stream and the X509Source within one refresh hint (10 s, the shortest the agent
honours); an endpoint that fails keeps the last good bundle; an older document (lower spiffe_sequence) is refused.
"""
from __future__ import annotations

import datetime
import time

import pytest
from spiffe import TrustDomain, X509Source

from bundle_endpoint_server import BundleEndpointServer
import spiffe_test_ca as test_ca
from envoy_harness import wait_for
from sds_client import SecretStream, certs_of, unpack_secrets
from sds_servers import ProcessFactory

DOMAIN_A, DOMAIN_B = "a.test", "b.test"
AGENT_ID = f"spiffe://{DOMAIN_A}/ns/shop/sa/frontend"
NAME = f"spiffe://{DOMAIN_B}"
HINT = 10  # seconds: the shortest refresh the agent honours
SLACK = 8  # a fetch, a push and the X509Source's own stream


def new_root(name: str):
    return test_ca.SpiffeRoot.create(DOMAIN_B, test_ca.organization(name), lifetime=datetime.timedelta(days=1),
                                     backdate=datetime.timedelta(minutes=1))


def start_agent(factory, short_dir, source: str, extra: list[str] | None = None):
    (short_dir / "agent.state").mkdir(mode=0o700)
    return factory.start("agent", AGENT_ID, ["--trust-domain", DOMAIN_A, "--federate-with", f"{DOMAIN_B}={source}",
                                             *(extra or [])])


def stream_bundle(stream: SecretStream, timeout: float) -> list[bytes]:
    response = stream.recv(timeout=timeout)
    stream.send(version_info=response.version_info, response_nonce=response.nonce, resource_names=[NAME])
    secret = unpack_secrets(response.resources)[NAME]
    return [c.serial_number for c in certs_of(secret.validation_context.trusted_ca)]


def source_serials(source: X509Source) -> set[int]:
    bundle = source.get_bundle_for_trust_domain(TrustDomain(DOMAIN_B))
    return {c.serial_number for c in bundle.x509_authorities} if bundle else set()


@pytest.mark.parametrize("profile", ["web", "spiffe"])
def test_a_changed_endpoint_bundle_reaches_sds_and_py_spiffe_within_one_refresh_hint(sds_agent_bin, short_dir,
                                                                                   monkeypatch, profile):
    endpoint = BundleEndpointServer(DOMAIN_B, profile=profile)
    factory = ProcessFactory("agent", [str(sds_agent_bin)], short_dir)
    try:
        first = endpoint.root.cert
        endpoint.set_bundle([first], sequence=1, refresh_hint=HINT)
        extra = []
        if profile == "web":
            # https_web: the OS trust store through OpenSSL's default verify paths, which SSL_CERT_FILE redirects.
            monkeypatch.setenv("SSL_CERT_FILE", str(endpoint.ca_pem_path))
        else:
            extra = ["--federate-bootstrap", f"{DOMAIN_B}={endpoint.root_pem_path}"]
        agent = start_agent(factory, short_dir, endpoint.url(), extra)
        with SecretStream(agent.socket_path, delta=False) as stream, \
                X509Source(socket_path=f"unix:{agent.socket_path}", timeout_in_seconds=20) as source:
            stream.send(resource_names=[NAME])
            assert stream_bundle(stream, timeout=20) == [first.serial_number]
            wait_for(lambda: source_serials(source) == {first.serial_number}, 20, "py-spiffe to see b.test's bundle")

            second = new_root("second root")
            endpoint.set_bundle([first, second.cert], sequence=2, refresh_hint=HINT)
            changed_at = time.monotonic()
            assert stream_bundle(stream, timeout=HINT + SLACK) == [first.serial_number, second.cert.serial_number]
            wait_for(lambda: source_serials(source) == {first.serial_number, second.cert.serial_number},
                     HINT + SLACK - (time.monotonic() - changed_at), "py-spiffe to see the new bundle")
            assert time.monotonic() - changed_at <= HINT + SLACK

            # An older document (lower spiffe_sequence) and a failing endpoint: the last good bundle stays.
            endpoint.set_bundle([new_root("stale").cert], sequence=1, refresh_hint=HINT)
            seen = endpoint.request_count()
            wait_for(lambda: endpoint.request_count() > seen, HINT + SLACK, "the agent to fetch the stale document")
            endpoint.fail_with(503)
            seen = endpoint.request_count()
            wait_for(lambda: endpoint.request_count() > seen, HINT + SLACK, "the agent to meet the failing endpoint")
            assert stream.silent(window=1.0), "nothing was pushed for a refused or failed fetch"
            assert source_serials(source) == {first.serial_number, second.cert.serial_number}
            endpoint.stop()
            assert stream.silent(window=1.0)
            agent.check_alive()
    finally:
        factory.stop_all()
        endpoint.close()


def test_a_large_endpoint_bundle_never_stalls_the_event_loop(sds_agent_bin, short_dir, monkeypatch):
    """OpenSSL 3.0 spends ~0.1 ms on each certificate. An endpoint's bundle of 512 roots (the most one may hold),
    parsed on the agent's event loop, would hold every PING for tens of milliseconds, and again at every refresh,
    changed or not. The agent parses endpoint documents on a worker thread: the loop keeps answering PINGs in
    milliseconds while the bundle arrives and while it is fetched again."""
    from loop_probe import ProcessLoopProbe

    endpoint = BundleEndpointServer(DOMAIN_B, profile="web")
    factory = ProcessFactory("agent", [str(sds_agent_bin)], short_dir)
    try:
        first = endpoint.root.cert
        endpoint.set_bundle([first], sequence=1, refresh_hint=HINT)
        monkeypatch.setenv("SSL_CERT_FILE", str(endpoint.ca_pem_path))
        agent = start_agent(factory, short_dir, endpoint.url())
        large = [first] + [new_root(f"root {i}").cert for i in range(511)]
        with SecretStream(agent.socket_path, delta=False) as stream, ProcessLoopProbe(agent.socket_path) as probe:
            stream.send(resource_names=[NAME])
            assert stream_bundle(stream, timeout=20) == [first.serial_number]
            wait_for(lambda: probe.count() > 50, 10, "the loop probe to start")

            endpoint.set_bundle(large, sequence=2, refresh_hint=HINT)
            assert stream_bundle(stream, timeout=HINT + SLACK) == [c.serial_number for c in large]
            # The same document fetched again: parsed again (unchanged, nothing pushed).
            seen = endpoint.request_count()
            wait_for(lambda: endpoint.request_count() > seen, HINT + SLACK, "the agent to fetch the bundle again")
            # The window closes once the loop has answered 200 more PINGs (the parse runs after the request).
            last = probe.mark()
            wait_for(lambda: probe.count() > last + 200, 10, "200 more PINGs after the last fetch")
            assert stream.silent(window=0.5), "nothing is pushed for an unchanged bundle"
        assert probe.error is None, probe.error
        worst = max(probe.rtts)
        print(f"\nloop probe: {len(probe.rtts)} PINGs, max {worst * 1000:.1f} ms while a bundle of 512 roots "
              f"arrived and was fetched again")
        assert worst < 0.020, f"the loop stalled {worst * 1000:.1f} ms"
        agent.check_alive()
    finally:
        factory.stop_all()
        endpoint.close()


def test_an_endpoint_presenting_another_spiffe_id_is_never_trusted(sds_agent_bin, short_dir):
    endpoint = BundleEndpointServer(DOMAIN_B, profile="spiffe")
    factory = ProcessFactory("agent", [str(sds_agent_bin)], short_dir)
    try:
        endpoint.use_profile("spiffe", spiffe_id=f"spiffe://{DOMAIN_B}/not/the/server")
        agent = start_agent(factory, short_dir, endpoint.url(),
                            ["--federate-bootstrap", f"{DOMAIN_B}={endpoint.root_pem_path}"])
        # The agent connects (and retries) but refuses the certificate in the handshake: no request is ever sent, and
        # b.test stays unknown (Delta: removed).
        wait_for(lambda: endpoint.connection_count() >= 2, 20, "the agent to connect, refuse and retry")
        assert endpoint.request_count() == 0
        with SecretStream(agent.socket_path, delta=True) as stream:
            stream.send(resource_names_subscribe=[NAME])
            response = stream.recv(timeout=10)
            assert not response.resources and list(response.removed_resources) == [NAME]
        agent.check_alive()
    finally:
        factory.stop_all()
        endpoint.close()


def test_an_https_spiffe_endpoint_without_a_bootstrap_bundle_is_a_configuration_error(sds_agent_bin, short_dir):
    import subprocess

    result = subprocess.run(
        [str(sds_agent_bin), "run", "--socket", str(short_dir / "s.sock"), "--state-dir", str(short_dir / "state"),
         "--trust-domain", DOMAIN_A, "--federate-with", f"{DOMAIN_B}=https://localhost:1/b#spiffe://{DOMAIN_B}/s"],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result
    assert "--federate-bootstrap" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
