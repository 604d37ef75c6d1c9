"""`sds-agent bundle show`: the trust bundle a running agent serves, as the SPIFFE bundle document another trust
domain federates with, checked with py-spiffe against what the agent serves on its socket.

    sds-agent run --state-dir S ... ──ROOTCA (SDS), FetchJWTBundles (Workload API)──▶ expected authorities
    sds-agent bundle show --state-dir S ...  ──stdout──▶ py-spiffe X509Bundle / JwtBundle ──▶ the same authorities

py-spiffe 0.3.2 reads PEM or DER X.509 bundles (`X509Bundle.parse`, `parse_raw`) and JWKS JWT bundles
(`JwtBundle.parse`), not the SPIFFE bundle document itself: the test splits the document's keys by `use`, as the
SPIFFE Trust Domain and Bundle spec (§4.2.1) tells a consumer to, and hands each half to py-spiffe.
"""
from __future__ import annotations

import base64
import json
import os
import subprocess

import grpc
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from spiffe import JwtBundle, TrustDomain, X509Bundle
from spiffe._proto import workload_pb2, workload_pb2_grpc

from sds_client import certs_of
from sds_servers import TRUST_DOMAIN, fetch_when_served

SPIFFE_ID = f"spiffe://{TRUST_DOMAIN}/ns/apps/sa/app"
SECURITY_HEADER = ("workload.spiffe.io", "true")


def bundle_show(agent_bin, state_dir, *extra: str) -> subprocess.CompletedProcess:
    """`sds-agent bundle show` with the agent's own configuration flags and a clean environment (nothing of the
    test runner's environment may change the configuration it reads)."""
    return subprocess.run(
        [str(agent_bin), "bundle", "show", "--state-dir", str(state_dir), "--trust-domain", TRUST_DOMAIN,
         "--spiffe-id", SPIFFE_ID, *extra],
        capture_output=True, timeout=30, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})


def public_der(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def served_jwks(socket_path: str) -> bytes:
    """This trust domain's JWT bundle as FetchJWTBundles streams it (raw JWKS bytes)."""
    stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(grpc.insecure_channel(f"unix:{socket_path}"))
    response = next(stub.FetchJWTBundles(workload_pb2.JWTBundlesRequest(), metadata=[SECURITY_HEADER], timeout=5))
    return response.bundles[f"spiffe://{TRUST_DOMAIN}"]


def test_the_printed_bundle_is_what_the_agent_serves(agent_factory, sds_agent_bin):
    agent = agent_factory.start("agent", SPIFFE_ID)
    socket_path = str(agent.socket_path)
    served_roots = certs_of(fetch_when_served(socket_path, ["ROOTCA"])["ROOTCA"].validation_context.trusted_ca)
    trust_domain = TrustDomain(TRUST_DOMAIN)
    served_jwt = JwtBundle.parse(trust_domain, served_jwks(socket_path))

    state_files = sorted(p.name for p in agent.state_dir.iterdir())
    result = bundle_show(sds_agent_bin, agent.state_dir)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""
    assert sorted(p.name for p in agent.state_dir.iterdir()) == state_files, "bundle show changed the state dir"
    document = json.loads(result.stdout)
    assert b"PRIVATE" not in result.stdout and '"d"' not in result.stdout.decode()

    # The document's own fields (SPIFFE Trust Domain and Bundle, §4.1).
    assert set(document) == {"keys", "spiffe_refresh_hint", "spiffe_sequence"}
    assert document["spiffe_refresh_hint"] == 300  # --jwt-ttl's default, 5 min, is the shortest lifetime
    assert isinstance(document["spiffe_sequence"], int) and document["spiffe_sequence"] > 0
    x509_keys = [k for k in document["keys"] if k["use"] == "x509-svid"]
    jwt_keys = [k for k in document["keys"] if k["use"] == "jwt-svid"]
    assert len(x509_keys) + len(jwt_keys) == len(document["keys"])

    # X.509 authorities: one certificate each (standard base64 DER), read by py-spiffe, equal to ROOTCA.
    assert all(len(k["x5c"]) == 1 for k in x509_keys)
    der = b"".join(base64.b64decode(k["x5c"][0], validate=True) for k in x509_keys)
    x509_bundle = X509Bundle.parse_raw(trust_domain, der)
    assert x509_bundle.x509_authorities == set(served_roots)
    # Each entry's JWK parameters are its certificate's key (PyJWT reads the JWK, cryptography the certificate).
    for key in x509_keys:
        certificate = x509.load_der_x509_certificate(base64.b64decode(key["x5c"][0]))
        jwk = jwt.PyJWK({name: value for name, value in key.items() if name != "x5c"})
        assert public_der(jwk.key) == public_der(certificate.public_key())

    # JWT authorities: a JWKS py-spiffe reads, with the kids and keys FetchJWTBundles serves.
    printed_jwt = JwtBundle.parse(trust_domain, json.dumps({"keys": jwt_keys}).encode())
    assert set(printed_jwt.jwt_authorities) == set(served_jwt.jwt_authorities)
    assert len(printed_jwt.jwt_authorities) >= 1
    for kid, key in served_jwt.jwt_authorities.items():
        assert public_der(printed_jwt.get_jwt_authority(kid)) == public_der(key)

    # --format pem: the same roots, as PEM blocks.
    pem = bundle_show(sds_agent_bin, agent.state_dir, "--format", "pem")
    assert pem.returncode == 0, pem.stderr.decode()
    assert X509Bundle.parse(trust_domain, pem.stdout).x509_authorities == set(served_roots)

    # The same bytes twice: nothing in the document depends on when it is printed.
    assert bundle_show(sds_agent_bin, agent.state_dir).stdout == result.stdout


def test_an_agent_that_never_started_has_no_bundle_and_none_is_created(sds_agent_bin, short_dir):
    state = short_dir / "state"
    state.mkdir(mode=0o700)
    result = bundle_show(sds_agent_bin, state)
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr.decode() == f"sds-agent: bundle show: no CA in {state} yet: start the agent once\n"
    assert list(state.iterdir()) == []
    missing = short_dir / "missing"
    assert bundle_show(sds_agent_bin, missing).returncode == 1
    assert not missing.exists()


def test_bad_flags_and_relays_are_refused_in_one_line(sds_agent_bin, short_dir):
    for extra, needle in [(["--format", "jwks"], "--format"), (["--bogus", "1"], "--bogus"),
                          (["--issuer", "workload-api"], "SPIRE server")]:
        result = bundle_show(sds_agent_bin, short_dir, *extra)
        assert result.returncode == 2, (extra, result.stderr)
        lines = result.stderr.decode().splitlines()
        assert len(lines) == 1 and needle in lines[0], lines
