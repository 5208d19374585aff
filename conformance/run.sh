#!/usr/bin/env bash
# Conformance: programs no one here wrote (OpenSC pkcs11-tool, OpenSSL) against
# the built provider, with SoftHSM as the backing HSM. One PASS/FAIL line per
# check, then the tally; exits non-zero when any check fails.
set -uo pipefail
cd "$(dirname "$0")/.."
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet || { echo "FAIL build"; echo "0 passed, 1 failed"; exit 1; }
export P11DERIVE_BIN="$PWD/target/release/p11derive"
MODULE="$PWD/target/release/libp11derive.so"
# shellcheck source=tools/softhsm-env.sh
source tools/softhsm-env.sh >/dev/null
trap 'rm -rf "$P11DERIVE_WORK"' EXIT
W=$P11DERIVE_WORK
PIN=$P11DERIVE_PIN

passed=0
failed=0
pass() { echo "PASS $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1"; [ -n "${2:-}" ] && sed 's/^/     | /' "$2" | tail -n 8; failed=$((failed + 1)); }
# check NAME COMMAND...: passes when the command succeeds.
check() { local name=$1; shift; if "$@" >"$W/out" 2>&1; then pass "$name"; else fail "$name" "$W/out"; fi; }
# refuse NAME PATTERN COMMAND...: passes when the command fails and prints PATTERN.
refuse() {
    local name=$1 pattern=$2; shift 2
    if "$@" >"$W/out" 2>&1; then fail "$name (unexpectedly succeeded)" "$W/out";
    elif grep -q -- "$pattern" "$W/out"; then pass "$name";
    else fail "$name (no '$pattern')" "$W/out"; fi
}
tool() { pkcs11-tool --module "$MODULE" "$@"; }
# pkcs11-tool --verify exits 0 even when it reports an invalid signature, so
# a verification passes only on its explicit verdict.
verifies() { has "Signature is valid" tool --verify "$@"; }
has() { local pattern=$1; shift; "$@" >"$W/has" 2>&1 && grep -q -- "$pattern" "$W/has"; }

check "pkcs11-tool -L shows the p11derive token" has "token label *: p11derive" tool -L
check "pkcs11-tool -L through OpenSC's pkcs11-spy (which rewrites the returned CK_INTERFACE)" \
    has "token label *: p11derive" env PKCS11SPY="$MODULE" PKCS11SPY_OUTPUT="$W/spy.log" \
    pkcs11-tool --module /usr/lib/x86_64-linux-gnu/pkcs11-spy.so -L
check "pkcs11-tool -M lists ECDSA-SHA256" has "ECDSA-SHA256, keySize={256,256}, sign, verify" tool -M
check "pkcs11-tool -M lists EC key pair generation" has "ECDSA-KEY-PAIR-GEN" tool -M
refuse "pkcs11-tool --init-token is refused" "C_InitToken failed: rv = CKR_FUNCTION_NOT_SUPPORTED" tool --init-token --label x --so-pin 87654321
refuse "wrong PIN gives CKR_PIN_INCORRECT" "CKR_PIN_INCORRECT" tool --login --pin 999999 -O

echo "p11derive conformance message $(date +%s)" > "$W/msg"
openssl dgst -sha256 -binary "$W/msg" > "$W/msg.sha256"

for curve in secp256k1 prime256v1; do
    label="conf-$curve"
    check "$curve: --keypairgen creates asset $label" \
        tool --login --pin "$PIN" --keypairgen --key-type "EC:$curve" --label "$label"
    id=$("$P11DERIVE_BIN" asset list --json | python3 -c "import json,sys; print([a['object_id'] for a in json.load(sys.stdin) if a['asset_id']=='$label'][0])" 2>/dev/null)
    [ -n "$id" ] || { fail "$curve: asset list shows $label"; continue; }
        check "$curve: -O shows the alias" has "label: *$label\$" tool --login --pin "$PIN" -O
    check "$curve: -O shows the version object $label@v1" has "label: *$label@v1\$" tool --login --pin "$PIN" -O
        refuse "$curve: a second --keypairgen with the same label is refused" "CKR_ATTRIBUTE_VALUE_INVALID" \
        tool --login --pin "$PIN" --keypairgen --key-type "EC:$curve" --label "$label"
    check "$curve: --read-object --type pubkey (SPKI DER)" \
        tool --read-object --type pubkey --id "$id" -o "$W/$curve.pub.der"
    check "$curve: openssl reads the public key" \
        openssl pkey -pubin -inform DER -in "$W/$curve.pub.der" -out "$W/$curve.pub.pem"
    for obj in alias version; do
        oid=$id
        [ "$obj" = version ] && oid="${id}00000001"
        check "$curve/$obj: --sign -m ECDSA-SHA256" \
            tool --login --pin "$PIN" --sign -m ECDSA-SHA256 --id "$oid" --signature-format openssl \
            -i "$W/msg" -o "$W/$curve.$obj.sig"
        check "$curve/$obj: openssl dgst -verify accepts the ECDSA-SHA256 signature" \
            openssl dgst -sha256 -verify "$W/$curve.pub.pem" -signature "$W/$curve.$obj.sig" "$W/msg"
        check "$curve/$obj: --verify -m ECDSA-SHA256" \
            verifies -m ECDSA-SHA256 --id "$oid" --signature-format openssl -i "$W/msg" \
            --signature-file "$W/$curve.$obj.sig"
        check "$curve/$obj: --sign -m ECDSA over a SHA-256 digest" \
            tool --login --pin "$PIN" --sign -m ECDSA --id "$oid" --signature-format openssl \
            -i "$W/msg.sha256" -o "$W/$curve.$obj.raw.sig"
        check "$curve/$obj: openssl pkeyutl -verify accepts the raw ECDSA signature" \
            openssl pkeyutl -verify -pubin -inkey "$W/$curve.pub.pem" -in "$W/msg.sha256" \
            -sigfile "$W/$curve.$obj.raw.sig"
    done
    cp "$W/msg" "$W/msg.tampered"; echo x >> "$W/msg.tampered"
    refuse "$curve: openssl rejects the signature over a changed message" "Verification failure" \
        openssl dgst -sha256 -verify "$W/$curve.pub.pem" -signature "$W/$curve.alias.sig" "$W/msg.tampered"
    check "$curve: --verify through the module reports the changed message's signature invalid" \
        has "Invalid signature" tool --verify -m ECDSA-SHA256 --id "$id" --signature-format openssl \
        -i "$W/msg.tampered" --signature-file "$W/$curve.alias.sig"
done

# Rotation (design §3): the alias signs with the new version, the previous
# version object still verifies but no longer signs.
label=conf-rotation
check "rotation: asset create (CLI)" "$P11DERIVE_BIN" asset create "$label" --type secp256k1
id=$("$P11DERIVE_BIN" asset show "$label" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["object_id"])')
check "rotation: --sign with the alias at version 1" \
    tool --login --pin "$PIN" --sign -m ECDSA-SHA256 --id "$id" --signature-format openssl -i "$W/msg" -o "$W/rot.v1.sig"
check "rotation: p11derive asset rotate" "$P11DERIVE_BIN" asset rotate "$label"
check "rotation: --sign with the alias at version 2" \
    tool --login --pin "$PIN" --sign -m ECDSA-SHA256 --id "$id" --signature-format openssl -i "$W/msg" -o "$W/rot.v2.sig"
for n in 1 2; do
    check "rotation: --read-object the public key of version $n" \
        tool --read-object --type pubkey --id "${id}0000000$n" -o "$W/rot.v$n.der"
    check "rotation: openssl reads version $n's public key" \
        openssl pkey -pubin -inform DER -in "$W/rot.v$n.der" -out "$W/rot.v$n.pem"
done
check "rotation: the two versions have different public keys" bash -c "! cmp -s '$W/rot.v1.pem' '$W/rot.v2.pem'"
check "rotation: openssl verifies the first signature under version 1" \
    openssl dgst -sha256 -verify "$W/rot.v1.pem" -signature "$W/rot.v1.sig" "$W/msg"
check "rotation: openssl verifies the second signature under version 2" \
    openssl dgst -sha256 -verify "$W/rot.v2.pem" -signature "$W/rot.v2.sig" "$W/msg"
refuse "rotation: the second signature does not verify under version 1" "Verification failure" \
    openssl dgst -sha256 -verify "$W/rot.v1.pem" -signature "$W/rot.v2.sig" "$W/msg"
check "rotation: --verify with the version-1 object still accepts its signature" \
    verifies -m ECDSA-SHA256 --id "${id}00000001" --signature-format openssl -i "$W/msg" --signature-file "$W/rot.v1.sig"
check "rotation: --verify with the alias accepts the version-1 signature (any usable version)" \
    verifies -m ECDSA-SHA256 --id "$id" --signature-format openssl -i "$W/msg" --signature-file "$W/rot.v1.sig"
refuse "rotation: the version-1 object refuses to sign" "CKR_KEY_FUNCTION_NOT_PERMITTED" \
    tool --login --pin "$PIN" --sign -m ECDSA-SHA256 --id "${id}00000001" -i "$W/msg" -o "$W/rot.refused.sig"

echo
echo "conformance: OpenSC $(dpkg-query -W -f='${Version}' opensc 2>/dev/null), $(openssl version | cut -d' ' -f1-2)"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
