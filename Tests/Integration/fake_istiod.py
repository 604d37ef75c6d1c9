"""A strict fake istiod: `istio.v1.auth.IstioCertificateService/CreateCertificate` over gRPC with real TLS (grpcio).

It behaves like istiod's CA server where sds-agent can observe it:
- TLS with a serving certificate for `istiod.istio-system.svc` (and 127.0.0.1) signed by the mesh root; ALPN h2.
- Authentication like istiod's TokenReview: `authorization: Bearer <JWT>` signed by the test "API server" key
  (ES256), audience `istio-ca`, `sub` = `system:serviceaccount:<ns>:<sa>`, not expired; anything else is
  UNAUTHENTICATED "request authenticate failure". `clusterid` metadata must name the expected cluster.
- The CSR must be well signed and ask for exactly `spiffe://<td>/ns/<ns>/sa/<sa>` of the token's identity.
- Signs with an intermediate CA and answers leaf → intermediate → root, for min(validity_duration, max TTL).

The messages come from the repository's own Protos/istio_ca.proto: protoc compiles it into a descriptor set at
start-up and the classes are built from that (no generated code checked in), so the fake speaks exactly the wire
format sds-agent was built from, and the field numbers were checked against istio/api's ca.proto.

Every call is recorded (`requests`), including the token it carried, so tests observe what reached istiod.
`mode` makes it misbehave on purpose: `wrong-id` (leaf for another SPIFFE ID), `wrong-key` (leaf certifying
another public key), `huge-chain` (the first `cert_chain` element holds the leaf and then `huge_chain_count - 1`
copies of the intermediate: ~6,000 PEM certificates, ~3.4 MB, in one string). `leaf_not_after`, when set, is every
leaf's notAfter whatever TTL was asked (a CA handing out 9999-12-31).
"""
from __future__ import annotations

import datetime
import pathlib
import subprocess
import tempfile
import threading
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTO = ROOT / "Protos" / "istio_ca.proto"
SERVICE = "istio.v1.auth.IstioCertificateService"
ISTIOD_NAME = "istiod.istio-system.svc"
AUDIENCE = "istio-ca"
MAX_TTL = datetime.timedelta(days=90)


def load_messages():
    """(IstioCertificateRequest, IstioCertificateResponse) classes built from Protos/istio_ca.proto."""
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "istio_ca.pb"
        subprocess.run(["protoc", f"--proto_path={PROTO.parent}", f"--descriptor_set_out={out}", PROTO.name],
                       check=True)
        file_set = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file_proto in file_set.file:
        pool.Add(file_proto)
    request = message_factory.GetMessageClass(pool.FindMessageTypeByName("istio.v1.auth.IstioCertificateRequest"))
    response = message_factory.GetMessageClass(pool.FindMessageTypeByName("istio.v1.auth.IstioCertificateResponse"))
    return request, response


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fake-istiod"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                         encipher_only=False, decipher_only=False)


def _leaf_usage(rsa_key: bool) -> x509.KeyUsage:
    # istiod sets digitalSignature + keyEncipherment on workload certificates.
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=rsa_key,
                         data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                         encipher_only=False, decipher_only=False)


@dataclass
class CA:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def root(cls, cn: str) -> "CA":
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=365))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(_ca_usage(), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        return cls(key, cert)

    def intermediate(self, cn: str) -> "CA":
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=180))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(_ca_usage(), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                               critical=False)
                .sign(self.key, hashes.SHA256()))
        return CA(key, cert)

    def serving(self, dns: list[str]) -> tuple[bytes, bytes]:
        """(key PEM, certificate PEM) for a TLS server named `dns` (and 127.0.0.1)."""
        import ipaddress
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        names = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        cert = (x509.CertificateBuilder().subject_name(_name("istiod")).issuer_name(self.cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .sign(self.key, hashes.SHA256()))
        return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
                cert.public_bytes(serialization.Encoding.PEM))


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class Recorded:
    """One CreateCertificate call as it reached the fake."""

    token: str | None
    cluster_id: str | None
    csr_key_type: str = ""  # "ec-secp256r1", "rsa-2048", ...
    requested_ttl: int = 0
    outcome: str = ""  # "issued <serial>", or the status it was refused with
    serial: str = ""
    metadata: dict = field(default_factory=dict)  # every request header but the token


class ApiServer:
    """The test "Kubernetes API server": signs service-account tokens; the fake istiod trusts its public key."""

    def __init__(self):
        self.key = ec.generate_private_key(ec.SECP256R1())

    def token(self, namespace: str, service_account: str, audience: str = AUDIENCE,
              lifetime: datetime.timedelta = datetime.timedelta(hours=12), key=None) -> str:
        now = _now()
        claims = {
            "iss": "https://kubernetes.default.svc.cluster.local", "aud": [audience],
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            "iat": int(now.timestamp()), "nbf": int(now.timestamp()), "exp": int((now + lifetime).timestamp()),
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": service_account}},
        }
        return jwt.encode(claims, key or self.key, algorithm="ES256")


class FakeIstiod:
    def __init__(self, workdir: pathlib.Path, trust_domain: str, cluster_id: str = "Kubernetes"):
        self.workdir, self.trust_domain, self.cluster_id = workdir, trust_domain, cluster_id
        self.request_class, self.response_class = load_messages()
        self.api_server = ApiServer()
        self.root = CA.root("fake mesh root")
        self.intermediate = self.root.intermediate("fake istiod intermediate")
        self.serving_key, self.serving_cert = self.root.serving([ISTIOD_NAME])
        self.root_cert_path = workdir / "root-cert.pem"
        self.root_cert_path.write_text(pem(self.root.cert))
        self.requests: list[Recorded] = []
        self.mode = "normal"
        self.huge_chain_count = 6000
        self.leaf_not_after: datetime.datetime | None = None
        self.port = 0
        self._server: grpc.Server | None = None
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> "FakeIstiod":
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.method_handlers_generic_handler(SERVICE, {
            "CreateCertificate": grpc.unary_unary_rpc_method_handler(
                self._create, request_deserializer=self.request_class.FromString,
                response_serializer=self.response_class.SerializeToString),
        })
        server.add_generic_rpc_handlers((handler,))
        credentials = grpc.ssl_server_credentials([(self.serving_key, self.serving_cert)])
        # Restarting keeps the port: the agent's CA_ADDR stays valid across an outage.
        self.port = server.add_secure_port(f"127.0.0.1:{self.port}", credentials)
        assert self.port, "could not bind the fake istiod"
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def token_for(self, spiffe_id: str, **kwargs) -> str:
        _ns, ns, _sa, sa = spiffe_id.split("//", 1)[1].split("/", 1)[1].split("/")
        return self.api_server.token(ns, sa, **kwargs)

    def issued(self) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.outcome.startswith("issued")]

    def snapshot(self) -> list[Recorded]:
        with self._lock:
            return list(self.requests)

    # -- the service -------------------------------------------------------------------------------------------

    def _create(self, request, context: grpc.ServicerContext):
        metadata = dict(context.invocation_metadata())
        auth = metadata.get("authorization")
        record = Recorded(token=auth.removeprefix("Bearer ") if auth else None, cluster_id=metadata.get("clusterid"),
                          requested_ttl=request.validity_duration,
                          metadata={k: v for k, v in metadata.items() if k != "authorization"})
        with self._lock:
            self.requests.append(record)

        def refuse(code: grpc.StatusCode, message: str):
            record.outcome = f"{code.name}: {message}"
            context.abort(code, message)

        identity = self._authenticate(record.token)
        if identity is None or record.cluster_id != self.cluster_id:
            refuse(grpc.StatusCode.UNAUTHENTICATED, "request authenticate failure")
        namespace, service_account = identity
        expected_id = f"spiffe://{self.trust_domain}/ns/{namespace}/sa/{service_account}"
        try:
            csr = x509.load_pem_x509_csr(request.csr.encode())
        except ValueError as e:
            refuse(grpc.StatusCode.INVALID_ARGUMENT, f"CSR parse error: {e}")
        if not csr.is_signature_valid:
            refuse(grpc.StatusCode.INVALID_ARGUMENT, "CSR signature invalid")
        try:
            sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
        except x509.ExtensionNotFound:
            uris = []
        if uris != [expected_id]:
            refuse(grpc.StatusCode.PERMISSION_DENIED, f"CSR asks for {uris}, caller is {expected_id}")
        public_key = csr.public_key()
        if isinstance(public_key, rsa.RSAPublicKey):
            record.csr_key_type = f"rsa-{public_key.key_size}"
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            record.csr_key_type = f"ec-{public_key.curve.name}"
        ttl = datetime.timedelta(seconds=request.validity_duration) if request.validity_duration > 0 else \
            datetime.timedelta(hours=24)
        ttl = min(ttl, MAX_TTL)
        leaf_id, leaf_key = expected_id, public_key
        if self.mode == "wrong-id":
            leaf_id = f"spiffe://{self.trust_domain}/ns/{namespace}/sa/someone-else"
        elif self.mode == "wrong-key":
            leaf_key = ec.generate_private_key(ec.SECP256R1()).public_key()
        now = _now()
        leaf = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(self.intermediate.cert.subject)
                .public_key(leaf_key).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(seconds=60))
                .not_valid_after(self.leaf_not_after or now + ttl)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(_leaf_usage(isinstance(leaf_key, rsa.RSAPublicKey)), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(leaf_id)]), critical=True)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.intermediate.key.public_key()),
                               critical=False)
                .sign(self.intermediate.key, hashes.SHA256()))
        record.serial = format(leaf.serial_number, "x")
        record.outcome = f"issued {record.serial}"
        if self.mode == "huge-chain":
            element = pem(leaf) + pem(self.intermediate.cert) * (self.huge_chain_count - 1)
            return self.response_class(cert_chain=[element, pem(self.root.cert)])
        return self.response_class(cert_chain=[pem(leaf), pem(self.intermediate.cert), pem(self.root.cert)])

    def _authenticate(self, token: str | None) -> tuple[str, str] | None:
        """(namespace, service account) of a valid token, like a TokenReview with audience istio-ca; else None."""
        if not token:
            return None
        try:
            claims = jwt.decode(token, self.api_server.key.public_key(), algorithms=["ES256"], audience=AUDIENCE,
                                options={"require": ["exp", "sub", "aud"]})
        except jwt.PyJWTError:
            return None
        parts = claims["sub"].split(":")
        if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"] or not parts[2] or not parts[3]:
            return None
        return parts[2], parts[3]


def main(argv: list[str] | None = None) -> None:
    """`python fake_istiod.py --dir DIR --trust-domain TD --spiffe-id ID [--spiffe-id ID ...]`: serves until
    interrupted; writes DIR/root-cert.pem and one DIR/<sa>.token per SPIFFE ID, and prints CA_ADDR."""
    import argparse
    import signal as signals
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, type=pathlib.Path)
    parser.add_argument("--trust-domain", default="example.org")
    parser.add_argument("--spiffe-id", action="append", default=[])
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    fake = FakeIstiod(args.dir, args.trust_domain).start()
    for spiffe_id in args.spiffe_id:
        (args.dir / f"{spiffe_id.rsplit('/', 1)[-1]}.token").write_text(fake.token_for(spiffe_id))
    print(f"CA_ADDR={fake.address} ISTIOD_SAN={ISTIOD_NAME} CA_ROOT_CA={fake.root_cert_path}", flush=True)
    stop = threading.Event()
    signals.signal(signals.SIGINT, lambda *_: stop.set())
    signals.signal(signals.SIGTERM, lambda *_: stop.set())
    while not stop.wait(1):
        pass
    fake.stop()


if __name__ == "__main__":
    main()
