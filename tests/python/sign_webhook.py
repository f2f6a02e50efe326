#!/usr/bin/env python3
"""Sign a webhook the way a Standard Webhooks sender does, using the reference
`standardwebhooks` Python library, and print the headers as JSON.

One message:
    python3 tests/python/sign_webhook.py --secret whsec_... --body '{"a":1}' \
        --msg-id msg_123 --timestamp 1700000000
prints {"webhook-id": ..., "webhook-timestamp": ..., "webhook-signature": ...}.
--body-file PATH signs a file's bytes (decoded as UTF-8, as the library requires) instead.

The fixture the Rust unit tests verify (shared/tests/fixtures/standardwebhooks_signed.json)
is generated with:
    /tmp/venvtest/bin/python tests/python/sign_webhook.py --fixture \
        > shared/tests/fixtures/standardwebhooks_signed.json
Every value in it is fixed, so regenerating it gives the same file.
"""

import argparse
import json
import sys
from datetime import datetime, timezone

from standardwebhooks.webhooks import Webhook


def sign_headers(secret: str, body: str, msg_id: str, timestamp: int) -> dict:
    wh = Webhook(secret)
    when = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    signature = wh.sign(msg_id=msg_id, timestamp=when, data=body)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


# Fixed inputs: the spec's vector, a unicode multi-line body, an unpadded secret, an empty body,
# and a body that looks like a multipart upload.
FIXTURE_CASES = [
    ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", '{"test": 2432232314}',
     "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330),
    ("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD", '{"path": "Reports/Ré sumé 2026.pdf",\n "note": "naïve ✓"}',
     "msg_2Xk9yJ0rA8z", 1763800000),
    # base64 of 20 bytes without its '=' padding: the library pads before decoding.
    ("whsec_dHdlbnR5LWJ5dGUta2V5LWFiY2Q", "plain text body\r\nsecond line",
     "msg_unpadded_secret", 1700000000),
    ("whsec_QmlnU2VjcmV0S2V5Rm9yRW1wdHlCb2R5", "", "msg_empty_body", 1700000123),
    ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
     '--b\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\nhello\r\n--b--\r\n',
     "msg_multipart_like", 1763801234),
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--secret")
    p.add_argument("--body")
    p.add_argument("--body-file")
    p.add_argument("--msg-id")
    p.add_argument("--timestamp", type=int)
    p.add_argument("--fixture", action="store_true", help="print the committed fixture")
    a = p.parse_args()

    if a.fixture:
        cases = [
            {"secret": s, "msg_id": m, "timestamp": t, "body": b, "headers": sign_headers(s, b, m, t)}
            for (s, b, m, t) in FIXTURE_CASES
        ]
        json.dump(cases, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        return 0

    if a.body_file is not None:
        with open(a.body_file, "rb") as f:
            body = f.read().decode("utf-8")
    else:
        body = a.body
    if a.secret is None or body is None or a.msg_id is None or a.timestamp is None:
        p.error("--secret, --body (or --body-file), --msg-id and --timestamp are required")
    json.dump(sign_headers(a.secret, body, a.msg_id, a.timestamp), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
