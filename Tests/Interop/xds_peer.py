#!/usr/bin/env python3
"""Interop peer for Tests/WireTests: the reference protobuf runtime (xds-protos, py-spiffe) on the other side.

    xds_peer.py encode-all            JSON {case: {"type": name, "hex": bytes, "node_hex": node bytes?}}
    xds_peer.py decode TYPE < HEX     JSON of the decoded message (proto field names, bytes as base64)
    xds_peer.py paths                 JSON {"paths": [...]}: the gRPC paths of SDS and the Workload API
    xds_peer.py check CASE < HEX      JSON {"equal": bool, "node_identical": bool}: HEX parses to exactly
                                      the message of CASE, and its node serializes to the same bytes

HEX comes on stdin: an Envoy-sized request is too long for one command-line argument.

Every case is built deterministically, so the Swift side can state each field's expected value.
"""
import json
import sys

from google.protobuf import any_pb2, json_format, struct_pb2
from google.rpc import status_pb2
from envoy.config.core.v3 import base_pb2, extension_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_spiffe_validator_config_pb2 as spiffe_validator_pb2
from envoy.type.v3 import semantic_version_pb2
from spiffe._proto import workload_pb2

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

TYPES = {
    "envoy.service.discovery.v3.DiscoveryRequest": discovery_pb2.DiscoveryRequest,
    "envoy.service.discovery.v3.DiscoveryResponse": discovery_pb2.DiscoveryResponse,
    "envoy.service.discovery.v3.DeltaDiscoveryRequest": discovery_pb2.DeltaDiscoveryRequest,
    "envoy.service.discovery.v3.DeltaDiscoveryResponse": discovery_pb2.DeltaDiscoveryResponse,
    "envoy.service.discovery.v3.Resource": discovery_pb2.Resource,
    "envoy.config.core.v3.Node": base_pb2.Node,
    "envoy.extensions.transport_sockets.tls.v3.Secret": secret_pb2.Secret,
    "envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig":
        spiffe_validator_pb2.SPIFFECertValidatorConfig,
    "google.rpc.Status": status_pb2.Status,
    "google.protobuf.Any": any_pb2.Any,
    "X509SVIDRequest": workload_pb2.X509SVIDRequest,
    "X509SVIDResponse": workload_pb2.X509SVIDResponse,
    "X509SVID": workload_pb2.X509SVID,
    "X509BundlesRequest": workload_pb2.X509BundlesRequest,
    "X509BundlesResponse": workload_pb2.X509BundlesResponse,
    "JWTSVIDRequest": workload_pb2.JWTSVIDRequest,
    "JWTSVIDResponse": workload_pb2.JWTSVIDResponse,
    "JWTSVID": workload_pb2.JWTSVID,
    "JWTBundlesRequest": workload_pb2.JWTBundlesRequest,
    "JWTBundlesResponse": workload_pb2.JWTBundlesResponse,
    "ValidateJWTSVIDRequest": workload_pb2.ValidateJWTSVIDRequest,
    "ValidateJWTSVIDResponse": workload_pb2.ValidateJWTSVIDResponse,
}


def pattern(seed, length):
    """Deterministic bytes the Swift side recomputes: byte i = (seed + i * 7) % 256."""
    return bytes((seed + i * 7) % 256 for i in range(length))


def large_node():
    """A node like Envoy's: ~500 extensions, metadata, build version; about 60 KB."""
    node = base_pb2.Node(id="sidecar~10.0.0.1~app-1.default~default.svc.cluster.local",
                         cluster="app.default", user_agent_name="envoy")
    node.user_agent_build_version.version.CopyFrom(
        semantic_version_pb2.SemanticVersion(major_number=1, minor_number=40, patch=0))
    node.user_agent_build_version.metadata.update({"revision": "0" * 40, "build.type": "RELEASE"})
    node.metadata.update({f"ISTIO_META_KEY_{i}": f"value-{i}-" + "x" * 40 for i in range(60)})
    for i in range(500):
        node.extensions.add(name=f"envoy.filters.category{i % 17}.extension_number_{i}",
                            category=f"envoy.filters.category{i % 17}",
                            type_urls=[f"type.googleapis.com/envoy.extensions.filters.v3.Config{i}"])
    node.client_features.extend(["envoy.lb.does_not_support_overprovisioning", "xds.config.resource-ttl"])
    return node


def tls_secret():
    return secret_pb2.Secret(name="default", tls_certificate=common_pb2.TlsCertificate(
        certificate_chain=base_pb2.DataSource(inline_bytes=pattern(1, 1500)),
        private_key=base_pb2.DataSource(inline_bytes=pattern(2, 241))))


def spiffe_secret():
    config = spiffe_validator_pb2.SPIFFECertValidatorConfig(trust_domains=[
        spiffe_validator_pb2.SPIFFECertValidatorConfig.TrustDomain(
            name="example.org", trust_bundle=base_pb2.DataSource(inline_bytes=pattern(3, 900))),
        spiffe_validator_pb2.SPIFFECertValidatorConfig.TrustDomain(
            name="other.org", trust_bundle=base_pb2.DataSource(inline_string="-----BEGIN CERTIFICATE-----\n")),
    ])
    typed = any_pb2.Any()
    typed.Pack(config)
    return secret_pb2.Secret(name="ALL", validation_context=common_pb2.CertificateValidationContext(
        custom_validator_config=extension_pb2.TypedExtensionConfig(
            name="envoy.tls.cert_validator.spiffe", typed_config=typed)))


def error_detail():
    return status_pb2.Status(code=13, message="Failed to load certificate chain from <inline>")


def cases():
    node = large_node()
    any_tls = any_pb2.Any()
    any_tls.Pack(tls_secret())
    any_root = any_pb2.Any()
    any_root.Pack(secret_pb2.Secret(name="ROOTCA", validation_context=common_pb2.CertificateValidationContext(
        trusted_ca=base_pb2.DataSource(inline_string="-----BEGIN CERTIFICATE-----\nMIIB\n"))))
    return {
        "discovery_request": discovery_pb2.DiscoveryRequest(
            version_info="v1", node=node, resource_names=["default", "ROOTCA"], type_url=SECRET_TYPE,
            response_nonce="nonce-1", error_detail=error_detail()),
        "delta_discovery_request": discovery_pb2.DeltaDiscoveryRequest(
            node=node, type_url=SECRET_TYPE, resource_names_subscribe=["default", "spiffe://example.org"],
            resource_names_unsubscribe=["old"], initial_resource_versions={"default": "3", "ROOTCA": "7"},
            response_nonce="nonce-2", error_detail=error_detail()),
        "discovery_response": discovery_pb2.DiscoveryResponse(
            version_info="42", resources=[any_tls], type_url=SECRET_TYPE, nonce="n-42"),
        "delta_discovery_response": discovery_pb2.DeltaDiscoveryResponse(
            system_version_info="sys-9", type_url=SECRET_TYPE, nonce="n-9", removed_resources=["gone"],
            resources=[discovery_pb2.Resource(name="default", version="5", resource=any_tls),
                       discovery_pb2.Resource(name="ROOTCA", version="6", resource=any_root)]),
        "secret_spiffe": spiffe_secret(),
        "x509_svid_response": workload_pb2.X509SVIDResponse(
            svids=[workload_pb2.X509SVID(spiffe_id="spiffe://example.org/workload", x509_svid=pattern(4, 700),
                                         x509_svid_key=pattern(5, 138), bundle=pattern(6, 500), hint="internal"),
                   workload_pb2.X509SVID(spiffe_id="spiffe://example.org/other", x509_svid=pattern(7, 10),
                                         x509_svid_key=pattern(8, 11), bundle=pattern(9, 12))],
            crl=[pattern(10, 33)],
            federated_bundles={"spiffe://other.org": pattern(11, 300), "spiffe://third.org": pattern(12, 301)}),
        "x509_bundles_response": workload_pb2.X509BundlesResponse(
            crl=[pattern(13, 20), pattern(14, 21)],
            bundles={"spiffe://example.org": pattern(15, 400), "spiffe://other.org": pattern(16, 401)}),
        "jwt_svid_response": workload_pb2.JWTSVIDResponse(svids=[
            workload_pb2.JWTSVID(spiffe_id="spiffe://example.org/w", svid="eyJhbGciOiJFUzI1NiJ9.e30.sig", hint="h")]),
        "jwt_bundles_response": workload_pb2.JWTBundlesResponse(bundles={"example.org": b'{"keys":[]}'}),
        "validate_jwt_svid_response": workload_pb2.ValidateJWTSVIDResponse(
            spiffe_id="spiffe://example.org/w", claims=struct_pb2.Struct(fields={"aud": struct_pb2.Value(string_value="x")})),
    }


def node_of(message):
    return message.node if hasattr(message, "node") and message.HasField("node") else None


def main(argv):
    if len(argv) >= 2 and argv[1] == "encode-all":
        out = {}
        for name, message in cases().items():
            entry = {"type": message.DESCRIPTOR.full_name, "hex": message.SerializeToString(deterministic=True).hex()}
            node = node_of(message)
            if node is not None:
                entry["node_hex"] = node.SerializeToString(deterministic=True).hex()
            out[name] = entry
        print(json.dumps(out))
    elif len(argv) == 2 and argv[1] == "paths":
        services = [sds_pb2.DESCRIPTOR.services_by_name["SecretDiscoveryService"],
                    workload_pb2.DESCRIPTOR.services_by_name["SpiffeWorkloadAPI"]]
        print(json.dumps({"paths": [f"/{s.full_name}/{m.name}" for s in services for m in s.methods]}))
    elif len(argv) == 3 and argv[1] == "decode":
        message = TYPES[argv[2]]()
        message.ParseFromString(bytes.fromhex(sys.stdin.read().strip()))
        print(json_format.MessageToJson(message, preserving_proto_field_name=True, indent=None))
    elif len(argv) == 3 and argv[1] == "check":
        expected = cases()[argv[2]]
        actual = type(expected)()
        actual.ParseFromString(bytes.fromhex(sys.stdin.read().strip()))
        node_identical = None
        if node_of(expected) is not None:
            node_identical = node_of(actual) is not None and \
                actual.node.SerializeToString(deterministic=True) == expected.node.SerializeToString(deterministic=True)
        print(json.dumps({"equal": actual == expected, "node_identical": node_identical}))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
