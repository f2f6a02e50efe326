"""MSAL for Python against the emulator's v2 authority: client credentials with a secret and with
a certificate (SHA-1 and SHA-256 thumbprints), an authorization code with PKCE, and a refresh."""
import base64
import json
import urllib.parse

import msal
import requests

from common import ca_bundle, check, info

i = info()
app_info = next(a for a in i["entra_apps"] if a["name"] == "entra-app")
authority = f"{i['login']}/{i['tenant_id']}"
verify = ca_bundle(i)
graph_scope = ["https://graph.microsoft.com/.default"]


def claims(token):
    payload = token.split(".")[1]
    payload += "=" * (-len(payload) % 4)
    return json.loads(base64.urlsafe_b64decode(payload))


def app(credential):
    return msal.ConfidentialClientApplication(
        app_info["client_id"],
        client_credential=credential,
        authority=authority,
        instance_discovery=False,
        verify=verify,
    )


# 1. Secret.
r = app(app_info["client_secret"]).acquire_token_for_client(scopes=graph_scope)
check("access_token" in r, f"secret flow failed: {r}")
c = claims(r["access_token"])
check(c["appidacr"] == "1" and c["aud"] == "https://graph.microsoft.com", f"secret token claims: {c}")

# 2. Certificate, SHA-1 thumbprint (x5t).
r = app({"private_key": app_info["private_key_pem"], "thumbprint": app_info["thumbprint_sha1"]}).acquire_token_for_client(scopes=graph_scope)
check("access_token" in r, f"certificate (sha1) flow failed: {r}")
check(claims(r["access_token"])["appidacr"] == "2", "certificate token must have appidacr 2")

# 3. Certificate given as PEM: MSAL computes the SHA-256 thumbprint (x5t#S256, PS256, x5c).
r = app({"private_key": app_info["private_key_pem"], "public_certificate": app_info["certificate_pem"]}).acquire_token_for_client(scopes=graph_scope)
check("access_token" in r, f"certificate (sha256) flow failed: {r}")
check(claims(r["access_token"])["appidacr"] == "2", "certificate token must have appidacr 2")

# 4. A wrong secret gives AADSTS7000215 through MSAL.
r = app("not-the-secret").acquire_token_for_client(scopes=graph_scope)
check(r.get("error") == "invalid_client" and 7000215 in r.get("error_codes", []), f"bad secret: {r}")

# 5. Authorization code with PKCE, then refresh.
cca = app(app_info["client_secret"])
redirect_uri = "http://localhost:8400/callback"
flow = cca.initiate_auth_code_flow(["Files.ReadWrite.All"], redirect_uri=redirect_uri, login_hint=i["users"][0]["upn"])
resp = requests.get(flow["auth_uri"], allow_redirects=False, verify=verify, timeout=30)
check(resp.status_code == 302, f"authorize answered {resp.status_code} {resp.text}")
query = dict(urllib.parse.parse_qsl(urllib.parse.urlparse(resp.headers["Location"]).query))
r = cca.acquire_token_by_auth_code_flow(flow, query)
check("access_token" in r and "refresh_token" in r, f"code flow failed: {r}")
check(claims(r["access_token"]).get("scp"), "delegated token needs scp")
rt = r["refresh_token"]
r2 = cca.acquire_token_by_refresh_token(rt, scopes=["Files.ReadWrite.All"])
check("access_token" in r2, f"refresh failed: {r2}")
check(r2.get("refresh_token") and r2["refresh_token"] != rt, "v2 refresh must rotate the refresh token")

# 6. The Graph token works against the emulator's Graph.
drive = i["sites"][0]["libraries"][0]["drive_id"]
put = requests.put(
    f"{i['graph']}/v1.0/drives/{drive}/root:/msal/hello.txt:/content",
    data=b"hello from msal",
    headers={"Authorization": f"Bearer {r2['access_token']}"},
    verify=verify,
    timeout=30,
)
check(put.status_code == 201, f"graph PUT with MSAL token: {put.status_code} {put.text}")
print(f"ok: msal secret, certificate sha1, certificate sha256, bad secret, auth code + PKCE, refresh rotation, Graph PUT")
