#!/usr/bin/env python3
"""Loads N outputs of about 1 KiB into a JetStream KV bucket, for scripts/bench/batch.sh.

    load.py --nats URL --bucket B --run R --n N [--window W]

Keys R.item-0 … R.item-(N-1); each value a JSON object of KEYS numeric fields:
  series-000  i % 10                     (an integer with 10 values: for `count`)
  series-001  (i * 37 % 1000) / 10       (a float in [0, 100) with one decimal: for `histogram`)
  series-002… integers in [0, 100000)    (pseudo-random, seeded: every output is summable)
The bucket is created when missing (history 1, file storage). Publishes are pipelined:
up to W unacknowledged at a time (nats-py's publish_async). Prints one JSON line:
{"n": N, "bytes": total value bytes, "seconds": load time}. Needs nats-py.
"""

import argparse
import asyncio
import json
import random
import sys
import time

import nats
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError

KEYS = 56


def output(i, rng):
    doc = {"series-000": i % 10, "series-001": (i * 37 % 1000) / 10}
    for k in range(2, KEYS):
        doc[f"series-{k:03d}"] = rng.randrange(100000)
    return json.dumps(doc, separators=(",", ":")).encode()


async def load(url, bucket, run, n, window):
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=window)
    try:
        try:
            await js.key_value(bucket)
        except BucketNotFoundError:
            await js.create_key_value(KeyValueConfig(bucket=bucket, history=1, storage=StorageType.FILE))
        rng = random.Random(f"{run}")
        t0 = time.monotonic()
        size, futures = 0, []
        for i in range(n):
            value = output(i, rng)
            size += len(value)
            futures.append(await js.publish_async(f"$KV.{bucket}.{run}.item-{i}", value))
        await asyncio.gather(*futures)  # raises on a refused publish
        return {"n": n, "bytes": size, "seconds": round(time.monotonic() - t0, 3)}
    finally:
        await nc.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nats", required=True)
    p.add_argument("--bucket", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--window", type=int, default=4000)
    a = p.parse_args()
    print(json.dumps(asyncio.run(load(a.nats, a.bucket, a.run, a.n, a.window))))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
