"""A minimal AWS Lambda Runtime API (the 2018-06-01 interface the runtime client polls).

One instance serves one function process: `invoke(event)` queues an event, the process takes it
with GET /invocation/next and answers with POST /invocation/{id}/response (or /error). `invoke`
returns the answer, the time from queueing to answer and this server's own share of that time:
handing the event over (from taking it off the queue to the last byte written; with a 1.4 MB
event that includes the function reading it off the socket) and taking the answer (from its
request's headers parsed to its body read).
"""
import json
import queue
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PREFIX = "/2018-06-01/runtime"


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A function process killed while it long-polls /next resets its connection: expected.
        if not isinstance(sys.exc_info()[1], (ConnectionError, BrokenPipeError)):
            super().handle_error(request, client_address)


class RuntimeApi:
    def __init__(self, function_arn="arn:aws:lambda:us-east-1:123456789012:function:bench"):
        self.arn = function_arn
        self.pending = queue.Queue()
        self.answers = {}
        self.done = {}
        self.init_error = None
        self.first_poll = None  # perf_counter time of the first GET /invocation/next
        # request id -> seconds of this server's own handling: of the event, of the answer
        self.handover = {}
        self.taking = {}
        self.alive = None  # optional callable raising if something the function needs has died
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def body(self):
                n = int(self.headers.get("content-length") or 0)
                return self.rfile.read(n) if n else b""

            def reply(self, status, payload=b"{}", headers=()):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                if self.path != f"{PREFIX}/invocation/next":
                    return self.reply(404)
                if api.first_poll is None:
                    api.first_poll = time.perf_counter()
                request_id, payload = api.pending.get()
                got = time.perf_counter()
                deadline = int((time.time() + 900) * 1000)
                self.reply(200, payload, [
                    ("lambda-runtime-aws-request-id", request_id),
                    ("lambda-runtime-deadline-ms", str(deadline)),
                    ("lambda-runtime-invoked-function-arn", api.arn),
                    ("lambda-runtime-trace-id", f"Root=1-{uuid.uuid4().hex[:8]}-{uuid.uuid4().hex[:24]}"),
                ])
                self.wfile.flush()
                api.handover[request_id] = time.perf_counter() - got

            def do_POST(self):
                started = time.perf_counter()
                body = self.body()
                now = time.perf_counter()
                parts = self.path[len(PREFIX):].strip("/").split("/")
                if parts[:2] == ["init", "error"]:
                    api.init_error = body.decode(errors="replace")
                    self.reply(202)
                    return
                if len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
                    request_id = parts[1]
                    if request_id in api.done:
                        api.taking[request_id] = now - started
                        api.answers[request_id] = (parts[2], body, now)
                        self.reply(202)
                        api.done[request_id].set()
                        return
                self.reply(404)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def queue(self, event):
        """Queues one event (a dict, or its JSON already encoded); returns its request id."""
        request_id = str(uuid.uuid4())
        self.done[request_id] = threading.Event()
        self.pending.put((request_id, event if isinstance(event, bytes) else json.dumps(event).encode()))
        return request_id

    def wait(self, request_id, timeout=120):
        """The answer (kind, JSON or text body, perf_counter time) of a queued event. Checks
        `alive` every second, so a dead function, moto or emulator ends the wait at once."""
        deadline = time.monotonic() + timeout
        while not self.done[request_id].wait(1):
            if self.alive:
                self.alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer to {request_id} in {timeout}s (init error: {self.init_error})")
        kind, body, at = self.answers.pop(request_id)
        del self.done[request_id]
        try:
            body = json.loads(body)
        except ValueError:
            body = body.decode(errors="replace")
        return kind, body, at

    def invoke(self, event, timeout=120):
        """Queues an event and waits: (kind, body, seconds from queueing to answer, this server's
        share of them). The event is encoded before the clock starts."""
        payload = json.dumps(event).encode()
        t0 = time.perf_counter()
        request_id = self.queue(payload)
        kind, body, at = self.wait(request_id, timeout)
        return kind, body, at - t0, self.harness_s(request_id)

    def harness_s(self, request_id):
        """This server's own seconds for an answered event (the hand-over's record is written just
        after its last byte, so wait for it briefly)."""
        for _ in range(100):
            if request_id in self.handover:
                break
            time.sleep(0.001)
        return self.handover.pop(request_id, 0.0) + self.taking.pop(request_id, 0.0)

    def close(self):
        self.server.shutdown()
        self.server.server_close()
