#!/usr/bin/env python3
"""Where a profiled sidecar's time or instructions go: by function and by crate.

    profile_breakdown.py callgrind CALLGRIND_OUT BINARY REQUESTS PREFIX
    profile_breakdown.py perf PERF_DATA OUT_DIR

callgrind: writes PREFIX.functions.txt (self instructions per request of each function,
most first) and PREFIX.by-crate.txt (the same summed by crate), and prints the latter.

perf: writes OUT_DIR/self.txt, children.txt and callgraph.txt (`perf report`), and
OUT_DIR/by-crate.txt (self time summed by crate, the kernel apart), and prints the top of
self.txt and by-crate.txt.

A crate is the first path segment of a Rust symbol; C functions are grouped by what they
are: the allocator apart from the copies and the rest of libc.

Two things callgrind_annotate gets wrong here are mended:
- after counters are zeroed mid-run (`callgrind_control -z`), the frames everything ran
  under (`main`, `(below main)`, …) are reported with the whole total as their self cost;
  they are left out, so the functions add up to the total;
- a static binary's C functions that share an address with a local alias (musl's
  `memcpy` and `__memcpy_fwd`) come out as bare addresses; they are named from the symbol
  table.
"""

import re
import subprocess
import sys
from collections import defaultdict

LINE = re.compile(r"^\s*([\d,]+) \(\s*([\d.]+)%\)\s+(?:[^:\s]*:)?(.*?)(?: \[[^\]]*\])?$")
RING_C = re.compile(r"^_*(ring_core_|fiat_|fe_|fe4_|ecp_nistz256|x25519|aes_|gcm_|sha\d+_)")
ALLOCATOR = re.compile(r"^(_?mi_|_rjem_|__libc_malloc|__libc_free|malloc|free|realloc|calloc|"
                       r"alloc_slot|alloc_group|get_meta|nontrivial_free|enframe|"
                       r"__malloc|_int_malloc|_int_free|cfree|__default_morecore)")


def symbols(binary):
    """(address, name) of the defined functions of `binary`, global names first."""
    out = subprocess.run(["nm", "-n", "--defined-only", binary],
                         capture_output=True, text=True, check=False).stdout
    named = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) != 3 or parts[1] not in "TtWw":
            continue
        addr = int(parts[0], 16)
        if addr not in named or parts[1] in "TW":
            named[addr] = parts[2]
    return named


def group(name):
    if "::" in name:
        # `<T as tokio::io::AsyncRead>::poll_read`: a generic type, so the trait's crate.
        name = re.sub(r"^<&?(?:mut )?[A-Z]\w* as ", "", name)
        return name.lstrip("<&").split("::", 1)[0].split(" ")[0]
    if RING_C.match(name):
        return "ring's C and assembly (key exchange, signatures, AES, SHA)"
    if ALLOCATOR.match(name):
        return "allocator (malloc, free)"
    if name.startswith(("memcpy", "memmove", "memset", "memcmp", "__memcpy", "__memset")):
        return "memcpy, memset"
    return "libc and the rest of C"


def by_crate(costs):
    """(group, cost) pairs summed by group, most first."""
    by = defaultdict(float)
    for name, cost in costs:
        by[name if name in ("kernel", "vdso (clock_gettime)") else group(name)] += cost
    return sorted(by.items(), key=lambda kv: -kv[1])


def callgrind(path, binary, requests, prefix):
    text = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", path],
                          capture_output=True, text=True, check=True).stdout
    named = symbols(binary)
    costs = defaultdict(int)
    for line in text.splitlines():
        m = LINE.match(line)
        if not m or m.group(3) == "PROGRAM TOTALS" or float(m.group(2)) >= 100.0:
            continue
        cost, name = int(m.group(1).replace(",", "")), m.group(3)
        if re.fullmatch(r"0x[0-9a-f]+", name):
            name = named.get(int(name, 16), name)
        costs[name] += cost
    per = sorted(((c / requests, n) for n, c in costs.items()), reverse=True)
    with open(f"{prefix}.functions.txt", "w") as f:
        for c, n in per:
            f.write(f"{c:8.0f}  {n}\n")
    rows = by_crate((n, c) for c, n in per)
    total = sum(c for _, c in rows)
    with open(f"{prefix}.by-crate.txt", "w") as f:
        for k, c in rows:
            f.write(f"{c:8.0f}  {100 * c / total:5.1f}%  {k}\n")
    for k, c in rows[:12]:
        print(f"{c:8.0f}  {100 * c / total:5.1f}%  {k}")


# A `perf report --sort dso,symbol` line: "  12.34%  dso  [.] symbol" ([k]: the kernel's).
PERF_LINE = re.compile(r"^\s+([\d.]+)%\s+(\S+)\s+\[([.k])\]\s+(.*?)\s*$")


def perf(data, out):
    def report(*args):
        text = subprocess.run(["perf", "report", "-i", data, "--stdio", *args],
                              capture_output=True, text=True, check=False).stdout
        return "\n".join(line for line in text.splitlines() if line.strip()) + "\n"

    self_text = report("--no-children", "--sort", "dso,symbol", "-g", "none")
    with open(f"{out}/self.txt", "w") as f:
        f.write(self_text)
    with open(f"{out}/children.txt", "w") as f:
        f.write(report("--children", "--sort", "symbol", "-g", "none"))
    with open(f"{out}/callgraph.txt", "w") as f:
        f.write(report("--no-children", "--sort", "symbol", "-g",
                       "caller,0.5,callee,function,percent"))
    costs, top = [], []
    for line in self_text.splitlines():
        m = PERF_LINE.match(line)
        if not m:
            continue
        pct, dso, kind, name = float(m.group(1)), m.group(2), m.group(3), m.group(4)
        top.append(line)
        if kind == "k" or "kernel" in dso:
            name = "kernel"
        elif "vdso" in dso:
            name = "vdso (clock_gettime)"
        costs.append((name, pct))
    rows = by_crate(costs)
    with open(f"{out}/by-crate.txt", "w") as f:
        for k, c in rows:
            f.write(f"{c:6.2f}%  {k}\n")
    print("top of the profile (self time):")
    for line in top[:25]:
        print(line[:160])
    print("by crate:")
    for k, c in rows[:15]:
        print(f"{c:6.2f}%  {k}")


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "callgrind" and len(args) == 4:
        callgrind(args[0], args[1], int(args[2]), args[3])
    elif mode == "perf" and len(args) == 2:
        perf(args[0], args[1])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
