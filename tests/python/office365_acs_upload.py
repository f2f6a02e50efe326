"""Office365-REST-Python-Client against the emulator: ACS app-only login (realm discovery on the
site, then the client-credentials grant), a small upload and a chunked upload into a library."""
import io
import os

from office365.runtime.auth.client_credential import ClientCredential
from office365.runtime.auth.providers.acs_token_provider import ACSTokenProvider
from office365.sharepoint.client_context import ClientContext

from common import check, info, stored_bytes

i = info()
site = i["sites"][0]
app = i["acs_apps"][0]

# The client hard-codes Microsoft's token service URL; point only that at the emulator's ACS.
ACSTokenProvider.get_security_token_service_url = (
    lambda self, realm: f"{i['acs']}/{realm}/tokens/OAuth/2"
)

ctx = ClientContext(site["url"]).with_credentials(
    ClientCredential(app["client_id"], app["client_secret"])
)
web = ctx.web.get().execute_query()
check(web.properties.get("ServerRelativeUrl") == site["server_relative_url"], f"web: {web.properties}")

lib = site["libraries"][0]["server_relative_url"]
folder = ctx.web.get_folder_by_server_relative_url(lib)

small = b"hello from office365-rest-python-client\n"
f = folder.files.upload(io.BytesIO(small), "o365-small.txt").execute_query()
check(f.properties.get("Name") == "o365-small.txt", f"small upload answered {f.properties}")
check(stored_bytes(i, f"{lib}/o365-small.txt") == small, "small file bytes differ")

big = os.urandom(2 * 1024 * 1024 + 12345)
chunk = 1024 * 1024
seen = []
src = io.BytesIO(big)
src.name = "o365-chunked.bin"
f = folder.files.create_upload_session(
    src, chunk, lambda offset, *a, **k: seen.append(offset), file_name="o365-chunked.bin"
).execute_query()
check(stored_bytes(i, f"{lib}/o365-chunked.bin") == big, "chunked file bytes differ")
check(len(seen) >= 3, f"expected several chunks, progress saw {seen}")
print(f"ok: office365 ACS login, small upload, chunked upload ({len(big)} bytes, {len(seen)} callbacks)")
