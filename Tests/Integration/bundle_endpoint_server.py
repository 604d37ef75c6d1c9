"""A strict SPIFFE federation bundle endpoint (SPIFFE Trust Domain and Bundle, §5): stdlib `http.server` + `ssl`.

It stands in for another trust domain's SPIRE server in tests of `sds-agent --federate-with`. One document (a SPIFFE
bundle: JWKS with `x509-svid` keys, `spiffe_sequence`, `spiffe_refresh_hint`) is served at one path, over TLS, in a
thread of the test process. A test can swap the document, answer with another status, stop and start the server on
the same port, and choose what certificate it presents:

    web     Web PKI style (`https_web`): a leaf from a test CA with DNS SAN `localhost` and IP SAN 127.0.0.1; clients
            trust `ca_pem_path` (curl --cacert, or SSL_CERT_FILE for OpenSSL's default verify paths).
    spiffe  An X509-SVID (`https_spiffe`): a leaf with exactly one URI SAN, the endpoint's SPIFFE ID, from the trust
            domain's root; clients trust that root and check the URI SAN, not the host.

Strict about what it accepts, so a client that cuts corners fails here rather than against a real server: HTTP/1.1
with a Host header, GET only (405 otherwise), the configured path only (404), no request body (400). Every request's
method, target and headers are recorded.

    python bundle_endpoint_server.py --trust-domain east.example --profile spiffe --port 8443
prints the URL to give `--federate-with` and the PEM file of the root to bootstrap with, then serves until Ctrl-C.
"""
from __future__ import annotations

import argparse
import base64
import datetime
import http.server
import ipaddress
import json
import pathlib
import signal
import ssl
import tempfile
import threading
import urllib.parse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

import spiffe_test_ca as test_ca

# Certificates are valid from a minute ago: clocks of peers differ.
_BACKDATE = datetime.timedelta(minutes=1)
_LIFETIME = datetime.timedelta(days=1)


def bundle_document(roots: list[x509.Certificate], sequence: int | None = 1, refresh_hint: int | None = 300) -> bytes:
    """A SPIFFE bundle document: one `x509-svid` key per root (`x5c` holds exactly one certificate, base64 DER)."""
    keys = []
    for root in roots:
        der = root.public_bytes(serialization.Encoding.DER)
        keys.append({"use": "x509-svid", "kty": "EC", "crv": "P-256", "x5c": [base64.b64encode(der).decode()]})
    document: dict = {"keys": keys}
    if sequence is not None:
        document["spiffe_sequence"] = sequence
    if refresh_hint is not None:
        document["spiffe_refresh_hint"] = refresh_hint
    return json.dumps(document).encode()


def web_leaf(ca: test_ca.SpiffeRoot, names: list[str]) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A Web PKI serving certificate from `ca`: DNS SANs for names, IP SANs for addresses, serverAuth, CA:false."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = test_ca.now_utc()
    alt_names: list[x509.GeneralName] = []
    for name in names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt_names.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(test_ca.organization("bundle endpoint"))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(min(now + _LIFETIME, ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return cert, key


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass

    def _answer(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.close_connection = True

    def _record(self) -> None:
        with self.server.owner.lock:
            self.server.owner.requests.append(
                {"method": self.command, "target": self.path, "version": self.request_version,
                 "headers": [(k.lower(), v) for k, v in self.headers.items()]}
            )

    def _refusal(self) -> tuple[int, str] | None:
        """Why this request is refused (status, reason), or None."""
        if self.request_version != "HTTP/1.1":
            return 505, "HTTP/1.1 only"
        if len(self.headers.get_all("Host") or []) != 1:
            return 400, "exactly one Host header"
        if self.headers.get("Transfer-Encoding") or int(self.headers.get("Content-Length") or "0") != 0:
            return 400, "a bundle request has no body"
        if self.command != "GET":
            return 405, "GET only"
        if urllib.parse.urlsplit(self.path).path != self.server.owner.path:
            return 404, "no bundle here"
        return None

    def _serve(self) -> None:
        self._record()
        try:
            refusal = self._refusal()
        except ValueError:
            refusal = (400, "bad Content-Length")
        if refusal is not None:
            self._answer(refusal[0], (refusal[1] + "\n").encode())
            return
        owner = self.server.owner
        with owner.lock:
            status, document = owner.status, owner.document
        if status != 200:
            self._answer(status, b"failing on purpose\n")
            return
        self._answer(200, document, "application/json")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, owner: "BundleEndpointServer"):
        self.owner = owner
        super().__init__(address, _Handler)

    def get_request(self):
        sock, address = super().get_request()
        with self.owner.lock:
            self.owner.connections += 1
        # The handshake runs in the handler's thread (on its first read), with the context current at accept
        # time: a certificate swap applies to the next connection.
        return self.owner.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def handle_error(self, request, client_address):
        # A client that refuses our certificate (the point of several tests) is not a server error worth a trace.
        pass


class BundleEndpointServer:
    """The endpoint for `trust_domain`'s bundle, serving `document` at `path` on 127.0.0.1:`port` (0: any)."""

    def __init__(self, trust_domain: str, profile: str = "web", path: str = "/bundle", port: int = 0,
                 endpoint_id: str | None = None):
        self.trust_domain = trust_domain
        self.path = path
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.connections = 0  # TCP connections accepted (a client that refuses our certificate makes no request)
        self.status = 200
        self._dir = tempfile.TemporaryDirectory(prefix="bundle-endpoint-")
        # The federated domain's root: signs the SVID of the spiffe profile, and is what the document publishes.
        self.root = test_ca.SpiffeRoot.create(
            trust_domain, test_ca.organization("test-ca " + trust_domain), lifetime=datetime.timedelta(days=30),
            backdate=_BACKDATE)
        # A separate Web PKI CA: a public CA has nothing to do with the domain's SPIFFE root.
        self.web_ca = test_ca.SpiffeRoot.create(
            "web-pki.test", test_ca.organization("test web CA"), lifetime=datetime.timedelta(days=30),
            backdate=_BACKDATE)
        self.endpoint_id = endpoint_id or f"spiffe://{trust_domain}/spire/server"
        self.document = bundle_document([self.root.cert])
        self._write(self.ca_pem_path, test_ca.pem_cert(self.web_ca.cert))
        self._write(self.root_pem_path, test_ca.pem_cert(self.root.cert))
        self.context: ssl.SSLContext
        self.use_profile(profile)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = port
        self.start()

    # Files a client needs.

    @property
    def ca_pem_path(self) -> pathlib.Path:
        """The web profile's CA (PEM): `curl --cacert`, `SSL_CERT_FILE`."""
        return pathlib.Path(self._dir.name) / "web-ca.pem"

    @property
    def root_pem_path(self) -> pathlib.Path:
        """The trust domain's root (PEM): the bootstrap bundle of the spiffe profile."""
        return pathlib.Path(self._dir.name) / "root.pem"

    def url(self, host: str = "localhost") -> str:
        """The `--federate-with` URL: with `#<endpoint SPIFFE ID>` for the spiffe profile."""
        base = f"https://{host}:{self.port}{self.path}"
        return base + (f"#{self.endpoint_id}" if self.profile == "spiffe" else "")

    # What a test changes.

    def use_profile(self, profile: str, spiffe_id: str | None = None) -> None:
        """Present a web certificate or an SVID (for `spiffe_id`, default the endpoint's ID) from now on."""
        if profile == "web":
            cert, key = web_leaf(self.web_ca, ["localhost", "127.0.0.1"])
            chain = test_ca.pem_cert(cert)
        elif profile == "spiffe":
            cert, key = self.root.issue(spiffe_id or self.endpoint_id, test_ca.organization("SPIRE-like server"),
                                        ttl=_LIFETIME, backdate=_BACKDATE)
            chain = test_ca.pem_cert(cert)
        else:
            raise ValueError(f"profile must be web or spiffe, not {profile}")
        cert_path = pathlib.Path(self._dir.name) / "serving.pem"
        key_path = pathlib.Path(self._dir.name) / "serving.key"
        self._write(cert_path, chain)
        self._write(key_path, test_ca.pem_key(key))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert_path, key_path)
        self.profile = profile
        self.serving_cert = cert
        self.context = context

    def set_document(self, document: bytes) -> None:
        """Serve these bytes from the next request on."""
        with self.lock:
            self.document = document

    def set_bundle(self, roots: list[x509.Certificate], sequence: int | None, refresh_hint: int | None = 300) -> None:
        self.set_document(bundle_document(roots, sequence, refresh_hint))

    def fail_with(self, status: int) -> None:
        """Answer every request with `status` (200 serves the document again)."""
        with self.lock:
            self.status = status

    def connection_count(self) -> int:
        with self.lock:
            return self.connections

    def request_count(self) -> int:
        with self.lock:
            return len(self.requests)

    # Lifecycle.

    def start(self) -> None:
        """Listen (again) on 127.0.0.1 and the same port as before."""
        if self._server is not None:
            return
        self._server = _Server(("127.0.0.1", self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="bundle-endpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listening: new connections are refused until `start()`."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> "BundleEndpointServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def _write(path: pathlib.Path, data: bytes) -> None:
        path.write_bytes(data)


def main() -> None:
    # A parent may have blocked these (a test process's event loop reads signals through signalfd, and the mask is
    # inherited): stop on them as a script should.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trust-domain", required=True)
    parser.add_argument("--profile", choices=["web", "spiffe"], default="spiffe")
    parser.add_argument("--path", default="/bundle")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with BundleEndpointServer(args.trust_domain, args.profile, args.path, args.port) as server:
        print(f"--federate-with {args.trust_domain}={server.url()}", flush=True)
        print(f"bootstrap bundle: {server.root_pem_path}" if args.profile == "spiffe"
              else f"CA (SSL_CERT_FILE): {server.ca_pem_path}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
