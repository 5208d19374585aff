#!/usr/bin/env bash
# Installs what p11derive needs on a Debian 12 machine, only what is missing.
# Run as root (or with sudo available). Safe to run again.
set -euo pipefail

pkgs=(softhsm2 opensc openssl libclang-dev libengine-pkcs11-openssl python3-pykcs11 p11-kit gnutls-bin openjdk-17-jdk-headless sqlite3 postgresql pgbouncer libssl-dev pkg-config ca-certificates binutils gcc g++ python3)  # python3-pykcs11: the README's AES example (tests/readme.rs); g++: libFuzzer, for tools/fuzz.sh; libssl-dev, pkg-config: TLS to PostgreSQL (openssl crate); pgbouncer: tests/pg_conn.rs
missing=()
for p in "${pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup: installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: installing the Rust toolchain with rustup"
    command -v curl >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if command -v rustup >/dev/null 2>&1; then
    for c in rustfmt clippy; do
        rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c" >/dev/null 2>&1 || true
    done
fi
echo "setup: ready ($(cargo --version), $(softhsm2-util --version 2>/dev/null | head -1 | sed 's/^/softhsm /'))"
