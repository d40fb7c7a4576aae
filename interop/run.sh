#!/usr/bin/env bash
# Runs the pika interop suite. Creates interop/.venv on first use and installs
# requirements.txt into it (again whenever that file changes).
#   bash interop/run.sh                    # starts target/release/warrenmq itself
#   AMQP_URL=amqp://guest:guest@127.0.0.1:5673/%2F bash interop/run.sh   # a running server
# Extra arguments go to pytest, e.g. `bash interop/run.sh -k confirms -v`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
venv="$here/.venv"
req="$here/requirements.txt"
python="${PYTHON:-python3}"

if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
    echo "interop: creating virtualenv $venv"
    rm -rf "$venv"
    "$python" -m venv "$venv"
fi

stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    echo "interop: installing $(tr '\n' ' ' < "$req")"
    "$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$req"
    echo "$want" > "$stamp"
fi

cd "$repo"
exec "$venv/bin/python" -m pytest -q --timeout=60 interop "$@"
