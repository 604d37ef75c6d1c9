"""Istio's file-backed names served beside SPIFFE names: `file-cert:<cert>~<key>` and `file-root:<ca>`.

istio-proxy asks for them when a DestinationRule or Gateway names certificate files. The agent reads and validates the
files, serves them inline (Envoy never needs the files), holds a name whose files are missing or broken, and pushes
again when a file is replaced (as Kubernetes does with a `..data` symlink swap or an editor with rename).
"""
from __future__ import annotations

import datetime
import os

import pytest

from spiffe_test_ca import SpiffeRoot, organization, pem_cert, pem_key
from sds_client import SecretStream, certs_of, pem_of
from sds_servers import TRUST_DOMAIN

DAY = datetime.timedelta(days=1)
MINUTE = datetime.timedelta(minutes=1)


def write_atomically(path, data: bytes) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, path)


def test_file_cert_and_root_are_served_and_replaced_files_are_pushed(agent_factory, short_dir):
    ca = SpiffeRoot.create("files.example", organization("file CA"), DAY, MINUTE)
    cert, key = ca.issue("spiffe://files.example/gateway", organization("gateway"), DAY, MINUTE)
    certs = short_dir / "certs"
    certs.mkdir()
    write_atomically(certs / "cert.pem", pem_cert(cert))
    write_atomically(certs / "key.pem", pem_key(key))
    write_atomically(certs / "root.pem", pem_cert(ca.cert))
    agent = agent_factory.start("files", f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/files", ["--file-dirs", str(certs)])

    cert_name = f"file-cert:{certs}/cert.pem~{certs}/key.pem"
    root_name = f"file-root:{certs}/root.pem"
    stream = SecretStream(agent.socket_path, delta=True)
    stream.send(resource_names_subscribe=[cert_name, root_name, "default"])
    got = {}
    while len(got) < 3:
        response = stream.recv()
        for resource in response.resources:
            got[resource.name] = resource
        stream.send(response_nonce=response.nonce)
    from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

    def secret_of(resource):
        secret = secret_pb2.Secret()
        resource.resource.Unpack(secret)
        return secret

    served = secret_of(got[cert_name])
    assert certs_of(served.tls_certificate.certificate_chain)[0].serial_number == cert.serial_number
    assert pem_of(served.tls_certificate.private_key) == pem_key(key)
    assert certs_of(secret_of(got[root_name]).validation_context.trusted_ca)[0] == ca.cert

    # Replace the certificate and key by rename: the agent notices (inotify) and pushes the new version.
    new_cert, new_key = ca.issue("spiffe://files.example/gateway", organization("gateway"), DAY, MINUTE)
    write_atomically(certs / "key.pem", pem_key(new_key))
    write_atomically(certs / "cert.pem", pem_cert(new_cert))
    while True:
        response = stream.recv()
        stream.send(response_nonce=response.nonce)
        pushed = [r for r in response.resources if r.name == cert_name]
        if pushed and certs_of(secret_of(pushed[0]).tls_certificate.certificate_chain)[0].serial_number \
                == new_cert.serial_number:
            assert pem_of(secret_of(pushed[0]).tls_certificate.private_key) == pem_key(new_key)
            break
    stream.close()


def test_missing_or_mismatched_files_are_held_not_errored(agent_factory, short_dir):
    ca = SpiffeRoot.create("files.example", organization("file CA"), DAY, MINUTE)
    cert, _ = ca.issue("spiffe://files.example/a", organization("a"), DAY, MINUTE)
    _, other_key = ca.issue("spiffe://files.example/b", organization("b"), DAY, MINUTE)
    certs = short_dir / "certs"
    certs.mkdir()
    write_atomically(certs / "cert.pem", pem_cert(cert))
    write_atomically(certs / "key.pem", pem_key(other_key))  # does not match the certificate
    agent = agent_factory.start("files", f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/files", ["--file-dirs", str(certs)])

    mismatched = f"file-cert:{certs}/cert.pem~{certs}/key.pem"
    missing = f"file-root:{certs}/absent.pem"
    stream = SecretStream(agent.socket_path, delta=True)
    stream.send(resource_names_subscribe=[mismatched, missing])
    assert stream.silent(1.0), "held: neither served nor removed nor errored"
    # The root appears later: it is served without any new request.
    write_atomically(certs / "absent.pem", pem_cert(ca.cert))
    response = stream.recv()
    assert [r.name for r in response.resources] == [missing]
    stream.close()
    agent.check_alive()


def _rsa_or_p384_pair(ca: SpiffeRoot, key_kind: str):
    """A leaf certifying an RSA or P-384 key, signed by `ca`, and the key PEM in the form Istio tooling writes."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if key_kind.startswith("rsa"):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        # PKCS#1 ("RSA PRIVATE KEY"), as `openssl genrsa -traditional` and older istioctl write it.
        form = serialization.PrivateFormat.TraditionalOpenSSL if key_kind == "rsa-pkcs1" else \
            serialization.PrivateFormat.PKCS8
    else:
        key = ec.generate_private_key(ec.SECP384R1())
        form = serialization.PrivateFormat.PKCS8
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(organization("gateway")).issuer_name(ca.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - MINUTE).not_valid_after(now + DAY)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("gateway.example")]), critical=False)
            .sign(ca.key, hashes.SHA256()))
    return cert, key.private_bytes(serialization.Encoding.PEM, form, serialization.NoEncryption())


@pytest.mark.parametrize("key_kind", ["rsa-pkcs1", "rsa-pkcs8", "ecdsa-p384"])
def test_rsa_and_p384_file_pairs_are_served(agent_factory, short_dir, key_kind):
    """Istio's default certificates are RSA: a pair with an RSA (PKCS#1 or PKCS#8) or P-384 key is served at once,
    not held."""
    ca = SpiffeRoot.create("files.example", organization("file CA"), DAY, MINUTE)
    cert, key_pem = _rsa_or_p384_pair(ca, key_kind)
    certs = short_dir / "certs"
    certs.mkdir()
    write_atomically(certs / "cert.pem", pem_cert(cert))
    write_atomically(certs / "key.pem", key_pem)
    agent = agent_factory.start("files", f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/files", ["--file-dirs", str(certs)])
    name = f"file-cert:{certs}/cert.pem~{certs}/key.pem"
    stream = SecretStream(agent.socket_path, delta=True)
    stream.send(resource_names_subscribe=[name])
    response = stream.recv()
    from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
    secret = secret_pb2.Secret()
    assert [r.name for r in response.resources] == [name]
    response.resources[0].resource.Unpack(secret)
    assert certs_of(secret.tls_certificate.certificate_chain)[0].serial_number == cert.serial_number
    assert pem_of(secret.tls_certificate.private_key) == key_pem
    stream.close()
