"""What any SDS server with sds-agent's command line must do, checked as a gRPC client (grpcio + xds-protos).

Runs against the reference server as a script (`reference-script`) now and sds-agent (`agent`) once it is ready:
the names it serves, X509-SVID rules, SotW and Delta stream behaviour (ENVOY-SDS-FACTS.md), SIGHUP and SIGTERM.
"""
from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from sds_client import SecretStream, certs_of, pem_of, unpack_secrets
from sds_servers import TRUST_DOMAIN, fetch_when_served, leaf_serial

WORKLOAD_ID = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/conformance"
BUNDLE_NAME = f"spiffe://{TRUST_DOMAIN}"


@pytest.fixture
def sds(process_factory):
    return process_factory.start("sds", WORKLOAD_ID)


def serial(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def assert_x509_svid(secret, spiffe_id: str, bundle: list[x509.Certificate]) -> None:
    chain = certs_of(secret.tls_certificate.certificate_chain)
    leaf = chain[0]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [spiffe_id], "exactly one URI SAN"
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign and not usage.crl_sign
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.SERVER_AUTH in eku and ExtendedKeyUsageOID.CLIENT_AUTH in eku
    except x509.ExtensionNotFound:
        pass  # no EKU: any use is allowed
    key = serialization.load_pem_private_key(pem_of(secret.tls_certificate.private_key), password=None)
    assert key.public_key().public_numbers() == leaf.public_key().public_numbers(), "key matches the leaf"
    # The chain ends at a certificate of the bundle (leaf signed directly by a root, or via the intermediates sent).
    issuer = chain[-1]
    roots = [r for r in bundle if r.subject == issuer.issuer]
    assert roots, "the chain's issuer is in the bundle"
    for child, parent in zip(chain, chain[1:] + roots[:1]):
        child.verify_directly_issued_by(parent)
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey) or leaf.public_key().key_size >= 2048


def test_fetch_secrets_serves_istio_and_spire_names(sds):
    secrets = fetch_when_served(sds.socket_path, ["default", "ROOTCA", WORKLOAD_ID, BUNDLE_NAME])
    assert set(secrets) == {"default", "ROOTCA", WORKLOAD_ID, BUNDLE_NAME}
    for name in ("ROOTCA", BUNDLE_NAME):
        assert secrets[name].WhichOneof("type") == "validation_context"
    bundle = certs_of(secrets["ROOTCA"].validation_context.trusted_ca)
    assert bundle and all(c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca for c in bundle)
    assert [serial(c) for c in certs_of(secrets[BUNDLE_NAME].validation_context.trusted_ca)] == \
        [serial(c) for c in bundle]
    for name in ("default", WORKLOAD_ID):
        assert secrets[name].WhichOneof("type") == "tls_certificate"
        assert_x509_svid(secrets[name], WORKLOAD_ID, bundle)
    assert leaf_serial(secrets["default"]) == leaf_serial(secrets[WORKLOAD_ID]), "one SVID under two names"


@pytest.mark.parametrize("name", ["default", WORKLOAD_ID])
def test_sotw_sends_acks_nothing_and_sighup_pushes_a_new_certificate(sds, name):
    with SecretStream(sds.socket_path, delta=False) as stream:
        stream.send(resource_names=[name])
        first = stream.recv()
        assert first.type_url.endswith("tls.v3.Secret") and first.nonce and first.version_info
        old = leaf_serial(unpack_secrets(first.resources)[name])
        stream.send(resource_names=[name], version_info=first.version_info, response_nonce=first.nonce)
        assert stream.silent(), "an ACK needs no answer"

        sds.rotate()
        pushed = stream.recv()
        assert pushed.nonce != first.nonce and pushed.version_info != first.version_info
        new = leaf_serial(unpack_secrets(pushed.resources)[name])
        assert new != old


def test_sotw_nack_is_not_answered_with_the_same_content(sds):
    with SecretStream(sds.socket_path, delta=False) as stream:
        stream.send(resource_names=["default"])
        first = stream.recv()
        stream.send(resource_names=["default"], response_nonce=first.nonce,
                    error_detail="Failed to load certificate chain from <inline>")
        assert stream.silent(), "no resend of rejected content"
        sds.rotate()
        assert stream.recv().version_info != first.version_info


def test_sotw_holds_a_name_it_does_not_serve(sds):
    with SecretStream(sds.socket_path, delta=False) as stream:
        stream.send(resource_names=[f"spiffe://{TRUST_DOMAIN}/ns/other/sa/someone-else"])
        assert stream.silent(), "no response (and no error) for a name not served"


def test_sotw_reconnect_with_old_version_and_no_nonce_is_answered(sds):
    with SecretStream(sds.socket_path, delta=False) as stream:
        stream.send(resource_names=["ROOTCA"])
        first = stream.recv()
    # What Envoy sends after a server restart: its accepted version, no nonce.
    with SecretStream(sds.socket_path, delta=False) as stream:
        stream.send(resource_names=["ROOTCA"], version_info=first.version_info)
        again = stream.recv()
        assert unpack_secrets(again.resources).keys() == {"ROOTCA"}


def test_delta_subscribe_rotate_and_removed_for_names_never_served(sds):
    other = f"spiffe://{TRUST_DOMAIN}/ns/other/sa/someone-else"
    with SecretStream(sds.socket_path, delta=True) as stream:
        stream.send(resource_names_subscribe=["default", other])
        got: dict = {}
        removed: set = set()
        # The server may answer in one response or several.
        while "default" not in got or other not in removed:
            r = stream.recv()
            got.update({res.name: res for res in r.resources})
            removed.update(r.removed_resources)
            stream.send(response_nonce=r.nonce)
        assert other not in got
        old = leaf_serial(unpack_secrets([got["default"]])["default"])
        assert got["default"].version
        assert stream.silent(), "an ACK needs no answer"

        sds.rotate()
        r = stream.recv()
        assert [res.name for res in r.resources] == ["default"]
        assert r.resources[0].version != got["default"].version
        assert leaf_serial(unpack_secrets(r.resources)["default"]) != old


def test_delta_skips_resources_the_client_already_holds(sds):
    with SecretStream(sds.socket_path, delta=True) as stream:
        stream.send(resource_names_subscribe=["ROOTCA"])
        first = stream.recv()
        version = first.resources[0].version
    with SecretStream(sds.socket_path, delta=True) as stream:
        stream.send(resource_names_subscribe=["ROOTCA", "default"], initial_resource_versions={"ROOTCA": version})
        names = set()
        r = stream.recv()
        names.update(res.name for res in r.resources)
        stream.send(response_nonce=r.nonce)
        if "default" not in names:
            names.update(res.name for res in stream.recv().resources)
        assert "ROOTCA" not in names and "default" in names


def test_sigterm_exits_zero_and_removes_the_socket(sds):
    assert sds.socket_path.exists()
    assert sds.terminate() == 0
    assert not sds.socket_path.exists()


def test_restart_after_a_crash_reuses_the_ca_and_replaces_the_stale_socket(sds):
    before = fetch_when_served(sds.socket_path, ["ROOTCA"])["ROOTCA"]
    sds.kill()
    assert sds.socket_path.exists(), "a crash leaves the socket file"
    sds.start()
    after = fetch_when_served(sds.socket_path, ["ROOTCA"])["ROOTCA"]
    assert pem_of(after.validation_context.trusted_ca) == pem_of(before.validation_context.trusted_ca)
    assert leaf_serial(fetch_when_served(sds.socket_path, ["default"])["default"])
