"""Istio's file-backed names served beside SPIFFE names: `file-cert:<cert>~<key>` and `file-root:<ca>`.

istio-proxy asks for them when a DestinationRule or Gateway names certificate files. The agent reads and validates the
files, serves them inline (Envoy never needs the files), holds a name whose files are missing or broken, and pushes
again when a file is replaced (as Kubernetes does with a `..data` symlink swap or an editor with rename).
"""
from __future__ import annotations

import datetime
import os

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
