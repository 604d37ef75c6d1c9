#!/usr/bin/env python3
"""`make bench`: measures sds-agent and prints one JSON object per metric, then a short human table.

Drives three release binaries (built by `make bench`):
  sds-agent  the product, on the local CA, over a Unix socket in a temp dir;
  sds-bench  our load client (the H2/GRPC client modules) and the issuance benchmark;
  sds-floor  a program linking the same libraries with the static Swift stdlib, doing nothing (the RSS floor).

Every wait is bounded. SDS uses only the Unix socket; the agent also runs its HTTP status listener on a loopback
port (--status-addr), scraped once before idle RSS is measured, so that figure includes it. Agent figures come from
/proc/<pid>.
Environment: SDS_BENCH_IDLE_SECONDS (default 60) shortens the idle-CPU window for a quick try.
"""

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

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".build" / "release"
AGENT = BIN / "sds-agent"
CLIENT = BIN / "sds-bench"
FLOOR = BIN / "sds-floor"
TRUST_DOMAIN = "example.org"
STREAMS_PER_CONNECTION = 100  # the agent advertises 128 concurrent streams per connection
IDLE_SECONDS = float(os.environ.get("SDS_BENCH_IDLE_SECONDS", "60"))
CLK_TCK = os.sysconf("SC_CLK_TCK")

metrics = []


def emit(name, value, unit, goal=None, baseline=None, baseline_name=None, **details):
    record = {"name": name, "value": value, "unit": unit}
    if baseline is not None:
        record["baseline"] = baseline
        record["baseline_name"] = baseline_name
    if goal is not None:
        record["goal"] = goal
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
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()
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
    emit("issue_per_s", round(ours["svids_per_s"]), "SVIDs/s", baseline=sign_per_s,
         baseline_name="openssl speed ecdsap256 sign/s", count=ours["count"], seconds=round(ours["seconds"], 4))


def measure_floor():
    process = subprocess.Popen([str(FLOOR)], stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([process.stdout], [], [], 10)
        if not ready or process.stdout.readline().strip() != "ready":
            raise RuntimeError("sds-floor did not start")
        time.sleep(1)
        return rss_kb(process.pid), rss_split(process.pid)
    finally:
        process.kill()
        process.wait(timeout=10)


def measure_first_secret(workdir, state_dir, runs):
    """Process start -> first `default` DiscoveryResponse at a client already waiting on the socket path."""
    samples = []
    for _ in range(runs):
        agent = Agent(workdir, state_dir)
        waiter = subprocess.Popen([str(CLIENT), "first", "--socket", agent.socket, "--timeout", "15"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.2)  # the waiter is retrying connect() before the agent exists
        started = agent.start(wait=False)
        try:
            result = read_json_line(waiter, 20, "first")
            samples.append((result["received_realtime_ns"] - started) / 1e6)
        finally:
            waiter.wait(timeout=10)
            agent.stop()
    return samples


def main():
    for binary in (AGENT, CLIENT, FLOOR):
        if not binary.exists():
            sys.exit(f"bench: {binary} is missing; run `make bench` (it builds the release binaries)")
    bench_started = time.monotonic()
    load_at_start = loadavg()
    with tempfile.TemporaryDirectory(prefix="sds-bench-") as workdir:
        state_dir = os.path.join(workdir, "state")

        log("issuance (sds-bench issue, openssl speed)")
        measure_issuance()

        log("RSS floor (sds-floor)")
        floor_kb, floor_split = measure_floor()

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            status_port = s.getsockname()[1]
        agent = Agent(workdir, state_dir, extra=("--status-addr", f"127.0.0.1:{status_port}"))
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
            emit("rss_idle_kb", idle_kb, "kB", goal=12 * 1024, baseline=floor_kb,
                 baseline_name="sds-floor RSS (same libraries, static stdlib, no work)",
                 agent=idle_split, floor=floor_split, over_floor_kb=idle_kb - floor_kb)

            log("10,000 streams over 100 connections")
            many = Client(agent.socket, streams=10_000)
            clients.append(many)
            time.sleep(2)
            many_kb = rss_kb(agent.pid)
            emit("rss_per_stream_bytes", round((many_kb - idle_kb) * 1024 / 10_000), "bytes", goal=8 * 1024,
                 rss_at_10000_streams_kb=many_kb, idle_rss_kb=idle_kb, connections=many.ready["connections"],
                 client_ready_ms=round(many.ready["ready_ms"], 1))

            log(f"idle CPU: {IDLE_SECONDS:.0f} s with 10,002 streams connected, no rotation due")
            ticks0, ns0, (vol0, invol0) = cpu_ticks(agent.pid), cpu_ns(agent.pid), context_switches(agent.pid)
            client0 = many.cpu_ms() + envoy_like.cpu_ms()
            time.sleep(IDLE_SECONDS)
            ticks1, ns1, (vol1, invol1) = cpu_ticks(agent.pid), cpu_ns(agent.pid), context_switches(agent.pid)
            client1 = many.cpu_ms() + envoy_like.cpu_ms()
            scale = 60 / IDLE_SECONDS
            # Each `stats` command is a wakeup caused by us; the agent sees none of them.
            emit("idle_cpu_ms_per_min", round((ticks1 - ticks0) * 1000 / CLK_TCK * scale, 3), "ms/min", goal=0,
                 exact_cpu_ms_per_min=round((ns1 - ns0) / 1e6 * scale, 4),
                 voluntary_wakeups=vol1 - vol0, involuntary_switches=invol1 - invol0,
                 window_s=IDLE_SECONDS, threads=len(tasks(agent.pid)),
                 client_cpu_ms_per_min=round((client1 - client0) * scale, 3))

            log("push_all: SIGHUP -> the last stream holds the new secret")
            push_results = {}
            runs = {1: 9, 100: 9, 1000: 9, 10_000: 3}
            info_before = count_info_lines(agent.log_path)
            samples = [many.push(agent.pid) for _ in range(runs[10_000])]
            push_results[10_000] = samples
            # What an on-call engineer reads per rotation at 10,000 streams (per-stream lines are debug).
            emit("info_lines_per_rotation", (count_info_lines(agent.log_path) - info_before) / len(samples), "lines",
                 goal=1, streams=10_000, rotations=len(samples))
            many.close()
            clients.remove(many)
            for count in (1, 100, 1000):
                client = Client(agent.socket, streams=count)
                clients.append(client)
                push_results[count] = [client.push(agent.pid) for _ in range(runs[count])]
                client.close()
                clients.remove(client)
            for count in (1, 100, 1000, 10_000):
                results = push_results[count]
                times = [r["ms"] for r in results]
                emit(f"push_all_ms_{count}", round(statistics.median(times), 3), "ms",
                     goal=20 if count == 1000 else None, streams=count, runs=len(times),
                     min=round(min(times), 3), max=round(max(times), 3),
                     client_cpu_ms=round(statistics.median(r["client_cpu_ms"] for r in results), 3))
        finally:
            for client in clients:
                client.close()
            agent.stop()

        log("first_secret: process start -> first default response (existing CA; then a fresh state dir)")
        warm = measure_first_secret(workdir, state_dir, runs=11)
        cold = []
        for i in range(3):
            cold += measure_first_secret(workdir, os.path.join(workdir, f"fresh-{i}"), runs=1)
        emit("first_secret_ms", round(statistics.median(warm), 3), "ms", goal=10,
             runs=len(warm), min=round(min(warm), 3), max=round(max(warm), 3),
             first_start_creating_ca_ms=round(statistics.median(cold), 3))

    print_table(time.monotonic() - bench_started, load_at_start, loadavg())


def count_info_lines(path) -> int:
    with open(path, errors="replace") as f:
        return sum(1 for line in f if " INFO " in line)


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def print_table(elapsed, load_at_start, load_at_end):
    def fmt(value):
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:,.3f}".rstrip("0").rstrip(".")
        return f"{value:,}"

    print()
    print(f"{'metric':<24} {'value':>12} {'unit':<8} {'goal':>8}  baseline")
    for m in metrics:
        baseline = f"{fmt(m['baseline'])} ({m['baseline_name']})" if "baseline" in m else ""
        goal = m.get("goal")
        verdict = ""
        if goal is not None:
            verdict = " ok" if m["value"] <= goal else " ABOVE GOAL"
        print(f"{m['name']:<24} {fmt(m['value']):>12} {m['unit']:<8} {fmt(goal):>8}{verdict:<11} {baseline}")
    print(f"\nmachine: {os.cpu_count()} CPUs, {platform.machine()}, kernel {platform.release()}; "
          f"bench took {elapsed:.0f} s; load average {load_at_start} at start, {load_at_end} at end")


if __name__ == "__main__":
    main()
