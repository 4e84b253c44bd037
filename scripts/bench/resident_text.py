#!/usr/bin/env python3
"""How much of a running process's executable code is resident, and in how many aligned
64 KiB blocks (the kernel's fault-around maps up to 16 pages around each page fault, so a
block that is fully resident is the mark of one fault):

    scripts/bench/resident_text.py PID [BINARY]

BINARY (default: /proc/PID/exe) names the mapping whose executable segment is read from
/proc/PID/pagemap, which needs root to show which pages are present.
"""

import os
import struct
import sys

PAGE = 4096
BLOCK_PAGES = 16


def main():
    pid = sys.argv[1]
    binary = os.path.realpath(sys.argv[2] if len(sys.argv) > 2 else f"/proc/{pid}/exe")
    text = None
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and fields[5] == binary and fields[1] == "r-xp":
                text = tuple(int(x, 16) for x in fields[0].split("-"))
    if text is None:
        sys.exit(f"no executable mapping of {binary} in process {pid}")
    start, end = text
    with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        pagemap.seek(start // PAGE * 8)
        raw = pagemap.read((end - start) // PAGE * 8)
    pages = len(raw) // 8
    present = [i for i in range(pages) if struct.unpack_from("<Q", raw, i * 8)[0] >> 63]
    blocks = {}
    for i in present:
        blocks.setdefault((start // PAGE + i) // BLOCK_PAGES, []).append(i)
    full = sum(1 for b in blocks.values() if len(b) == BLOCK_PAGES)
    print(
        f"{len(present)} of {pages} text pages resident ({len(present) * PAGE / 2**20:.1f} MiB), "
        f"in {len(blocks)} aligned 64 KiB blocks, {full} of them full"
    )


if __name__ == "__main__":
    main()
