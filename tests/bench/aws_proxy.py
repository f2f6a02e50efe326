"""A counting, latency-injecting HTTP proxy in front of moto.

The functions under test get `AWS_ENDPOINT_URL` pointing here. Every request is counted by
operation (`SecretsManager.GetSecretValue`, `DynamoDB_20120810.PutItem`, `S3 PUT`, ...), delayed by
the latency configured for its service, then forwarded to moto unchanged (moto does not check
SigV4 signatures, so the Host change is harmless). The times of PutSecretValue calls, and of all
the writes that share its quota, are kept to show how writes spread over time. Timed runs do not go through it: its hop slows every call
(moto's own time is measured inside moto, see tests/support/moto_server.py).
"""
import http.client
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

# Secrets Manager's writes that share one quota of 50 a second per Region.
QUOTA_WRITES = {f"SecretsManager.{op}" for op in (
    "PutSecretValue", "UpdateSecret", "UpdateSecretVersionStage", "RemoveRegionsFromReplication",
    "ReplicateSecretToRegion", "StopReplicationToReplica")}
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # A function process killed mid-call (the bench stopping it) resets its connection: expected.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class AwsProxy:
    def __init__(self, moto_url):
        up = urlparse(moto_url)
        self.upstream = (up.hostname, up.port)
        self.counts = Counter()
        self.latency_ms = {}  # service prefix of the operation (e.g. "secretsmanager") -> ms
        self.put_secret_times = []
        self.write_times = []  # every call in QUOTA_WRITES
        self.upstream_errors = 0
        self.lock = threading.Lock()
        self.local = threading.local()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def read_body(self):
                if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("content-length") or 0)
                return self.rfile.read(n) if n else b""

            def forward(self):
                body = self.read_body()
                op = proxy.operation(self.command, self.headers)
                with proxy.lock:
                    proxy.counts[op] += 1
                    if op == "SecretsManager.PutSecretValue":
                        proxy.put_secret_times.append(time.monotonic())
                    if op in QUOTA_WRITES:
                        proxy.write_times.append(time.monotonic())
                delay = proxy.delay_for(op)
                if delay:
                    time.sleep(delay / 1000)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                headers["content-length"] = str(len(body))
                try:
                    status, reason, rheaders, rbody = proxy.send(self.command, self.path, body, headers)
                except (OSError, http.client.HTTPException) as e:
                    # moto gone: a 502 the function reports, and one line here instead of a traceback.
                    proxy.upstream_errors += 1
                    if proxy.upstream_errors == 1:
                        print(f"aws_proxy: moto at {proxy.upstream[0]}:{proxy.upstream[1]} did not answer: {e}",
                              flush=True)
                    status, reason, rheaders, rbody = 502, "Bad Gateway", [], f"moto did not answer: {e}".encode()
                self.send_response(status, reason)
                for k, v in rheaders:
                    if k.lower() not in HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("content-length", str(len(rbody)))
                self.end_headers()
                self.wfile.write(rbody)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.request_queue_size = 512
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def operation(method, headers):
        target = headers.get("x-amz-target")
        if target:
            service, _, op = target.partition(".")
            service = {"secretsmanager": "SecretsManager", "AmazonSQS": "SQS"}.get(service, service)
            if service.startswith("DynamoDB"):
                service = "DynamoDB"
            return f"{service}.{op}"
        return f"S3 {method}"

    def delay_for(self, op):
        service = op.split(".")[0].split(" ")[0].lower()
        return self.latency_ms.get(service, 0)

    def send(self, method, path, body, headers):
        # One upstream connection per proxy thread, reopened when moto closes it.
        for attempt in (0, 1):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = self.local.conn = http.client.HTTPConnection(*self.upstream, timeout=120)
            try:
                conn.request(method, path, body=body, headers=headers)
                r = conn.getresponse()
                return r.status, r.reason, r.getheaders(), r.read()
            except (http.client.HTTPException, OSError):
                conn.close()
                self.local.conn = None
                if attempt:
                    raise
        raise RuntimeError("unreachable")

    def reset(self):
        with self.lock:
            self.counts.clear()
            self.put_secret_times.clear()
            self.write_times.clear()

    def snapshot(self):
        with self.lock:
            return Counter(self.counts), list(self.put_secret_times), list(self.write_times)

    def close(self):
        self.server.shutdown()
        self.server.server_close()
