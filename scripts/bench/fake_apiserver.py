#!/usr/bin/env python3
"""A stand-in Kubernetes API server for measuring rigging-operator at rest.

Answers every list with an empty list and holds every watch open without events, which is
what an idle cluster with no Rigging resources looks like to a controller. Usage:
fake_apiserver.py PORT (listens on 127.0.0.1; logs each request path to stderr).
"""
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("fake-apiserver: " + (fmt % args) + "\n")

    def do_GET(self):
        url = urlparse(self.path)
        query = parse_qs(url.query)
        if query.get("watch") == ["true"] or query.get("watch") == ["1"]:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            timeout = int(query.get("timeoutSeconds", ["290"])[0])
            time.sleep(timeout)
            self.wfile.write(b"0\r\n\r\n")
            return
        body = json.dumps({
            "kind": "List",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": "1"},
            "items": [],
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    server.serve_forever()
