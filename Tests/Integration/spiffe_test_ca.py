"""The X.509 side of the test servers: a self-signed P-256 root for one trust domain that issues X509-SVIDs.

Shared by sds_reference_server.py (TinyCA) and workload_api_server.py (TestCA); each wraps it with the interface its
tests use. Named so that pytest does not collect it.

The profiles follow the X509-SVID spec:
    root   CA:true (critical), keyUsage keyCertSign + cRLSign (+ digitalSignature), URI SAN spiffe://<td>, SKI
    leaf   CA:false (critical), keyUsage digitalSignature only, EKU serverAuth + clientAuth, exactly one URI SAN (the
           SPIFFE ID, critical), AKI; never valid after the root
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
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
