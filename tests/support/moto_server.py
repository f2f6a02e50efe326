#!/usr/bin/env python3
"""moto's server, with DynamoDB's atomic conditional writes and a Secrets Manager that scales.

Usage is moto_server's own (`-H HOST -p PORT`). Changes from plain moto, each where moto departs
from the real service in a way tests or benchmarks notice:

- moto checks a condition and then writes, without a lock, so two racing conditional
  `UpdateItem`s on one item can both succeed there (we measured 68 of 300 rounds of 8 racers).
  DynamoDB serializes writes to an item; spbridge's job leases rely on that. DynamoDB requests
  run one at a time here.
- moto's secret store finds a secret by scanning every secret, several times a call, and
  iterates its dict unlocked while other threads add to it: with 10,000 secrets each call cost
  milliseconds of CPU (seeding them was quadratic), and concurrent `CreateSecret`s failed with
  500s ("dictionary changed size during iteration"). Lookups by name go straight to the dict
  here (ARNs still scan), and Secrets Manager requests run one at a time.
- Each request's time inside moto is added up, so a benchmark can subtract moto's own time
  from a run without a timing proxy in the path: `GET /_spbridge/moto-time` answers
  `{"busy_s", "sum_s", "requests", "active"}` (busy: time with at least one request in
  progress; active: requests in progress now),
  `DELETE` zeroes it.
"""
import json
import sys
import threading
import time

from moto import server
from moto.moto_server import werkzeug_app
from moto.secretsmanager import models as secrets_models

_DYNAMODB = threading.Lock()
_SECRETS = threading.Lock()
TIMING_PATH = "/_spbridge/moto-time"


def _serialized(lock, app, environ, start_response):
    with lock:
        # The body is produced inside the lock: moto answers with a finished list.
        return list(app(environ, start_response))


class _Timing:
    """Time spent answering requests: the sum, and the union of the in-progress intervals."""

    def __init__(self):
        self.lock = threading.Lock()
        self.active = 0
        self.since = 0.0
        self.busy = 0.0
        self.total = 0.0
        self.requests = 0

    def start(self):
        now = time.perf_counter()
        with self.lock:
            if self.active == 0:
                self.since = now
            self.active += 1
        return now

    def end(self, started):
        now = time.perf_counter()
        with self.lock:
            self.active -= 1
            if self.active == 0:
                self.busy += now - self.since
            self.total += now - started
            self.requests += 1

    def snapshot(self):
        with self.lock:
            busy = self.busy + (time.perf_counter() - self.since if self.active else 0.0)
            return {"busy_s": busy, "sum_s": self.total, "requests": self.requests, "active": self.active}

    def reset(self):
        with self.lock:
            self.busy = self.total = 0.0
            self.requests = 0
            self.since = time.perf_counter()


TIMING = _Timing()


def _timing_endpoint(environ, start_response):
    if environ["REQUEST_METHOD"] == "DELETE":
        TIMING.reset()
    body = json.dumps(TIMING.snapshot()).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


_original = server.DomainDispatcherApplication


class _Patched(_original):
    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") == TIMING_PATH:
            return _timing_endpoint(environ, start_response)
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if target.startswith("DynamoDB_"):
            return _serialized(_DYNAMODB, super().__call__, environ, start_response)
        if target.startswith("secretsmanager."):
            return _serialized(_SECRETS, super().__call__, environ, start_response)
        return super().__call__(environ, start_response)


server.DomainDispatcherApplication = _Patched

# The whole request: reading the body, moto's work and writing the answer (werkzeug has parsed
# the request line and headers by then; that is all it leaves out).
_run_wsgi = werkzeug_app.MotoRequestHandler.run_wsgi


def _timed_run_wsgi(self):
    if self.path.startswith(TIMING_PATH):
        return _run_wsgi(self)
    started = TIMING.start()
    try:
        return _run_wsgi(self)
    finally:
        TIMING.end(started)


werkzeug_app.MotoRequestHandler.run_wsgi = _timed_run_wsgi

# Secret names are the store's keys: look them up directly, and scan only for ARNs.
_Store = secrets_models.SecretsStore
_scan_getitem, _scan_contains, _scan_get, _scan_pop = _Store.__getitem__, _Store.__contains__, _Store.get, _Store.pop


def _getitem(self, key):
    return dict.__getitem__(self, key) if dict.__contains__(self, key) else _scan_getitem(self, key)


def _contains(self, key):
    return dict.__contains__(self, key) or _scan_contains(self, key)


def _get(self, key):
    return dict.__getitem__(self, key) if dict.__contains__(self, key) else _scan_get(self, key)


def _pop(self, key):
    return dict.pop(self, key) if dict.__contains__(self, key) else _scan_pop(self, key)


_Store.__getitem__, _Store.__contains__, _Store.get, _Store.pop = _getitem, _contains, _get, _pop

if __name__ == "__main__":
    server.main(sys.argv[1:])
