"""Independent reference for tests/hd.rs: BIP-32 / SLIP-10 children with
bip_utils 2.9.3, signatures checked with the `ecdsa`, PyNaCl and coincurve
packages (all installed with bip_utils). Reads a JSON list of requests on stdin,
prints a JSON list of answers."""
import json
import sys

from bip_utils import (Bip32KeyData, Bip32Slip10Ed25519, Bip32Slip10Nist256p1,
                       Bip32Slip10Secp256k1)

CLASSES = {
    "secp256k1": Bip32Slip10Secp256k1,
    "p256": Bip32Slip10Nist256p1,
    "ed25519": Bip32Slip10Ed25519,
}


def point(curve, pub):
    """The public key as the provider shows it: SEC1 uncompressed for
    ECDSA curves, the 32 raw bytes for Ed25519."""
    if curve == "ed25519":
        raw = pub.RawCompressed().ToBytes()
        return raw[1:] if len(raw) == 33 else raw
    raw = pub.RawUncompressed().ToBytes()
    return raw if len(raw) == 65 else b"\x04" + raw


def describe(curve, node):
    out = {
        "public": point(curve, node.PublicKey()).hex(),
        "chain_code": node.ChainCode().ToBytes().hex(),
    }
    if curve == "secp256k1":
        out["xpub"] = node.PublicKey().ToExtended()
    return out


def derive(node, path):
    """`path` below `node` (relative: the node may be a child itself)."""
    rel = path[2:] if path.startswith("m/") else ("" if path == "m" else path)
    return node.DerivePath(rel) if rel else node


def answer(r):
    op = r["op"]
    curve = r.get("curve")
    if op == "xpub":
        node = Bip32Slip10Secp256k1.FromExtendedKey(r["xpub"])
        return describe("secp256k1", derive(node, r["path"]))
    if op == "public":
        data = Bip32KeyData(chain_code=bytes.fromhex(r["chain_code"]))
        node = CLASSES[curve].FromPublicKey(bytes.fromhex(r["public"]), data)
        return describe(curve, derive(node, r["path"]))
    if op == "private":
        data = Bip32KeyData(chain_code=bytes.fromhex(r["chain_code"]))
        node = CLASSES[curve].FromPrivateKey(bytes.fromhex(r["key"]), data)
        return describe(curve, derive(node, r["path"]))
    if op == "verify":
        sig = bytes.fromhex(r["signature"])
        pub = bytes.fromhex(r["public"])
        if curve == "ed25519":
            import nacl.exceptions
            import nacl.signing
            try:
                nacl.signing.VerifyKey(pub).verify(bytes.fromhex(r["message"]), sig)
                return {"valid": True}
            except nacl.exceptions.BadSignatureError:
                return {"valid": False}
        import ecdsa
        import ecdsa.util
        c = {"secp256k1": ecdsa.SECP256k1, "p256": ecdsa.NIST256p}[curve]
        key = ecdsa.VerifyingKey.from_string(pub, curve=c)
        try:
            ok = key.verify_digest(sig, bytes.fromhex(r["digest"]),
                                   sigdecode=ecdsa.util.sigdecode_string)
        except ecdsa.BadSignatureError:
            ok = False
        return {"valid": bool(ok)}
    if op == "recover":
        # Recoverable ECDSA r || s || v over a 32-byte digest: the key
        # standard recovery yields, uncompressed.
        from coincurve import PublicKey
        key = PublicKey.from_signature_and_message(
            bytes.fromhex(r["signature"]), bytes.fromhex(r["digest"]), hasher=None)
        return {"public": key.format(compressed=False).hex()}
    if op == "bip340":
        from coincurve import PublicKeyXOnly
        key = PublicKeyXOnly(bytes.fromhex(r["xonly"]))
        return {"valid": bool(key.verify(bytes.fromhex(r["signature"]),
                                         bytes.fromhex(r["message"])))}
    raise ValueError("unknown op %r" % op)


json.dump([answer(r) for r in json.load(sys.stdin)], sys.stdout)
