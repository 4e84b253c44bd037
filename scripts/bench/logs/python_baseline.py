"""Baseline for logs.sh: nginx combined lines → JSON with Python's `re` and `json`.

Reads stdin, writes the file named by the first argument (stdout without one)."""

import json
import re
import sys

LINE = re.compile(
    r'(?P<remote_addr>\S+) \S+ (?P<remote_user>.*?) \[(?P<time>[^\]]+)\] '
    r'"(?P<request>(?:[^"\\]|\\.)*)" (?P<status>\d+|-) (?P<body_bytes_sent>\d+|-)'
    r'(?: "(?P<http_referer>(?:[^"\\]|\\.)*)" "(?P<http_user_agent>(?:[^"\\]|\\.)*)")?'
)

out = open(sys.argv[1], "w", buffering=1 << 20) if len(sys.argv) > 1 else sys.stdout
dumps = json.dumps
for line in sys.stdin:
    m = LINE.match(line)
    if m is None:
        out.write(dumps({"message": line.rstrip("\n"), "error": "no match"}) + "\n")
        continue
    rec = m.groupdict()
    method, _, rest = rec.pop("request").partition(" ")
    path, _, protocol = rest.rpartition(" ")
    rec["method"], rec["path"], rec["protocol"] = method, path, protocol
    rec["status"] = int(rec["status"].replace("-", "0"))
    rec["body_bytes_sent"] = int(rec["body_bytes_sent"].replace("-", "0"))
    out.write(dumps(rec) + "\n")
out.flush()
