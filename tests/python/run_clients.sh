#!/usr/bin/env bash
# Runs independent Microsoft clients (Office365-REST-Python-Client, MSAL for Python) against the
# tenant emulator. Needs the venv's python on PATH and a built emulator binary.
set -u
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
bin="${EMULATOR_BIN:-$target/debug/tenant-emulator}"
if [ ! -x "$bin" ]; then
  echo "emulator binary not found at $bin (build it with cargo build -p tenant-emulator)" >&2
  echo "0 passed, 1 failed"
  exit 1
fi
state="$(mktemp -d)"
info="$state/info.line"
"$bin" --port 0 --tls --state-dir "$state" >"$info" 2>"$state/stderr" &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$state"' EXIT
for _ in $(seq 1 100); do
  [ -s "$info" ] && break
  sleep 0.05
done
if [ ! -s "$info" ]; then
  echo "emulator did not print its info line" >&2
  cat "$state/stderr" >&2
  echo "0 passed, 1 failed"
  exit 1
fi
export EMULATOR_INFO="$info"
ca="$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["ca_pem_path"])' "$info")"
export REQUESTS_CA_BUNDLE="$ca"
passed=0
failed=0
for script in office365_acs_upload.py msal_confidential.py; do
  if (cd "$here" && python "$script"); then
    passed=$((passed + 1))
  else
    echo "FAILED: $script" >&2
    failed=$((failed + 1))
  fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
