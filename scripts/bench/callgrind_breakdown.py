#!/usr/bin/env python3
"""Where a callgrind run's instructions go, per request: by function and by crate.

    callgrind_breakdown.py CALLGRIND_OUT BINARY REQUESTS PREFIX

Writes PREFIX.functions.txt (self instructions per request of each function, most first)
and PREFIX.by-crate.txt (the same summed by the first path segment of the Rust symbol;
C functions by library: the allocator apart from the rest of libc). Prints the by-crate
table.

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
ALLOCATOR = re.compile(r"^(_?mi_|__libc_malloc|__libc_free|malloc|free|realloc|calloc|"
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
        head = name.lstrip("<&").split("::", 1)[0].split(" ")[0]
        return head
    if ALLOCATOR.match(name):
        return "allocator (malloc, free)"
    if name.startswith(("memcpy", "memmove", "memset", "memcmp", "__memcpy", "__memset")):
        return "memcpy, memset"
    return "libc and the rest of C"


def main():
    path, binary, requests, prefix = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
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
    by = defaultdict(float)
    for c, n in per:
        by[group(n)] += c
    total = sum(by.values())
    rows = sorted(by.items(), key=lambda kv: -kv[1])
    with open(f"{prefix}.by-crate.txt", "w") as f:
        for k, c in rows:
            f.write(f"{c:8.0f}  {100 * c / total:5.1f}%  {k}\n")
    for k, c in rows[:12]:
        print(f"{c:8.0f}  {100 * c / total:5.1f}%  {k}")


if __name__ == "__main__":
    main()
