"""Shared helpers for the client fidelity scripts: emulator info and its inspection endpoint."""
import json
import os
import sys

import requests


def info():
    with open(os.environ["EMULATOR_INFO"], encoding="utf-8") as f:
        return json.load(f)


def ca_bundle(i):
    return i.get("ca_pem_path") or True


def stored_bytes(i, path):
    r = requests.get(
        f"{i['base_url']}/_emulator/files/content",
        params={"path": path},
        verify=ca_bundle(i),
        timeout=30,
    )
    if r.status_code != 200:
        fail(f"inspection endpoint has no file at {path}: {r.status_code} {r.text}")
    return r.content


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)
