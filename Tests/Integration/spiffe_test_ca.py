"""The X.509 side of the test servers: a self-signed P-256 root for one trust domain that issues X509-SVIDs.

Shared by sds_reference_server.py (TinyCA) and workload_api_server.py (TestCA); each wraps it with the interface its
tests use. Named so that pytest does not collect it.

The profiles follow the X509-SVID spec:
    root   CA:true (critical), keyUsage keyCertSign + cRLSign (+ digitalSignature), URI SAN spiffe://<td>, SKI
    leaf   CA:false (critical), keyUsage digitalSignature only, EKU serverAuth + clientAuth, exactly one URI SAN (the
           SPIFFE ID, critical), AKI; never valid after the root
"""
from __future__ import annotations

import base64
import datetime
import json
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def as_utc(moment: datetime.datetime | None) -> datetime.datetime | None:
    """A naive datetime is taken as UTC (so `datetime(9999, 12, 31, 23, 59, 59)` works as it reads)."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=datetime.timezone.utc)
    return moment


def organization(name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, name)])


def pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def der_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _key_usage(*, is_ca: bool) -> x509.KeyUsage:
    # A leaf signs handshakes only; a root signs certificates (and CRLs) only, plus digitalSignature as CAs commonly
    # carry it. The SVID rules forbid keyCertSign and cRLSign on a leaf.
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=is_ca, crl_sign=is_ca, encipher_only=False, decipher_only=False,
    )


@dataclass(frozen=True)
class SpiffeRoot:
    """A root key and its self-signed certificate for `trust_domain`."""

    trust_domain: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(
        cls, trust_domain: str, subject: x509.Name, lifetime: datetime.timedelta, backdate: datetime.timedelta,
        not_after: datetime.datetime | None = None,
    ) -> "SpiffeRoot":
        """`not_after` (UTC), when given, replaces now + `lifetime` (a root valid until 9999-12-31, say)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = now_utc()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - backdate)
            .not_valid_after(as_utc(not_after) or now + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(is_ca=True), critical=True)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(trust_domain, key, cert)

    def issue(
        self, spiffe_id: str, subject: x509.Name, ttl: datetime.timedelta, backdate: datetime.timedelta,
        not_after: datetime.datetime | None = None,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A leaf for `spiffe_id` with a new key; valid from `backdate` ago (clocks of peers differ) for `ttl`, or
        until `not_after` (UTC) when given; never after the root either way."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = now_utc()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - backdate)
            .not_valid_after(min(as_utc(not_after) or now + ttl, self.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(is_ca=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        return cert, key


# ------------------------------------------------------------------------------------------------------------------
# SPIFFE bundle documents (SPIFFE Trust Domain and Bundle, §4): what `--federate-with <td>=<file>` reads
# ------------------------------------------------------------------------------------------------------------------


def _b64url_int(value: int, size: int) -> str:
    return base64.urlsafe_b64encode(value.to_bytes(size, "big")).rstrip(b"=").decode()


def bundle_document(certs: list[x509.Certificate], sequence: int | None = None,
                    refresh_hint: int | None = None) -> str:
    """A JWK Set with one `x509-svid` key per CA certificate (the key's public parameters and the certificate alone in
    `x5c`, standard base64), as `sds-agent bundle show --format spiffe` and `spire-server bundle show -format spiffe`
    print it. EC (P-256, P-384) and RSA keys."""
    keys = []
    for cert in certs:
        public = cert.public_key()
        if isinstance(public, ec.EllipticCurvePublicKey):
            size = (public.curve.key_size + 7) // 8
            crv = {"secp256r1": "P-256", "secp384r1": "P-384"}[public.curve.name]
            numbers = public.public_numbers()
            params = {"kty": "EC", "crv": crv, "x": _b64url_int(numbers.x, size), "y": _b64url_int(numbers.y, size)}
        elif isinstance(public, rsa.RSAPublicKey):
            numbers = public.public_numbers()
            params = {"kty": "RSA", "n": _b64url_int(numbers.n, (numbers.n.bit_length() + 7) // 8),
                      "e": _b64url_int(numbers.e, (numbers.e.bit_length() + 7) // 8)}
        else:
            raise ValueError(f"no JWK form for {type(public).__name__}")
        der = cert.public_bytes(serialization.Encoding.DER)
        keys.append({"use": "x509-svid", **params, "x5c": [base64.b64encode(der).decode()]})
    document: dict = {"keys": keys}
    if refresh_hint is not None:
        document["spiffe_refresh_hint"] = refresh_hint
    if sequence is not None:
        document["spiffe_sequence"] = sequence
    return json.dumps(document)


def bundle_document_authorities(text: str) -> list[x509.Certificate]:
    """The X.509 authorities of a SPIFFE bundle document, checking the shape a reader relies on: a `keys` array; each
    key a `use`; each `x509-svid` key exactly one certificate in `x5c` (standard base64 DER) whose public key the JWK
    parameters repeat; `spiffe_sequence` and `spiffe_refresh_hint`, when present, integers."""
    document = json.loads(text)
    assert isinstance(document, dict) and isinstance(document.get("keys"), list), "a JWK Set: {\"keys\": [...]}"
    for member in ("spiffe_sequence", "spiffe_refresh_hint"):
        assert isinstance(document.get(member, 0), int), member
    certs = []
    for index, key in enumerate(document["keys"]):
        assert isinstance(key.get("use"), str), f"key {index} has no use"
        if key["use"] != "x509-svid":
            continue
        assert isinstance(key.get("x5c"), list) and len(key["x5c"]) == 1, f"key {index}: one certificate in x5c"
        cert = x509.load_der_x509_certificate(base64.b64decode(key["x5c"][0], validate=True))
        expected = json.loads(bundle_document([cert]))["keys"][0]
        assert {k: key.get(k) for k in expected} == expected, f"key {index}: JWK parameters are not the certificate's"
        certs.append(cert)
    assert certs, "no x509-svid authority"
    return certs
