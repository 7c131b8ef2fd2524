#!/usr/bin/env python3
"""An independent check of declarations against Apple's schema YAML, for Lanyard's tests.

Usage: check_declarations.py <apple-schema dir> < declarations.json

stdin holds a JSON array of whole declarations (Type, Identifier, ServerToken, Payload).
For each one this prints "OK <Identifier>" or "BAD <Identifier>: <why>", reading only the
schema files (declarative/declarations/**, declarative/status) with PyYAML: it shares no code
with Lanyard's generated table or validator. Exit status 0 when every declaration is OK, 1
when one is BAD, 2 on a usage error.

Rules, from the schema's docs/schema.md: the four top-level keys of declarationbase.yaml and no
others; in the payload only keys the schema lists (or any key where it lists ANY), of the listed
type, every key with presence: required, values inside rangelist and range; an array's items
follow its single subkey; a key whose macOS introduced is n/a (a key inherits its parent's
supportedOS, updated by its own) is refused, since the target is macOS. Status subscription
names must be status item types of declarative/status.
"""

import base64
import binascii
import glob
import json
import os
import sys

import yaml


def load_schemas(root):
    by_type = {}
    for path in glob.glob(os.path.join(root, "declarative", "declarations", "*", "*.yaml")):
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        t = (doc.get("payload") or {}).get("declarationtype")
        if t:
            by_type[t] = (os.path.relpath(path, root), doc)
    status = set()
    for path in glob.glob(os.path.join(root, "declarative", "status", "*.yaml")):
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        name = (doc.get("payload") or {}).get("statusitemtype")
        if name:
            status.add(name)
    return by_type, status


def macos_supported(supported_os, inherited):
    """A key's macOS availability: its own supportedOS.macOS.introduced over the inherited one."""
    mac = (supported_os or {}).get("macOS")
    if mac is None or "introduced" not in mac:
        return inherited
    return inherited and str(mac["introduced"]).lower() != "n/a"


class Bad(Exception):
    pass


TYPE_CHECKS = {
    "<string>": lambda v: isinstance(v, str),
    "<date>": lambda v: isinstance(v, str),
    "<integer>": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "<real>": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "<boolean>": lambda v: isinstance(v, bool),
    "<array>": lambda v: isinstance(v, list),
    "<dictionary>": lambda v: isinstance(v, dict),
    "<any>": lambda v: True,
}


def is_base64(v):
    if not isinstance(v, str):
        return False
    try:
        base64.b64decode(v, validate=True)
        return True
    except (binascii.Error, ValueError):
        return False


def check_value(path, value, key, on_mac):
    if not on_mac:
        raise Bad(f"{path}: not supported on macOS")
    t = key["type"]
    ok = is_base64(value) if t == "<data>" else TYPE_CHECKS[t](value)
    if not ok:
        raise Bad(f"{path}: expected {t}, got {type(value).__name__}")
    if "rangelist" in key and value not in key["rangelist"]:
        raise Bad(f"{path}: {value!r} not in rangelist {key['rangelist']}")
    rng = key.get("range")
    if rng and isinstance(value, (int, float)):
        if ("min" in rng and value < rng["min"]) or ("max" in rng and value > rng["max"]):
            raise Bad(f"{path}: {value} outside range {rng}")
    sub = key.get("subkeys") or []
    if t == "<dictionary>" and sub:
        check_dict(path, value, sub, on_mac)
    elif t == "<array>" and sub:
        item = sub[0]
        item_on_mac = macos_supported(item.get("supportedOS"), on_mac)
        for i, v in enumerate(value):
            check_value(f"{path}[{i}]", v, item, item_on_mac)


def check_dict(path, value, keys, on_mac):
    named = {k["key"]: k for k in keys}
    wildcard = named.get("ANY")
    for name, v in value.items():
        key = named.get(name, wildcard)
        if key is None:
            raise Bad(f"{path}.{name}: unknown key")
        check_value(f"{path}.{name}", v, key, macos_supported(key.get("supportedOS"), on_mac))
    for k in keys:
        if k["key"] != "ANY" and k.get("presence") == "required" and k["key"] not in value:
            raise Bad(f"{path}.{k['key']}: required key missing")


def check_declaration(d, schemas, status_items):
    if not isinstance(d, dict):
        raise Bad("declaration is not an object")
    extra = set(d) - {"Type", "Identifier", "ServerToken", "Payload"}
    if extra:
        raise Bad(f"unknown top-level keys {sorted(extra)}")
    for k in ("Type", "Identifier", "ServerToken"):
        if not isinstance(d.get(k), str) or not d[k]:
            raise Bad(f"{k}: missing or not a string")
    for k in ("Identifier", "ServerToken"):
        if len(d[k].encode("utf-8")) > 64:
            raise Bad(f"{k}: longer than 64 octets")
    if d["Type"] not in schemas:
        raise Bad(f"Type: {d['Type']} is not in the schema")
    source, doc = schemas[d["Type"]]
    mac = ((doc["payload"].get("supportedOS") or {}).get("macOS")) or {}
    if str(mac.get("introduced", "n/a")).lower() == "n/a":
        raise Bad(f"Type: {d['Type']} is not supported on macOS ({source})")
    payload = d.get("Payload")
    if not isinstance(payload, dict):
        raise Bad("Payload: missing or not an object")
    check_dict("Payload", payload, doc.get("payloadkeys") or [], True)
    if d["Type"] == "com.apple.configuration.management.status-subscriptions":
        for i, item in enumerate(payload["StatusItems"]):
            if item["Name"] not in status_items:
                raise Bad(f"Payload.StatusItems[{i}].Name: {item['Name']} is not a status item")


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    schemas, status_items = load_schemas(sys.argv[1])
    if not schemas or not status_items:
        print(f"no declarative schema under {sys.argv[1]}", file=sys.stderr)
        return 2
    declarations = json.load(sys.stdin)
    status = 0
    for d in declarations:
        ident = d.get("Identifier", "?") if isinstance(d, dict) else "?"
        try:
            check_declaration(d, schemas, status_items)
            print(f"OK {ident}")
        except Bad as why:
            print(f"BAD {ident}: {why}")
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
