"""Issues a customer token the way a shop's login would: an HS256 JWT with the customer's
id in `sub`, valid for an hour. Standard library only.

usage: customer_token.py SECRET SUB   (SECRET: the server's CUSTOMER_JWT_SECRET)
"""

import base64
import hashlib
import hmac
import json
import sys
import time


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def customer_token(secret: str, sub: str, lifetime_secs: int = 3600) -> str:
    header = {"alg": "HS256", "typ": "JWT"}
    claims = {"sub": sub, "exp": int(time.time()) + lifetime_secs}
    signing_input = ".".join(
        b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
    )
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


if __name__ == "__main__":
    print(customer_token(sys.argv[1], sys.argv[2]))
