"""Signs one request with oauthlib (PyPI), an OAuth 1.0a implementation independent of
Lanyard's, and prints the Authorization header. Run from the project's `.venv-harness` by
tests/fake_abm.rs, which compares the header with Lanyard's signer and sends it to the fake
ABM.

usage: oauthlib_sign.py URL CONSUMER_KEY CONSUMER_SECRET TOKEN TOKEN_SECRET NONCE TIMESTAMP
"""
import sys

from oauthlib.oauth1 import SIGNATURE_HMAC_SHA1, SIGNATURE_TYPE_AUTH_HEADER, Client


def main() -> None:
    url, ck, cs, tok, ts_secret, nonce, timestamp = sys.argv[1:8]
    client = Client(
        ck,
        client_secret=cs,
        resource_owner_key=tok,
        resource_owner_secret=ts_secret,
        signature_method=SIGNATURE_HMAC_SHA1,
        signature_type=SIGNATURE_TYPE_AUTH_HEADER,
        realm="ADM",
        nonce=nonce,
        timestamp=timestamp,
    )
    _, headers, _ = client.sign(url, http_method="GET")
    print(headers["Authorization"])


if __name__ == "__main__":
    main()
