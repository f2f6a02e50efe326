#!/usr/bin/env python3
"""Writes the seed corpora (tests/fuzz/corpus/<target>/) from ../shared/fixtures, events/ and
hand-made samples. Run from the repository root: python3 tests/fuzz/seeds/make_seeds.py [FIXTURES]."""
import base64, hashlib, hmac, json, os, pathlib, sys

root = pathlib.Path(__file__).resolve().parents[3]
fixtures = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else root.parent / "shared" / "fixtures")
out = root / "tests" / "fuzz" / "corpus"


def put(target, name, data):
    d = out / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


# WWW-Authenticate
for f in (fixtures / "www-authenticate").glob("*"):
    put("www_authenticate", f.name, f.read_bytes().strip())
put("www_authenticate", "sharepoint-bearer",
    'Bearer realm="3b5ae6f2-8b43-4b5b-9c5e-3f1b2a9c0d11",client_id="00000003-0000-0ff1-ce00-000000000000",'
    'trusted_issuers="00000001-0000-0000-c000-000000000000@*,https://sts.windows.net/*/",'
    'authorization_uri="https://login.windows.net/common/oauth2/authorize"')
put("www_authenticate", "two-challenges", 'Negotiate abc==, Basic realm="x \\"q\\"", NTLM')

# JWT / context token (mode byte first: even = any token, odd = claims signed by the target)
realm = "3b5ae6f2-8b43-4b5b-9c5e-3f1b2a9c0d11"
client = "11111111-2222-3333-4444-555555555555"
claims = {
    "aud": f"{client}/app.example.com@{realm}",
    "iss": f"00000001-0000-0000-c000-000000000000@{realm}",
    "nbf": "1794990000", "exp": 1795010000,
    "appctxsender": f"00000003-0000-0ff1-ce00-000000000000@{realm}",
    "appctx": json.dumps({"CacheKey": "k", "SecurityTokenServiceUri": "https://accounts.accesscontrol.windows.net/tokens/OAuth/2"}),
    "refreshtoken": "IAAAA-refresh",
    "isbrowserhostedapp": "true",
}
put("jwt", "context-claims", b"\x01" + json.dumps(claims).encode())
key = b"fuzz-context-token-key-32-bytes!"
h = b64u(b'{"alg":"HS256","typ":"JWT"}')
inp = f"{h}.{b64u(json.dumps(claims).encode())}"
put("jwt", "context-token-signed", b"\x00" + (inp + "." + b64u(hmac.new(key, inp.encode(), hashlib.sha256).digest())).encode())
for f in (fixtures / "acs").glob("*.json"):
    none = b64u(b'{"alg":"none"}')
    put("jwt", "acs-" + f.stem[:40], b"\x00" + f"{none}.{b64u(f.read_bytes())}.".encode())

# Request bodies: selector byte, first line, body
put("request_body", "raw", b"\x00name=report.pdf&folder=a/b&conflict=rename\nhello")
put("request_body", "json", b'\x02\n{"path":"a/b.txt","content_base64":"aGVsbG8=","conflict":"replace","metadata":{"Title":"t"}}')
put("request_body", "json-array", b'\x02\n[{"path":"x.txt","content_base64":"eA"},{"path":"y/z.txt","source_url":"https://example.com/z"}]')
mp = (b"--XyZ\r\nContent-Disposition: form-data; name=\"folder\"\r\n\r\nin\r\n"
      b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n"
      b"Content-Type: text/plain\r\n\r\nabc\r\n--XyZ--\r\n")
put("request_body", "multipart", b"\x01\n" + mp)
ev = json.loads((root / "events" / "upload-multipart.json").read_text())
ct = ev["headers"]["content-type"]
put("request_body", "multipart-event", b"\x03" + ct.encode() + b"\n" + base64.b64decode(ev["body"]))

# Names: folder \n name
for i, s in enumerate(["a/b\nreport.pdf", "Shared/2026\nnaïve café.docx", "x\n~$lock.docx",
                       "..\\x\n%2e%2e", "a//b\nCON", "./c\nfile.", "d\u202e\ngpj.exe"]):
    put("names", f"n{i}", s)

# Webhook: id \n timestamp \n webhook-signature \n x-hub-signature-256 \n body (SIGN: signed here)
put("webhook_signature", "standard-signed", b"msg_1\n1795000000\nSIGN\n\n{\"a\":1}")
put("webhook_signature", "standard-wrong", b"msg_1\n1795000000\nv1,AAAA v1a,xyz\n\nbody")
gh = hmac.new(b"fuzz-webhook-key-0123456789abcdef", b"payload", hashlib.sha256).hexdigest()
put("webhook_signature", "github", f"\n\n\nsha256={gh}\npayload".encode())

# API Gateway and SQS events
for f in list((fixtures / "aws").glob("*.json")) + list((root / "events").glob("*.json")):
    put("aws_events", f.stem[:60], f.read_bytes())
sqs = {"Records": [{
    "messageId": "059f36b4-87a3-44ab-83d2-661975830a7d", "receiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a",
    "body": json.dumps({"job": "j-1", "connection": "contoso-docs", "generation": 1}),
    "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1545082649183",
                   "SenderId": "AIDAIENQZJOLO23YVJ4VO", "ApproximateFirstReceiveTimestamp": "1545082649185"},
    "messageAttributes": {"kind": {"stringValue": "upload", "dataType": "String", "stringListValues": [], "binaryListValues": []}},
    "md5OfBody": "e4e68fb7bd0e697a0ae8f1bb342846b3", "eventSource": "aws:sqs",
    "eventSourceARN": "arn:aws:sqs:us-east-2:123456789012:my-queue", "awsRegion": "us-east-2"}]}
put("aws_events", "sqs", json.dumps(sqs))

# Microsoft error bodies: two status bytes, then the body
for sub in ["graph", "sharepoint-rest", "aad", "msa", "discovery"]:
    for f in (fixtures / sub).rglob("*.json"):
        put("microsoft_errors", f"{sub}-{f.stem[:50]}", (400).to_bytes(2, "big") + f.read_bytes())
put("microsoft_errors", "aadsts-text", (401).to_bytes(2, "big") + b"AADSTS700082: The refresh token has expired")
