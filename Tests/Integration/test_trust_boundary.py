"""The socket is a trust boundary: file-backed names are confined, peers are checked, logs cannot be forged.

Every client here is a real peer we did not write (grpcio + xds-protos), except the other-UID client, which is
`sds-dump` run under `setpriv` (the venv's Python lives under /root, which another UID cannot enter).
"""
from __future__ import annotations

import datetime
import os
import pathlib
import shutil
import subprocess
import time

import grpc
import pytest
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from sds_client import SecretStream, certs_of
from sds_servers import TRUST_DOMAIN, fetch_when_served
from spiffe_test_ca import SpiffeRoot, organization, pem_cert, pem_key
from test_envoy_mtls import write_shared_operator_ca

WORKLOAD = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/trust"
SECRET_TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
DAY = datetime.timedelta(days=1)
MINUTE = datetime.timedelta(minutes=1)
# A held request must not delay anyone else: the well-behaved client's bound while hostile names are being refused.
PROMPT = 0.05


def fetch_status(socket_path, names: list[str], timeout: float = 3.0):
    """FetchSecrets → (status code, response or None)."""
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
        try:
            response = stub.FetchSecrets(
                discovery_pb2.DiscoveryRequest(resource_names=names, type_url=SECRET_TYPE_URL), timeout=timeout)
            return grpc.StatusCode.OK, response
        except grpc.RpcError as error:
            return error.code(), None


class WellBehavedClient:
    """One open channel that fetches `default`; `latency()` is one FetchSecrets round trip."""

    def __init__(self, socket_path):
        self.channel = grpc.insecure_channel(f"unix:{socket_path}")
        self.stub = sds_pb2_grpc.SecretDiscoveryServiceStub(self.channel)
        self.latency()  # connect and warm up

    def latency(self) -> float:
        started = time.monotonic()
        response = self.stub.FetchSecrets(
            discovery_pb2.DiscoveryRequest(resource_names=["default"], type_url=SECRET_TYPE_URL), timeout=5)
        assert len(response.resources) == 1
        return time.monotonic() - started

    def close(self):
        self.channel.close()


def count_lines(log_path: pathlib.Path, *needles: str) -> int:
    return sum(1 for line in log_path.read_text(errors="replace").splitlines() if all(n in line for n in needles))


def write_pair(directory: pathlib.Path, ca: SpiffeRoot, spiffe_id: str):
    cert, key = ca.issue(spiffe_id, organization("files"), DAY, MINUTE)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cert.pem").write_bytes(pem_cert(cert))
    (directory / "key.pem").write_bytes(pem_key(key))
    (directory / "root.pem").write_bytes(pem_cert(ca.cert))
    return cert


@pytest.fixture
def hostile_setup(agent_factory, short_dir):
    """An agent whose --file-dirs hold: a certificate directory, its own state dir, the directory of its operator CA
    key, /dev and /proc (an operator's mistakes: the agent's secrets and pseudo-filesystems are refused anyway)."""
    ca = SpiffeRoot.create("files.example", organization("file CA"), DAY, MINUTE)
    certs = short_dir / "certs"
    write_pair(certs, ca, "spiffe://files.example/gateway")
    outside = short_dir / "outside"
    write_pair(outside, ca, "spiffe://files.example/outside")
    (certs / "leads-out.pem").symlink_to(outside / "root.pem")
    os.mkfifo(certs / "fifo.pem")
    operator = short_dir / "operator"
    operator.mkdir()
    ca_args = write_shared_operator_ca(operator)
    # The agent's state dir is allowed too (it will be short_dir/trust.state): its files must be refused anyway.
    dirs = ",".join([str(certs), str(short_dir / "trust.state"), str(operator), "/dev", "/proc"])
    agent = agent_factory.start("trust", WORKLOAD, ["--file-dirs", dirs, *ca_args])
    fetch_when_served(agent.socket_path, ["default"])
    return agent, certs, outside, operator


def hostile_names(agent, certs, outside, operator) -> dict[str, str]:
    key_path = operator / "shared-ca.key"
    return {
        "operator CA key (--ca-key)": f"file-cert:{operator}/shared-ca.pem~{key_path}",
        "path outside --file-dirs": f"file-root:{outside}/root.pem",
        "symlink leading out": f"file-root:{certs}/leads-out.pem",
        "FIFO": f"file-root:{certs}/fifo.pem",
        "/dev/zero": "file-root:/dev/zero",
        "/proc/self/environ": "file-root:/proc/self/environ",
        "/etc/shadow-like file outside": "file-root:/etc/passwd",
    }


def test_hostile_file_names_are_never_served_and_the_loop_keeps_serving(hostile_setup):
    agent, certs, outside, operator = hostile_setup
    good = WellBehavedClient(agent.socket_path)
    try:
        names = hostile_names(agent, certs, outside, operator)
        # The state dir is the agent's own, even when an operator lists it in --file-dirs.
        names["state dir file"] = f"file-root:{agent.state_dir}/.keep"
        agent.state_dir.mkdir(exist_ok=True)
        (agent.state_dir / ".keep").write_bytes(pem_cert(SpiffeRoot.create("x.example", organization("x"), DAY,
                                                                            MINUTE).cert))
        worst = 0.0
        for label, name in names.items():
            for attempt in range(2):  # asked twice: logged once
                code, response = fetch_status(agent.socket_path, [name])
                assert code == grpc.StatusCode.NOT_FOUND, f"{label}: {code} {response}"
                worst = max(worst, good.latency())
        assert worst < PROMPT, f"a well-behaved client waited {worst * 1000:.1f} ms while names were refused"

        # Delta says so in removed_resources; no resource is ever sent.
        with SecretStream(agent.socket_path, delta=True) as stream:
            stream.send(resource_names_subscribe=list(names.values()))
            removed: set[str] = set()
            while removed != set(names.values()):
                response = stream.recv()
                assert not response.resources, f"served {[r.name for r in response.resources]}"
                removed |= set(response.removed_resources)
                stream.send(response_nonce=response.nonce)

        for label, name in names.items():
            assert count_lines(agent.log_path, "file-backed name refused", name) == 1, label
        # Nothing the agent holds secret ever reached a log line or a client.
        key_pem = (operator / "shared-ca.key").read_text()
        body = "".join(line for line in key_pem.splitlines() if "-----" not in line)
        assert body[:40] not in agent.log_path.read_text()
    finally:
        good.close()


def test_local_ca_key_in_the_state_dir_is_refused_even_inside_an_allowed_directory(agent_factory, short_dir):
    agent = agent_factory.start("ca", WORKLOAD, ["--file-dirs", str(short_dir)])
    fetch_when_served(agent.socket_path, ["default"])
    state = agent.state_dir
    assert (state / "ca.key").exists()
    name = f"file-cert:{state}/ca.pem~{state}/ca.key"
    # A symlink to the key from an innocent-looking place inside the allowed directory: refused all the same.
    (short_dir / "innocent.key").symlink_to(state / "ca.key")
    alias = f"file-cert:{state}/ca.pem~{short_dir}/innocent.key"
    for n in (name, alias):
        code, _ = fetch_status(agent.socket_path, [n])
        assert code == grpc.StatusCode.NOT_FOUND
        assert count_lines(agent.log_path, "file-backed name refused", n, "agent's own secrets") == 1


def test_kubelet_data_symlink_swap_inside_an_allowed_directory_is_pushed(agent_factory, short_dir):
    """Kubernetes mounts a Secret as `cert.pem -> ..data/cert.pem`, `..data -> ..<timestamp>`, and updates it by
    swapping `..data` in one rename: the agent must follow, since every hop stays inside the allowed directory."""
    ca = SpiffeRoot.create("files.example", organization("file CA"), DAY, MINUTE)
    mount = short_dir / "mount"
    mount.mkdir()
    first = write_pair(mount / "..2026_12_04_a", ca, "spiffe://files.example/gw")
    (mount / "..data").symlink_to("..2026_12_04_a")
    for f in ("cert.pem", "key.pem", "root.pem"):
        (mount / f).symlink_to(f"..data/{f}")
    agent = agent_factory.start("kubelet", WORKLOAD, ["--file-dirs", str(mount)])
    name = f"file-cert:{mount}/cert.pem~{mount}/key.pem"
    with SecretStream(agent.socket_path, delta=True) as stream:
        stream.send(resource_names_subscribe=[name])
        response = stream.recv()
        stream.send(response_nonce=response.nonce)
        secret = secret_pb2.Secret()
        response.resources[0].resource.Unpack(secret)
        assert certs_of(secret.tls_certificate.certificate_chain)[0].serial_number == first.serial_number

        second = write_pair(mount / "..2026_12_04_b", ca, "spiffe://files.example/gw")
        (mount / "..data_tmp").symlink_to("..2026_12_04_b")
        os.rename(mount / "..data_tmp", mount / "..data")
        response = stream.recv()
        secret = secret_pb2.Secret()
        response.resources[0].resource.Unpack(secret)
        assert certs_of(secret.tls_certificate.certificate_chain)[0].serial_number == second.serial_number


def test_names_are_released_with_the_last_stream(agent_factory, short_dir):
    """A name nobody holds any more is forgotten: asked again later, it is read afresh (new content, no push needed
    to a stream that never saw the old one) — and the agent does not keep its watch or cache entry meanwhile."""
    ca = SpiffeRoot.create("files.example", organization("file CA"), DAY, MINUTE)
    certs = short_dir / "certs"
    write_pair(certs, ca, "spiffe://files.example/gw")
    agent = agent_factory.start("release", WORKLOAD, ["--file-dirs", str(certs)])
    name = f"file-root:{certs}/root.pem"
    code, response = fetch_status(agent.socket_path, [name])
    assert code == grpc.StatusCode.OK
    # 200 distinct names, each fetched once and released: far beyond the cap of 64 names held at once.
    for i in range(200):
        shutil.copy(certs / "root.pem", certs / f"root-{i}.pem")
    for i in range(200):
        code, _ = fetch_status(agent.socket_path, [f"file-root:{certs}/root-{i}.pem"])
        assert code == grpc.StatusCode.OK, f"name {i}: {code} (released names must not count against the cap)"


def _setpriv(uid: int, argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv],
                          capture_output=True, text=True, timeout=20)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another UID")
def test_peers_are_checked_by_uid_even_on_a_world_writable_socket(agent_factory, short_dir, sds_dump_bin):
    short_dir.chmod(0o711)  # let the other UID reach the socket; the socket mode and --allow-uid do the rest
    bin_dir = short_dir / "bin"
    bin_dir.mkdir(mode=0o755)
    dump = bin_dir / "sds-dump"
    shutil.copy(sds_dump_bin, dump)
    dump.chmod(0o755)
    nobody = 65534

    refusing = agent_factory.start("refusing", WORKLOAD, ["--socket-mode", "0666"])
    fetch_when_served(refusing.socket_path, ["default"])  # our own UID is served
    assert oct(refusing.socket_path.stat().st_mode & 0o777) == "0o666"
    result = _setpriv(nobody, [str(dump), "--socket", str(refusing.socket_path), "--fetch", "--timeout", "3s",
                               "default"])
    assert result.returncode != 0 and WORKLOAD not in result.stdout, result.stdout + result.stderr
    assert count_lines(refusing.log_path, "connection refused", f"peer_uid={nobody}") == 1

    admitting = agent_factory.start("admitting", WORKLOAD, ["--socket-mode", "0666", "--allow-uid",
                                                            f"{os.geteuid()},{nobody}"])
    fetch_when_served(admitting.socket_path, ["default"])
    result = _setpriv(nobody, [str(dump), "--socket", str(admitting.socket_path), "--fetch", "--timeout", "5s",
                               "default"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert WORKLOAD in result.stdout


def test_a_client_chosen_name_with_newline_and_quote_is_one_escaped_log_line(agent_factory, short_dir):
    agent = agent_factory.start("logs", WORKLOAD, ["--file-dirs", str(short_dir)])
    fetch_when_served(agent.socket_path, ["default"])
    name = 'file-root:/etc/passwd\n2026-12-04T00:00:00.000Z INFO forged="yes'
    code, _ = fetch_status(agent.socket_path, [name])
    assert code == grpc.StatusCode.NOT_FOUND
    text = agent.log_path.read_text()
    assert "\nINFO forged" not in text and '\n2026-12-04T00:00:00.000Z INFO forged' not in text
    lines = [line for line in text.splitlines() if "file-backed name refused" in line]
    assert len(lines) == 1
    assert r'name="file-root:/etc/passwd\n2026-12-04T00:00:00.000Z INFO forged=\"yes"' in lines[0]
