#!/usr/bin/env python3
"""The reference reducer: what `rigging-sidecar reduce` computes, written plainly in Python.

    reduce.py --reducer {count,sum,histogram,concat} [--path P] [--le B]...
              (--jsonl FILE | --nats URL --bucket B --run R | --selftest)

Input, in store order: --jsonl FILE, one line per output, {"key": K, "output": "<the output
as a string>"}; or --nats, the latest value of every key `R.…` of the JetStream KV bucket B
(deleted and purged keys left out), in stream order, the key being the part after `R.`.
The --jsonl mode uses the standard library only; --nats imports nats-py.

Prints the result: for count, sum and histogram one JSON document (keys sorted); for concat
one JSON line per output, {"key": K, "output": <the output parsed, or the raw string when it
is not JSON>}.

JSON is read as serde_json reads it: integers outside [-2^63, 2^64-1] (and `-0`) become
floats, NaN/Infinity and numbers that overflow a float are not JSON. Counted numbers are
keyed by their text as serde_json prints it (`12`, `1.5`, `1.0`, `1e20`, `1e-7`).
"""

import argparse
import json
import math
import re
import sys

I64_MIN, U64_MAX = -(2**63), 2**64 - 1


# ---- JSON as serde_json reads it -------------------------------------------------------------

def _int(text):
    v = int(text)
    if text == "-0" or not I64_MIN <= v <= U64_MAX:
        return float(text)
    return v


def _float(text):
    v = float(text)
    if not math.isfinite(v):
        raise ValueError("number out of range")
    return v


def _constant(text):
    raise ValueError(f"not JSON: {text}")


def parse(raw):
    """(the output as a JSON value,), or None when it is not JSON (a tuple: `null` is JSON)."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    try:
        doc = json.loads(raw, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except (ValueError, RecursionError):
        return None
    if LONE_ESCAPE.search(raw) and lone_surrogate(doc):  # serde_json refuses those
        return None
    return (doc,)


LONE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def lone_surrogate(v):
    """Whether a string in V holds a surrogate: Python's json lets a lone one through."""
    if isinstance(v, str):
        return any("\ud800" <= c <= "\udfff" for c in v)
    if isinstance(v, dict):
        return any(lone_surrogate(k) or lone_surrogate(x) for k, x in v.items())
    return isinstance(v, list) and any(lone_surrogate(x) for x in v)


def is_number(v):
    return type(v) in (int, float)  # not bool


def number_text(v):
    """serde_json's text of a number: integers as they are, floats as ryu prints them."""
    if type(v) is int:
        return str(v)
    sign = "-" if math.copysign(1.0, v) < 0 else ""
    r = repr(abs(v))  # the shortest round-trip digits, as ryu finds them
    mantissa, _, exp = r.partition("e")
    whole, _, frac = mantissa.partition(".")
    digits, point = whole + frac, len(whole) + int(exp or 0)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    digits = stripped.rstrip("0")
    if not digits:
        return sign + "0.0"
    n, kk = len(digits), point
    k = kk - n
    if 0 <= k and kk <= 16:
        s = digits + "0" * k + ".0"
    elif 0 < kk <= 16:
        s = digits[:kk] + "." + digits[kk:]
    elif -5 < kk <= 0:
        s = "0." + "0" * -kk + digits
    elif n == 1:
        s = f"{digits}e{kk - 1}"
    else:
        s = f"{digits[0]}.{digits[1:]}e{kk - 1}"
    return sign + s


def at(doc, path):
    """(value,) at the dotted PATH of DOC, or None when some step is not an object with the key."""
    for step in path.split(".") if path else []:
        if not isinstance(doc, dict) or step not in doc:
            return None
        doc = doc[step]
    return (doc,)


# ---- the reducers --------------------------------------------------------------------------------

def reduce_count(outputs, path):
    counts = {}
    for _, raw in outputs:
        doc = parse(raw)
        v = doc and at(doc[0], path)
        if v is None:
            continue
        v = v[0]
        if isinstance(v, str):
            key = v
        elif type(v) is bool:
            key = "true" if v else "false"
        elif is_number(v):
            key = number_text(v)
        else:  # null, array, object
            continue
        counts[key] = counts.get(key, 0) + 1
    return counts


def add(a, b):
    """a + b as serde_json numbers summed in Rust: exact integers while the sum fits in i64 or
    u64, else f64 (of the exact sum, when both are integers); None when it is not finite."""
    if type(a) is int and type(b) is int:
        s = a + b
        if I64_MIN <= s <= U64_MAX:
            return s
        s = float(s)
    else:
        s = float(a) + float(b)
    return s if math.isfinite(s) else None


def all_numbers(obj):
    return all(is_number(v) or (isinstance(v, dict) and all_numbers(v)) for v in obj.values())


def fits(total, obj):
    """Whether OBJ can be added to TOTAL, every leaf a number, no number meeting an object."""
    for k, v in obj.items():
        t = total.get(k)
        if is_number(v):
            if k in total and (not is_number(t) or add(t, v) is None):
                return False
        elif isinstance(v, dict):
            if k in total and not (isinstance(t, dict) and fits(t, v)):
                return False
            if k not in total and not all_numbers(v):
                return False
        else:
            return False
    return True


def merge(total, obj):
    for k, v in obj.items():
        if k not in total:
            total[k] = json.loads(json.dumps(v))  # a copy
        elif is_number(v):
            total[k] = add(total[k], v)
        else:
            merge(total[k], v)


def reduce_sum(outputs, path):
    total = {}
    for _, raw in outputs:
        doc = parse(raw)
        obj = doc and at(doc[0], path)
        if obj is None or not isinstance(obj[0], dict) or not fits(total, obj[0]):
            continue
        merge(total, obj[0])
    return total


def reduce_histogram(outputs, path, bounds):
    counts, n, s = [0] * (len(bounds) + 1), 0, 0.0
    for _, raw in outputs:
        doc = parse(raw)
        v = doc and at(doc[0], path)
        if v is None or not is_number(v[0]):
            continue
        v = float(v[0])
        if not math.isfinite(s + v):  # the sum would not be a number JSON holds: left out
            continue
        i = next((i for i, b in enumerate(bounds) if v <= b), len(bounds))
        counts[i] += 1
        n += 1
        s += v
    buckets = [{"le": b, "count": c} for b, c in zip(bounds, counts)]
    buckets.append({"le": "+Inf", "count": counts[-1]})
    return {"buckets": buckets, "count": n, "sum": s}


def concat_lines(outputs):
    for key, raw in outputs:
        doc = parse(raw)
        if doc is None:
            doc = (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw,)
        yield json.dumps({"key": key, "output": doc[0]})


# ---- the inputs ----------------------------------------------------------------------------------

def from_jsonl(path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                yield d["key"], d["output"]


def from_nats(url, bucket, run, batch=500):
    """The latest value of every key RUN.… of the KV bucket, in stream order, deletes and purges
    left out: an ephemeral pull consumer on the bucket's stream, deliver policy last per
    subject, filtered on the run's keys, read up to the count it had pending when created.
    Fetched BATCH at a time, so memory does not grow with the count (a KV watch would: its
    push consumer fills the client's queue faster than this reduces)."""
    import asyncio

    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    loop = asyncio.new_event_loop()
    prefix = f"$KV.{bucket}.{run}."

    async def start():
        nc = await nats.connect(url)
        sub = await nc.jetstream().pull_subscribe(
            prefix + ">", stream=f"KV_{bucket}",
            config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                                  inactive_threshold=60))
        return nc, sub, (await sub.consumer_info()).num_pending

    nc, sub, left = loop.run_until_complete(start())
    try:
        while left > 0:
            for m in loop.run_until_complete(sub.fetch(min(batch, left), timeout=30)):
                left -= 1
                if (m.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
                    continue
                yield m.subject[len(prefix):], m.data
    finally:
        loop.run_until_complete(nc.close())
        loop.close()


def selftest():
    t = lambda outs: [(str(i), o) for i, o in enumerate(outs)]  # noqa: E731
    assert reduce_count(t(['{"a":"x"}', '{"a":12}', '{"a":1.0}', '{"a":true}', '{"a":null}',
                           '{"a":[1]}', '{}', 'not json', '"x"', '{"a":"12"}', '{"a":1e20}',
                           '{"a":1.5e-7}', '{"a":0.00001}', '{"a":-0}']), "a") == \
        {"x": 1, "12": 2, "1.0": 1, "true": 1, "1e20": 1, "1.5e-7": 1, "0.00001": 1, "-0.0": 1}
    assert reduce_count(t(['"a"', "3", '"a"', "{}"]), "") == {"a": 2, "3": 1}
    assert reduce_sum(t(['{"a":1,"b":{"c":2}}', '{"a":2,"b":{"c":0.5,"d":1}}',
                         '{"a":"x"}', '{"a":{"z":1}}', '{"b":3}', '{"e":true}', '[1]', "1",
                         '{"e":{"f":null}}', '{"n":{}}']), "") == {"a": 3, "b": {"c": 2.5, "d": 1}, "n": {}}
    assert reduce_sum(t(['{"a":18446744073709551615}', '{"a":1}']), "") == {"a": 1.8446744073709552e19}
    assert reduce_sum(t(['{"a":-9223372036854775808}', '{"a":18446744073709551615}']), "") == \
        {"a": 9223372036854775807}
    assert reduce_sum(t(['{"a":1e308}', '{"a":1e308}', '{"a":1}']), "") == {"a": 1e308 + 1}
    assert reduce_sum(t(['{"a":18446744073709551615}', '{"a":18446744073709551615}']), "") == \
        {"a": float(2 * U64_MAX)}
    assert reduce_histogram(t(['{"v":1e308}', '{"v":1e308}']), "v", [0.5])["count"] == 1
    assert reduce_sum(t(['{"m":{"a":1}}', '{"m":2}', '{"m":{"a":2}}']), "m") == {"a": 3}
    assert reduce_histogram(t(['{"v":1}', '{"v":2}', '{"v":2.5}', '{"v":100}', '{"v":true}', '{"v":"1"}']),
                            "v", [1.0, 2.0]) == {"buckets": [{"le": 1.0, "count": 1}, {"le": 2.0, "count": 1},
                                                             {"le": "+Inf", "count": 2}], "count": 4, "sum": 105.5}
    assert parse('"\\ud83d\\ude00"') == ("\U0001f600",) and parse('"\\ud83d"') is None
    lines = list(concat_lines([("a", '{"x": 1}'), ("b", "oops"), ("c", "NaN")]))
    assert [json.loads(x) for x in lines] == [{"key": "a", "output": {"x": 1}}, {"key": "b", "output": "oops"},
                                              {"key": "c", "output": "NaN"}]
    for f in [0.1, 1.5, 123456.789, 1e15, 1e16, 1.2345e16, 1e-4, 1e-5, 1.5e-5, 5e-324, 1.7976931348623157e308]:
        assert float(number_text(f)) == f, f
    assert [number_text(f) for f in [1e15, 1e16, 1.2345e17, 1e-4, 1.5e-5, 0.0]] == \
        ["1000000000000000.0", "1e16", "1.2345e17", "0.0001", "0.000015", "0.0"]
    print("selftest: ok")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reducer", choices=["count", "sum", "histogram", "concat"])
    p.add_argument("--path", default="")
    p.add_argument("--le", type=float, action="append", default=[])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--jsonl")
    src.add_argument("--nats")
    src.add_argument("--selftest", action="store_true")
    p.add_argument("--bucket")
    p.add_argument("--run")
    a = p.parse_args()
    if a.selftest:
        return selftest()
    if not a.reducer:
        p.error("--reducer is required")
    if a.nats and not (a.bucket and a.run):
        p.error("--nats needs --bucket and --run")
    if any(x >= y for x, y in zip(a.le, a.le[1:])):
        p.error("--le bounds must be strictly ascending")
    outputs = from_jsonl(a.jsonl) if a.jsonl else from_nats(a.nats, a.bucket, a.run)
    if a.reducer == "concat":
        for line in concat_lines(outputs):
            sys.stdout.write(line + "\n")
        return
    result = {
        "count": lambda: reduce_count(outputs, a.path),
        "sum": lambda: reduce_sum(outputs, a.path),
        "histogram": lambda: reduce_histogram(outputs, a.path, a.le),
    }[a.reducer]()
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
