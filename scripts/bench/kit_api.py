"""The API server of the API-only kit, for the benchmarks that run without a node.

Imported for `connect` and `request` (HTTPS with the kit's admin certificate, as
scripts/bench/operator.sh uses it), or run as the stand-in kubelet:

    WORK=DIR NS=NAMESPACE SERVER=https://... python3 scripts/bench/kit_api.py complete

Without a node a pod stays Pending. The stand-in watches NAMESPACE's pods and marks each
one Succeeded through the pod status subresource (one PATCH, exit code 0, for each of its
containers): the Job controller then completes its Job as it would after a real run.
"""

import concurrent.futures
import http.client
import json
import os
import ssl
import sys
import threading
import time
import urllib.parse


def connect(timeout=60):
    """A connection to $SERVER with the admin certificate of the kit in $WORK/cp."""
    work = os.environ["WORK"]
    server = urllib.parse.urlparse(os.environ["SERVER"])
    tls = ssl.create_default_context(cafile=f"{work}/cp/pki/ca.crt")
    tls.load_cert_chain(f"{work}/cp/pki/admin.crt", f"{work}/cp/pki/admin.key")
    return http.client.HTTPSConnection(server.hostname, server.port, context=tls, timeout=timeout)


def request(conn, method, path, body=None, ctype="application/json"):
    """One request: its status and body."""
    headers = {"Accept": "application/json", "User-Agent": "rigging-bench"}
    if body is not None:
        headers["Content-Type"] = ctype
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.read()


def complete(ns):
    """Marks every pod of `ns` Succeeded as soon as it shows up (a watch); never returns."""
    pool = concurrent.futures.ThreadPoolExecutor(4)
    conns = {}
    done = set()

    def patch(name, containers):
        t = threading.get_ident()
        if t not in conns:
            conns[t] = connect()
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        body = json.dumps({"status": {"phase": "Succeeded", "containerStatuses": [{
            "name": c["name"], "image": c["image"], "imageID": "", "ready": False,
            "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed",
            "startedAt": now, "finishedAt": now}}} for c in containers]}})
        for _ in range(3):
            try:
                status, _ = request(conns[t], "PATCH", f"/api/v1/namespaces/{ns}/pods/{name}/status",
                                    body, "application/merge-patch+json")
                if status in (200, 404):
                    return
            except (http.client.HTTPException, OSError):
                conns[t] = connect()
        print(f"stand-in: could not complete {name}", file=sys.stderr)

    rv = ""
    while True:
        conn = connect(timeout=None)
        path = f"/api/v1/namespaces/{ns}/pods?watch=1&allowWatchBookmarks=true" + (f"&resourceVersion={rv}" if rv else "")
        conn.request("GET", path, headers={"Accept": "application/json", "User-Agent": "rigging-bench"})
        resp = conn.getresponse()
        if resp.status != 200:
            rv = ""
            time.sleep(1)
            continue
        for line in resp:
            e = json.loads(line)
            o = e["object"]
            if e["type"] == "ERROR":
                rv = ""
                break
            rv = o["metadata"].get("resourceVersion", rv)
            if e["type"] in ("ADDED", "MODIFIED"):
                name = o["metadata"]["name"]
                if (o.get("status") or {}).get("phase") == "Pending" and name not in done:
                    done.add(name)
                    pool.submit(patch, name, o["spec"]["containers"])


if __name__ == "__main__" and sys.argv[1:] == ["complete"]:
    complete(os.environ["NS"])
