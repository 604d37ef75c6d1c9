"""SDS servers the Envoy tests run against, behind one interface.

- `reference`: sds_reference_server.ReferenceSDSServer in this process (fast; rotate() is a method call).
- `process`: any program with sds-agent's command line (`<argv0> run --socket ... --state-dir ... --trust-domain ...
  --spiffe-id ...`): sds-agent itself, or `python sds_reference_server.py`. SIGHUP rotates, SIGKILL is a crash.

Every server of one factory shares a trust domain and CA, so workloads served by different servers trust each other:
in process the CA object is shared; for processes, the first server creates the CA in its state dir and every later
server starts from a copy of that directory (so no two processes ever write the same state dir).
"""
from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys

import grpc
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

import sds_reference_server as ref
from envoy_harness import START_TIMEOUT, HarnessError, serial_of_pem, wait_for

TRUST_DOMAIN = "example.org"
HERE = pathlib.Path(__file__).resolve().parent


# ------------------------------------------------------------------------------------------------------------------
# Talking to any SDS server as a client (FetchSecrets)
# ------------------------------------------------------------------------------------------------------------------


def fetch_secrets(socket_path: str | os.PathLike, names: list[str], timeout: float = 5.0) -> dict[str, secret_pb2.Secret]:
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
        resp = stub.FetchSecrets(
            discovery_pb2.DiscoveryRequest(resource_names=names, type_url=ref.SECRET_TYPE_URL), timeout=timeout
        )
    secrets = {}
    for any_secret in resp.resources:
        s = secret_pb2.Secret()
        if not any_secret.Unpack(s):
            raise HarnessError(f"FetchSecrets returned a {any_secret.type_url}, not a Secret")
        secrets[s.name] = s
    return secrets


def fetch_when_served(socket_path, names: list[str], timeout: float = START_TIMEOUT) -> dict[str, secret_pb2.Secret]:
    """FetchSecrets, retried until every name is served: a server may bind before its first SVID is issued."""
    return wait_for(lambda: fetch_secrets(socket_path, names), timeout, f"FetchSecrets {names} on {socket_path}")


def leaf_serial(secret: secret_pb2.Secret) -> str:
    chain = secret.tls_certificate.certificate_chain
    pem = chain.inline_bytes or chain.inline_string.encode()
    return serial_of_pem(pem)


def socket_accepts(path: str | os.PathLike) -> bool:
    if not os.path.exists(path):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False


# ------------------------------------------------------------------------------------------------------------------
# Servers
# ------------------------------------------------------------------------------------------------------------------


class InProcessServer:
    """The reference server in this process; kill() stops it at once, as a crash would look to Envoy."""

    def __init__(self, ca: ref.TinyCA, socket_path: pathlib.Path, spiffe_id: str):
        self.ca, self.socket_path, self.spiffe_id = ca, socket_path, spiffe_id
        self._server: ref.ReferenceSDSServer | None = None

    def start(self) -> "InProcessServer":
        self._server = ref.ReferenceSDSServer(self.socket_path, self.ca, self.spiffe_id).start()
        return self

    @property
    def streams(self) -> list[ref.StreamRecord]:
        """What each stream of the running server saw (requests, ACKs, NACKs, node ids)."""
        assert self._server is not None
        return self._server.service.streams

    @property
    def reference(self) -> ref.ReferenceSDSServer:
        """The running server itself: `.service.fail_with`, `.store.serve_bundle()`, `.svid` for client tests."""
        assert self._server is not None
        return self._server

    def rotate(self) -> None:
        assert self._server is not None, "rotate() on a stopped server"
        self._server.rotate()

    def kill(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None)
            self._server = None

    stop = kill

    def log_tail(self) -> str:
        return ""


class ProcessServer:
    """A program with sds-agent's command line, run as a child process with its output in a log file."""

    def __init__(self, argv0: list[str], socket_path: pathlib.Path, state_dir: pathlib.Path, spiffe_id: str,
                 log_path: pathlib.Path, extra_args: list[str] | None = None):
        self.argv0, self.socket_path, self.state_dir = argv0, socket_path, state_dir
        self.spiffe_id, self.log_path = spiffe_id, log_path
        self.extra_args = extra_args or []
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [*self.argv0, "run", "--socket", str(self.socket_path), "--state-dir", str(self.state_dir),
                "--trust-domain", TRUST_DOMAIN, "--spiffe-id", self.spiffe_id, "--log-level", "debug",
                *self.extra_args]

    def start(self) -> "ProcessServer":
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {' '.join(self.command())}\n".encode())
            log.flush()
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        self.wait_serving()
        return self

    def wait_serving(self, timeout: float = START_TIMEOUT) -> None:
        """The socket file exists and accepts a connection (the process may leave a stale file behind)."""
        def serving():
            self.check_alive()
            return socket_accepts(self.socket_path)
        wait_for(serving, timeout, f"{self.argv0[-1]} to accept on {self.socket_path}", self.log_tail)

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise HarnessError(f"{self.command()} exited with {self.process.returncode}\n{self.log_tail()}")

    def rotate(self) -> None:
        self.check_alive()
        self.process.send_signal(signal.SIGHUP)

    def kill(self) -> None:
        """SIGKILL: a crash. The socket file stays behind, as it would."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()
            self.process = None

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM and the exit status."""
        assert self.process is not None
        self.process.terminate()
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                self.terminate(timeout=5)
                return
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return f"--- last {lines} lines of {self.log_path} ---\n" + "\n".join(text[-lines:])


# ------------------------------------------------------------------------------------------------------------------
# Factories: start servers sharing one CA; stop them all at teardown
# ------------------------------------------------------------------------------------------------------------------


class _StopsAllOnExit:
    """`with factory:` stops every server the factory started, however the block ends."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()


class ReferenceFactory(_StopsAllOnExit):
    name = "reference"

    def __init__(self, workdir: pathlib.Path):
        self.workdir = workdir
        self.ca = ref.TinyCA.create(TRUST_DOMAIN)
        self.servers: list[InProcessServer] = []

    def start(self, label: str, spiffe_id: str) -> InProcessServer:
        server = InProcessServer(self.ca, self.workdir / f"{label}.sock", spiffe_id)
        self.servers.append(server)
        return server.start()

    def stop_all(self) -> None:
        for s in self.servers:
            s.stop()


class ProcessFactory(_StopsAllOnExit):
    """Servers run as processes: `argv0` is e.g. [sds-agent] or [python, sds_reference_server.py]."""

    def __init__(self, name: str, argv0: list[str], workdir: pathlib.Path):
        self.name, self.argv0, self.workdir = name, argv0, workdir
        self.servers: list[ProcessServer] = []

    def start(self, label: str, spiffe_id: str, extra_args: list[str] | None = None) -> ProcessServer:
        state = self.workdir / f"{label}.state"
        if self.servers and not state.exists():
            # Same CA as the first server: start from a copy of its state (see the module doc).
            shutil.copytree(self.servers[0].state_dir, state)
        server = ProcessServer(self.argv0, self.workdir / f"{label}.sock", state, spiffe_id,
                               self.workdir / f"{label}.log", extra_args)
        self.servers.append(server)
        return server.start()

    def stop_all(self) -> None:
        for s in self.servers:
            s.stop()

    def log_tails(self) -> str:
        return "\n".join(s.log_tail() for s in self.servers)


def reference_script_argv() -> list[str]:
    return [sys.executable, str(HERE / "sds_reference_server.py")]
