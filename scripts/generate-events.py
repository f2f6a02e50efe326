"""Regenerates the sample events in events/ from `sam local generate-event` output.

Run from the repository root with the venv active:  python scripts/generate-events.py
Webhook signatures come from the `standardwebhooks` library itself, with the sample secret below
(the Standard Webhooks specification's documentation secret; never a real one).
"""
import base64
import copy
import hashlib
import hmac
import json
import subprocess
import urllib.parse
from datetime import datetime, timezone

from standardwebhooks.webhooks import Webhook

SAMPLE_WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SAMPLE_ACS_SECRET = base64.b64encode(b"sample-acs-client-secret-32bytes").decode()
TS = datetime(2026, 11, 22, 6, 0, 0, tzinfo=timezone.utc)
HOST = "abc123.execute-api.us-east-1.amazonaws.com"


def sam_event(*args):
    out = subprocess.check_output(["sam", "local", "generate-event", *args])
    return json.loads(out)


def http_event(method, path, route_key, path_params=None, query="", headers=None, cookies=None,
               body=b"", b64=False):
    ev = sam_event("apigateway", "http-api-proxy", "--method", method, "--path", path.lstrip("/"))
    ev["routeKey"] = route_key
    ev["requestContext"]["routeKey"] = route_key
    ev["rawPath"] = path
    ev["requestContext"]["http"]["path"] = path
    ev["requestContext"]["http"]["sourceIp"] = "203.0.113.10"
    ev["requestContext"]["http"]["userAgent"] = (headers or {}).get("user-agent", "curl/8.5.0")
    ev["requestContext"]["domainName"] = HOST
    ev["requestContext"]["domainPrefix"] = HOST.split(".")[0]
    ev["requestContext"]["requestId"] = "c6af9ac6-7b61-11e6-9a41-93e8deadbeef"
    ev["requestContext"]["stage"] = "$default"
    ev["requestContext"].pop("authentication", None)
    ev["requestContext"].pop("authorizer", None)
    ev.pop("stageVariables", None)
    ev["rawQueryString"] = query
    if query:
        qs = {}
        for pair in query.split("&"):
            k, _, v = pair.partition("=")
            qs[urllib.parse.unquote_plus(k)] = urllib.parse.unquote_plus(v)
        ev["queryStringParameters"] = qs
    else:
        ev.pop("queryStringParameters", None)
    h = {"host": HOST, "user-agent": "curl/8.5.0", "x-forwarded-proto": "https"}
    h.update(headers or {})
    if body:
        h["content-length"] = str(len(body))
    ev["headers"] = h
    if cookies:
        ev["cookies"] = cookies
    else:
        ev.pop("cookies", None)
    if path_params:
        ev["pathParameters"] = path_params
    else:
        ev.pop("pathParameters", None)
    ev["body"] = base64.b64encode(body).decode() if b64 else body.decode()
    ev["isBase64Encoded"] = b64
    return ev


def signed_headers(msg_id, body):
    wh = Webhook(SAMPLE_WEBHOOK_SECRET)
    sig = wh.sign(msg_id, TS, body.decode("latin-1"))
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(TS.timestamp())),
        "webhook-signature": sig,
    }


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def context_token():
    realm = "3b9ebb6e-7b9f-4a0a-9b67-1c4d2e6f7a8b"
    client_id = "8f3c5d2a-1b4e-4c6d-9e7f-0a1b2c3d4e5f"
    host = "contoso.sharepoint.com"
    now = int(TS.timestamp())
    header = {"typ": "JWT", "alg": "HS256"}
    claims = {
        "aud": f"{client_id}/{host}@{realm}",
        "iss": f"00000001-0000-0000-c000-000000000000@{realm}",
        "nbf": str(now - 60),
        "exp": str(now + 43200),
        "appctxsender": f"00000003-0000-0ff1-ce00-000000000000@{realm}",
        "appctx": json.dumps({
            "CacheKey": "hL4Yb5QZP4hVnGcKZm0YxR8pQ3dN2wE1tS7uV9aB6cD=",
            "SecurityTokenServiceUri": f"https://accounts.accesscontrol.windows.net/tokens/OAuth/2",
        }),
        "refreshtoken": "IAAAAsample-refresh-token-not-real",
        "isbrowserhostedapp": "true",
    }
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    sig = hmac.new(base64.b64decode(SAMPLE_ACS_SECRET), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(sig)}"


def multipart_body(boundary):
    parts = [
        ("folder", None, b"invoices/2026"),
        ("conflict", None, b"rename"),
        ("metadata.Title", None, b"November invoices"),
        ("file", "invoice-0001.txt", b"Invoice 0001\nTotal: 42.00 EUR\n"),
        ("file", "invoice-0002.txt", b"Invoice 0002\nTotal: 17.50 EUR\n"),
    ]
    out = b""
    for name, filename, data in parts:
        out += f"--{boundary}\r\n".encode()
        if filename:
            out += f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'.encode()
            out += b"Content-Type: text/plain\r\n"
        else:
            out += f'Content-Disposition: form-data; name="{name}"\r\n'.encode()
        out += b"\r\n" + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out


def write(name, ev):
    with open(f"events/{name}", "w") as f:
        json.dump(ev, f, indent=2)
        f.write("\n")


def main():
    write("connect.json", http_event(
        "GET", "/connect/contoso-docs", "GET /connect/{connection}",
        path_params={"connection": "contoso-docs"},
        headers={"accept": "text/html"}))

    write("callback-get.json", http_event(
        "GET", "/callback", "GET /callback",
        query="code=M.C507_BAY.2.U.sample-code&state=sample.state.value",
        headers={"accept": "text/html"},
        cookies=["__Host-spbridge_oauth=H0QWzzHTGo1ijwoJK6_3hbiUKVMagXxHleDGOS0j0lE"]))

    form = (
        "SPAppToken=" + context_token()
        + "&SPSiteUrl=https%3A%2F%2Fcontoso.sharepoint.com%2Fsites%2Fteam"
        + "&SPHostUrl=https%3A%2F%2Fcontoso.sharepoint.com%2Fsites%2Fteam"
        + "&SPLanguage=en-US&SPClientTag=0&SPProductNumber=16.0.25520.12007"
    ).encode()
    write("callback-post.json", http_event(
        "POST", "/callback", "POST /callback",
        query="connection=contoso-addin",
        headers={"content-type": "application/x-www-form-urlencoded", "accept": "text/html"},
        body=form, b64=True))

    raw = b"%PDF-1.4\n% spbridge sample\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n"
    h = {"content-type": "application/pdf"}
    h.update(signed_headers("msg_2pRSqHXoDvMx4xyS8Dc1bE9LtRK", raw))
    write("upload-raw.json", http_event(
        "POST", "/upload/contoso-docs", "POST /upload/{connection}",
        path_params={"connection": "contoso-docs"},
        query="name=report-2026-11.pdf&folder=reports%2F2026&conflict=replace",
        headers=h, body=raw, b64=True))

    boundary = "----spbridgeBoundary7MA4YWxkTrZu0gW"
    mp = multipart_body(boundary)
    h = {"content-type": f"multipart/form-data; boundary={boundary}"}
    h.update(signed_headers("msg_2pRSrTvqTZrRb7GN4W9e0Yy8cKd", mp))
    write("upload-multipart.json", http_event(
        "POST", "/upload", "POST /upload", headers=h, body=mp, b64=True))

    # A direct upload session: open (JSON body), then complete a multipart upload's parts.
    session = json.dumps({"name": "site-video.mp4", "folder": "website", "size": 7516192768,
                          "conflict": "rename"}, separators=(",", ":")).encode()
    h = {"content-type": "application/json"}
    h.update(signed_headers("msg_2pRSsN3kQeZv1yWbLx7cDq0Hfa", session))
    write("upload-session.json", http_event(
        "POST", "/uploads/contoso-docs/sessions", "POST /uploads/{connection}/sessions",
        path_params={"connection": "contoso-docs"}, headers=h, body=session, b64=True))
    done = json.dumps({"parts": [{"part_number": 1, "etag": '"9b2cf535f27731c974343645a3985328"'},
                                 {"part_number": 2, "etag": '"6f5902ac237024bdd0c176cb93063dc4"'}]},
                      separators=(",", ":")).encode()
    h = {"content-type": "application/json"}
    h.update(signed_headers("msg_2pRSt8wFhUj4oPqZ5mVx2kRg0b", done))
    session_id = "5f5f5c1dd82013bb28ed8ab1ab00e09f"
    write("upload-session-complete.json", http_event(
        "POST", f"/uploads/contoso-docs/sessions/{session_id}/complete",
        "POST /uploads/{connection}/sessions/{session}/complete",
        path_params={"connection": "contoso-docs", "session": session_id},
        headers=h, body=done, b64=True))

    sched = sam_event("cloudwatch", "scheduled-event")
    sched["id"] = "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa"
    sched["time"] = TS.strftime("%Y-%m-%dT%H:%M:%SZ")
    sched["resources"] = ["arn:aws:events:us-east-1:123456789012:rule/spbridge-TokenRefreshSchedule"]
    write("schedule.json", sched)


if __name__ == "__main__":
    main()
