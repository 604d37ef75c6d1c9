#!/usr/bin/env python3
"""A small reference SDS server: Envoy's own generated protos (xds-protos) served by grpcio on a Unix socket.

It stands in for sds-agent in the Envoy tests, and is "an SDS server we did not write" for sds-dump tests.

Names it serves (the same as sds-agent):
    default             Secret{tls_certificate}       the workload certificate (Istio style)
    ROOTCA              Secret{validation_context}    the CA bundle (Istio style)
    spiffe://td/...     Secret{tls_certificate}       the workload certificate, named by its SPIFFE ID (SPIRE style)
    spiffe://td         Secret{validation_context}    the trust domain's bundle (SPIRE style)
    ALL                 Secret{validation_context}    bundles as Envoy's SPIFFE validator config (SPIRE style)
Any other name is never served: SotW holds the response, Delta answers with `removed_resources`.

Services: StreamSecrets (SotW), DeltaSecrets (Delta), FetchSecrets (unary).
Versions are content hashes, so a restarted server that holds the same certificate reports the same version.

For tests of clients (sds-dump): `service.streams` records what each stream received (names, ACKs, NACKs, node id and
cluster); `service.fail_with = (grpc.StatusCode.X, "message")` makes every call fail with that status (script:
`--fail-with PERMISSION_DENIED:message`); `store.serve_bundle(pem)` serves another CA's bundle under the bundle names,
so the certificate no longer verifies against it.

In process (pytest):
    ca = TinyCA.create("example.org")
    server = ReferenceSDSServer(socket_path, ca, "spiffe://example.org/ns/default/sa/default")
    server.start(); ...; server.rotate(); ...; server.stop()

As a script (the same command line as sds-agent; SIGHUP rotates, SIGTERM/SIGINT stop and remove the socket):
    python sds_reference_server.py run --socket /tmp/sds.sock --state-dir /tmp/state --trust-domain example.org
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import hashlib
import itertools
import logging
import os
import pathlib
import queue
import re
import signal
import sys
import threading
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_spiffe_validator_config_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.protobuf import any_pb2

import spiffe_test_ca as test_ca

SECRET_TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
SPIFFE_VALIDATOR_TYPE_URL = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig"
)
DEFAULT_CERT_NAME = "default"
DEFAULT_BUNDLE_NAME = "ROOTCA"
ALL_BUNDLES_NAME = "ALL"

log = logging.getLogger("sds-reference")


# --------------------------------------------------------------------------------------------------------------
# PKI: a tiny CA issuing X509-SVIDs
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SVID:
    """A leaf certificate with its key, PEM encoded."""

    spiffe_id: str
    cert: x509.Certificate
    cert_pem: bytes
    key_pem: bytes

    @property
    def serial_hex(self) -> str:
        return format(self.cert.serial_number, "x")


class TinyCA:
    """A self-signed P-256 root that issues SPIFFE leaf certificates (X509-SVIDs)."""

    def __init__(self, trust_domain: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate):
        self.trust_domain = trust_domain
        self.key = key
        self.cert = cert
        self.cert_pem = test_ca.pem_cert(cert)
        self._root = test_ca.SpiffeRoot(trust_domain, key, cert)

    @classmethod
    def create(cls, trust_domain: str, ttl: datetime.timedelta = datetime.timedelta(days=1)) -> "TinyCA":
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sds-reference"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{trust_domain} test root"),
            ]
        )
        root = test_ca.SpiffeRoot.create(trust_domain, subject, lifetime=ttl, backdate=datetime.timedelta(minutes=5))
        return cls(trust_domain, root.key, root.cert)

    @classmethod
    def load_or_create(cls, state_dir: pathlib.Path, trust_domain: str) -> "TinyCA":
        """The CA kept in `state_dir` (ca.pem, ca-key.pem), created there on first use."""
        state_dir.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = state_dir / "ca.pem", state_dir / "ca-key.pem"
        if cert_path.exists() and key_path.exists():
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            return cls(trust_domain, key, cert)
        ca = cls.create(trust_domain)
        key_path.write_bytes(test_ca.pem_key(ca.key))
        os.chmod(key_path, 0o600)
        cert_path.write_bytes(ca.cert_pem)
        return ca

    def issue(self, spiffe_id: str, ttl: datetime.timedelta = datetime.timedelta(hours=1)) -> SVID:
        """A leaf: exactly one URI SAN, CA:false, digitalSignature only, serverAuth + clientAuth."""
        if not spiffe_id.startswith(f"spiffe://{self.trust_domain}/"):
            raise ValueError(f"{spiffe_id} is not in trust domain {self.trust_domain}")
        cert, key = self._root.issue(
            spiffe_id, test_ca.organization("sds-reference"), ttl=ttl, backdate=datetime.timedelta(seconds=30)
        )
        return SVID(spiffe_id, cert, test_ca.pem_cert(cert), test_ca.pem_key(key))


# --------------------------------------------------------------------------------------------------------------
# Secrets: what each name resolves to, versioned by content
# --------------------------------------------------------------------------------------------------------------


def _version(secret: secret_pb2.Secret) -> str:
    return hashlib.sha256(secret.SerializeToString(deterministic=True)).hexdigest()[:16]


class SecretStore:
    """The current SVID and bundle; resolves names to Secrets; tells subscribers when anything changed."""

    def __init__(self, ca: TinyCA, spiffe_id: str, svid_ttl: datetime.timedelta):
        self.ca = ca
        self.spiffe_id = spiffe_id
        self.svid_ttl = svid_ttl
        self._lock = threading.Lock()
        self._svid = ca.issue(spiffe_id, svid_ttl)
        self._bundle_pem: bytes | None = None  # None: our own CA
        self._subscribers: set[queue.Queue] = set()

    @property
    def svid(self) -> SVID:
        with self._lock:
            return self._svid

    def rotate(self) -> SVID:
        """Issue a new leaf and wake every stream."""
        svid = self.ca.issue(self.spiffe_id, self.svid_ttl)
        with self._lock:
            self._svid = svid
            subscribers = list(self._subscribers)
        log.info("rotated %s: serial %s", self.spiffe_id, svid.serial_hex)
        for q in subscribers:
            q.put(_CHANGED)
        return svid

    def serve_bundle(self, pem: bytes | None) -> None:
        """Serve `pem` as the bundle (a CA that did not sign our SVIDs), or our own CA again with None."""
        with self._lock:
            self._bundle_pem = pem
            subscribers = list(self._subscribers)
        for q in subscribers:
            q.put(_CHANGED)

    def subscribe(self, q: queue.Queue) -> None:
        with self._lock:
            self._subscribers.add(q)

    def unsubscribe(self, q: queue.Queue) -> None:
        with self._lock:
            self._subscribers.discard(q)

    def is_served(self, name: str) -> bool:
        return self.resolve(name) is not None

    def resolve(self, name: str) -> secret_pb2.Secret | None:
        """The Secret for `name`, or None when this server will never serve that name."""
        td_bundle_name = f"spiffe://{self.ca.trust_domain}"
        with self._lock:
            svid = self._svid
            bundle_pem = self._bundle_pem or self.ca.cert_pem
        if name in (DEFAULT_CERT_NAME, self.spiffe_id):
            return secret_pb2.Secret(
                name=name,
                tls_certificate=common_pb2.TlsCertificate(
                    certificate_chain=_inline(svid.cert_pem), private_key=_inline(svid.key_pem)
                ),
            )
        if name in (DEFAULT_BUNDLE_NAME, td_bundle_name):
            return secret_pb2.Secret(
                name=name,
                validation_context=common_pb2.CertificateValidationContext(trusted_ca=_inline(bundle_pem)),
            )
        if name == ALL_BUNDLES_NAME:
            validator = tls_spiffe_validator_config_pb2.SPIFFECertValidatorConfig(
                trust_domains=[
                    tls_spiffe_validator_config_pb2.SPIFFECertValidatorConfig.TrustDomain(
                        name=self.ca.trust_domain, trust_bundle=_inline(bundle_pem)
                    )
                ]
            )
            typed = any_pb2.Any()
            typed.Pack(validator)
            return secret_pb2.Secret(
                name=name,
                validation_context=common_pb2.CertificateValidationContext(
                    custom_validator_config={"name": "envoy.tls.cert_validator.spiffe", "typed_config": typed}
                ),
            )
        return None


def _inline(pem: bytes):
    from envoy.config.core.v3 import base_pb2

    return base_pb2.DataSource(inline_bytes=pem)


def _pack(secret: secret_pb2.Secret) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(secret)
    return a


# Stream events: a request from the client, a change in the store, or the end of the RPC.
_CHANGED = object()
_CLOSED = object()


def _pump_requests(request_iterator, events: queue.Queue) -> None:
    try:
        for request in request_iterator:
            events.put(request)
    except Exception:  # the RPC ended (cancelled, connection gone): nothing to report
        pass
    events.put(_CLOSED)


# --------------------------------------------------------------------------------------------------------------
# The service
# --------------------------------------------------------------------------------------------------------------


@dataclass
class StreamRecord:
    """What one stream saw; tests read these to check what Envoy sent."""

    kind: str  # "sotw" | "delta"
    names: list[str]
    acks: int = 0
    nacks: int = 0
    last_error: str = ""
    requests: int = 0
    node_ids: list[str] | None = None
    node_clusters: list[str] | None = None


class SecretDiscoveryService(sds_pb2_grpc.SecretDiscoveryServiceServicer):
    def __init__(self, store: SecretStore):
        self.store = store
        self._nonces = itertools.count(1)
        self.streams: list[StreamRecord] = []
        # (grpc.StatusCode, message): every call fails with this status at once, before reading any request.
        self.fail_with: tuple[grpc.StatusCode, str] | None = None
        self._lock = threading.Lock()

    def _nonce(self) -> str:
        return str(next(self._nonces))

    def _record(self, kind: str) -> StreamRecord:
        r = StreamRecord(kind=kind, names=[], node_ids=[], node_clusters=[])
        with self._lock:
            self.streams.append(r)
        return r

    def _fail_if_asked(self, context) -> None:
        fail_with = self.fail_with
        if fail_with is not None:
            context.abort(fail_with[0], fail_with[1])

    def _open(self, request_iterator, context) -> queue.Queue:
        events: queue.Queue = queue.Queue()
        self.store.subscribe(events)
        context.add_callback(lambda: events.put(_CLOSED))
        threading.Thread(target=_pump_requests, args=(request_iterator, events), daemon=True).start()
        return events

    def _requests(self, events: queue.Queue, record: StreamRecord):
        """Each request (counted, its node recorded), or None when the store changed; ends with the RPC."""
        while True:
            event = events.get()
            if event is _CLOSED:
                return
            if event is _CHANGED:
                yield None
                continue
            record.requests += 1
            if event.node.id:
                record.node_ids.append(event.node.id)
            if event.node.cluster:
                record.node_clusters.append(event.node.cluster)
            yield event

    # ---- FetchSecrets: unary, answers with what exists now --------------------------------------------------

    def FetchSecrets(self, request, context):
        self._fail_if_asked(context)
        resources = []
        for name in request.resource_names:
            secret = self.store.resolve(name)
            if secret is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"no secret named {name!r}")
            resources.append(secret)
        return discovery_pb2.DiscoveryResponse(
            version_info=_combined_version(resources),
            resources=[_pack(s) for s in resources],
            type_url=SECRET_TYPE_URL,
            nonce=self._nonce(),
        )

    # ---- StreamSecrets: state of the world ------------------------------------------------------------------

    def StreamSecrets(self, request_iterator, context):
        self._fail_if_asked(context)
        record = self._record("sotw")
        events = self._open(request_iterator, context)
        names: list[str] = []
        last_nonce = ""  # the nonce of our latest response
        sent_version = None  # the version of our latest response
        rejected_version = None  # a version Envoy NACKed: do not send it again
        try:
            for req in self._requests(events, record):
                if req is not None:
                    log.debug("sotw request names=%s version=%r nonce=%r node=%r error=%r", list(req.resource_names),
                              req.version_info, req.response_nonce, req.node.id,
                              req.error_detail.message if req.HasField("error_detail") else None)
                    if req.response_nonce and req.response_nonce != last_nonce:
                        continue  # stale: an answer to a response that is no longer the latest
                    if req.response_nonce and req.HasField("error_detail"):
                        record.nacks += 1
                        record.last_error = req.error_detail.message
                        rejected_version = sent_version
                        log.warning("NACK on %s: %s", list(req.resource_names), req.error_detail.message)
                    elif req.response_nonce:
                        record.acks += 1
                    if list(req.resource_names) == names and req.response_nonce:
                        continue  # ACK/NACK with the same subscription: nothing to send
                    names = list(req.resource_names)
                    record.names = names
                    if not req.response_nonce:
                        # A new subscription (or Envoy reconnecting after our restart): answer even if the
                        # version it holds is current, as Envoy waits for a response.
                        sent_version = None
                # Answer when every name resolves (hold otherwise) and the content differs from what we sent.
                secrets = [self.store.resolve(n) for n in names]
                if not names or any(s is None for s in secrets):
                    continue
                version = _combined_version(secrets)
                if version == sent_version or version == rejected_version:
                    continue
                last_nonce = self._nonce()
                sent_version = version
                yield discovery_pb2.DiscoveryResponse(
                    version_info=version,
                    resources=[_pack(s) for s in secrets],
                    type_url=SECRET_TYPE_URL,
                    nonce=last_nonce,
                )
        finally:
            self.store.unsubscribe(events)

    # ---- DeltaSecrets: incremental --------------------------------------------------------------------------

    def DeltaSecrets(self, request_iterator, context):
        self._fail_if_asked(context)
        record = self._record("delta")
        events = self._open(request_iterator, context)
        subscribed: set[str] = set()
        client_versions: dict[str, str] = {}  # what the client holds (or we sent it), per name
        removed_sent: set[str] = set()  # names we already told the client do not exist
        rejected: dict[str, str] = {}  # name -> version the client NACKed
        pending_nonce = ""
        first = True
        try:
            for req in self._requests(events, record):
                if req is not None:
                    log.debug("delta request +%s -%s initial=%s nonce=%r node=%r error=%r",
                              list(req.resource_names_subscribe), list(req.resource_names_unsubscribe),
                              dict(req.initial_resource_versions), req.response_nonce, req.node.id,
                              req.error_detail.message if req.HasField("error_detail") else None)
                    if first:
                        client_versions.update(req.initial_resource_versions)
                        first = False
                    # Subscriptions are honoured even on a stale nonce.
                    for n in req.resource_names_subscribe:
                        subscribed.add(n)
                        removed_sent.discard(n)
                        if req.response_nonce:
                            client_versions.pop(n, None)  # a re-subscribe wants the resource again
                    for n in req.resource_names_unsubscribe:
                        subscribed.discard(n)
                        client_versions.pop(n, None)
                        removed_sent.discard(n)
                    if req.response_nonce and req.response_nonce == pending_nonce:
                        if req.HasField("error_detail"):
                            record.nacks += 1
                            record.last_error = req.error_detail.message
                            log.warning("delta NACK: %s", req.error_detail.message)
                            for n, v in list(client_versions.items()):
                                rejected[n] = v
                        else:
                            record.acks += 1
                    record.names = sorted(subscribed)
                resources = []
                removed = []
                for n in sorted(subscribed):
                    secret = self.store.resolve(n)
                    if secret is None:
                        if n not in removed_sent:
                            removed.append(n)
                        continue
                    v = _version(secret)
                    if client_versions.get(n) == v or rejected.get(n) == v:
                        continue
                    resources.append(discovery_pb2.Resource(name=n, version=v, resource=_pack(secret)))
                if not resources and not removed:
                    continue
                for r in resources:
                    client_versions[r.name] = r.version
                removed_sent.update(removed)
                pending_nonce = self._nonce()
                yield discovery_pb2.DeltaDiscoveryResponse(
                    system_version_info=_combined_version([self.store.resolve(n) for n in sorted(subscribed)
                                                          if self.store.is_served(n)]),
                    resources=resources,
                    removed_resources=removed,
                    type_url=SECRET_TYPE_URL,
                    nonce=pending_nonce,
                )
        finally:
            self.store.unsubscribe(events)


def _combined_version(secrets) -> str:
    h = hashlib.sha256()
    for s in secrets:
        h.update(_version(s).encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------------------
# Server lifecycle
# --------------------------------------------------------------------------------------------------------------


class ReferenceSDSServer:
    """grpcio server on `unix:<socket_path>`; start/rotate/stop from the calling thread."""

    def __init__(
        self,
        socket_path: str | os.PathLike,
        ca: TinyCA,
        spiffe_id: str | None = None,
        svid_ttl: datetime.timedelta = datetime.timedelta(hours=1),
        socket_mode: int = 0o600,
    ):
        self.socket_path = pathlib.Path(socket_path)
        self.spiffe_id = spiffe_id or f"spiffe://{ca.trust_domain}/ns/default/sa/default"
        self.store = SecretStore(ca, self.spiffe_id, svid_ttl)
        self.service = SecretDiscoveryService(self.store)
        self.socket_mode = socket_mode
        self._server: grpc.Server | None = None

    @property
    def svid(self) -> SVID:
        return self.store.svid

    def start(self) -> "ReferenceSDSServer":
        # One worker per stream (each Envoy opens one stream per secret name) plus headroom.
        self._server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="sds"),
            options=[("grpc.so_reuseport", 0)],
        )
        sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(self.service, self._server)
        if self.socket_path.exists() or self.socket_path.is_symlink():
            self.socket_path.unlink()
        port = self._server.add_insecure_port(f"unix:{self.socket_path}")
        if port == 0:
            raise RuntimeError(f"cannot bind unix:{self.socket_path}")
        self._server.start()
        os.chmod(self.socket_path, self.socket_mode)
        log.info("serving %s on unix:%s", self.spiffe_id, self.socket_path)
        return self

    def rotate(self) -> SVID:
        return self.store.rotate()

    def stop(self, grace: float | None = None) -> None:
        """Stop serving; grace=None cancels streams at once (as a killed process would)."""
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None
        try:
            self.socket_path.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> "ReferenceSDSServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)$")


def parse_duration(text: str) -> datetime.timedelta:
    m = _DURATION.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad duration {text!r} (e.g. 90s, 30m, 1h)")
    n, unit = int(m.group(1)), m.group(2)
    return {
        "ms": datetime.timedelta(milliseconds=n), "s": datetime.timedelta(seconds=n),
        "m": datetime.timedelta(minutes=n), "h": datetime.timedelta(hours=n), "d": datetime.timedelta(days=n),
    }[unit]


def parse_status(text: str) -> tuple[grpc.StatusCode, str]:
    code, _, message = text.partition(":")
    try:
        return grpc.StatusCode[code.upper()], message
    except KeyError:
        raise argparse.ArgumentTypeError(f"{code!r} is not a gRPC status code name (e.g. PERMISSION_DENIED)") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Reference SDS server (sds-agent's command line, for tests)")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve SDS on a Unix socket")
    run.add_argument("--socket", required=True)
    run.add_argument("--state-dir", required=True, help="keeps the CA (ca.pem, ca-key.pem) across restarts")
    run.add_argument("--trust-domain", required=True)
    run.add_argument("--spiffe-id")
    run.add_argument("--svid-ttl", type=parse_duration, default=datetime.timedelta(hours=1))
    run.add_argument("--rotate-ratio", type=float, default=0.5, help="accepted for compatibility; rotation is manual")
    run.add_argument("--log-level", default="info")
    run.add_argument("--log-format", choices=["text", "json"], default="text")
    run.add_argument("--socket-mode", default="0600")
    run.add_argument("--fail-with", type=parse_status, metavar="CODE:message",
                     help="fail every call with this gRPC status, e.g. PERMISSION_DENIED:go away (tests of clients)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    ca = TinyCA.load_or_create(pathlib.Path(args.state_dir), args.trust_domain)
    server = ReferenceSDSServer(args.socket, ca, args.spiffe_id, args.svid_ttl, int(args.socket_mode, 8))
    server.service.fail_with = args.fail_with

    # Signal handlers only set flags and wake the main thread: rotation and shutdown run there.
    wake = threading.Event()
    flags = {"rotate": False, "stop": False}

    def on_signal(signum, _frame):
        flags["rotate" if signum == signal.SIGHUP else "stop"] = True
        wake.set()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)

    server.start()
    print(f"ready unix:{args.socket} {server.spiffe_id} serial={server.svid.serial_hex}", flush=True)
    while not flags["stop"]:
        wake.wait()
        wake.clear()
        if flags["rotate"]:
            flags["rotate"] = False
            svid = server.rotate()
            print(f"rotated serial={svid.serial_hex}", flush=True)
    server.stop(grace=1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
