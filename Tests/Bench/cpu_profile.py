"""CPU profiles for `make bench`: where the agent's time goes during one measured event, with Linux `perf`.

`Profile(pid, thread=None)` is a context manager: `perf record` samples the process (or, with `thread`, only that
thread's samples are reported: the event loop is the process's first thread) with DWARF call graphs while the body
runs, then `top()` lists the functions holding the most samples, inclusive (a function and what it calls), with
Swift names demangled. It answers "what runs on the loop between the SIGHUP and the last write" without
instrumenting the agent. Without `perf` (or without permission to use it) it records nothing and says why.
"""
from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time


class Profile:
    def __init__(self, pid: int, thread: int | None = None, frequency: int = 5000):
        self.pid, self.thread, self.frequency = pid, thread, frequency
        self.unavailable: str | None = None if shutil.which("perf") else "perf is not installed"
        self._dir = tempfile.mkdtemp(prefix="sds-profile-")
        self._data = os.path.join(self._dir, "perf.data")
        self._process: subprocess.Popen | None = None
        self.samples: list[list[str]] = []

    def __enter__(self) -> "Profile":
        if self.unavailable:
            return self
        self._process = subprocess.Popen(
            ["perf", "record", "-q", "-F", str(self.frequency), "--call-graph", "dwarf,16384", "-p", str(self.pid),
             "-o", self._data], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.3)  # perf attaches asynchronously; nothing to await but its first samples
        if self._process.poll() is not None:
            self.unavailable = f"perf record failed: {self._process.stderr.read().decode(errors='replace')[:200]}"
        return self

    def __exit__(self, *exc) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGINT)
        self._process.wait(timeout=60)
        script = subprocess.run(["perf", "script", "-i", self._data, "-F", "tid,ip,sym,dso"], capture_output=True,
                                text=True, timeout=300).stdout
        shutil.rmtree(self._dir, ignore_errors=True)
        for block in script.split("\n\n"):
            lines = block.strip().split("\n")
            match = re.match(r"\s*(\d+)", lines[0]) if lines and lines[0].strip() else None
            if not match or (self.thread is not None and int(match.group(1)) != self.thread):
                continue
            # Frames are "<ip> <symbol> (<dso>)"; the kernel's are left out (the loop's own code is what is asked).
            stack = []
            for line in lines[1:]:
                parts = line.strip().split(None, 1)
                if len(parts) < 2 or "kernel.kallsyms" in parts[1]:
                    continue
                stack.append(re.sub(r"\s+\([^()]*\)$", "", parts[1]))
            self.samples.append(stack)

    def top(self, count: int = 15, ours: bool = True) -> list[tuple[float, str]]:
        """The `count` functions in the most samples (inclusive), as (percent of samples, demangled name). `ours`:
        only the agent's own Swift functions and the C libraries' entry points, not the event loop's frames that
        every sample passes through."""
        if not self.samples:
            return []
        seen = collections.Counter()
        for stack in self.samples:
            for name in set(stack):
                seen[name] += 1
        total = len(self.samples)
        skip = re.compile(r"EventLoop|AgentMain|makeIssuer|Readiness|sds_agent_main|__libc_start|swift_image|^_start$"
                          r"|^\[|^0x")
        ranked = [(n, name) for name, n in seen.most_common() if not (ours and skip.search(name))]
        top = ranked[:count]
        names = demangle([name for _, name in top])
        return [(round(100 * n / total, 1), names[i]) for i, (n, _) in enumerate(top)]


def demangle(names: list[str]) -> list[str]:
    """Swift names made readable (`swift demangle --simplified`); others unchanged."""
    tool = shutil.which("swift")
    if not tool or not names:
        return names
    out = subprocess.run([tool, "demangle", "--simplified", "--compact"], input="\n".join(names), capture_output=True,
                         text=True, timeout=60).stdout.splitlines()
    return [(line[:140] if line else names[i]) for i, line in enumerate(out[:len(names)])] + names[len(out):]
