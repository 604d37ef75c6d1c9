#!/usr/bin/env python3
"""`make bench`: measures sds-agent beside its floors, measured in the same run, and writes the whole run to one file.

Drives three release binaries (built by `make bench`):
  sds-agent  the product, on the local CA, over a Unix socket in a temp dir;
  sds-bench  our load client (the H2/GRPC client modules) and the issuance benchmark;
  sds-floor  the floors: the same C libraries with the static Swift stdlib and none of our code, doing the least any
             implementation must (idle; nghttp2's own per-stream state; N writes of one encoded response; exec + one
             P-256 signature).
Then Tests/Bench/istiod_bench.py (`--issuer istiod`, the venv's Python: $SDS_PYTHON, else ./.venv/bin/python), whose
JSON lines join this run's.

Prints one JSON object per metric as it is measured ({"name", "value", "unit", "goal", "goal_op", "floor",
"floor_name", "details"}), the idle RSS and per-stream breakdowns, then one table of every metric; writes the run
(metrics, machine, load, commit) to --out (default .build/bench/bench.json). --compare OLD.json then prints the ratio
of each metric against a saved run (Tests/Bench/compare.py).

Every wait is bounded. SDS uses only the Unix socket; the agent also runs its HTTP status listener on a loopback
port (--status-addr), scraped once before idle RSS is measured, so that figure includes it. Agent figures come from
/proc/<pid>.
Environment: SDS_BENCH_IDLE_SECONDS (default 60) shortens the idle-CPU window for a quick try.
"""

import argparse
import datetime
import json
import math
import os
import platform
import re
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402
import rss_breakdown  # noqa: E402
from cpu_profile import Profile  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".build" / "release"
AGENT = BIN / "sds-agent"
CLIENT = BIN / "sds-bench"
FLOOR = BIN / "sds-floor"
TRUST_DOMAIN = "example.org"
STREAMS_PER_CONNECTION = 100  # the agent advertises 128 concurrent streams per connection
IDLE_SECONDS = float(os.environ.get("SDS_BENCH_IDLE_SECONDS", "60"))
CLK_TCK = os.sysconf("SC_CLK_TCK")
ISTIOD_TIMEOUT = 900  # seconds for all of istiod_bench.py

# The goals (issue #23): met when `value goal_op goal`. They apply to istiod_bench.py's rows too.
GOALS = {
    "rss_idle_kb": (8 * 1024, "<="),
    "rss_all_features_kb": (8 * 1024, "<="),
    "istiod_idle_rss_kb": (8 * 1024, "<="),
    "rss_per_stream_bytes": (2048, "<="),
    "push_all_ms_1000": (5, "<="),
    "push_all_ms_10000": (30, "<="),
    "first_secret_ms": (3, "<="),
    "istiod_loop_stall_rsa": (2, "<"),
    "issue_per_s": (1000, ">="),
    "idle_cpu_ms_per_min": (0, "<="),
    "info_lines_per_rotation": (1, "<="),
}

metrics = []


def emit(name, value, unit, floor=None, floor_name=None, **details):
    """Records and prints one metric; its goal comes from GOALS."""
    record = {"name": name, "value": value, "unit": unit}
    if name in GOALS:
        record["goal"], record["goal_op"] = GOALS[name]
    if floor is not None:
        record["floor"], record["floor_name"] = floor, floor_name
    if details:
        record["details"] = details
    metrics.append(record)
    print(json.dumps(record), flush=True)


def log(message):
    print(f"# {message}", file=sys.stderr, flush=True)


# ---- /proc readings ----------------------------------------------------------------------------------------------


def status_field(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def rss_kb(pid):
    return status_field(pid, "VmRSS")


def uncache(binary):
    """Drops `binary`'s pages from the page cache (those no process maps), so that the process started next reads it
    from disk as on a fresh node. An idle RSS depends on it: the kernel maps up to 64 KiB of the file around each
    page fault, but only pages already cached, and how a file came into the cache (linked just now, copied, read
    ahead) decides which are. The same binary measured 6,856 kB idle read from disk and 7,104 kB just after `cp`."""
    fd = os.open(binary, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def rss_split(pid):
    """VmRSS split into anonymous (heap, stacks, dirtied data) and file-backed (binary and library pages) kB."""
    return {"anon_kb": status_field(pid, "RssAnon"), "file_kb": status_field(pid, "RssFile")}


def cpu_ticks(pid):
    """utime + stime of every thread, in clock ticks (fields 14 and 15 of /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def tasks(pid):
    return os.listdir(f"/proc/{pid}/task")


def cpu_ns(pid):
    """Exact CPU time of every thread (first field of schedstat), in ns: ticks are 10 ms coarse."""
    total = 0
    for tid in tasks(pid):
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            total += int(f.read().split()[0])
    return total


def context_switches(pid):
    """(voluntary, involuntary) over every thread: each voluntary switch is a sleep-and-wake of the process."""
    voluntary = involuntary = 0
    for tid in tasks(pid):
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches:"):
                    voluntary += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches:"):
                    involuntary += int(line.split()[1])
    return voluntary, involuntary


# ---- processes ---------------------------------------------------------------------------------------------------


class Agent:
    def __init__(self, workdir, state_dir, extra=()):
        self.socket = os.path.join(workdir, "sds.sock")
        self.log_path = os.path.join(workdir, "agent.log")
        self.args = [str(AGENT), "run", "--socket", self.socket, "--state-dir", state_dir,
                     "--trust-domain", TRUST_DOMAIN, *extra]
        self.process = None

    def start(self, wait=True):
        """Spawns the agent; returns time.time_ns() taken just before the spawn."""
        self.log_file = open(self.log_path, "ab")
        started = time.time_ns()
        self.process = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=self.log_file,
                                        stderr=self.log_file)
        if wait:
            deadline = time.monotonic() + 10
            while not os.path.exists(self.socket):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"agent did not create its socket; see {self.log_path}")
                time.sleep(0.005)
        return started

    @property
    def pid(self):
        return self.process.pid

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.log_file.close()


def read_json_line(process, timeout, what):
    """The next stdout line of `process` as JSON, within `timeout` seconds."""
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        raise RuntimeError(f"{what}: no answer within {timeout} s")
    line = process.stdout.readline()
    if not line:
        err = process.stderr.read() if process.poll() is not None else ""
        raise RuntimeError(f"{what}: client exited ({process.poll()}): {err.strip()}")
    return json.loads(line)


class Client:
    """An `sds-bench hold` process: N streams over ceil(N/100) connections, ACKing like Envoy."""

    def __init__(self, socket_path, streams, names="default", connections=None):
        if connections is None:
            connections = max(1, math.ceil(streams / STREAMS_PER_CONNECTION))
        self.streams = streams
        self.process = subprocess.Popen(
            [str(CLIENT), "hold", "--socket", socket_path, "--streams", str(streams), "--connections",
             str(connections), "--names", names, "--timeout", "60"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        self.ready = read_json_line(self.process, 90, f"hold {streams}")
        assert self.ready["event"] == "ready", self.ready

    def command(self, text, timeout=90):
        try:
            self.process.stdin.write(text + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            code = self.process.wait(timeout=10)
            how = f"was killed by signal {-code} (not sent by bench.py)" if code < 0 else f"exited ({code})"
            raise RuntimeError(f"{text}: the load client {how}: {self.process.stderr.read().strip()}") from None
        return read_json_line(self.process, timeout, text)

    def push(self, agent_pid):
        return self.command(f"push {agent_pid}")

    def cpu_ms(self):
        return self.command("stats")["client_cpu_ms"]

    def close(self):
        try:
            self.process.stdin.write("quit\n")
            self.process.stdin.flush()
            self.process.wait(timeout=10)
        except (BrokenPipeError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait(timeout=10)


# ---- measurements ------------------------------------------------------------------------------------------------


def measure_issuance():
    out = subprocess.run([str(CLIENT), "issue", "--count", "5000"], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    ours = json.loads(out)
    speed = subprocess.run(["openssl", "speed", "-seconds", "3", "ecdsap256"], capture_output=True, text=True,
                           timeout=120, check=True).stdout
    match = re.search(r"256 bits ecdsa \(nistp256\)\s+\S+s\s+\S+s\s+([\d.]+)\s+([\d.]+)", speed)
    sign_per_s = float(match.group(1)) if match else None
    emit("issue_per_s", round(ours["svids_per_s"]), "SVIDs/s", floor=sign_per_s,
         floor_name="openssl speed ecdsap256 sign/s (a ceiling: an SVID is a key and a signature)",
         count=ours["count"], seconds=round(ours["seconds"], 4))


def measure_jwt_minting():
    out = subprocess.run([str(CLIENT), "jwt", "--count", "5000"], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    ours = json.loads(out)
    emit("jwt_mint_per_s", round(ours["tokens_per_s"]), "JWT-SVIDs/s", count=ours["count"],
         seconds=round(ours["seconds"], 4), token_bytes=ours["token_bytes"])


# ---- floors (sds-floor) ------------------------------------------------------------------------------------------


def floor_json(*args, timeout=120):
    """One run of `sds-floor <args>` that prints one JSON line."""
    out = subprocess.run([str(FLOOR), *args], capture_output=True, text=True, timeout=timeout, check=True).stdout
    return json.loads(out)


def measure_idle_floor():
    """sds-floor idle: its VmRSS, anon/file split and resident-memory breakdown."""
    uncache(FLOOR)
    process = subprocess.Popen([str(FLOOR)], stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([process.stdout], [], [], 10)
        if not ready or process.stdout.readline().strip() != "ready":
            raise RuntimeError("sds-floor did not start")
        # "ready" comes just before pause(): once it has used no CPU for a while, it is blocked there for good and
        # its RSS no longer changes (reading at once can miss the fault-around block of pause()'s own code).
        wait_until_idle(process.pid)
        return rss_kb(process.pid), rss_split(process.pid), rss_breakdown.breakdown(process.pid, FLOOR)
    finally:
        process.kill()
        process.wait(timeout=10)


def measure_first_floor(runs):
    """Spawn -> `sds-floor first` wrote its line (exec, static init, one P-256 key and signature), as the agent's."""
    samples = []
    for _ in range(runs):
        started = time.time_ns()
        process = subprocess.Popen([str(FLOOR), "first"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = read_json_line(process, 10, "sds-floor first")
            samples.append((line["written_realtime_ns"] - started) / 1e6)
        finally:
            process.wait(timeout=10)
    return samples


# ---- the agent ---------------------------------------------------------------------------------------------------


def wait_until_idle(pid, quiet_s=0.25, timeout=10):
    """Returns once `pid` has used no CPU for `quiet_s` (it has processed what was sent to it), or after `timeout`."""
    deadline = time.monotonic() + timeout
    last, quiet_since = cpu_ns(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = cpu_ns(pid)
        if now != last:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return True
    log(f"process {pid} still busy after {timeout} s")
    return False


def measure_all_features(workdir, state_dir, floor_idle_kb):
    """The idle RSS after an agent served everything it can once: Tests/Bench/hot_path_workload.py (grpcio,
    py-spiffe's stubs, grpcio-health-checking, urllib) against the local CA, then 5 s idle. Needs the venv's
    Python (make bench runs this script with it); skipped with a note otherwise."""
    try:
        import hot_path_workload
    except ImportError as error:
        log(f"skipped (needs the venv's Python): {error}")
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        status_port = s.getsockname()[1]
    agent = Agent(workdir, state_dir, extra=("--status-addr", f"127.0.0.1:{status_port}"))
    uncache(AGENT)
    agent.start()
    try:
        hot_path_workload.run(agent.socket, status_port, lambda: os.kill(agent.pid, signal.SIGHUP))
        time.sleep(5)
        kb = rss_kb(agent.pid)
        emit("rss_all_features_kb", kb, "kB", floor=floor_idle_kb,
             floor_name="sds-floor idle (same C libraries + static Swift runtime, no work)",
             agent=rss_split(agent.pid), over_floor_kb=kb - floor_idle_kb)
    finally:
        agent.stop()


def measure_first_secret(workdir, state_dir, runs):
    """Process start -> first `default` DiscoveryResponse at a client already waiting on the socket path."""
    samples = []
    for _ in range(runs):
        agent = Agent(workdir, state_dir)
        waiter = subprocess.Popen([str(CLIENT), "first", "--socket", agent.socket, "--timeout", "15"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            waiting = read_json_line(waiter, 10, "first (waiting)")
            assert waiting["event"] == "waiting", waiting
            started = agent.start(wait=False)
            result = read_json_line(waiter, 20, "first")
            samples.append((result["received_realtime_ns"] - started) / 1e6)
        finally:
            waiter.wait(timeout=10)
            agent.stop()
    return samples


def measure_agent(workdir, state_dir, floor_idle_kb, floor_idle_split, floor_breakdown):
    """Idle RSS, per-stream RSS, idle CPU, info lines and push times, on one agent."""
    log("nghttp2's per-stream floor (sds-floor streams 10000)")
    floor_streams = floor_json("streams", "10000")
    log("push floors (sds-floor fanout 1, 100, 1000, 10000)")
    fanout = {count: floor_json("fanout", str(count)) for count in (1, 100, 1000, 10_000)}

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        status_port = s.getsockname()[1]
    agent = Agent(workdir, state_dir, extra=("--status-addr", f"127.0.0.1:{status_port}"))
    uncache(AGENT)
    agent.start()
    clients = []
    try:
        log("idle RSS: one Envoy-like client (default + ROOTCA), status listener scraped once, 5 s idle")
        envoy_like = Client(agent.socket, streams=2, names="default,ROOTCA", connections=1)
        clients.append(envoy_like)
        with urllib.request.urlopen(f"http://127.0.0.1:{status_port}/metrics", timeout=5) as response:
            response.read()
        time.sleep(5)
        idle_kb, idle_split = rss_kb(agent.pid), rss_split(agent.pid)
        agent_breakdown = rss_breakdown.breakdown(agent.pid, AGENT)
        emit("rss_idle_kb", idle_kb, "kB", floor=floor_idle_kb,
             floor_name="sds-floor idle (same C libraries + static Swift runtime, no work)",
             agent=idle_split, floor_split=floor_idle_split, over_floor_kb=idle_kb - floor_idle_kb,
             breakdown={"agent": agent_breakdown, "floor": floor_breakdown})

        log("10,000 streams over 100 connections")
        many = Client(agent.socket, streams=10_000)
        clients.append(many)
        wait_until_idle(agent.pid)  # every ACK processed
        many_kb, many_split = rss_kb(agent.pid), rss_split(agent.pid)
        per_stream = round((many_kb - idle_kb) * 1024 / 10_000)
        nghttp2_per_stream = round(floor_streams["rss_per_stream_bytes"])
        emit("rss_per_stream_bytes", per_stream, "bytes", floor=nghttp2_per_stream,
             floor_name="sds-floor streams 10000: nghttp2 server sessions alone, 100 streams each, RSS delta / stream",
             rss_at_10000_streams_kb=many_kb, idle_rss_kb=idle_kb, split_at_10000_streams=many_split,
             split_idle=idle_split, connections=many.ready["connections"],
             client_ready_ms=round(many.ready["ready_ms"], 1),
             agent_state_and_allocator_bytes=per_stream - nghttp2_per_stream,
             nghttp2_malloc_bytes_per_stream=round(floor_streams["nghttp2_bytes_per_stream"], 1),
             nghttp2_malloc_bytes_per_session=floor_streams["nghttp2_bytes_per_session"],
             floor_rss_per_stream_excluding_sessions_bytes=round(
                 floor_streams["rss_per_stream_excluding_sessions_bytes"]))

        log(f"idle CPU: {IDLE_SECONDS:.0f} s with 10,002 streams connected, no rotation due")
        ticks0, ns0, (vol0, invol0) = cpu_ticks(agent.pid), cpu_ns(agent.pid), context_switches(agent.pid)
        client0 = many.cpu_ms() + envoy_like.cpu_ms()
        time.sleep(IDLE_SECONDS)
        ticks1, ns1, (vol1, invol1) = cpu_ticks(agent.pid), cpu_ns(agent.pid), context_switches(agent.pid)
        client1 = many.cpu_ms() + envoy_like.cpu_ms()
        scale = 60 / IDLE_SECONDS
        # Each `stats` command is a wakeup caused by us; the agent sees none of them.
        emit("idle_cpu_ms_per_min", round((ticks1 - ticks0) * 1000 / CLK_TCK * scale, 3), "ms/min",
             exact_cpu_ms_per_min=round((ns1 - ns0) / 1e6 * scale, 4),
             voluntary_wakeups=vol1 - vol0, involuntary_switches=invol1 - invol0,
             window_s=IDLE_SECONDS, threads=len(tasks(agent.pid)),
             client_cpu_ms_per_min=round((client1 - client0) * scale, 3))

        log("push_all: SIGHUP -> the last stream holds the new secret (each rotation starting on an idle agent)")
        push_results = {}
        runs = {1: 9, 100: 9, 1000: 15, 10_000: 7}

        def rotations(client, count):
            # Real rotations are an hour apart: each starts once the agent has processed the previous one's ACKs
            # (10,000 of them take it ~30 ms), so that work is not counted as the next push's.
            samples = []
            for _ in range(count):
                wait_until_idle(agent.pid, quiet_s=0.1)
                samples.append(client.push(agent.pid))
            return samples

        info_before = count_info_lines(agent.log_path)
        samples = rotations(many, runs[10_000])
        push_results[10_000] = samples
        # What an on-call engineer reads per rotation at 10,000 streams (per-stream lines are debug).
        emit("info_lines_per_rotation", (count_info_lines(agent.log_path) - info_before) / len(samples), "lines",
             streams=10_000, rotations=len(samples))
        # Back to back, for comparison with runs before the wait was added: each SIGHUP arrives while the previous
        # rotation's ACKs are still being processed.
        back_to_back = {10_000: [many.push(agent.pid)["ms"] for _ in range(3)]}
        # One more rotation, profiled (perf, the loop thread): what runs between the SIGHUP and the last write.
        wait_until_idle(agent.pid, quiet_s=0.1)
        with Profile(agent.pid, thread=agent.pid) as profile:
            many.push(agent.pid)
        push_profile = profile.unavailable or profile.top()
        many.close()
        clients.remove(many)
        for count in (1, 100, 1000):
            client = Client(agent.socket, streams=count)
            clients.append(client)
            push_results[count] = rotations(client, runs[count])
            if count == 1000:
                back_to_back[count] = [client.push(agent.pid)["ms"] for _ in range(5)]
            client.close()
            clients.remove(client)
        for count in (1, 100, 1000, 10_000):
            results = push_results[count]
            times = [r["ms"] for r in results]
            floor = fanout[count]
            emit(f"push_all_ms_{count}", round(statistics.median(times), 3), "ms",
                 floor=round(floor["median_ms"], 3),
                 floor_name=f"sds-floor fanout {count}: one ~2 KB buffer, {count:,} writes over {floor['pairs']} "
                            f"socketpair(s), drained by a thread (median of {len(floor['runs'])})",
                 streams=count, runs=len(times), min=round(min(times), 3), max=round(max(times), 3),
                 client_cpu_ms=round(statistics.median(r["client_cpu_ms"] for r in results), 3),
                 floor_coalesced_ms=round(floor["coalesced_median_ms"], 3),
                 **({"back_to_back_median_ms": round(statistics.median(back_to_back[count]), 3)}
                    if count in back_to_back else {}),
                 **({"profile": push_profile} if count == 10_000 else {}))
    except BaseException:
        log(f"failed; the agent's log ends with:\n{tail(agent.log_path, 20)}")
        raise
    finally:
        for client in clients:
            client.close()
        agent.stop()


def tail(path, count):
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-count:])


# ---- istiod_bench.py ---------------------------------------------------------------------------------------------


def run_istiod_bench():
    """Runs istiod_bench.py with the venv's Python; its metrics join this run's. Returns None or why it did not run."""
    python = os.environ.get("SDS_PYTHON") or str(ROOT / ".venv" / "bin" / "python")
    if not Path(python).exists():
        return f"skipped: no {python} (make venv)"
    process = subprocess.Popen([python, str(ROOT / "Tests" / "Bench" / "istiod_bench.py")], stdout=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + ISTIOD_TIMEOUT
    try:
        while True:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([process.stdout], [], [], max(remaining, 0))
            if not ready:
                return f"failed: no end within {ISTIOD_TIMEOUT} s"
            line = process.stdout.readline()
            if not line:
                break
            if line.startswith("{"):
                record = json.loads(line)
                if record["name"] in GOALS:  # the goals live here, for both scripts
                    record["goal"], record["goal_op"] = GOALS[record["name"]]
                metrics.append(record)
                print(json.dumps(record), flush=True)
        code = process.wait(timeout=10)
        return None if code == 0 else f"failed: exit status {code}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


# ---- the machine -------------------------------------------------------------------------------------------------


def machine_busy_seconds():
    """CPU seconds the whole machine has spent busy (all CPUs, /proc/stat: not idle, not iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def own_cpu_seconds():
    """CPU seconds of this process and every child it has waited for (the agent, clients, floors, istiod bench)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def others_cpu_percent(window=1.0):
    """How busy the rest of the machine is right now: other processes' CPU over `window` s, in % of one CPU."""
    busy0, own0 = machine_busy_seconds(), own_cpu_seconds()
    time.sleep(window)
    return round(max(machine_busy_seconds() - busy0 - (own_cpu_seconds() - own0), 0) / window * 100, 1)


def wait_for_quiet(limit_s, threshold=10.0):
    """Waits up to `limit_s` for a second in which other processes use at most `threshold`% of a CPU; returns the
    last reading (the run goes ahead either way, with the reading in its load record)."""
    deadline = time.monotonic() + limit_s
    while True:
        busy = others_cpu_percent()
        if busy <= threshold or time.monotonic() >= deadline:
            return busy
        log(f"waiting for a quiet machine (up to {limit_s:.0f} s): other processes use {busy}% of a CPU")


def machine_info():
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    try:
        swift = subprocess.run(["swift", "--version"], capture_output=True, text=True, timeout=30).stdout
        swift = swift.strip().splitlines()[0] if swift.strip() else ""
    except (OSError, subprocess.TimeoutExpired):
        swift = ""
    return {"cpus": os.cpu_count(), "cpu_model": model, "arch": platform.machine(), "kernel": platform.release(),
            "mem_total_kb": mem_kb, "swift": swift, "python": platform.python_version(),
            "hostname": platform.node()}


def git_commit():
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


# ---- main --------------------------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / ".build" / "bench" / "bench.json"),
                        help="where the run is written (default .build/bench/bench.json)")
    parser.add_argument("--compare", metavar="OLD.json", help="print the ratio of each metric against a saved run")
    parser.add_argument("--no-istiod", action="store_true", help="skip istiod_bench.py")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="first wait up to SECONDS for other processes to use under 10%% of a CPU")
    options = parser.parse_args()
    old_run = compare.load(options.compare) if options.compare else None
    for binary in (AGENT, CLIENT, FLOOR):
        if not binary.exists():
            sys.exit(f"bench: {binary} is missing; run `make bench` (it builds the release binaries)")

    others_at_start = wait_for_quiet(options.wait_quiet)
    load_at_start = loadavg()
    if others_at_start > 10:
        log(f"the machine is not quiet: other processes use {others_at_start}% of a CPU; timings will carry noise")
    started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    bench_started = time.monotonic()
    busy_start, own_start = machine_busy_seconds(), own_cpu_seconds()
    with tempfile.TemporaryDirectory(prefix="sds-bench-") as workdir:
        state_dir = os.path.join(workdir, "state")

        log("issuance (sds-bench issue, openssl speed)")
        measure_issuance()

        log("JWT-SVID minting (sds-bench jwt)")
        measure_jwt_minting()

        log("RSS floor (sds-floor) and its breakdown")
        floor_kb, floor_split, floor_breakdown = measure_idle_floor()

        measure_agent(workdir, state_dir, floor_kb, floor_split, floor_breakdown)

        log("idle RSS with every served API used once (SDS SotW/Delta/Fetch, Workload API X.509 and JWT, health, "
            "status listener, a rotation)")
        measure_all_features(workdir, state_dir, floor_kb)

        log("first_secret: process start -> first default response (existing CA; then a fresh state dir)")
        floor_first = measure_first_floor(runs=11)
        warm = measure_first_secret(workdir, state_dir, runs=11)
        cold = []
        for i in range(3):
            cold += measure_first_secret(workdir, os.path.join(workdir, f"fresh-{i}"), runs=1)
        emit("first_secret_ms", round(statistics.median(warm), 3), "ms", floor=round(statistics.median(floor_first), 3),
             floor_name="sds-floor first: spawn -> exec, static init, one P-256 key + signature, a line written "
                        "(median of 11)",
             runs=len(warm), min=round(min(warm), 3), max=round(max(warm), 3),
             first_start_creating_ca_ms=round(statistics.median(cold), 3),
             floor_min=round(min(floor_first), 3), floor_max=round(max(floor_first), 3))

    istiod = None
    if not options.no_istiod:
        log("istiod_bench.py (--issuer istiod against the fake istiod)")
        istiod = run_istiod_bench()
        if istiod:
            log(f"istiod_bench.py {istiod}")

    elapsed = time.monotonic() - bench_started
    others = max(machine_busy_seconds() - busy_start - (own_cpu_seconds() - own_start), 0)
    run = {
        "schema": 1,
        "started": started_at,
        "commit": git_commit(),
        "elapsed_s": round(elapsed, 1),
        "machine": machine_info(),
        "load": {"at_start": load_at_start, "at_end": loadavg(), "others_cpu_percent_at_start": others_at_start,
                 "others_cpu_percent": round(others / elapsed * 100, 1)},
        "istiod_bench": istiod or "ok",
        "metrics": metrics,
    }
    out = Path(options.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(run, indent=1) + "\n")

    print_breakdowns()
    print_profiles()
    print_table(run)
    print(f"\nwrote {out}")
    if old_run:
        print(f"\ncompared with {options.compare}:")
        print("\n".join(compare.compare(old_run, run)))


def count_info_lines(path) -> int:
    with open(path, errors="replace") as f:
        return sum(1 for line in f if " INFO " in line)


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def metric(name):
    return next((m for m in metrics if m["name"] == name), None)


def print_breakdowns():
    idle = metric("rss_idle_kb")
    if idle:
        breakdown = idle["details"]["breakdown"]
        print("\nidle RSS, agent beside sds-floor (resident pages, /proc/<pid>/smaps + pagemap)")
        print(rss_breakdown.format_tables(breakdown["agent"], breakdown["floor"], names=("agent", "floor")))
    stream = metric("rss_per_stream_bytes")
    if stream:
        d = stream["details"]
        print("\nRSS per SDS stream, bytes (10,000 streams over 100 connections)")
        print(f"  {'agent, total (RSS delta / 10,000)':<56} {stream['value']:>7,}")
        print(f"  {'- nghttp2 sessions + streams alone (sds-floor streams)':<56} {stream['floor']:>7,}")
        print(f"  {'  (nghttp2 malloc: per stream, + per session / 100)':<56} "
              f"{d['nghttp2_malloc_bytes_per_stream']:>7,.0f} + {d['nghttp2_malloc_bytes_per_session'] / 100:,.0f}")
        print(f"  {'= agent per-stream state + allocator overhead':<56} {d['agent_state_and_allocator_bytes']:>7,}")
        idle_split, split = d["split_idle"], d["split_at_10000_streams"]
        print(f"  agent RSS at 10,000 streams: {d['rss_at_10000_streams_kb']:,} kB = anon {split['anon_kb']:,} kB"
              f" + file {split['file_kb']:,} kB (idle: anon {idle_split['anon_kb']:,} + file "
              f"{idle_split['file_kb']:,})")


def print_profiles():
    for name, title in (("push_all_ms_10000", "a 10,000-stream rotation, the event loop thread (an extra run)"),
                        ("istiod_loop_stall_rsa", "RSA-2048 rotations with --issuer istiod, the event loop thread")):
        m = metric(name)
        profile = m and m.get("details", {}).get("profile")
        if not profile:
            continue
        print(f"\nprofile of {title}: % of the loop's samples in each function (inclusive)")
        if isinstance(profile, str):
            print(f"  not profiled: {profile}")
            continue
        for percent, function in profile:
            print(f"  {percent:5.1f}%  {function}")


def verdict(m):
    if "goal" not in m or not isinstance(m.get("value"), (int, float)):
        return ""
    value, goal, op = m["value"], m["goal"], m.get("goal_op", "<=")
    met = {"<=": value <= goal, "<": value < goal, ">=": value >= goal}[op]
    return "ok" if met else "MISSED"


def print_table(run):
    fmt = compare.fmt
    print()
    print(f"{'metric':<26} {'value':>11} {'unit':<10} {'floor':>11} {'goal':>8}  verdict")
    for m in run["metrics"]:
        goal = f"{m.get('goal_op', '<=')} {fmt(m['goal'])}" if "goal" in m else "-"
        print(f"{m['name']:<26} {fmt(m['value']):>11} {m['unit']:<10} {fmt(m.get('floor')):>11} {goal:>8}  "
              f"{verdict(m)}")
    floors = [m for m in run["metrics"] if "floor" in m]
    if floors:
        print("floors:")
        for m in floors:
            print(f"  {m['name']}: {m['floor_name']}")
    machine, load = run["machine"], run["load"]
    print(f"\nmachine: {machine['cpus']} CPUs {machine['cpu_model']}, {machine['arch']}, kernel {machine['kernel']}; "
          f"commit {run['commit']}; bench took {run['elapsed_s']:.0f} s; load average {load['at_start']} at start, "
          f"{load['at_end']} at end; other processes used {load['others_cpu_percent']}% of a CPU during the run "
          f"({load['others_cpu_percent_at_start']}% just before)")
    if run["istiod_bench"] != "ok":
        print(f"istiod_bench.py: {run['istiod_bench']}")


if __name__ == "__main__":
    main()
