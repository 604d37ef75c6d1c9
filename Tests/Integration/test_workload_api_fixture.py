"""The Workload API fixture behaves like a SPIRE agent towards a client we did not write (py-spiffe's stub)."""
import grpc
import pytest
from spiffe._proto import workload_pb2, workload_pb2_grpc

from workload_api_server import WorkloadAPIServer


@pytest.fixture
def upstream(tmp_path):
    server = WorkloadAPIServer(str(tmp_path / "agent.sock"), "spiffe://example.org/ns/default/sa/default").start()
    yield server
    server.stop()


def test_streams_svid_and_rejects_calls_without_header(upstream):
    with grpc.insecure_channel("unix:" + upstream.socket_path) as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        with pytest.raises(grpc.RpcError) as missing:
            next(stub.FetchX509SVID(workload_pb2.X509SVIDRequest()))
        assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        stream = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=[("workload.spiffe.io", "true")])
        first = next(stream)
        assert first.svids[0].spiffe_id == "spiffe://example.org/ns/default/sa/default"
        upstream.rotate()
        second = next(stream)
        assert second.svids[0].x509_svid != first.svids[0].x509_svid
        stream.cancel()
    assert upstream.state.calls_without_header == 1


def test_permission_denied_without_identity(upstream):
    upstream.set_has_identity(False)
    with grpc.insecure_channel("unix:" + upstream.socket_path) as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        with pytest.raises(grpc.RpcError) as denied:
            next(stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=[("workload.spiffe.io", "true")]))
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
