"""A log pipe nobody drains must not freeze the agent.

Container runtimes read a container's stderr through a pipe; when the runtime (or a log shipper behind it) stalls, a
blocking write(2) to stderr would stop the one thread that serves every Envoy in the pod. Here the agent's stderr is
a pipe the test never reads while it pushes rotations to many streams at debug level: the agent keeps serving a
well-behaved grpcio client promptly, its memory stays bounded, and once the pipe is drained the log says how many
lines it had to drop.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time

from sds_client import SecretStream
from sds_servers import TRUST_DOMAIN, fetch_when_served, wait_for
from test_trust_boundary import WellBehavedClient

WORKLOAD = f"spiffe://{TRUST_DOMAIN}/ns/demo/sa/logs"
PROMPT = 0.05  # seconds: a well-behaved client's bound while the log pipe is full
ROTATIONS = 50
STREAMS = 100


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_an_undrained_stderr_pipe_neither_blocks_nor_grows_the_agent(sds_agent_bin, short_dir):
    socket_path = short_dir / "agent.sock"
    argv = [str(sds_agent_bin), "run", "--socket", str(socket_path), "--state-dir", str(short_dir / "state"),
            "--trust-domain", TRUST_DOMAIN, "--spiffe-id", WORKLOAD, "--log-level", "debug"]
    agent = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    streams: list[SecretStream] = []
    good = None
    try:
        fetch_when_served(socket_path, ["default"])
        good = WellBehavedClient(socket_path)
        for _ in range(STREAMS):
            stream = SecretStream(socket_path, delta=False)
            stream.send(resource_names=["default"])
            streams.append(stream)
        for stream in streams:
            response = stream.recv()
            stream.send(resource_names=["default"], response_nonce=response.nonce, version_info=response.version_info)
        rss_before = rss_kb(agent.pid)

        worst = 0.0
        serial_changes = 0
        for _ in range(ROTATIONS):
            agent.send_signal(signal.SIGHUP)
            # Every stream gets the rotation (each push is several debug/info lines nobody reads).
            for stream in streams:
                response = stream.recv()
                stream.send(resource_names=["default"], response_nonce=response.nonce, version_info=response.version_info)
            serial_changes += 1
            worst = max(worst, good.latency())
        assert serial_changes == ROTATIONS
        assert agent.poll() is None, "the agent died"
        assert worst < PROMPT, f"a well-behaved client waited {worst * 1000:.1f} ms with stderr undrained"
        growth = rss_kb(agent.pid) - rss_before
        assert growth < 8 * 1024, f"RSS grew {growth} KB with stderr undrained"

        # Drain the pipe: the agent finishes what it queued and reports what it dropped.
        os.set_blocking(agent.stderr.fileno(), False)
        seen = bytearray()
        deadline = time.monotonic() + 10

        def drained_with_notice() -> bool:
            chunk = agent.stderr.read()
            if chunk:
                seen.extend(chunk)
            return b"log lines dropped" in seen
        wait_for(drained_with_notice, deadline - time.monotonic(), "the dropped-lines notice")
        text = seen.decode(errors="replace")
        notice = [line for line in text.splitlines() if "log lines dropped" in line]
        assert len(notice) >= 1 and int(notice[0].split("WARNING ")[1].split()[0]) > 0
        # Every line that did arrive is whole: dropping happens per line, never mid-line.
        for line in text.splitlines():
            assert line[:4].isdigit() and " " in line, f"a torn line: {line[:80]!r}"
    finally:
        for stream in streams:
            stream.close()
        if good is not None:
            good.close()
        agent.terminate()
        try:
            agent.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.communicate()
