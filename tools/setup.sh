#!/usr/bin/env bash
# Installs what p11derive needs on a Debian 12 machine, only what is missing.
# Run as root (or with sudo available). Safe to run again.
set -euo pipefail

pkgs=(softhsm2 opensc openssl libclang-dev libengine-pkcs11-openssl python3-pykcs11 p11-kit gnutls-bin openjdk-17-jdk-headless sqlite3 postgresql pgbouncer libssl-dev pkg-config ca-certificates binutils gcc g++ make python3 meson ninja-build gdb python3-prometheus-client)  # python3-prometheus-client: an independent reader of the metrics text (Debian's python3); make, g++: google/pkcs11test, for conformance/run.sh; gdb: tests/backup.rs stops the CLI at exit to scan its memory; meson, ninja-build: OpenSSL's pkcs11-provider, for conformance/run.sh; python3-pykcs11: the README's AES example (tests/readme.rs); g++: libFuzzer, for tools/fuzz.sh; libssl-dev, pkg-config: TLS to PostgreSQL (openssl crate); pgbouncer: tests/pg_conn.rs
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

# promtool, for tests/operations.rs (`promtool check rules` and `promtool test
# rules` on docs/prometheus/). Debian ships it only in the prometheus package,
# whose install starts and enables a Prometheus server: a policy-rc.d that
# refuses every start (unless one is in place already) keeps it from starting
# while it installs, and the service is then stopped and disabled, so no
# Prometheus daemon is left running or starts at the next boot.
if ! dpkg -s prometheus >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup: installing prometheus (for promtool; its server is not started)"
    policy=/usr/sbin/policy-rc.d
    own_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# tools/setup.sh: no service starts while it installs prometheus\nexit 101\n' | $sudo tee "$policy" >/dev/null
        $sudo chmod 0755 "$policy"
        own_policy=1
    fi
    installed=1
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null || installed=""
    [ -z "$own_policy" ] || $sudo rm -f "$policy"
    if [ -d /run/systemd/system ]; then
        $sudo systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    elif [ -x /etc/init.d/prometheus ]; then
        if $sudo /etc/init.d/prometheus status >/dev/null 2>&1; then
            $sudo /etc/init.d/prometheus stop >/dev/null 2>&1 || true
        fi
        $sudo update-rc.d prometheus disable >/dev/null 2>&1 || true
    fi
    if [ -z "$installed" ]; then
        echo "setup: installing prometheus failed (apt-get install --no-install-recommends prometheus)"
        exit 1
    fi
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
# OpenSSL 3's pkcs11-provider for conformance/run.sh, built from the release
# tarball in the shared third-party folder ($P11DERIVE_THIRDPARTY, else
# ../shared/thirdparty next to the repository, else /work/shared/thirdparty)
# into /opt/pkcs11-provider, outside the repository; skipped once built.
P11PROV_DIR=${P11PROV_DIR:-/opt/pkcs11-provider}
P11PROV_VERSION=1.2.0
if [ ! -f "$P11PROV_DIR/$P11PROV_VERSION/pkcs11.so" ]; then
    repo=$(cd "$(dirname "$0")/.." && pwd)
    tarball=""
    for d in ${P11DERIVE_THIRDPARTY:+"$P11DERIVE_THIRDPARTY"} "$repo/../shared/thirdparty" /work/shared/thirdparty; do
        if [ -f "$d/pkcs11-provider-$P11PROV_VERSION.tar.gz" ]; then tarball="$d/pkcs11-provider-$P11PROV_VERSION.tar.gz"; break; fi
    done
    if [ -z "$tarball" ]; then
        echo "setup: pkcs11-provider-$P11PROV_VERSION.tar.gz not found (set P11DERIVE_THIRDPARTY to its folder); the conformance run skips OpenSSL's pkcs11-provider"
    else
        echo "setup: building pkcs11-provider $P11PROV_VERSION from $tarball into $P11PROV_DIR"
        build=$(mktemp -d "${TMPDIR:-/tmp}/pkcs11-provider.XXXXXX")
        tar xzf "$tarball" -C "$build"
        src="$build/pkcs11-provider-$P11PROV_VERSION"
        if (cd "$src" && meson setup "$build/out" >"$build/log" 2>&1 && meson compile -C "$build/out" >>"$build/log" 2>&1); then
            sudo=""
            [ "$(id -u)" -eq 0 ] || sudo="sudo"
            $sudo install -D -m 0755 "$build/out/src/pkcs11.so" "$P11PROV_DIR/$P11PROV_VERSION/pkcs11.so"
            rm -rf "$build"
        else
            tail -n 20 "$build/log"
            echo "setup: building pkcs11-provider failed; the log is $build/log"
            exit 1
        fi
    fi
fi
# google/pkcs11test for conformance/run.sh, built (make, g++) from the pinned
# snapshot in the same third-party folder into /opt/pkcs11test, outside the
# repository; skipped once built.
P11TEST_DIR=${P11TEST_DIR:-/opt/pkcs11test}
P11TEST_VERSION=2cbe462
if [ ! -x "$P11TEST_DIR/$P11TEST_VERSION/pkcs11test" ]; then
    repo=$(cd "$(dirname "$0")/.." && pwd)
    tarball=""
    for d in ${P11DERIVE_THIRDPARTY:+"$P11DERIVE_THIRDPARTY"} "$repo/../shared/thirdparty" /work/shared/thirdparty; do
        if [ -f "$d/pkcs11test-$P11TEST_VERSION.tar.gz" ]; then tarball="$d/pkcs11test-$P11TEST_VERSION.tar.gz"; break; fi
    done
    if [ -z "$tarball" ]; then
        echo "setup: pkcs11test-$P11TEST_VERSION.tar.gz not found (set P11DERIVE_THIRDPARTY to its folder); the conformance run skips google/pkcs11test"
    else
        echo "setup: building google/pkcs11test $P11TEST_VERSION from $tarball into $P11TEST_DIR"
        build=$(mktemp -d "${TMPDIR:-/tmp}/pkcs11test.XXXXXX")
        tar xzf "$tarball" -C "$build"
        if make -C "$build/pkcs11test" -j"$(nproc)" pkcs11test >"$build/log" 2>&1; then
            sudo=""
            [ "$(id -u)" -eq 0 ] || sudo="sudo"
            $sudo install -D -m 0755 "$build/pkcs11test/pkcs11test" "$P11TEST_DIR/$P11TEST_VERSION/pkcs11test"
            rm -rf "$build"
        else
            tail -n 20 "$build/log"
            echo "setup: building pkcs11test failed; the log is $build/log"
            exit 1
        fi
    fi
fi
# The SLIP-39 reference implementation, for tests/slip39_reference.rs (the
# same python3 as on PATH, which the test runs); pinned.
SHAMIR_MNEMONIC_VERSION=0.3.0
if ! python3 -c 'import shamir_mnemonic' >/dev/null 2>&1; then
    echo "setup: installing shamir-mnemonic $SHAMIR_MNEMONIC_VERSION for python3 ($(command -v python3))"
    python3 -m pip install -q "shamir-mnemonic==$SHAMIR_MNEMONIC_VERSION"
fi
# Independent implementations the chain tests (tests/chains.rs) check the
# provider's signatures with: Ethereum public-key recovery and addresses
# (eth-keys, Keccak-256 through eth-hash on pycryptodome), BIP-340 Schnorr
# verification (coincurve, libsecp256k1) and BIP-32/SLIP-10 (bip-utils, for
# tests/hd.rs, with the ecdsa and PyNaCl verifiers it brings); pinned, for the
# python3 on PATH.
CHAIN_PY_PACKAGES=(bip-utils==2.9.3 eth-keys==0.8.0 "eth-hash[pycryptodome]==0.8.0" coincurve==21.0.0)
if ! python3 -c 'import bip_utils, ecdsa, nacl.signing, eth_keys, eth_hash.auto, Crypto.Hash.keccak, coincurve' >/dev/null 2>&1; then
    echo "setup: installing ${CHAIN_PY_PACKAGES[*]} for python3 ($(command -v python3))"
    python3 -m pip install -q "${CHAIN_PY_PACKAGES[@]}"
fi
# The Prometheus client library's text parser, for the python3 on PATH (the
# Debian package above serves Debian's own python3 only); pinned to Debian
# 12's version.
PROMETHEUS_CLIENT_VERSION=0.16.0
if ! python3 -c 'import prometheus_client.parser' >/dev/null 2>&1; then
    echo "setup: installing prometheus-client $PROMETHEUS_CLIENT_VERSION for python3 ($(command -v python3))"
    python3 -m pip install -q "prometheus-client==$PROMETHEUS_CLIENT_VERSION"
fi
echo "setup: ready ($(cargo --version), $(softhsm2-util --version 2>/dev/null | head -1 | sed 's/^/softhsm /'), $(promtool --version 2>/dev/null | head -1 | cut -d' ' -f1-3))"
