#!/usr/bin/env bash
# Prints the path of a Python virtualenv holding the pinned contract tools, creating it
# (from PyPI) on first use. Kept outside the clone so it survives between runs.
set -euo pipefail
venv="${FLASHSALE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/flashsale/venv}"
want="schemathesis==4.32.5 openapi-python-client==0.29.1 httpx"
stamp="$venv/.flashsale-tools"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check $want >&2
  echo "$want" > "$stamp"
fi
echo "$venv"
