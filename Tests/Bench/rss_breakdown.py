#!/usr/bin/env python3
"""Where a process's resident memory is: by mapping, by ELF section of its (static) binary, and, for the binary's
.text and .rodata (with their .text.* and .rodata.* output sections), by the library that owns the resident bytes.

    python3 Tests/Bench/rss_breakdown.py <pid> <binary> [--json]

Reads /proc/<pid>/smaps (the mappings) and /proc/<pid>/pagemap (bit 63: the 4 KiB page is present), so it needs to
run as root or as the process's owner. The binary's sections come from `readelf -SW`, its symbols from
`nm --defined-only -S`; each resident byte of .text and .rodata is attributed to the sized symbol covering it, and the
symbol to a library:
  our modules     Swift symbols of the targets in Package.swift (and generic specializations over their types), and
                  the generated protobuf-c code (CSDSProtos) when its objects are in the build directory
  Swift stdlib/runtime  other Swift symbols ($ss…, $sS…, _Concurrency, _StringProcessing, …), every C++
                  symbol (_Z…: the runtime is the only C++ here), swift_…, _swift…, and the names defined in the
                  toolchain's static libraries (lib/swift_static/linux: libswift*.a, libdispatch.a, libBlocksRuntime.a)
  swift-log       the Logging module
  OpenSSL, nghttp2, protobuf-c, glibc  names defined in libcrypto.a + libssl.a, libnghttp2.a, libprotobuf-c.a and
                  libc.a + libm (prefixes nghttp2_ and protobuf_c_ when an archive is missing)
  libstdc++/libgcc  names defined in GCC's libstdc++.a, libgcc.a and libgcc_eh.a (the Swift runtime links them)
  other           the rest; the padding (under 64 bytes) after a symbol goes with it, and the bytes of a page no
                  sized symbol covers are "no symbol" (code and data without a sized symbol, larger gaps)
Used by bench.py for the idle RSS row's breakdown (the agent and sds-floor side by side).
"""

import bisect
import functools
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

PAGE = 4096
ROOT = Path(__file__).resolve().parents[2]
LIBDIR = Path("/usr/lib/x86_64-linux-gnu")
LIBRARIES = ["our modules", "Swift stdlib/runtime", "swift-log", "OpenSSL", "nghttp2", "protobuf-c", "glibc",
             "libstdc++/libgcc", "other", "no symbol"]
MAPPINGS = ["binary text (r-x)", "binary read-only (r--)", "binary data (rw-)", "binary .bss (anon)",
            "heap (brk)", "anonymous mmap", "stack", "other files", "vdso/vvar"]


# ---- symbols and their owners --------------------------------------------------------------------------------------


def defined_names(*archives):
    """Every name `nm --defined-only` lists in the given archives (missing archives give nothing)."""
    names = set()
    for archive in archives:
        if not Path(archive).exists():
            continue
        out = subprocess.run(["nm", "--defined-only", str(archive)], capture_output=True, text=True,
                             timeout=60).stdout
        for line in out.splitlines():
            parts = line.split(None, 2)
            if len(parts) == 3:
                names.add(parts[2])
    return names


def swift_static_archives():
    swift = shutil.which("swift")
    if not swift:
        return []
    directory = Path(swift).resolve().parents[1] / "lib" / "swift_static" / "linux"
    return sorted(directory.glob("libswift*.a")) + [directory / "libdispatch.a", directory / "libBlocksRuntime.a"]


def gcc_archives():
    directories = sorted(Path("/usr/lib/gcc/x86_64-linux-gnu").glob("*"), key=lambda p: p.name)
    if not directories:
        return []
    return [directories[-1] / name for name in ("libstdc++.a", "libgcc.a", "libgcc_eh.a")]


@functools.lru_cache(maxsize=None)
def library_names():
    protos = sorted((ROOT / ".build" / "release" / "CSDSProtos.build").glob("*.o"))
    return {
        "swift": defined_names(*swift_static_archives()),
        "gcc": defined_names(*gcc_archives()),
        "OpenSSL": defined_names(LIBDIR / "libcrypto.a", LIBDIR / "libssl.a"),
        "nghttp2": defined_names(LIBDIR / "libnghttp2.a"),
        "protobuf-c": defined_names(LIBDIR / "libprotobuf-c.a"),
        "glibc": defined_names(LIBDIR / "libc.a", *LIBDIR.glob("libm-*.a"), LIBDIR / "libmvec.a"),
        "protos": defined_names(*protos),
    }


@functools.lru_cache(maxsize=None)
def our_modules():
    """Module names of the targets in Package.swift (an executable `sds-agent` is module `sds_agent`)."""
    text = (ROOT / "Package.swift").read_text()
    names = re.findall(r'\.(?:target|executableTarget|testTarget)\(\s*name:\s*"([^"]+)"', text)
    return sorted({name.replace("-", "_") for name in names})


@functools.lru_cache(maxsize=None)
def our_module_pattern():
    # A Swift identifier is mangled as <length><name>; not preceded by a digit, so "12H2" is not "2H2".
    alternatives = "|".join(f"{len(name)}{re.escape(name)}" for name in our_modules())
    return re.compile(rf"(?<!\d)(?:{alternatives})(?![a-z_])")


def classify(name):
    """The library a symbol belongs to (see the module docstring)."""
    for prefix in ("symbolic ", "associated conformance ", "get_type_metadata ", "keypath_get ", "keypath_set "):
        if name.startswith(prefix):
            name = "$s" + name[len(prefix):]
            break
    if name.startswith("$s"):
        if name.startswith("$s7Logging"):
            return "swift-log"
        if our_module_pattern().search(name):
            return "our modules"
        return "Swift stdlib/runtime"
    if name.startswith(("swift_", "_swift", "__swift", "l__swift", "_Z")):
        return "Swift stdlib/runtime"
    if re.fullmatch(r"(\w+)_main", name) and name[:-5] in our_modules():
        return "our modules"
    names = library_names()
    if name in names["swift"]:
        return "Swift stdlib/runtime"
    if name.startswith("nghttp2_") or name in names["nghttp2"]:
        return "nghttp2"
    if name.startswith("protobuf_c_") or name in names["protobuf-c"]:
        return "protobuf-c"
    if name in names["protos"]:
        return "our modules"
    if name in names["OpenSSL"]:
        return "OpenSSL"
    if name in names["glibc"]:
        return "glibc"
    if name in names["gcc"]:
        return "libstdc++/libgcc"
    return "other"


class Symbols:
    """The binary's sized symbols as disjoint [start, end) intervals, each with its library."""

    def __init__(self, binary):
        out = subprocess.run(["nm", "--defined-only", "-S", str(binary)], capture_output=True, text=True,
                             timeout=120, check=True).stdout
        symbols = []
        for line in out.splitlines():
            parts = line.split(None, 3)
            if len(parts) != 4:
                continue  # no size: an alias or a marker
            start, size = int(parts[0], 16), int(parts[1], 16)
            if size:
                symbols.append((start, start + size, parts[3]))
        symbols.sort()
        self.starts, self.ends, self.owners = [], [], []
        covered = 0
        for start, end, name in symbols:
            start = max(start, covered)  # aliases and nested symbols: each byte counted once, for the first
            if start >= end:
                continue
            self.starts.append(start)
            self.ends.append(end)
            self.owners.append(classify(name))
            covered = end
        # Alignment padding (under 64 bytes) between two symbols goes with the one before it.
        for index in range(len(self.starts) - 1):
            if self.starts[index + 1] - self.ends[index] < 64:
                self.ends[index] = self.starts[index + 1]

    def attribute(self, start, end, counts):
        """Adds the bytes of [start, end) to `counts` by owning library."""
        index = max(bisect.bisect_right(self.starts, start) - 1, 0)
        attributed = 0
        while index < len(self.starts) and self.starts[index] < end:
            overlap = min(end, self.ends[index]) - max(start, self.starts[index])
            if overlap > 0:
                counts[self.owners[index]] += overlap
                attributed += overlap
            index += 1
        counts["no symbol"] += (end - start) - attributed


# ---- the binary's sections -----------------------------------------------------------------------------------------


def sections(binary):
    """(name, address, size) of every allocated section with an address, from `readelf -SW`."""
    out = subprocess.run(["readelf", "-SW", str(binary)], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    result = []
    for line in out.splitlines():
        match = re.match(r"\s*\[\s*\d+\]\s+(\S+)\s+\S+\s+([0-9a-f]{16})\s+[0-9a-f]+\s+([0-9a-f]+)\s+\S+\s+(\S*)",
                         line)
        if match and "A" in match.group(4) and int(match.group(2), 16) and int(match.group(3), 16):
            result.append((match.group(1), int(match.group(2), 16), int(match.group(3), 16)))
    return sorted(result, key=lambda s: s[1])


def library_group(section):
    """".text" or ".rodata" for the sections whose bytes are attributed to libraries (.text.unnamed and the like
    count as .text), else None."""
    for group in (".text", ".rodata"):
        if section == group or section.startswith(group + "."):
            return group
    return None


def load_bias(binary, binary_maps):
    """0 for a fixed-address executable; for a PIE, where its first PT_LOAD landed."""
    header = subprocess.run(["readelf", "-hW", str(binary)], capture_output=True, text=True, timeout=60).stdout
    if "DYN" not in header or not binary_maps:
        return 0
    program = subprocess.run(["readelf", "-lW", str(binary)], capture_output=True, text=True, timeout=60).stdout
    first = re.search(r"LOAD\s+0x0+\s+0x([0-9a-f]+)", program)
    start = min(m["start"] for m in binary_maps if m["offset"] == 0)
    return start - (int(first.group(1), 16) if first else 0)


# ---- the process ---------------------------------------------------------------------------------------------------


def read_smaps(pid):
    maps = []
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            header = re.match(r"([0-9a-f]+)-([0-9a-f]+) (\S+) ([0-9a-f]+) \S+ \d+\s*(.*)", line)
            if header:
                maps.append({"start": int(header.group(1), 16), "end": int(header.group(2), 16),
                             "perms": header.group(3), "offset": int(header.group(4), 16),
                             "path": header.group(5).strip(), "fields": {}})
            elif maps and line.split(":")[0] in ("Rss", "Anonymous", "Private_Dirty", "Shared_Clean"):
                key, value = line.split(":", 1)
                maps[-1]["fields"][key] = int(value.split()[0])
    return maps


def present_pages(pagemap, start, end):
    """Addresses of the present pages in [start, end)."""
    pagemap.seek(start // PAGE * 8)
    data = pagemap.read((end - start) // PAGE * 8)
    return [start + i * PAGE for i, (entry,) in enumerate(struct.iter_unpack("<Q", data)) if entry >> 63 & 1]


def vm_rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def breakdown(pid, binary):
    """The resident memory of `pid`, whose executable is `binary`: a dict of kB figures (see `format_tables`)."""
    binary = Path(binary).resolve()
    maps = read_smaps(pid)
    binary_maps = [m for m in maps if m["path"].removesuffix(" (deleted)") == str(binary)]
    bias = load_bias(binary, binary_maps)
    elf_sections = [(name, address + bias, size) for name, address, size in sections(binary)]
    image_start = min(address for _, address, _ in elf_sections)
    image_end = max(address + size for _, address, size in elf_sections)

    mappings = {name: {"rss_kb": 0, "anon_kb": 0} for name in MAPPINGS}
    by_section = Counter()
    by_library = {".text": Counter(), ".rodata": Counter()}
    symbols = Symbols(binary)
    with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for m in maps:
            if not m["fields"].get("Rss"):
                continue
            path, perms = m["path"], m["perms"]
            in_binary = m in binary_maps
            if in_binary:
                kind = {"r-x": "binary text (r-x)", "r--": "binary read-only (r--)"}.get(perms[:3],
                                                                                        "binary data (rw-)")
            elif not path and m["start"] < image_end and m["end"] > image_start:
                kind = "binary .bss (anon)"
            elif path == "[heap]":
                kind = "heap (brk)"
            elif path == "[stack]":
                kind = "stack"
            elif path in ("[vdso]", "[vvar]", "[vsyscall]", "[vvar_vclock]"):
                kind = "vdso/vvar"
            elif not path or path.startswith("["):
                kind = "anonymous mmap"
            else:
                kind = "other files"
            pages = present_pages(pagemap, m["start"], m["end"])
            mappings[kind]["rss_kb"] += len(pages) * PAGE // 1024
            mappings[kind]["anon_kb"] += m["fields"].get("Anonymous", 0)
            if not kind.startswith("binary"):
                continue
            for page in pages:
                page_end = page + PAGE
                attributed = 0
                for name, address, size in elf_sections:
                    overlap = min(page_end, address + size) - max(page, address)
                    if overlap <= 0:
                        continue
                    by_section[name] += overlap
                    attributed += overlap
                    group = library_group(name)
                    if group:
                        symbols.attribute(max(page, address), min(page_end, address + size), by_library[group])
                by_section["(headers, padding)"] += PAGE - attributed
    return {
        "pid": pid,
        "binary": str(binary),
        "vm_rss_kb": vm_rss_kb(pid),
        "mappings": mappings,
        "sections_kb": {name: round(count / 1024, 1) for name, count in by_section.most_common()},
        "libraries_kb": {section: {lib: round(counts.get(lib, 0) / 1024, 1) for lib in LIBRARIES}
                         for section, counts in by_library.items()},
    }


# ---- output --------------------------------------------------------------------------------------------------------


def format_tables(result, other=None, names=("agent", "floor")):
    """Small text tables: by mapping, by section (the largest), by library for .text and .rodata. With `other`, the two
    side by side with their difference."""
    lines = []

    def row(label, a, b=None, width=34):
        if other is None:
            lines.append(f"  {label:<{width}} {a:>9,.0f}")
        else:
            lines.append(f"  {label:<{width}} {a:>9,.0f} {b:>9,.0f} {a - b:>+9,.0f}")

    header = f"  {'':<34} {'kB':>9}" if other is None else \
        f"  {'':<34} {names[0]:>9} {names[1]:>9} {'diff':>9}"
    lines.append(f"resident memory by mapping (VmRSS {result['vm_rss_kb']:,} kB"
                 + (f" vs {other['vm_rss_kb']:,} kB)" if other else ")"))
    lines.append(header)
    for kind in MAPPINGS:
        a = result["mappings"][kind]["rss_kb"]
        b = other["mappings"][kind]["rss_kb"] if other else 0
        if a or b:
            row(kind, a, b if other else None)
    lines.append("the binary's resident pages by ELF section (kB)")
    lines.append(header)
    theirs = other["sections_kb"] if other else {}
    names_by_size = sorted(set(result["sections_kb"]) | set(theirs),
                           key=lambda n: -max(result["sections_kb"].get(n, 0), theirs.get(n, 0)))
    small_a = small_b = 0.0
    for name in names_by_size:
        a, b = result["sections_kb"].get(name, 0), theirs.get(name, 0)
        if max(a, b) >= 16:
            row(name, a, b if other else None)
        else:
            small_a, small_b = small_a + a, small_b + b
    row("(other sections)", small_a, small_b if other else None)
    for section in (".text", ".rodata"):
        lines.append(f"resident {section} by library (kB)")
        lines.append(header)
        for lib in LIBRARIES:
            a = result["libraries_kb"][section][lib]
            b = other["libraries_kb"][section][lib] if other else 0
            if a or b:
                row(lib, a, b if other else None)
    return "\n".join(lines)


def main():
    args = [a for a in sys.argv[1:] if a != "--json"]
    if len(args) != 2:
        sys.exit(__doc__.split("\n\n")[1])
    result = breakdown(int(args[0]), args[1])
    print(json.dumps(result, indent=1) if "--json" in sys.argv else format_tables(result))


if __name__ == "__main__":
    main()
