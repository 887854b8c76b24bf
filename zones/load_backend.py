#!/usr/bin/env python3
"""A demo backend for zones/spill.toml: answers GET /healthz with 200 and "X-Load: <load>",
the load read from the file LOADFILE on every request (edit it to change the load).

usage: load_backend.py ADDRESS PORT LOADFILE
"""
import http.server
import sys

address, port, loadfile = sys.argv[1], int(sys.argv[2]), sys.argv[3]


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        with open(loadfile) as f:
            load = f.read().strip()
        self.send_response(200)
        self.send_header("X-Load", load)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


http.server.HTTPServer((address, port), Handler).serve_forever()
