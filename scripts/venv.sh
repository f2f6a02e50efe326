#!/usr/bin/env bash
# Creates or updates .venv with the pinned tools, then puts it first on PATH (source this file).
# cargo-lambda finds zig through `python3 -m ziglang`, so the venv's python must come first.
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_venv="$_root/.venv"
_stamp="$_venv/.requirements.sha256"
_want="$(cat "$_root/requirements-dev.txt" "$_root/constraints.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$_venv/bin/python" ] || [ "$(cat "$_stamp" 2>/dev/null)" != "$_want" ]; then
  echo "venv: installing pinned tools into $_venv"
  python3 -m venv "$_venv"
  "$_venv/bin/pip" install --quiet --disable-pip-version-check --upgrade pip
  "$_venv/bin/pip" install --quiet --disable-pip-version-check \
    -r "$_root/requirements-dev.txt" -c "$_root/constraints.txt"
  echo "$_want" > "$_stamp"
fi
export PATH="$_venv/bin:$PATH"
export SAM_CLI_TELEMETRY=0
unset _root _venv _stamp _want
