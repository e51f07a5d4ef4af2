"""Answers random requests rarely reach, checked against openapi.yaml with schemathesis:
the webhook's 202 (a payment that comes before its order, `order_id: null`) and a hold of
exactly the largest `qty` the schema allows.

usage: edge_contract.py SPEC BASE_URL ADMIN_TOKEN [WEBHOOK_SECRET]
"""

import hashlib
import hmac
import json
import sys
import time
import uuid

import httpx
import schemathesis
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

# What the answer must be; the checks that probe the server with more requests of their own
# (auth, negative data) belong to the schemathesis run.
ANSWER_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

spec, base_url, admin_token = sys.argv[1:4]
secret = sys.argv[4] if len(sys.argv) > 4 else ""
schema = schemathesis.openapi.from_path(spec)
checks = 0


def check(condition, what):
    global checks
    if not condition:
        print(f"edge contract: FAILED: {what}")
        print(f"edge contract: {checks} passed, 1 failed")
        sys.exit(1)
    checks += 1


def send(path, method, body, headers=None):
    """Sends `body` as the exact JSON bytes, signed when a secret is given, and validates
    the answer against the schema of the operation."""
    raw = json.dumps(body).encode()
    headers = {"content-type": "application/json", **(headers or {})}
    if secret and path == "/api/payments/webhook":
        t = str(int(time.time()))
        mac = hmac.new(secret.encode(), f"{t}.".encode() + raw, hashlib.sha256)
        headers["x-signature"] = f"t={t},v1={mac.hexdigest()}"
    response = httpx.request(method, base_url + path, content=raw, headers=headers)
    case = schema[path][method].Case(body=body, headers=headers)
    try:
        case.validate_response(response, checks=ANSWER_CHECKS)
        failure = ""
    except Exception as e:  # schemathesis raises one failure group naming every check
        failure = str(e)
    check(not failure, f"{method} {path} -> {response.status_code} {response.text}: {failure}")
    return response


max_qty = int(schema.raw_schema["components"]["schemas"]["CreateHold"]["properties"]["qty"]["maximum"])
admin = {"authorization": f"Bearer {admin_token}"}
product = send(
    "/api/admin/products",
    "POST",
    {"name": "Edge sneaker", "price_cents": 100, "total_stock": max_qty + 5},
    admin,
).json()["id"]

r = send("/api/holds", "POST", {"product_id": product, "qty": max_qty})
check(r.status_code == 201, f"a hold of the schema's largest qty ({max_qty}): {r.status_code} {r.text}")
hold = r.json()["hold_id"]

event = {"idempotency_key": f"edge-{uuid.uuid4()}", "hold_id": hold, "status": "paid"}
r = send("/api/payments/webhook", "POST", event)
check(r.status_code == 202, f"a payment before its order: {r.status_code} {r.text}")
check(r.json().get("order_id", "absent") is None, f"order_id of a 202: {r.text}")

print(f"edge contract: {checks} passed, 0 failed")
