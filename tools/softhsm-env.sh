# Sourced by the demo and the conformance run: a private SoftHSM token
# directory, the backing token, a p11derive config and an initialized root.
# Sets P11DERIVE_WORK, SOFTHSM2_CONF, P11DERIVE_CONF, P11DERIVE_PIN and
# P11DERIVE_MODULE (the built provider). Expects P11DERIVE_BIN (the CLI).
# The root is generated inside SoftHSM unless P11DERIVE_IMPORT_ROOT names a file.
# With P11DERIVE_ADMIN set, users mode is on (the token PIN is the service
# credential, in a 0600 file) and init adds that first admin, whose secret is
# in the file P11DERIVE_ADMIN_SECRET_FILE names.

P11DERIVE_WORK=$(mktemp -d "${TMPDIR:-/tmp}/p11derive.XXXXXX")
mkdir -p "$P11DERIVE_WORK/tokens"
cat > "$P11DERIVE_WORK/softhsm2.conf" <<CONF
directories.tokendir = $P11DERIVE_WORK/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
export SOFTHSM2_CONF="$P11DERIVE_WORK/softhsm2.conf"
export P11DERIVE_PIN=${P11DERIVE_PIN:-123456}
softhsm2-util --init-token --free --label custody-root --pin "$P11DERIVE_PIN" --so-pin 87654321 >/dev/null
cat > "$P11DERIVE_WORK/p11derive.toml" <<CONF
[token]
label = "p11derive"

[backend]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "custody-root"
root_label = "p11derive-root"

[store]
path = "$P11DERIVE_WORK/state.db"

[log]
file = "$P11DERIVE_WORK/p11derive.log"
CONF
export P11DERIVE_CONF="$P11DERIVE_WORK/p11derive.toml"
if [ -n "${P11DERIVE_ADMIN:-}" ]; then
    (umask 077 && printf '%s\n' "$P11DERIVE_PIN" > "$P11DERIVE_WORK/service.pin")
    printf '\n[users]\nenabled = true\nservice_pin_file = "%s"\n' "$P11DERIVE_WORK/service.pin" >> "$P11DERIVE_CONF"
    env -u P11DERIVE_PIN "$P11DERIVE_BIN" init --admin "$P11DERIVE_ADMIN" --pin-file "$P11DERIVE_ADMIN_SECRET_FILE"
elif [ -n "${P11DERIVE_IMPORT_ROOT:-}" ]; then
    "$P11DERIVE_BIN" init --import-root "$P11DERIVE_IMPORT_ROOT"
else
    "$P11DERIVE_BIN" init
fi
