"""The reference SDS server's hooks for tests of SDS clients (sds-dump): they do what the client tests rely on.

- `service.streams` records ACKs, NACKs and the node (id and cluster) each stream received;
- `service.fail_with` fails every call with a gRPC status (the script: `--fail-with CODE:message`);
- `store.serve_bundle(pem)` serves a bundle that does not verify the served certificate.
"""
from __future__ import annotations

import subprocess

import grpc
import pytest
from envoy.config.core.v3 import base_pb2

from sds_client import SecretStream, certs_of, unpack_secrets
from sds_servers import (TRUST_DOMAIN, ProcessFactory, ReferenceFactory, fetch_secrets, fetch_when_served,
                         reference_script_argv)
import sds_reference_server as ref
from envoy_harness import wait_for

WORKLOAD_ID = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/reference"


@pytest.fixture
def server(short_dir):
    with ReferenceFactory(short_dir) as factory:
        yield factory.start("ref", WORKLOAD_ID)


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_records_ack_nack_and_node(server, delta):
    node = base_pb2.Node(id="node-x", cluster="cluster-y")
    with SecretStream(server.socket_path, delta=delta) as stream:
        if delta:
            stream.send(resource_names_subscribe=["default"], node=node)
        else:
            stream.send(resource_names=["default"], node=node)
        first = stream.recv()
        ack = {"response_nonce": first.nonce}
        if not delta:
            ack.update(resource_names=["default"], version_info=first.version_info)
        stream.send(**ack)
        # Rotating before the server read the ACK would make the ACK stale (it answers an older nonce).
        wait_for(lambda: server.streams and server.streams[0].acks == 1, 5, "the server to record the ACK")
        server.rotate()
        second = stream.recv()
        nack = {"response_nonce": second.nonce, "error_detail": "test says no"}
        if not delta:
            nack.update(resource_names=["default"], version_info=first.version_info)
        stream.send(**nack)
        assert stream.silent(), "a NACK gets no answer"
    [record] = server.streams
    assert record.kind == ("delta" if delta else "sotw")
    assert (record.acks, record.nacks, record.last_error) == (1, 1, "test says no")
    assert record.node_ids == ["node-x"] and record.node_clusters == ["cluster-y"]


@pytest.mark.parametrize("rpc", ["fetch", "sotw", "delta"])
def test_fail_with_fails_every_call(server, rpc):
    server.reference.service.fail_with = (grpc.StatusCode.PERMISSION_DENIED, "reference says no")
    if rpc == "fetch":
        with pytest.raises(grpc.RpcError) as failed:
            fetch_secrets(server.socket_path, ["default"])
        assert failed.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert failed.value.details() == "reference says no"
        return
    with SecretStream(server.socket_path, delta=rpc == "delta") as stream:
        stream.send(**({"resource_names_subscribe": ["default"]} if rpc == "delta" else {"resource_names": ["default"]}))
        with pytest.raises(AssertionError, match="PERMISSION_DENIED reference says no"):
            stream.recv()


def test_serve_bundle_replaces_the_bundle_and_pushes_it(server):
    other = ref.TinyCA.create("other.org")
    with SecretStream(server.socket_path, delta=False) as stream:
        stream.send(resource_names=["ROOTCA"])
        first = stream.recv()
        stream.send(resource_names=["ROOTCA"], version_info=first.version_info, response_nonce=first.nonce)
        server.reference.store.serve_bundle(other.cert_pem)
        pushed = unpack_secrets(stream.recv().resources)["ROOTCA"]
    assert [c.serial_number for c in certs_of(pushed.validation_context.trusted_ca)] == [other.cert.serial_number]
    leaf = server.reference.svid.cert
    assert leaf.issuer != other.cert.subject, "the served certificate is not from the served bundle's CA"


def test_script_fail_with_flag(short_dir):
    factory = ProcessFactory("reference-script", reference_script_argv(), short_dir)
    try:
        s = factory.start("ref", WORKLOAD_ID, ["--fail-with", "UNAVAILABLE:script says no"])
        with pytest.raises(grpc.RpcError) as failed:
            fetch_secrets(s.socket_path, ["default"])
        assert (failed.value.code(), failed.value.details()) == (grpc.StatusCode.UNAVAILABLE, "script says no")
    finally:
        factory.stop_all()


def test_script_rejects_a_bad_status_name(short_dir):
    run = subprocess.run([*reference_script_argv(), "run", "--socket", str(short_dir / "s.sock"), "--state-dir",
                          str(short_dir / "st"), "--trust-domain", TRUST_DOMAIN, "--fail-with", "NOPE:x"],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 2 and "NOPE" in run.stderr


def test_without_hooks_it_still_serves(server):
    assert set(fetch_when_served(server.socket_path, ["default", "ROOTCA"])) == {"default", "ROOTCA"}
