"""Smoke test of the generated Python SDK against a live flashsale-api:
hold -> order -> signed `paid` webhook -> the order is paid; then a product limited per
customer, held with a customer token, released, held again, and restocked.

usage: sdk_smoke.py BASE_URL ADMIN_TOKEN WEBHOOK_SECRET CUSTOMER_JWT_SECRET
"""

import hashlib
import hmac
import sys
import time
import uuid

from customer_token import customer_token

from flashsale_client import AuthenticatedClient, Client
from flashsale_client.api.holds import create_hold, get_hold, release_hold
from flashsale_client.api.orders import create_order, get_order
from flashsale_client.api.payments import payment_webhook
from flashsale_client.api.products import create_product, get_product, list_products, update_product
from flashsale_client.api.refunds import list_refunds, resolve_refund
from flashsale_client.models import (
    CreateHold,
    CreateOrder,
    CreateProduct,
    PaymentStatus,
    PaymentWebhook,
    UpdateProduct,
)

base_url, admin_token, secret, customer_secret = sys.argv[1:5]
checks = 0


def check(condition, what):
    global checks
    if not condition:
        print(f"sdk smoke: FAILED: {what}")
        print(f"sdk smoke: {checks} passed, 1 failed")
        sys.exit(1)
    checks += 1


def sign(request):
    """httpx request hook: X-Signature over the exact bytes the SDK sends."""
    t = str(int(time.time()))
    mac = hmac.new(secret.encode(), f"{t}.".encode() + request.content, hashlib.sha256)
    request.headers["X-Signature"] = f"t={t},v1={mac.hexdigest()}"


admin = AuthenticatedClient(base_url=base_url, token=admin_token)
buyer = Client(base_url=base_url)
provider = Client(base_url=base_url, httpx_args={"event_hooks": {"request": [sign]}})

r = create_product.sync_detailed(
    client=admin, body=CreateProduct(name="SDK smoke sneaker", price_cents=4999, total_stock=5)
)
check(r.status_code == 201, f"create product: {r.status_code} {r.content!r}")
product = r.parsed

r = get_product.sync_detailed(client=buyer, id=product.id)
check(r.status_code == 200 and r.parsed.available_stock == 5, f"get product: {r.content!r}")

key = f"smoke-{uuid.uuid4()}"
r = create_hold.sync_detailed(client=buyer, body=CreateHold(product_id=product.id, qty=2), idempotency_key=key)
check(r.status_code == 201 and r.parsed.status.value == "active", f"create hold: {r.content!r}")
hold = r.parsed
again = create_hold.sync_detailed(client=buyer, body=CreateHold(product_id=product.id, qty=2), idempotency_key=key)
check(again.status_code == 201 and again.parsed.hold_id == hold.hold_id, "hold replay")
check(again.headers.get("idempotent-replayed") == "true", "hold replay header")

r = create_order.sync_detailed(client=buyer, body=CreateOrder(hold_id=hold.hold_id))
check(r.status_code == 201 and r.parsed.status.value == "pending", f"create order: {r.content!r}")
order = r.parsed
check(order.total_cents == 2 * 4999, "order total")

event = PaymentWebhook(hold_id=hold.hold_id, status=PaymentStatus.PAID, idempotency_key=f"evt-{uuid.uuid4()}")
unsigned = payment_webhook.sync_detailed(client=buyer, body=event)
check(unsigned.status_code == 401 and unsigned.parsed.code == "invalid_signature", "unsigned webhook refused")
r = payment_webhook.sync_detailed(client=provider, body=event)
check(r.status_code == 200 and r.parsed.state == "applied", f"signed webhook: {r.status_code} {r.content!r}")

r = get_order.sync_detailed(client=buyer, id=order.id)
check(r.status_code == 200 and r.parsed.status.value == "paid", f"order paid: {r.content!r}")
r = get_hold.sync_detailed(client=buyer, id=hold.hold_id)
check(r.status_code == 200 and r.parsed.status.value == "ordered", "hold ordered")
r = get_product.sync_detailed(client=buyer, id=product.id)
check(r.parsed.available_stock == 3, "stock after the sale")

# A customer's token through the SDK: the limit per customer, and the hold theirs alone.
shopper = AuthenticatedClient(base_url=base_url, token=customer_token(customer_secret, "smoke-shopper"))
r = create_product.sync_detailed(
    client=admin,
    body=CreateProduct(name="SDK limited drop", price_cents=100, total_stock=5, max_per_customer=1),
)
check(r.status_code == 201 and r.parsed.max_per_customer == 1, f"limited product: {r.content!r}")
limited = r.parsed
r = create_hold.sync_detailed(client=buyer, body=CreateHold(product_id=limited.id, qty=1))
check(r.status_code == 401 and r.parsed.code == "customer_token_required", f"anonymous: {r.content!r}")
r = create_hold.sync_detailed(client=shopper, body=CreateHold(product_id=limited.id, qty=1))
check(r.status_code == 201, f"customer hold: {r.content!r}")
mine = r.parsed
r = create_hold.sync_detailed(client=shopper, body=CreateHold(product_id=limited.id, qty=1))
check(r.status_code == 409 and r.parsed.code == "customer_limit_reached", f"limit: {r.content!r}")
r = get_hold.sync_detailed(client=shopper, id=mine.hold_id)
check(r.status_code == 200 and r.parsed.hold_id == mine.hold_id, "the owner reads the hold")
r = get_hold.sync_detailed(client=buyer, id=mine.hold_id)
check(r.status_code == 404, "anyone else gets 404")

# Letting go: the shopper releases the hold and may hold again; the operator restocks.
r = release_hold.sync_detailed(client=shopper, id=mine.hold_id)
check(r.status_code == 200 and r.parsed.status.value == "released", f"release: {r.content!r}")
r = create_hold.sync_detailed(client=shopper, body=CreateHold(product_id=limited.id, qty=1))
check(r.status_code == 201, f"hold after release: {r.content!r}")
r = update_product.sync_detailed(client=admin, id=limited.id, body=UpdateProduct(total_stock=9))
check(r.status_code == 200 and r.parsed.available_stock == 8, f"restock: {r.content!r}")
r = list_products.sync_detailed(client=buyer, after=product.id - 1, limit=1)
check(r.status_code == 200 and [p.id for p in r.parsed.items] == [product.id], f"list: {r.content!r}")

# A payment for the released hold buys nothing: the operator finds it and resolves it.
late = PaymentWebhook(hold_id=mine.hold_id, status=PaymentStatus.PAID, idempotency_key=f"evt-{uuid.uuid4()}")
r = payment_webhook.sync_detailed(client=provider, body=late)
check(r.status_code == 200 and r.parsed.state == "refund_required", f"paid after release: {r.content!r}")
r = list_refunds.sync_detailed(client=admin, limit=500)
listed = [x for x in r.parsed.items if x.idempotency_key == late.idempotency_key]
check(len(listed) == 1 and listed[0].reason.value == "hold_released" and listed[0].amount_cents == 100, f"refund listed: {listed!r}")
r = resolve_refund.sync_detailed(client=admin, idempotency_key=late.idempotency_key)
check(r.status_code == 200 and r.parsed.resolved_at is not None, f"refund resolved: {r.content!r}")

print(f"sdk smoke: {checks} passed, 0 failed")
