"""Python peer: MSAL (Entra app, certificate credential) + requests, Graph simple upload of 1 MiB.

usage: python peer_msal.py INFO_JSON UPLOADS
Prints one line per finished upload ("done <seconds since start of that upload>").
"""
import json
import os
import sys
import time

import msal
import requests

t0 = time.perf_counter()
info = json.load(open(sys.argv[1]))
uploads = int(sys.argv[2])
app_info = next(a for a in info["entra_apps"] if a["name"] == "entra-app")
verify = info.get("ca_pem_path") or True
app = msal.ConfidentialClientApplication(
    app_info["client_id"],
    client_credential={"private_key": app_info["private_key_pem"], "thumbprint": app_info["thumbprint_sha1"]},
    authority=f"{info['login']}/{info['tenant_id']}",
    instance_discovery=False,
    verify=verify,
)
drive = info["sites"][0]["libraries"][0]["drive_id"]
session = requests.Session()
session.verify = verify
body = os.urandom(1024 * 1024)
for i in range(uploads):
    # MSAL serves the cached token after the first call, as an application would.
    token = app.acquire_token_for_client(scopes=["https://graph.microsoft.com/.default"])
    if "access_token" not in token:
        sys.exit(f"token: {token}")
    r = session.put(
        f"{info['graph']}/v1.0/drives/{drive}/root:/bench/msal-{os.getpid()}-{i}.bin:/content",
        data=body,
        headers={"Authorization": f"Bearer {token['access_token']}"},
        timeout=60,
    )
    if r.status_code not in (200, 201):
        sys.exit(f"graph PUT: {r.status_code} {r.text}")
    print(f"done {time.perf_counter() - t0:.6f}", flush=True)
    t0 = time.perf_counter()
# Peak RSS of this process (VmHWM: the high-water mark since exec).
with open("/proc/self/status") as status:
    hwm = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
print(f"peak_rss_kib {hwm}", flush=True)
