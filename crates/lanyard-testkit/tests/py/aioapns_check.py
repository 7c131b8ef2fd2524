#!/usr/bin/env python3
"""Independent client check of Lanyard's fake APNs, with aioapns (PyPI).

aioapns is a real APNs client written by others: if our fake drifts from what APNs clients
expect (e.g. not echoing `apns-id`, a body on 200, errors without `apns-id`), aioapns fails
here. It is run by crates/lanyard-testkit/tests/fake_apns_aioapns.rs with the Python of
the project's `.venv-harness` (made by scripts/ensure-test-deps).

aioapns cannot be pointed at another server: the host and port are class attributes of its
protocol classes (`APNsProductionClientProtocol.APNS_SERVER` / `APNS_PORT`), and the pool
picks the class when it is built. So this script subclasses the production protocol with
the fake's host and port and puts that class on the pool (`apns.pool.protocol_class`).
The fake's TLS certificate is trusted by handing aioapns our own `ssl_context` built from the
fake's CA; aioapns loads the client certificate (the fake MDM push certificate, cert and key
in one PEM) into it. The topic is not given: aioapns reads it from the certificate's UID,
which also checks that the fake push certificate carries it where Apple puts it.

Prints one JSON object per check on stdout and exits 0 when every check came out as
expected (the caller also checks what the fake recorded).
"""

import argparse
import asyncio
import json
import ssl
import sys
import uuid

from aioapns import APNs, NotificationRequest, PushType
from aioapns.connection import APNsProductionClientProtocol


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca", required=True, help="PEM of the CA that issued the fake's TLS cert")
    p.add_argument("--cert", required=True, help="push certificate and key, one PEM file")
    p.add_argument("--token", required=True, help="device token (hex) to push to")
    p.add_argument("--magic", required=True, help="PushMagic to send")
    p.add_argument("--gone-token", required=True, help="a token the fake holds unregistered")
    return p.parse_args()


def result_json(check, request, result):
    return {
        "check": check,
        "sent_id": request.notification_id,
        "notification_id": result.notification_id,
        "status": result.status,
        "successful": result.is_successful,
        "description": result.description,
        "timestamp": result.timestamp,
    }


async def main(args):
    class LoopbackProtocol(APNsProductionClientProtocol):
        APNS_SERVER = args.host
        APNS_PORT = args.port

    ctx = ssl.create_default_context(cafile=args.ca)
    apns = APNs(client_cert=args.cert, ssl_context=ctx, max_connection_attempts=2)
    apns.pool.protocol_class = LoopbackProtocol
    ok = True
    out = []

    topic = apns.pool.apns_topic
    out.append({"check": "topic_from_uid", "topic": topic})

    # 1. An MDM push, as an MDM server sends it: accepted, answered with our apns-id.
    req = NotificationRequest(
        device_token=args.token,
        message={"mdm": args.magic},
        notification_id=str(uuid.uuid4()),
        time_to_live=86400,
        priority=10,
        push_type=PushType.MDM,
    )
    res = await apns.send_notification(req)
    out.append(result_json("deliver", req, res))
    ok &= res.is_successful and res.status == "200" and res.notification_id == req.notification_id

    # 2. A topic other than the certificate's: 400 TopicDisallowed, matched to its request.
    req = NotificationRequest(
        device_token=args.token,
        message={"mdm": args.magic},
        push_type=PushType.MDM,
        apns_topic="com.apple.mgmt.External.00000000-0000-0000-0000-000000000000",
    )
    res = await apns.send_notification(req)
    out.append(result_json("wrong_topic", req, res))
    ok &= res.status == "400" and res.description == "TopicDisallowed"

    # 3. An unregistered token: 410 Unregistered with a timestamp.
    req = NotificationRequest(
        device_token=args.gone_token,
        message={"mdm": args.magic},
        push_type=PushType.MDM,
    )
    res = await apns.send_notification(req)
    out.append(result_json("unregistered", req, res))
    ok &= res.status == "410" and res.description == "Unregistered" and bool(res.timestamp)

    apns.pool.close()
    for line in out:
        print(json.dumps(line), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
