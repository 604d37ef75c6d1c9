"""A SPIFFE Workload API server we did not write the client of: grpcio + the servicer py-spiffe ships.

It stands in for a SPIRE agent in tests of `sds-agent --issuer workload-api`. It issues X.509-SVIDs from its own test
CA (cryptography), streams every state change to FetchX509SVID / FetchX509Bundles callers, rejects calls without the
`workload.spiffe.io: true` header (and counts them), and answers PermissionDenied while it has no identity to give.

Usable in-process (pytest fixtures drive `rotate()`, `set_federated()`, `stop()`/`start()`) or as a script:
    python workload_api_server.py unix:///tmp/agent.sock spiffe://example.org/ns/default/sa/default
"""
from __future__ import annotations

import datetime
import json
import os
import sys
import threading
from concurrent import futures

import grpc
import jwt as pyjwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from spiffe import SpiffeId
from spiffe._proto import workload_pb2, workload_pb2_grpc

import spiffe_test_ca as test_ca

# Certificates are valid from a minute ago: clocks of peers differ.
_BACKDATE = datetime.timedelta(minutes=1)


class TestCA:
    """A root CA for one trust domain, issuing SPIFFE leaf certificates."""

    def __init__(self, trust_domain: str, lifetime: datetime.timedelta = datetime.timedelta(days=30),
                 not_after: datetime.datetime | None = None):
        """`not_after`: the root's notAfter instead of now + `lifetime` (e.g. 9999-12-31, for far-future SVIDs)."""
        self.trust_domain = trust_domain
        self._root = test_ca.SpiffeRoot.create(
            trust_domain, test_ca.organization("test-ca " + trust_domain), lifetime=lifetime, backdate=_BACKDATE,
            not_after=not_after,
        )
        self.key = self._root.key
        self.cert = self._root.cert

    @property
    def bundle_der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    def issue(self, spiffe_id: str, ttl: datetime.timedelta = datetime.timedelta(hours=1),
              not_after: datetime.datetime | None = None):
        """Returns (leaf certificate, PKCS#8 DER key); valid for `ttl`, or until `not_after` when given."""
        cert, key = self._root.issue(spiffe_id, test_ca.organization("SPIRE-like test"), ttl=ttl, backdate=_BACKDATE,
                                     not_after=not_after)
        return cert, test_ca.der_key(key)


class WorkloadAPIState:
    """What the server streams: one SVID (or none), the own bundle and federated bundles. Thread-safe."""

    def __init__(self, spiffe_id: str, ca: TestCA, svid_ttl: datetime.timedelta,
                 svid_not_after: datetime.datetime | None = None):
        self.spiffe_id = spiffe_id
        self.ca = ca
        self.svid_ttl = svid_ttl
        # A fixed notAfter for every SVID issued (e.g. 9999-12-31), instead of now + svid_ttl.
        self.svid_not_after = svid_not_after
        # When set, ValidateJWTSVID answers exactly these bytes (a serialized ValidateJWTSVIDResponse) after the
        # header check: for answers protobuf's Python runtime will not build, such as claims nested 5,000 deep.
        self.validate_response_bytes: bytes | None = None
        self.federated: dict[str, bytes] = {}
        self.has_identity = True
        self.generation = 0
        self.cond = threading.Condition()
        self.leaf = None
        self.key_der = b""
        self.calls_without_header = 0
        self.calls = 0
        # JWT-SVIDs, as a SPIRE agent serves them: an ES256 key named by a kid, tokens living jwt_ttl.
        self.jwt_key = ec.generate_private_key(ec.SECP256R1())
        self.jwt_kid = "upstream-jwt-key"
        self.jwt_ttl = datetime.timedelta(minutes=5)
        self.jwt_calls = 0
        # Further SPIFFE IDs the pod is entitled to for JWT-SVIDs (more registration entries matching it, as SPIRE
        # allows), and the `spiffe_id` of every FetchJWTSVID received ("" when the caller named none).
        self.jwt_extra_ids: list[str] = []
        self.jwt_requested_ids: list[str] = []
        self.rotate()

    def rotate(self):
        with self.cond:
            self.leaf, self.key_der = self.ca.issue(self.spiffe_id, self.svid_ttl, not_after=self.svid_not_after)
            self.generation += 1
            self.cond.notify_all()
        return self.leaf

    def set_federated(self, trust_domain: str, der: bytes | None):
        with self.cond:
            if der is None:
                self.federated.pop(trust_domain, None)
            else:
                self.federated[trust_domain] = der
            self.generation += 1
            self.cond.notify_all()

    def set_federated_many(self, bundles: dict[str, bytes]):
        """Replaces every federated bundle at once: one change, one message on each stream."""
        with self.cond:
            self.federated = dict(bundles)
            self.generation += 1
            self.cond.notify_all()

    def set_has_identity(self, value: bool):
        with self.cond:
            self.has_identity = value
            self.generation += 1
            self.cond.notify_all()

    def svid_response(self) -> workload_pb2.X509SVIDResponse | None:
        if not self.has_identity:
            return None
        svid = workload_pb2.X509SVID(
            spiffe_id=self.spiffe_id,
            x509_svid=self.leaf.public_bytes(serialization.Encoding.DER),
            x509_svid_key=self.key_der,
            bundle=self.ca.bundle_der,
        )
        return workload_pb2.X509SVIDResponse(svids=[svid], federated_bundles=dict(self.federated))

    def bundles_response(self) -> workload_pb2.X509BundlesResponse:
        bundles = {"spiffe://" + self.ca.trust_domain: self.ca.bundle_der}
        bundles.update(self.federated)
        return workload_pb2.X509BundlesResponse(bundles=bundles)


    def mint_jwt(self, audiences: list[str], subject: str | None = None) -> str:
        now = datetime.datetime.now(datetime.timezone.utc)
        claims = {"sub": subject or self.spiffe_id, "aud": audiences, "iat": now, "exp": now + self.jwt_ttl}
        return pyjwt.encode(claims, self.jwt_key, algorithm="ES256", headers={"kid": self.jwt_kid, "typ": "JWT"})

    def jwt_bundles_response(self) -> workload_pb2.JWTBundlesResponse:
        jwk = pyjwt.algorithms.ECAlgorithm.to_jwk(self.jwt_key.public_key(), as_dict=True)
        jwk.update(kid=self.jwt_kid, use="jwt-svid")
        jwks = json.dumps({"keys": [jwk]}).encode()
        return workload_pb2.JWTBundlesResponse(bundles={"spiffe://" + self.ca.trust_domain: jwks})


class WorkloadAPIServicer(workload_pb2_grpc.SpiffeWorkloadAPIServicer):
    def __init__(self, state: WorkloadAPIState, stopping: threading.Event):
        self.state = state
        self.stopping = stopping

    def _check_header(self, context):
        with self.state.cond:
            self.state.calls += 1
        metadata = dict(context.invocation_metadata())
        if metadata.get("workload.spiffe.io") != "true":
            with self.state.cond:
                self.state.calls_without_header += 1
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "security header missing from request")

    def _stream(self, context, build):
        self._check_header(context)
        seen = -1
        while context.is_active() and not self.stopping.is_set():
            with self.state.cond:
                if self.state.generation == seen:
                    self.state.cond.wait(timeout=0.2)
                    continue
                seen = self.state.generation
                response = build()
            if response is None:
                context.abort(grpc.StatusCode.PERMISSION_DENIED, "no identity issued")
            yield response

    def FetchX509SVID(self, request, context):
        yield from self._stream(context, self.state.svid_response)

    def FetchX509Bundles(self, request, context):
        yield from self._stream(context, self.state.bundles_response)

    def FetchJWTBundles(self, request, context):
        yield from self._stream(context, self.state.jwt_bundles_response)

    def FetchJWTSVID(self, request, context):
        # SPIRE's checks, in its order: the header (its middleware), the audience, a requested SPIFFE ID's syntax,
        # then the caller's entries filtered to the requested ID; none left is PermissionDenied. One JWT-SVID per
        # entry.
        self._check_header(context)
        if not request.audience:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "audience must be specified")
        if request.spiffe_id:
            try:
                SpiffeId(request.spiffe_id)
            except Exception as error:  # noqa: BLE001 - py-spiffe's parse error, whatever its class
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid requested SPIFFE ID: {error}")
        with self.state.cond:
            self.state.jwt_calls += 1
            self.state.jwt_requested_ids.append(request.spiffe_id)
            entitled = [self.state.spiffe_id, *self.state.jwt_extra_ids] if self.state.has_identity else []
            ids = [i for i in entitled if not request.spiffe_id or i == request.spiffe_id]
            if not ids:
                context.abort(grpc.StatusCode.PERMISSION_DENIED, "no identity issued")
            svids = [workload_pb2.JWTSVID(spiffe_id=i, svid=self.state.mint_jwt(list(request.audience), subject=i))
                     for i in ids]
        return workload_pb2.JWTSVIDResponse(svids=svids)

    def ValidateJWTSVID(self, request, context):
        self._check_header(context)
        with self.state.cond:
            self.state.jwt_calls += 1
            key = self.state.jwt_key.public_key()
            raw = self.state.validate_response_bytes
        if raw is not None:
            return raw  # passed through by _RawResponses
        try:
            claims = pyjwt.decode(request.svid, key, algorithms=["ES256"], audience=request.audience)
        except pyjwt.PyJWTError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid JWT-SVID: {error}")
        return workload_pb2.ValidateJWTSVIDResponse(spiffe_id=claims["sub"])


class _RawResponses(grpc.ServerInterceptor):
    """Lets ValidateJWTSVID return bytes already serialized (`WorkloadAPIState.validate_response_bytes`): its response
    serializer passes `bytes` through and serializes messages as before."""

    METHOD = "/SpiffeWorkloadAPI/ValidateJWTSVID"

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method != self.METHOD or handler.response_serializer is None:
            return handler
        serialize = handler.response_serializer
        return handler._replace(
            response_serializer=lambda response: response if isinstance(response, bytes) else serialize(response))


class WorkloadAPIServer:
    """A grpcio Workload API server on a Unix socket that can be stopped and started again with the same CA."""

    def __init__(self, socket_path: str, spiffe_id: str, trust_domain: str | None = None,
                 svid_ttl: datetime.timedelta = datetime.timedelta(hours=1), ca: TestCA | None = None,
                 svid_not_after: datetime.datetime | None = None):
        """`ca`: another server's CA, so that workloads of both trust each other (two upstreams, one trust domain).
        `svid_not_after`: every SVID valid until then (e.g. `datetime(9999, 12, 31, 23, 59, 59)`), whatever
        `svid_ttl` says; the server's own CA is then made valid until then too."""
        self.socket_path = socket_path
        trust_domain = trust_domain or spiffe_id.split("/")[2]
        self.ca = ca or TestCA(trust_domain, not_after=svid_not_after)
        self.state = WorkloadAPIState(spiffe_id, self.ca, svid_ttl, svid_not_after=svid_not_after)
        self.server = None
        self.stopping = threading.Event()

    def start(self):
        self.stopping = threading.Event()
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), interceptors=[_RawResponses()])
        workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(
            WorkloadAPIServicer(self.state, self.stopping), self.server)
        self.server.add_insecure_port("unix:" + self.socket_path)
        self.server.start()
        return self

    def stop(self):
        if self.server is not None:
            self.stopping.set()
            self.server.stop(grace=None).wait()
            self.server = None
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)

    # Conveniences for tests.
    def rotate(self):
        return self.state.rotate()

    def set_federated(self, trust_domain: str, der: bytes | None):
        self.state.set_federated(trust_domain, der)

    def set_federated_many(self, bundles: dict[str, bytes]):
        self.state.set_federated_many(bundles)

    def set_has_identity(self, value: bool):
        self.state.set_has_identity(value)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    path = argv[1].removeprefix("unix://")
    server = WorkloadAPIServer(path, argv[2]).start()
    print(f"workload API serving {argv[2]} on {path}", flush=True)
    try:
        server.server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
