#!/usr/bin/env python3
"""Writes the hand-made seed programs of the `abi` fuzz target into
fuzz/corpus/abi/ (and the small `store_open` seeds when given the template
stores the target dumps with P11DERIVE_FUZZ_DUMP_TEMPLATES=DIR).

The encoding mirrors fuzz_targets/abi.rs (`Program::step` and its operand
readers): an opcode byte, then each operand in the order the target reads
it. Keep the two in step when either changes.

    python3 fuzz/seeds.py                 # abi seeds
    python3 fuzz/seeds.py --store DIR     # store_open seeds from DIR/{empty,rich}.db
"""

import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def b(*xs):
    return bytes(xs)


def u16(v):
    return struct.pack("<H", v)


def u64(v):
    return struct.pack("<Q", v)


# session(): 0 = the program's read-write session, 3 = its read-only one.
RW, RO = b(0), b(3)

# object(): selector 0 and an index into NAMED (abi.rs).
EC_PRIV, EC_PUB, P256_PRIV, P256_PUB, AES, HMAC, CERT = range(7)
S_AES, S_SECRET, S_EC_PRIV, S_EC_PUB = range(7, 11)


def named(i):
    return b(0, i)


CREATED0 = b(4, 0)  # the first object this program created

# Mechanisms and attribute types go by value (selector 255, then the u64),
# not by index: the lists abi.rs picks from come from the library, whose
# order is its own. The values are pkcs11-headers/pkcs11.h's.
ECDSA, ECDSA_SHA256, SHA256_HMAC, AES_GCM = 0x1041, 0x1044, 0x251, 0x1087
KEY_WRAP, EC_GEN, AES_GEN, SHA256 = 0x2109, 0x1040, 0x1080, 0x250
NO_PARAM = b(0)
PTR = b(1)  # maybe(): a valid pointer


def by_value(v):
    return b(255) + u64(v)


def mech(ty, param=NO_PARAM):
    return by_value(ty) + param


def gcm(iv=b"\x01" * 12, aad=b"", short=False):
    """CK_GCM_PARAMS (or the layout without ulIvBits), 128-bit tag."""
    return (b(4, len(iv)) + iv[:16] + b(0) + PTR
            + b(len(aad)) + aad + b(0) + PTR
            + b(0) + b(0) + b(1 if short else 0))


# Attribute types (by value, as above).
CLASS, TOKEN, LABEL, APPLICATION, VALUE, KEY_TYPE, ID = 0, 1, 3, 0x10, 0x11, 0x100, 0x102
EXTRACTABLE, VALUE_LEN, EC_PARAMS, EC_POINT = 0x162, 0x161, 0x180, 0x181
PUBLIC_KEY_INFO, ISSUER, SERIAL_NUMBER, SUBJECT = 0x129, 0x81, 0x82, 0x101
# Indexes into ULONGS, LABELS, EC_PARAMS (abi.rs).
U_32, U_DATA, U_SECRET, U_GENERIC = 4, 8, 12, 16
L_NEW0 = 5
P_SECP256K1, P_P256 = 0, 1
FULL = b(2)  # the declared length is the value's


def a_ulong(ty, idx):
    return by_value(ty) + b(2, 1, idx) + FULL


def a_bool(ty, v):
    return by_value(ty) + b(4, 2 if v else 0) + FULL


def a_bytes(ty, data):
    return by_value(ty) + b(6, len(data)) + data + FULL


def a_label(idx):
    return by_value(LABEL) + b(7, idx) + FULL


def a_params(idx):
    return by_value(EC_PARAMS) + b(8, idx) + FULL


def template(*attrs):
    return b(len(attrs)) + b"".join(attrs)


def blob(data):
    return b(0, len(data)) + data


LAST = b(2)  # the last output a call wrote


def out_len_query():
    return b(0) + u64(0)


def out_buf(size=512):
    return b(4) + u16(size) + b(0)


def op(code, *parts):
    return b(code) + b"".join(parts)


def find_all():
    return (op(0, RW, template()) + op(1, RW, b(2, 16), PTR) + op(2, RW))


def get_attrs(obj, *types):
    attrs = b"".join(by_value(t) + b(2, 1) + u16(300) + b(0) for t in types)
    return op(6, RW, obj, b(len(types)), attrs, b(2))


def length_queries(obj, *types):
    attrs = b"".join(by_value(t) + b(0) + u64(0) for t in types)
    return op(6, RW, obj, b(len(types)), attrs, b(2))


SEEDS = {
    "find-and-read": find_all()
    + get_attrs(named(EC_PUB), LABEL, ID, EC_PARAMS, EC_POINT, PUBLIC_KEY_INFO)
    + length_queries(named(CERT), VALUE, ISSUER, SERIAL_NUMBER, SUBJECT),
    "ecdsa-sign-verify": op(10, RW, mech(ECDSA_SHA256), PTR, named(EC_PRIV))
    + op(11, RW, blob(b"hello"), out_len_query())
    + op(11, RW, blob(b"hello"), out_buf(100))
    + op(14, RW, mech(ECDSA_SHA256), PTR, named(EC_PUB))
    + op(15, RW, blob(b"hello"), LAST),
    "ecdsa-raw-p256": op(10, RW, mech(ECDSA), PTR, named(P256_PRIV))
    + op(11, RW, b(5) + b"\x42" * 32, b(3, 10, 0))
    + op(11, RW, b(5) + b"\x42" * 32, out_buf(64))
    + op(14, RO, mech(ECDSA), PTR, named(P256_PUB))
    + op(15, RO, b(5) + b"\x42" * 32, LAST),
    "aes-gcm-roundtrip": op(18, RW, mech(AES_GCM, gcm()), PTR, named(AES))
    + op(19, RW, blob(b"secret"), out_buf(200))
    + op(22, RW, mech(AES_GCM, gcm()), PTR, named(AES))
    + op(23, RW, LAST, out_buf(200)),
    "aes-gcm-multipart": op(18, RW, mech(AES_GCM, gcm(aad=b"aad", short=True)),
                            PTR, named(S_AES))
    + op(20, RW, blob(b"part one"), b(3, 0, 0))
    + op(21, RW, out_buf(64))
    + op(22, RW, mech(AES_GCM, gcm(aad=b"aad", short=True)), PTR, named(S_AES))
    + op(24, RW, LAST, b(4) + u16(0) + b(0))
    + op(25, RW, out_buf(64)),
    "hmac-multipart": op(10, RW, mech(SHA256_HMAC), PTR, named(HMAC))
    + op(12, RW, blob(b"part"))
    + op(13, RW, out_buf(64))
    + op(14, RW, mech(SHA256_HMAC), PTR, named(HMAC))
    + op(15, RW, blob(b"part"), LAST),
    "digest": op(26, RW, mech(SHA256), PTR, b(6))
    + op(27, RW, blob(b"abc"), out_buf(32))
    + op(26, RO, mech(SHA256), PTR, b(6))
    + op(28, RO, blob(b"abc"))
    + op(29, RO, b(3, 8, 0)),
    "wrap-unwrap": op(30, RW, mech(KEY_WRAP), PTR, named(S_AES), named(S_SECRET),
                      out_buf(100))
    + op(31, RW, mech(KEY_WRAP), named(S_AES), LAST,
         template(a_ulong(CLASS, U_SECRET), a_ulong(KEY_TYPE, U_GENERIC),
                  a_bool(TOKEN, False)),
         PTR, PTR),
    "new-ec-asset": op(5, RW, mech(EC_GEN),
                       template(a_bool(TOKEN, True), a_label(L_NEW0),
                                a_params(P_SECP256K1)),
                       template(a_bool(TOKEN, True), a_label(L_NEW0)),
                       PTR, PTR, PTR)
    + get_attrs(CREATED0, LABEL, ID, EC_POINT),
    "session-keys": op(4, RW, mech(AES_GEN),
                       template(a_ulong(VALUE_LEN, U_32), a_bytes(LABEL, b"tmp"),
                                a_bool(EXTRACTABLE, True)),
                       PTR, PTR)
    + op(5, RW, mech(EC_GEN), template(a_params(P_P256)), template(), PTR, PTR, PTR)
    + op(9, RW, CREATED0),
    "data-object": op(3, RW,
                      template(a_ulong(CLASS, U_DATA), a_bool(TOKEN, True),
                               a_bytes(LABEL, b"d"), a_bytes(APPLICATION, b"app"),
                               a_bytes(VALUE, b"value")),
                      PTR)
    + op(0, RW, template(a_ulong(CLASS, U_DATA))) + op(1, RW, b(2, 16), PTR) + op(2, RW)
    + op(9, RW, CREATED0),
    "logout-login": op(37, RW, b(1))
    + op(10, RW, mech(ECDSA_SHA256), PTR, named(EC_PRIV))
    + op(36, RW, b(0), b(0), b(0), b(1), b(1))
    + op(10, RW, mech(ECDSA_SHA256), PTR, named(EC_PRIV)),
    "reinitialize": op(39, b(1), b(1), b(0), b(2), b(0), b(1))
    + op(38, b(0), b(2), PTR)
    + op(33, b(0), b(0), PTR),
    "sessions": op(33, b(0), b(2), PTR) + op(34, b(4, 2)) + op(34, RO)
    + op(38, b(0), b(5), b(5), PTR) + op(35, b(0)),
}


def write_abi():
    out = os.path.join(HERE, "corpus", "abi")
    os.makedirs(out, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    print(f"{len(SEEDS)} abi seeds in {out}")


def write_store(templates):
    """Mode 0: whole files; 1: patches at offsets; 2: SQL row changes."""
    out = os.path.join(HERE, "corpus", "store_open")
    os.makedirs(out, exist_ok=True)
    empty = open(os.path.join(templates, "empty.db"), "rb").read()
    rich = open(os.path.join(templates, "rich.db"), "rb").read()

    def patch(off, data):
        return struct.pack("<IB", off, len(data) - 1) + data

    # (table, row, change, ...): tables 0 assets, 1 versions, 2 audit,
    # 3 audit_pending, 4 objects, 5 generation; change 0 = UPDATE column.
    def update(table, row, column, kind, payload):
        return b(table, row, 0, column, kind) + payload

    seeds = {
        "raw-empty-store": b(0) + empty,
        "raw-populated-store": b(0) + rich,
        "patch-header": b(1, 1) + patch(18, b"\x01\x01") + patch(60, b"\x00\x00\x00\x07"),
        "patch-page": b(1, 1) + patch(4096 * 2 + 100, b"\xff" * 8) + patch(4096 * 3 + 8, b"\x00\x10"),
        "sql-current-max": b(2) + update(0, 1, 4, 2, b(5)),
        "sql-bad-state": b(2) + update(0, 2, 6, 4, b(5) + b"BROKE"),
        "sql-pk-garbage": b(2) + update(1, 3, 2, 6, b(7) + b"\x04abcdef"),
        "sql-audit-event": b(2) + update(2, 4, 4, 5, b(9)),
        "sql-schema-4": b(2, 0, 0, 6, 4),
        "sql-delete-audit": b(2, 2, 3, 4),
    }
    for name, data in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    print(f"{len(seeds)} store_open seeds in {out}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--store":
        write_store(sys.argv[2])
    else:
        write_abi()
