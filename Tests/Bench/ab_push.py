#!/usr/bin/env python3
"""Push times of two builds, run alternately in the same minutes.

Why: on a shared machine the same binary's 10,000-stream push moves by a third within an hour, so two `make bench`
runs an hour apart compare the hours more than the builds. Here each round runs the old agent with its own load
client and the new one with its, the same pushes each, so both see the same machine; which runs first alternates
from round to round (the second of a pair measured slower, whichever build it was).

Usage: ab_push.py OLD_DIR NEW_DIR [ROUNDS]   (each DIR a checkout's `.build/release` holding sds-agent and
sds-bench, release-built: `make build` and `make bench` build them)

Each round, per build: a fresh state dir and agent; 1,000 streams pushed 9 times, then 10,000 streams 5 times, each
push from an idle agent (as `make bench`). Prints the median, lower quartile and minimum of every build and size, and
the load client's CPU per push; exits 2 on a missing binary.
"""
from __future__ import annotations

import os
import pathlib
import statistics
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench  # noqa: E402

SIZES = ((1000, 9), (10000, 5))


def run_build(directory: pathlib.Path, times: dict, cpu: dict, label: str) -> None:
    bench.CLIENT = directory / "sds-bench"
    with tempfile.TemporaryDirectory(prefix="sds-ab-", dir="/tmp") as workdir:
        agent = bench.Agent(workdir, os.path.join(workdir, "state"))
        agent.args[0] = str(directory / "sds-agent")
        agent.start()
        try:
            for streams, pushes in SIZES:
                client = bench.Client(agent.socket, streams=streams)
                try:
                    bench.wait_until_idle(agent.pid, quiet_s=0.2)
                    client.push(agent.pid)  # the first push of a size warms what it touches first
                    for _ in range(pushes):
                        bench.wait_until_idle(agent.pid, quiet_s=0.1)
                        result = client.push(agent.pid)
                        times[(label, streams)].append(result["ms"])
                        cpu[(label, streams)].append(result["client_cpu_ms"])
                finally:
                    client.close()
        finally:
            agent.stop()


def main() -> None:
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    builds = {"old": pathlib.Path(sys.argv[1]), "new": pathlib.Path(sys.argv[2])}
    rounds = int(sys.argv[3]) if len(sys.argv) == 4 else 3
    for label, directory in builds.items():
        for binary in ("sds-agent", "sds-bench"):
            if not (directory / binary).exists():
                print(f"ab_push.py: {directory / binary} is missing ({label} build)", file=sys.stderr)
                sys.exit(2)
    times = {(label, streams): [] for label in builds for streams, _ in SIZES}
    cpu = {(label, streams): [] for label in builds for streams, _ in SIZES}
    for round_number in range(rounds):
        # Which build runs first alternates: run second, a build measured ~0.3 ms (1,000 streams) and ~3 ms (10,000)
        # slower, whichever it was (two 5-round A/Bs of the same two builds with the arguments swapped).
        order = list(builds.items())
        if round_number % 2:
            order.reverse()
        for label, directory in order:
            run_build(directory, times, cpu, label)
    for (label, streams), values in times.items():
        ordered = sorted(values)
        print(f"{label} {streams:>6} streams: median {statistics.median(ordered):.2f} ms, "
              f"p25 {ordered[len(ordered) // 4]:.2f}, min {ordered[0]:.2f}; "
              f"load client CPU median {statistics.median(cpu[(label, streams)]):.2f} ms")


if __name__ == "__main__":
    main()
