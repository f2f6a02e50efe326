"""Python peer: Office365-REST-Python-Client, ACS app-only, SharePoint REST; uploads 1 MiB files.

usage: python peer_office365.py INFO_JSON UPLOADS
Prints one line per finished upload ("done <seconds since start of that upload>"), so the
harness can time the first upload of a fresh process (the cold start) and the later ones (warm).
"""
import io
import json
import os
import sys
import time

from office365.runtime.auth.client_credential import ClientCredential
from office365.runtime.auth.providers.acs_token_provider import ACSTokenProvider
from office365.sharepoint.client_context import ClientContext

t0 = time.perf_counter()
info = json.load(open(sys.argv[1]))
uploads = int(sys.argv[2])
site = info["sites"][0]
app = next(a for a in info["acs_apps"] if a["name"] == "acs-app")
# The client hard-codes Microsoft's token service URL; point only that at the emulator's ACS.
ACSTokenProvider.get_security_token_service_url = (
    lambda self, realm: f"{info['acs']}/{realm}/tokens/OAuth/2"
)
ctx = ClientContext(site["url"]).with_credentials(
    ClientCredential(app["client_id"], app["client_secret"])
)
folder = ctx.web.get_folder_by_server_relative_url(site["libraries"][0]["server_relative_url"])
body = os.urandom(1024 * 1024)
for i in range(uploads):
    name = f"o365-{os.getpid()}-{i}.bin"
    f = folder.files.upload(io.BytesIO(body), name).execute_query()
    if f.properties.get("Name") != name:
        sys.exit(f"upload answered {f.properties}")
    print(f"done {time.perf_counter() - t0:.6f}", flush=True)
    t0 = time.perf_counter()
# Peak RSS of this process (VmHWM: the high-water mark since exec).
with open("/proc/self/status") as status:
    hwm = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
print(f"peak_rss_kib {hwm}", flush=True)
