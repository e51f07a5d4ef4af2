#!/usr/bin/env bash
# Generates the Python SDK (package flashsale_client) from openapi.yaml into
# sdk/python/ (or the folder given as $1) with openapi-python-client.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/sdk/python}"
venv="$("$root/scripts/python-tools.sh")"
"$venv/bin/openapi-python-client" generate --path "$root/openapi.yaml" --output-path "$out" --overwrite >/dev/null
echo "$out"
