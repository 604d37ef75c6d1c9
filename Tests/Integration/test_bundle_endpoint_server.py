"""The fake bundle endpoint (`bundle_endpoint_server.py`) behaves like a strict SPIFFE federation bundle endpoint:
both profiles' certificates verify the way their clients verify them (curl and Python's ssl for https_web; the root
plus the URI SAN, no host check, for https_spiffe), the document is a SPIFFE bundle, swaps, failures and stop/start
are seen by the next request, and sloppy requests are refused."""
from __future__ import annotations

import base64
import http.client
import json
import shutil
import socket
import ssl
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bundle_endpoint_server import BundleEndpointServer, bundle_document


@pytest.fixture
def web():
    with BundleEndpointServer("east.example", profile="web") as server:
        yield server


@pytest.fixture
def spiffe():
    with BundleEndpointServer("east.example", profile="spiffe") as server:
        yield server


def get(server: BundleEndpointServer, context: ssl.SSLContext, host: str = "localhost", path: str | None = None,
        method: str = "GET") -> tuple[int, dict, bytes]:
    connection = http.client.HTTPSConnection(host, server.port, context=context, timeout=10)
    try:
        connection.request(method, path or server.path, headers={"Accept": "application/json"})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def web_context(server: BundleEndpointServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.ca_pem_path))


def spiffe_context(server: BundleEndpointServer) -> ssl.SSLContext:
    """What an https_spiffe client does: chain to the domain's root, the host is not the name checked."""
    context = ssl.create_default_context(cafile=str(server.root_pem_path))
    context.check_hostname = False
    return context


def x509_roots(document: bytes) -> list[x509.Certificate]:
    keys = json.loads(document)["keys"]
    assert all(key["use"] == "x509-svid" and len(key["x5c"]) == 1 for key in keys)
    return [x509.load_der_x509_certificate(base64.b64decode(key["x5c"][0])) for key in keys]


def test_web_profile_verifies_as_localhost_and_127_0_0_1(web):
    for host in ("localhost", "127.0.0.1"):
        status, headers, body = get(web, web_context(web), host=host)
        assert status == 200
        assert headers["content-type"] == "application/json"
        assert int(headers["content-length"]) == len(body)
        document = json.loads(body)
        assert document["spiffe_sequence"] == 1 and document["spiffe_refresh_hint"] == 300
        assert x509_roots(body) == [web.root.cert]
    # Another CA's clients do not trust it.
    with pytest.raises(ssl.SSLCertVerificationError):
        get(web, ssl.create_default_context(cafile=str(web.root_pem_path)))
    assert web.url() == f"https://localhost:{web.port}/bundle"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl missing (make deps-test)")
def test_web_profile_with_curl_cacert(web):
    result = subprocess.run(
        ["curl", "-sS", "--fail", "--cacert", str(web.ca_pem_path), web.url()],
        capture_output=True, timeout=30, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert x509_roots(result.stdout) == [web.root.cert]
    refused = subprocess.run(["curl", "-sS", web.url()], capture_output=True, timeout=30, check=False)
    assert refused.returncode == 60, "not in the system store"


def test_spiffe_profile_presents_an_svid_for_the_endpoint_id(spiffe):
    assert spiffe.url("127.0.0.1") == f"https://127.0.0.1:{spiffe.port}/bundle#spiffe://east.example/spire/server"
    context = spiffe_context(spiffe)
    with socket.create_connection(("127.0.0.1", spiffe.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="bundles.east.example") as tls:
            leaf = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert sans.critical
    assert sans.value.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://east.example/spire/server"]
    assert sans.value.get_values_for_type(x509.DNSName) == []
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    status, _, body = get(spiffe, context, host="127.0.0.1")
    assert status == 200 and x509_roots(body) == [spiffe.root.cert]
    # The web store does not trust the domain's root.
    with pytest.raises(ssl.SSLCertVerificationError):
        get(spiffe, web_context(spiffe))


def test_certificate_choice_applies_to_the_next_connection(spiffe):
    spiffe.use_profile("spiffe", spiffe_id="spiffe://east.example/impostor")
    with socket.create_connection(("127.0.0.1", spiffe.port), timeout=10) as raw:
        with spiffe_context(spiffe).wrap_socket(raw) as tls:
            leaf = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
    uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert uris.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://east.example/impostor"]
    spiffe.use_profile("web")
    assert get(spiffe, web_context(spiffe))[0] == 200


def test_document_swap_status_and_stop_start(web):
    context = web_context(web)
    web.set_bundle([web.root.cert, web.web_ca.cert], sequence=2, refresh_hint=60)
    _, _, body = get(web, context)
    assert json.loads(body)["spiffe_sequence"] == 2 and len(x509_roots(body)) == 2
    web.set_document(b"not json")
    assert get(web, context)[2] == b"not json"
    web.fail_with(503)
    assert get(web, context)[0] == 503
    web.fail_with(200)
    web.set_document(bundle_document([web.root.cert], sequence=3))
    port = web.port
    web.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    web.start()
    assert web.port == port
    status, _, body = get(web, context)
    assert status == 200 and json.loads(body)["spiffe_sequence"] == 3


def test_sloppy_requests_are_refused_and_every_request_recorded(web):
    context = web_context(web)
    assert get(web, context, path="/other")[0] == 404
    assert get(web, context, path="/bundle?x=1")[0] == 200, "a query is fine"
    assert get(web, context, method="POST")[0] == 405
    raw_requests = {
        b"GET /bundle HTTP/1.1\r\n\r\n": b"400",
        b"GET /bundle HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n": b"400",
        b"GET /bundle HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}": b"400",
        b"GET /bundle HTTP/1.0\r\nHost: a\r\n\r\n": b"505",
    }
    for request, status in raw_requests.items():
        with socket.create_connection(("127.0.0.1", web.port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(request)
                answer = b""
                while chunk := tls.recv(4096):
                    answer += chunk
        assert answer.split(b" ")[1] == status, (request, answer)
    assert web.request_count() == 3 + len(raw_requests)
    first = web.requests[0]
    assert first["method"] == "GET" and first["target"] == "/other"
    assert ("accept", "application/json") in first["headers"]
