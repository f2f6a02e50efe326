#!/usr/bin/env bash
# A direct upload session from the command line: open a session (signed), PUT the file to the
# presigned S3 URL it answers, complete (signed), then read the job until it ends.
#   bash examples/direct-upload/curl.sh FILE [CONNECTION]
# Defaults fit `bash scripts/dev` (its upload-ingest and demo webhook secret); elsewhere set
# SPBRIDGE_URL (your ApiUrl) and SPBRIDGE_WEBHOOK_SECRET (the connection's whsec_…).
# Files up to 5 GiB go in one PUT; index.html shows the multipart case (larger files).
set -euo pipefail
file="$1"; connection="${2:-demo}"
url="${SPBRIDGE_URL:-http://127.0.0.1:${PORT:-9000}/lambda-url/upload-ingest}"
export SPBRIDGE_WEBHOOK_SECRET="${SPBRIDGE_WEBHOOK_SECRET:-whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw}"

# POST a JSON body signed as a Standard Webhooks sender: base64(HMAC-SHA256(key, "id.ts.body")).
signed_post() {
  python3 - "$1" "$2" <<'PY'
import base64, hashlib, hmac, json, os, sys, time, urllib.request, urllib.error, uuid
target, body = sys.argv[1], sys.argv[2].encode()
key = base64.b64decode(os.environ["SPBRIDGE_WEBHOOK_SECRET"].removeprefix("whsec_"))
msg_id, ts = "msg_" + uuid.uuid4().hex, str(int(time.time()))
sig = base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
req = urllib.request.Request(target, data=body, method="POST", headers={
    "content-type": "application/json", "webhook-id": msg_id,
    "webhook-timestamp": ts, "webhook-signature": f"v1,{sig}"})
try:
    print(urllib.request.urlopen(req).read().decode())
except urllib.error.HTTPError as e:
    sys.exit(f"HTTP {e.code}: {e.read().decode()}")
PY
}
field() { python3 -c "import json,sys; v=json.load(sys.stdin); print(eval('v' + sys.argv[1]))" "$1"; }

size="$(wc -c < "$file" | tr -d ' ')"
body="$(python3 -c 'import json,sys; print(json.dumps({"name": sys.argv[1], "size": int(sys.argv[2]), "conflict": "rename"}))' "$(basename "$file")" "$size")"
session="$(signed_post "$url/uploads/$connection/sessions" "$body")"
echo "session: $(printf '%s' "$session" | field '["session"]')"
[ "$(printf '%s' "$session" | field '["upload"]["method"]')" = PUT ] || { echo "multipart session: use index.html"; exit 1; }
# The presigned URL is a capability: it is not printed. Extra headers (a checksum) come with it.
put_url="$(printf '%s' "$session" | field '["upload"]["url"]')"
mapfile -t headers < <(printf '%s' "$session" | python3 -c 'import json,sys
for k, v in json.load(sys.stdin)["upload"]["headers"].items(): print("-H"); print(f"{k}: {v}")')
curl -sS -f -X PUT "${headers[@]}" --upload-file "$file" "$put_url" > /dev/null
done_json="$(signed_post "$(printf '%s' "$session" | field '["complete_url"]')" '{}')"
status_url="$(printf '%s' "$done_json" | field '["status_url"]')"
for _ in $(seq 1 120); do
  job="$(curl -sS "$status_url")"
  case "$job" in *'"status":"done"'*|*'"status":"failed"'*) break ;; esac
  sleep 1
done
echo "$job"
