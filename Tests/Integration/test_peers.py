"""The real peers the integration suite relies on are present at the pinned versions."""
import subprocess


def test_envoy_is_1_40(envoy_bin):
    out = subprocess.run([envoy_bin, "--version"], capture_output=True, text=True, check=True).stdout
    assert "/1.40." in out


def test_xds_protos_and_spiffe_import():
    from envoy.service.secret.v3 import sds_pb2_grpc  # noqa: F401
    from spiffe._proto import workload_pb2_grpc  # noqa: F401
