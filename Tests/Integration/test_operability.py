"""Operability of sds-agent against real peers: gRPC health (grpcio-health-checking's client), `sds-agent
healthcheck`, the HTTP status listener (curl, raw sockets), and a real Prometheus scraping `/metrics`.

    states:  serving (local CA)  |  issuer never delivered (a silent upstream)  |  no agent (no socket)
    health:  SERVING / exit 0    |  NOT_SERVING / exit 1                        |  exit 1
    /live:   200                 |  200                                         |  connection refused
    /ready:  200                 |  503                                         |  connection refused

The command line assumed: `sds-agent run ... --status-addr 127.0.0.1:PORT` and `sds-agent healthcheck --socket S`.
Prometheus is Debian's `prometheus` package (`make deps`); it runs on loopback with random free ports, bounded in time.
"""
from __future__ import annotations

import datetime
import json
import os
import pathlib
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from envoy_harness import wait_for
from sds_servers import TRUST_DOMAIN, ProcessFactory, fetch_when_served
from test_upstream_workload_api import SilentUpstream

WORKLOAD_ID = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/ops"
SDS_SERVICE = "envoy.service.secret.v3.SecretDiscoveryService"
RUN_TIMEOUT = 15.0  # any one command here; a hang fails the test instead of stalling the suite
CONNECTION_TIMEOUT = 5.0  # StatusLimits.defaultConnectionTimeout
MAX_CONNECTIONS = 16  # StatusLimits.defaultMaxConnections


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_agent(factory: ProcessFactory, extra: list[str] | None = None):
    port = free_port()
    agent = factory.start("agent", WORKLOAD_ID, ["--status-addr", f"127.0.0.1:{port}", *(extra or [])])
    agent.status_port = port
    return agent


@pytest.fixture
def factory(sds_agent_bin, short_dir):
    f = ProcessFactory("agent", [str(sds_agent_bin)], short_dir)
    try:
        yield f
    finally:
        f.stop_all()


@pytest.fixture
def serving_agent(factory):
    agent = start_agent(factory)
    fetch_when_served(agent.socket_path, ["default"])
    return agent


@pytest.fixture
def undelivered_agent(factory, short_dir):
    """An agent whose issuer never delivers: its upstream accepts and never answers."""
    silent = SilentUpstream(str(short_dir / "upstream.sock"))
    try:
        agent = start_agent(factory, ["--issuer", "workload-api", "--upstream-socket", f"unix://{silent.socket_path}"])
        wait_for(lambda: silent.counts()[0] >= 1, 10, "sds-agent to dial the silent upstream", agent.log_tail)
        yield agent
    finally:
        silent.stop()


def healthcheck(sds_agent_bin, socket_path) -> subprocess.CompletedProcess:
    return subprocess.run([str(sds_agent_bin), "healthcheck", "--socket", str(socket_path)], capture_output=True,
                          text=True, timeout=RUN_TIMEOUT)


def grpc_health(socket_path, service: str = "") -> int:
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def curl(port: int, path: str, *extra: str) -> tuple[int, str]:
    """(HTTP status, body) as curl reports them; status 0 when curl could not connect."""
    run = subprocess.run(["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "5", *extra,
                          f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, timeout=RUN_TIMEOUT)
    body, _, code = run.stdout.rpartition("\n")
    return int(code or 0), body


def one_line(text: str) -> bool:
    return text.endswith("\n") and text.count("\n") == 1


# ------------------------------------------------------------------------------------------------------------------
# The three states
# ------------------------------------------------------------------------------------------------------------------

def test_serving_agent_is_healthy_to_grpcio_healthcheck_and_curl(sds_agent_bin, serving_agent):
    assert grpc_health(serving_agent.socket_path) == health_pb2.HealthCheckResponse.SERVING
    assert grpc_health(serving_agent.socket_path, SDS_SERVICE) == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as unknown:
        grpc_health(serving_agent.socket_path, "no.such.Service")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

    run = healthcheck(sds_agent_bin, serving_agent.socket_path)
    assert run.returncode == 0, run
    assert one_line(run.stdout) and "SERVING" in run.stdout and run.stderr == "", run

    assert curl(serving_agent.status_port, "/live")[0] == 200
    assert curl(serving_agent.status_port, "/ready")[0] == 200
    assert curl(serving_agent.status_port, "/ready", "-I")[0] == 200  # HEAD
    assert curl(serving_agent.status_port, "/nope")[0] == 404
    assert curl(serving_agent.status_port, "/live", "-X", "DELETE")[0] == 405


def test_watch_streams_the_current_status(serving_agent):
    with grpc.insecure_channel(f"unix:{serving_agent.socket_path}") as channel:
        responses = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert next(responses).status == health_pb2.HealthCheckResponse.SERVING
        responses.cancel()


def test_agent_whose_issuer_never_delivered_is_not_healthy(sds_agent_bin, undelivered_agent):
    assert grpc_health(undelivered_agent.socket_path) == health_pb2.HealthCheckResponse.NOT_SERVING

    run = healthcheck(sds_agent_bin, undelivered_agent.socket_path)
    assert run.returncode == 1, run
    assert one_line(run.stderr) and "NOT_SERVING" in run.stderr and run.stdout == "", run

    assert curl(undelivered_agent.status_port, "/live")[0] == 200, "alive: the loop answers"
    assert curl(undelivered_agent.status_port, "/ready")[0] == 503, "not ready: no SVID"
    code, body = curl(undelivered_agent.status_port, "/metrics")
    assert code == 200 and "\nsds_agent_serving 0\n" in body


def test_no_socket_is_not_healthy(sds_agent_bin, short_dir):
    missing = short_dir / "no-agent.sock"
    run = healthcheck(sds_agent_bin, missing)
    assert run.returncode == 1, run
    assert one_line(run.stderr) and "cannot connect" in run.stderr and str(missing) in run.stderr, run
    # Nothing listens: curl cannot connect (its status 000), which is what a probe sees.
    assert curl(free_port(), "/live")[0] == 0


def test_healthcheck_flags(sds_agent_bin):
    run = subprocess.run([str(sds_agent_bin), "healthcheck", "--bogus"], capture_output=True, text=True,
                         timeout=RUN_TIMEOUT)
    assert run.returncode == 2 and one_line(run.stderr) and "--bogus" in run.stderr, run


# ------------------------------------------------------------------------------------------------------------------
# Hostile HTTP clients: a 400 (or 431) and a close, never a hang; the caps hold
# ------------------------------------------------------------------------------------------------------------------

def raw_exchange(port: int, payload: bytes, timeout: float = CONNECTION_TIMEOUT + 3) -> tuple[bytes, float]:
    """Sends `payload`, reads until the agent closes; returns (bytes read, seconds until the close)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(payload)
        except OSError:
            pass  # the agent may close before taking everything (oversized input)
        received = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    return received, time.monotonic() - started


@pytest.mark.parametrize("payload, status", [
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64 + b"\r\n\r\n", b"400"),  # TLS to a plain port
    (b"GET /live HTTP/1.1\r\nBad Header\r\n\r\n", b"400"),
    (b"GET /live HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", b"431"),  # oversized head
    (b"POST /live HTTP/1.1\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000, b"413"),
    (b"GET /live HTTP/3.0\r\n\r\n", b"505"),
])
def test_malformed_or_oversized_request_gets_an_error_and_a_close(serving_agent, payload, status):
    received, seconds = raw_exchange(serving_agent.status_port, payload)
    assert received.startswith(b"HTTP/1.1 " + status), received[:200]
    assert seconds < CONNECTION_TIMEOUT, "answered at once, not at the connection timeout"
    assert curl(serving_agent.status_port, "/live")[0] == 200, "the listener still serves"


def test_slowloris_is_cut_at_the_connection_timeout_and_the_cap_turns_extras_away(serving_agent):
    port = serving_agent.status_port
    held = []
    try:
        # Fill the cap with clients that trickle an unfinished head.
        for _ in range(MAX_CONNECTIONS):
            s = socket.create_connection(("127.0.0.1", port), timeout=CONNECTION_TIMEOUT + 5)
            s.sendall(b"GET /live HTTP/1.1\r\nX-Slow: ")
            held.append(s)
        opened = time.monotonic()
        # One more never waits: it is closed at once, or — when the agent had not yet read a byte from one of the
        # slow clients, which then counts as silent and gives up its place — answered at once.
        received, seconds = raw_exchange(port, b"GET /live HTTP/1.1\r\n\r\n", timeout=3)
        assert seconds < 2, (received, seconds)
        assert received == b"" or received.startswith(b"HTTP/1.1 200 OK\r\n"), received
        # Trickling does not extend the deadline: one more byte per second, and the agent still closes each one.
        for s in held:
            s.setblocking(False)
        deadline = opened + CONNECTION_TIMEOUT + 5
        open_ones = set(range(len(held)))
        while open_ones and time.monotonic() < deadline:
            for i in list(open_ones):
                try:
                    held[i].send(b"a")
                    if held[i].recv(1) == b"":
                        open_ones.discard(i)
                except BlockingIOError:
                    pass
                except OSError:
                    open_ones.discard(i)
            time.sleep(0.2)
        assert not open_ones, f"{len(open_ones)} slow connections still open {CONNECTION_TIMEOUT + 5} s after opening"
        assert time.monotonic() - opened >= CONNECTION_TIMEOUT - 0.5, "cut at the timeout, not before"
        assert curl(port, "/ready")[0] == 200, "serving again once the slow clients are gone"
    finally:
        for s in held:
            s.close()


# ------------------------------------------------------------------------------------------------------------------
# A real Prometheus scrapes the agent
# ------------------------------------------------------------------------------------------------------------------

class Prometheus:
    """Debian's prometheus on loopback, scraping one target every second; stopped (bounded) at exit."""

    def __init__(self, workdir: pathlib.Path, target_port: int):
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus missing: `make deps` installs Debian's prometheus package")
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: sds-agent\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{target_port}']\n")
        self.log_path = workdir / "prometheus.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])

    def query(self, expression: str) -> list[dict]:
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.process.returncode}\n{self.log_tail()}")
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def value(self, expression: str) -> float | None:
        result = self.query(expression)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def dump_not_after(sds_dump_bin, socket_path) -> int:
    run = subprocess.run([str(sds_dump_bin), "--socket", str(socket_path), "--fetch", "--json", "default"],
                         capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert run.returncode == 0, run
    text = json.loads(run.stdout.splitlines()[0])["secrets"][0]["certificates"][0]["not_after"]
    return int(datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


def test_prometheus_scrapes_expiry_and_rotations(sds_agent_bin, sds_dump_bin, serving_agent, short_dir):
    prometheus = Prometheus(short_dir, serving_agent.status_port)
    try:
        expiry = 'sds_agent_certificate_expiry_timestamp_seconds{secret="default"}'
        scraped = wait_for(lambda: prometheus.value(expiry), 30, "Prometheus to scrape the agent", prometheus.log_tail)
        assert prometheus.value('up{job="sds-agent"}') == 1.0
        assert int(scraped) == dump_not_after(sds_dump_bin, serving_agent.socket_path)

        rotations = "sum(sds_agent_rotations_total)"
        before = wait_for(lambda: prometheus.value(rotations), 10, "the rotation counter", prometheus.log_tail)
        serving_agent.rotate()  # SIGHUP
        wait_for(lambda: (prometheus.value(rotations) or 0) > before, 15, "the rotation counter to rise",
                 prometheus.log_tail)
        assert prometheus.value('sds_agent_rotations_total{reason="signal"}') >= 1
        # The new certificate's expiry is what Prometheus now holds.
        new_not_after = dump_not_after(sds_dump_bin, serving_agent.socket_path)
        wait_for(lambda: prometheus.value(expiry) == new_not_after, 10, "the new expiry", prometheus.log_tail)
    finally:
        prometheus.stop()


def test_promtool_finds_nothing_in_the_exposition(serving_agent):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool missing: `make deps` installs Debian's prometheus package")
    serving_agent.rotate()  # a counter above zero and a last-rotation timestamp, so every family has samples
    code, body = curl(serving_agent.status_port, "/metrics")
    assert code == 200
    for family in ("sds_agent_build_info", "sds_agent_certificate_expiry_timestamp_seconds",
                   "sds_agent_root_expiry_timestamp_seconds", "sds_agent_rotations_total", "sds_agent_issuer_up",
                   "sds_agent_connections", "sds_agent_streams", "sds_agent_pushes_total", "sds_agent_refusals_total"):
        assert f"\n{family}" in body, f"{family} missing:\n{body}"
    run = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, text=True,
                         timeout=RUN_TIMEOUT)
    assert run.returncode == 0 and run.stdout == "" and run.stderr == "", run


def test_status_listener_is_off_by_default(factory):
    agent = factory.start("agent", WORKLOAD_ID)
    fetch_when_served(agent.socket_path, ["default"])
    listening = subprocess.run(["cat", f"/proc/{agent.process.pid}/net/tcp", f"/proc/{agent.process.pid}/net/tcp6"],
                               capture_output=True, text=True, timeout=RUN_TIMEOUT).stdout
    inodes = {line.split()[9] for line in listening.splitlines()[1:] if len(line.split()) > 9
              and line.split()[3] == "0A"}  # 0A: LISTEN
    fds = pathlib.Path(f"/proc/{agent.process.pid}/fd")
    ours = {str(p.readlink()) for p in fds.iterdir()}
    assert not any(f"socket:[{inode}]" in ours for inode in inodes), "no TCP listener without --status-addr"


def test_status_port_taken_fails_the_start_and_leaves_no_socket(sds_agent_bin, short_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        socket_path = short_dir / "s.sock"
        run = subprocess.run([str(sds_agent_bin), "run", "--socket", str(socket_path), "--state-dir",
                              str(short_dir / "state"), "--trust-domain", TRUST_DOMAIN, "--status-addr",
                              f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert run.returncode == 1, run
    assert "--status-addr" in run.stderr and "in use" in run.stderr, run.stderr
    assert not socket_path.exists(), "the SDS socket it bound is removed again"


def test_bad_status_address_is_a_usage_error(sds_agent_bin, short_dir):
    run = subprocess.run([str(sds_agent_bin), "run", "--socket", str(short_dir / "s.sock"), "--status-addr",
                          "example.org:80"], capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert run.returncode == 2 and one_line(run.stderr) and "--status-addr" in run.stderr, run


def test_file_cert_expiry_is_exported_while_served(factory, short_dir):
    """A `file-cert:` name's certificate expiry is a served certificate's: exported by name while a stream holds it."""
    from spiffe_test_ca import SpiffeRoot, organization, pem_cert, pem_key
    from sds_client import SecretStream

    ca = SpiffeRoot.create("files.example", organization("file CA"), datetime.timedelta(days=1),
                           datetime.timedelta(minutes=1))
    cert, key = ca.issue("spiffe://files.example/gw", organization("gw"), datetime.timedelta(days=1),
                         datetime.timedelta(minutes=1))
    certs = short_dir / "certs"
    certs.mkdir()
    (certs / "cert.pem").write_bytes(pem_cert(cert))
    (certs / "key.pem").write_bytes(pem_key(key))
    agent = start_agent(factory, ["--file-dirs", str(certs)])
    name = f"file-cert:{certs}/cert.pem~{certs}/key.pem"
    stream = SecretStream(agent.socket_path, delta=True)
    try:
        stream.send(resource_names_subscribe=[name])
        assert [r.name for r in stream.recv().resources] == [name]
        expected = f'sds_agent_certificate_expiry_timestamp_seconds{{secret="{name}"}} ' \
                   f'{int(cert.not_valid_after_utc.timestamp())}\n'
        assert expected in curl(agent.status_port, "/metrics")[1]
    finally:
        stream.close()


def metric(port: int, sample: str) -> float | None:
    """The value of one exposition line starting with `sample ` (name and labels exactly as exposed)."""
    for line in curl(port, "/metrics")[1].splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return None


def test_states_follow_the_issuer_watch_probe_ready_and_metrics(sds_agent_bin, factory, short_dir):
    """An upstream that refuses (no identity), then delivers: Watch hears NOT_SERVING then SERVING, healthcheck goes
    1 -> 0, /ready 503 -> 200; the refusal is counted as an issuance failure and the issuer is down meanwhile."""
    from workload_api_server import WorkloadAPIServer

    upstream = WorkloadAPIServer(str(short_dir / "upstream.sock"), WORKLOAD_ID).start()
    try:
        upstream.set_has_identity(False)
        agent = start_agent(factory, ["--issuer", "workload-api", "--upstream-socket",
                                      f"unix://{upstream.socket_path}"])
        port = agent.status_port
        failures = 'sds_agent_issuance_failures_total{issuer="workload-api",reason="permission_denied"}'
        wait_for(lambda: (metric(port, failures) or 0) >= 1, 15, "the refusal to be counted", agent.log_tail)
        assert metric(port, "sds_agent_issuer_up") == 0
        assert healthcheck(sds_agent_bin, agent.socket_path).returncode == 1
        assert curl(port, "/ready")[0] == 503

        with grpc.insecure_channel(f"unix:{agent.socket_path}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=60)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            upstream.set_has_identity(True)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING, "the change is pushed"
            watch.cancel()
        run = healthcheck(sds_agent_bin, agent.socket_path)
        assert run.returncode == 0 and one_line(run.stdout), run
        assert curl(port, "/ready")[0] == 200
        assert metric(port, "sds_agent_issuer_up") == 1
        assert metric(port, 'sds_agent_rotations_total{reason="upstream"}') >= 1
    finally:
        upstream.stop()


def cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_status_listener_without_descriptors_does_not_spin_and_recovers(sds_agent_bin, short_dir):
    """Out of descriptors (RLIMIT_NOFILE 32, SDS connections holding them), a status connection waits in the backlog:
    the listener backs off instead of retrying accept on every wakeup (CPU stays low), and answers once descriptors
    are free again."""
    import resource

    port = free_port()
    log_path = short_dir / "agent.log"
    socket_path = short_dir / "s.sock"
    with open(log_path, "wb") as log:
        agent = subprocess.Popen(
            [str(sds_agent_bin), "run", "--socket", str(socket_path), "--state-dir", str(short_dir / "state"),
             "--trust-domain", TRUST_DOMAIN, "--status-addr", f"127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32)))
    held = []
    try:
        fetch_when_served(socket_path, ["default"])
        for _ in range(40):  # more than the agent has descriptors for
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(socket_path))
            held.append(s)
        waiting = socket.create_connection(("127.0.0.1", port), timeout=10)  # completes in the kernel's backlog
        waiting.sendall(b"GET /live HTTP/1.1\r\n\r\n")
        time.sleep(0.5)  # let the agent meet EMFILE on both listeners
        before = cpu_seconds(agent.pid)
        time.sleep(3)
        used = cpu_seconds(agent.pid) - before
        assert used < 0.3, f"{used:.2f} s of CPU in 3 s without descriptors: the listener spins"
        for s in held:
            s.close()
        held.clear()
        waiting.settimeout(10)
        assert waiting.recv(64).startswith(b"HTTP/1.1 200"), "the waiting request is answered once descriptors free"
        waiting.close()
        assert curl(port, "/live")[0] == 200
    finally:
        for s in held:
            s.close()
        agent.terminate()
        try:
            agent.wait(timeout=10)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
