"""Writes N nginx `combined` access-log lines to stdout (benchmark input for logs.sh).

Deterministic (fixed seed) and varied like a real log: IPv4 and IPv6 clients, mostly `-`
users, several methods, statuses and paths, a few user agents with escaped quotes.
"""

import random
import sys

n = int(sys.argv[1])
rng = random.Random(42)
ips = [f"{rng.randrange(1, 255)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}" for _ in range(500)]
ips += [f"2001:db8::{rng.randrange(65536):x}:{rng.randrange(65536):x}" for _ in range(50)]
users = ["-"] * 20 + ["alice", "bob"]
methods = ["GET"] * 8 + ["POST", "HEAD", "PUT", "DELETE"]
paths = [f"/api/v1/items/{i}?page={i % 7}&sort=desc" for i in range(300)] + [
    "/", "/index.html", "/static/app.3f2a1c.js", "/static/style.css", "/favicon.ico", "/healthz",
]
statuses = ["200"] * 15 + ["304", "301", "404", "500", "499"]
referers = ["-"] * 5 + ["https://www.example.com/", "https://search.example.org/?q=rigging+sidecar"]
agents = [
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
    "curl/8.4.0",
    "kube-probe/1.29",
    'Bot \\"quoted\\" crawler/2.1 (+http://bot.example.com)',
]
months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

out = sys.stdout
buf = []
second = 0
for i in range(n):
    if i % 50 == 0:
        second += 1
    h, m, s = (second // 3600) % 24, (second // 60) % 60, second % 60
    day = 1 + (second // 86400) % 28
    b = "-" if rng.random() < 0.05 else str(rng.randrange(0, 200000))
    buf.append(
        f'{rng.choice(ips)} - {rng.choice(users)} [{day:02d}/{months[i % 12]}/2026:{h:02d}:{m:02d}:{s:02d} +0100] '
        f'"{rng.choice(methods)} {rng.choice(paths)} HTTP/1.1" {rng.choice(statuses)} {b} '
        f'"{rng.choice(referers)}" "{rng.choice(agents)}"\n'
    )
    if len(buf) == 10000:
        out.write("".join(buf))
        buf.clear()
out.write("".join(buf))
