"""The work an agent does in a pod, driven once through every served API: what `make order-file` records.

`hot_path_workload.run(socket, status_port, rotate)` exercises, with peers we did not write (grpcio + xds-protos,
py-spiffe's generated stubs, grpcio-health-checking, urllib): SDS SotW (`default`, `ROOTCA`) with ACKs, Delta and
Fetch; the Workload API (X.509 SVIDs and bundles, JWT-SVID minting, JWT bundles, validation); gRPC health; the status
listener (`/metrics`, `/live`, `/ready`); and a rotation pushed to the open streams. Every wait is bounded.
"""
from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "Tests" / "Integration"))

import grpc  # noqa: E402
from envoy.service.discovery.v3 import discovery_pb2  # noqa: E402
from envoy.service.secret.v3 import sds_pb2_grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from spiffe._proto import workload_pb2, workload_pb2_grpc  # noqa: E402

from sds_client import SECRET_TYPE_URL, SecretStream  # noqa: E402

SECURITY_HEADER = [("workload.spiffe.io", "true")]


def run(socket_path: str, status_port: int | None, rotate, jwt: bool = True) -> None:
    """`rotate()` makes the agent's issuer hand out a new identity (SIGHUP for the local CA and istiod); `jwt` is
    False for an issuer with no JWT-SVID source (istiod)."""
    target = f"unix:{socket_path}"
    with SecretStream(socket_path, delta=False) as sotw, SecretStream(socket_path, delta=True) as delta:
        sotw.send(resource_names=["default", "ROOTCA"])
        first = sotw.recv(timeout=60)
        sotw.send(resource_names=["default", "ROOTCA"], version_info=first.version_info,
                  response_nonce=first.nonce)
        delta.send(resource_names_subscribe=["default", "ROOTCA"])
        delta_first = delta.recv(timeout=60)
        delta.send(response_nonce=delta_first.nonce)

        with grpc.insecure_channel(target) as channel:
            sds = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
            sds.FetchSecrets(discovery_pb2.DiscoveryRequest(resource_names=["default"], type_url=SECRET_TYPE_URL),
                             timeout=30)
            health = health_pb2_grpc.HealthStub(channel)
            health.Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
            workload = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
            x509 = workload.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=SECURITY_HEADER, timeout=30)
            next(x509)
            x509.cancel()
            bundles = workload.FetchX509Bundles(workload_pb2.X509BundlesRequest(), metadata=SECURITY_HEADER,
                                                timeout=30)
            next(bundles)
            bundles.cancel()
            if jwt:
                token = workload.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=["svc"]),
                                              metadata=SECURITY_HEADER, timeout=30).svids[0].svid
                workload.ValidateJWTSVID(workload_pb2.ValidateJWTSVIDRequest(audience="svc", svid=token),
                                         metadata=SECURITY_HEADER, timeout=30)
                jwt_bundles = workload.FetchJWTBundles(workload_pb2.JWTBundlesRequest(), metadata=SECURITY_HEADER,
                                                       timeout=30)
                next(jwt_bundles)
                jwt_bundles.cancel()

        if status_port is not None:
            for path in ("/metrics", "/live", "/ready"):
                with urllib.request.urlopen(f"http://127.0.0.1:{status_port}{path}", timeout=30) as response:
                    response.read()

        rotate()
        pushed = sotw.recv(timeout=60)
        sotw.send(resource_names=["default", "ROOTCA"], version_info=pushed.version_info,
                  response_nonce=pushed.nonce)
        delta_pushed = delta.recv(timeout=60)
        delta.send(response_nonce=delta_pushed.nonce)
