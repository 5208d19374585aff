#!/usr/bin/env bash
# The main job, from nothing: install what is missing, build, put a root
# inside a SoftHSM token, create a derived secp256k1 key through pkcs11-tool,
# sign with it, and verify the signature with plain openssl.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"

step() { printf '\n== %s\n' "$*"; }

step "build (release)"
cargo build --release --quiet

step "install: the CLI, the provider, man pages and shell completions under /usr/local"
bash tools/install.sh
export P11DERIVE_BIN="$PWD/target/release/p11derive"
MODULE="$PWD/target/release/libp11derive.so"

step "backing HSM: a SoftHSM token 'custody-root', and the root generated inside it"
# shellcheck source=tools/softhsm-env.sh
source tools/softhsm-env.sh
trap 'rm -rf "$P11DERIVE_WORK"' EXIT
echo "config: $P11DERIVE_CONF"

tool() { pkcs11-tool --module "$MODULE" "$@"; }

step "pkcs11-tool -L: the provider's slot and token"
tool -L

step "pkcs11-tool --keypairgen: derived secp256k1 asset 'hot-wallet-1' (version 1)"
tool --login --pin "$P11DERIVE_PIN" --keypairgen --key-type EC:secp256k1 --label hot-wallet-1
"$P11DERIVE_BIN" asset list

ID=$("$P11DERIVE_BIN" asset list --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["object_id"])')
echo "pay 1 BTC to bc1q-demo" > "$P11DERIVE_WORK/message.txt"

step "pkcs11-tool --sign -m ECDSA-SHA256 with the derived key (CKA_ID $ID)"
tool --login --pin "$P11DERIVE_PIN" --sign -m ECDSA-SHA256 --id "$ID" --signature-format openssl \
    -i "$P11DERIVE_WORK/message.txt" -o "$P11DERIVE_WORK/message.sig"

step "pkcs11-tool --read-object: the public key, as SubjectPublicKeyInfo"
tool --read-object --type pubkey --id "$ID" -o "$P11DERIVE_WORK/pub.der"
openssl pkey -pubin -inform DER -in "$P11DERIVE_WORK/pub.der" -out "$P11DERIVE_WORK/pub.pem"
openssl pkey -pubin -in "$P11DERIVE_WORK/pub.pem" -noout -text | head -3

step "openssl verifies the signature (no PKCS#11 involved)"
openssl dgst -sha256 -verify "$P11DERIVE_WORK/pub.pem" -signature "$P11DERIVE_WORK/message.sig" "$P11DERIVE_WORK/message.txt"

step "rotation: version 2 of hot-wallet-1, by counter increment (no key copied or stored)"
"$P11DERIVE_BIN" asset rotate hot-wallet-1
tool --login --pin "$P11DERIVE_PIN" --sign -m ECDSA-SHA256 --id "$ID" --signature-format openssl \
    -i "$P11DERIVE_WORK/message.txt" -o "$P11DERIVE_WORK/message.v2.sig"
tool --read-object --type pubkey --id "${ID}00000002" -o "$P11DERIVE_WORK/pub.v2.der"
openssl pkey -pubin -inform DER -in "$P11DERIVE_WORK/pub.v2.der" -out "$P11DERIVE_WORK/pub.v2.pem"
echo "the alias now signs with version 2; openssl, with version 2's public key:"
openssl dgst -sha256 -verify "$P11DERIVE_WORK/pub.v2.pem" -signature "$P11DERIVE_WORK/message.v2.sig" "$P11DERIVE_WORK/message.txt"
echo "the first signature still verifies under version 1:"
openssl dgst -sha256 -verify "$P11DERIVE_WORK/pub.pem" -signature "$P11DERIVE_WORK/message.sig" "$P11DERIVE_WORK/message.txt"
echo "version 1 (hot-wallet-1@v1) may verify but no longer sign:"
refusal=$(tool --login --pin "$P11DERIVE_PIN" --sign -m ECDSA-SHA256 --id "${ID}00000001" \
    -i "$P11DERIVE_WORK/message.txt" -o "$P11DERIVE_WORK/refused.sig" 2>&1 || true)
if ! grep -o "CKR_KEY_FUNCTION_NOT_PERMITTED" <<<"$refusal"; then
    echo "demo: version 1 was not refused: $refusal" >&2
    exit 1
fi
"$P11DERIVE_BIN" asset show hot-wallet-1

step "the provider's log"
cat "$P11DERIVE_WORK/p11derive.log"
echo
echo "demo: OK - a key derived from the HSM-held root signed, openssl verified it, and a rotation moved signing to version 2"
