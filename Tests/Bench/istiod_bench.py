#!/usr/bin/env python3
"""`make bench`, the istiod part: sds-agent `--issuer istiod` against the fake istiod of the integration tests.

Run with the project venv's Python (it needs grpcio, PyJWT, hyper-h2); bench.py runs it so (`make bench`) and takes
its lines into the same run file. Prints one JSON object per metric, in bench.py's form:
  istiod_rotation_<key>   SIGHUP -> the new certificate served: key + CSR made off the loop, TLS + CSR round trip to
                          the fake istiod, chain validated, published (median of 5, over the Unix socket)
  istiod_keygen_<key>     the key + CSR part of it, as timed on the worker thread (median, from the debug log)
  istiod_loop_stall_rsa   the longest HTTP/2 PING round trip on the SDS socket while RSA-2048 rotations run; its
                          floor is the same figure over a 3 s idle window just before (the machine's own noise)
  istiod_idle_rss_kb      RSS of an idle agent holding its istiod certificate (goal 8 MB: any issuer)
"""
import json
import pathlib
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "Tests" / "Integration"))

from fake_istiod import ISTIOD_NAME, FakeIstiod  # noqa: E402
from loop_probe import ProcessLoopProbe  # noqa: E402

sys.path.insert(0, str(ROOT / "Tests" / "Bench"))
from cpu_profile import Profile  # noqa: E402
from sds_client import SecretStream  # noqa: E402
from sds_servers import fetch_when_served, leaf_serial  # noqa: E402
from bench import uncache  # noqa: E402

AGENT = ROOT / ".build" / "release" / "sds-agent"
SPIFFE_ID = "spiffe://example.org/ns/bench/sa/web"
ROTATIONS = 5


def emit(name, value, unit, goal=None, goal_op="<=", floor=None, floor_name=None, **details):
    record = {"name": name, "value": value, "unit": unit}
    if goal is not None:
        record["goal"], record["goal_op"] = goal, goal_op
    if floor is not None:
        record["floor"], record["floor_name"] = floor, floor_name
    if details:
        record["details"] = details
    print(json.dumps(record), flush=True)


def wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.001)
    raise TimeoutError(what)


class Agent:
    def __init__(self, workdir: pathlib.Path, istiod: FakeIstiod, key_type: str):
        self.workdir, self.socket = workdir, workdir / f"{key_type}.sock"
        token = workdir / "token"
        token.write_text(istiod.token_for(SPIFFE_ID))
        self.log_path = workdir / f"{key_type}.log"
        self.process = subprocess.Popen(
            [str(AGENT), "run", "--socket", str(self.socket), "--trust-domain", "example.org", "--spiffe-id", SPIFFE_ID,
             "--issuer", "istiod", "--ca-addr", istiod.address, "--ca-root-cert", str(istiod.root_cert_path),
             "--ca-server-name", ISTIOD_NAME, "--token-file", str(token), "--key-type", key_type, "--svid-ttl", "1h",
             "--log-level", "debug"],
            stdout=subprocess.DEVNULL, stderr=open(self.log_path, "wb"))

    def serial(self):
        return leaf_serial(fetch_when_served(self.socket, ["default"], timeout=60)["default"])

    def keygen_ms(self):
        return [float(m) for m in re.findall(r"key generated off the loop .* ms=([0-9.]+)", self.log_path.read_text())]

    def rss_kb(self):
        for line in open(f"/proc/{self.process.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)


def rotation_times(agent: Agent, istiod: FakeIstiod) -> list[float]:
    """SIGHUP -> the new certificate pushed on an SDS stream held open (an Envoy's view), ROTATIONS times. Awaited on
    the stream, not polled: polling the agent over gRPC every millisecond loaded the 2-core machine the stall
    figure is measured on."""
    times = []
    with SecretStream(agent.socket, delta=False) as stream:
        stream.send(resource_names=["default"])
        current = stream.recv(timeout=60)
        stream.send(resource_names=["default"], version_info=current.version_info, response_nonce=current.nonce)
        for _ in range(ROTATIONS):
            started = time.perf_counter()
            agent.process.send_signal(signal.SIGHUP)
            pushed = stream.recv(timeout=60)
            times.append((time.perf_counter() - started) * 1000)
            if pushed.version_info == current.version_info:
                raise RuntimeError("a push after SIGHUP carried the same version")
            current = pushed
            stream.send(resource_names=["default"], version_info=current.version_info, response_nonce=current.nonce)
            time.sleep(0.2)
    return times


def main():
    if not AGENT.exists():
        sys.exit(f"{AGENT} missing: run `make build`")
    with tempfile.TemporaryDirectory(prefix="sds-istiod-bench-", dir="/tmp") as tmp:
        workdir = pathlib.Path(tmp)
        istiod = FakeIstiod(workdir, "example.org").start()
        try:
            for key_type in ("ecdsa-p256", "rsa-2048"):
                if key_type == "ecdsa-p256":
                    uncache(AGENT)  # read from disk as on a fresh node: see bench.py's uncache
                agent = Agent(workdir, istiod, key_type)
                try:
                    agent.serial()
                    if key_type == "ecdsa-p256":
                        time.sleep(2)
                        emit("istiod_idle_rss_kb", agent.rss_kb(), "kB", goal=8 * 1024, goal_op="<=")
                    times = rotation_times(agent, istiod)
                    emit(f"istiod_rotation_{key_type}", round(statistics.median(times), 1), "ms",
                         runs=[round(t, 1) for t in times])
                    generations = agent.keygen_ms()[1:]
                    emit(f"istiod_keygen_{key_type}", round(statistics.median(generations), 2), "ms",
                         runs=[round(g, 2) for g in generations])
                    if key_type == "rsa-2048":
                        with ProcessLoopProbe(agent.socket) as probe:
                            wait(lambda: probe.count() > 100, 10, "the probe")
                            idle_started = probe.mark()
                            time.sleep(3)
                            busy_started = probe.mark()
                            rotation_times(agent, istiod)
                            busy_ended = probe.mark()
                        idle = probe.rtts[idle_started:busy_started]
                        busy = probe.rtts[busy_started:busy_ended]
                        # Then profiled (perf, the loop thread): what still runs on the loop around a rotation.
                        with Profile(agent.process.pid, thread=agent.process.pid) as profile:
                            rotation_times(agent, istiod)
                        emit("istiod_loop_stall_rsa", round(max(busy) * 1000, 2), "ms", goal=2, goal_op="<",
                             floor=round(max(idle) * 1000, 2),
                             floor_name="longest PING round trip over a 3 s idle window just before (the machine's "
                                        "scheduling noise)",
                             p99_ms=round(sorted(busy)[int(0.99 * (len(busy) - 1))] * 1000, 2),
                             idle_window_max_ms=round(max(idle) * 1000, 2),
                             idle_window_p99_ms=round(sorted(idle)[int(0.99 * (len(idle) - 1))] * 1000, 2),
                             idle_pings=len(idle), pings=len(busy),
                             rsa_keygen_ms=round(statistics.median(generations), 1),
                             profile=profile.unavailable or profile.top())
                finally:
                    agent.stop()
        finally:
            istiod.stop()


if __name__ == "__main__":
    main()
