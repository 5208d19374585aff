#!/usr/bin/env bash
# Installs the built CLI and provider, the man pages and the shell completions
# (all generated from the CLI's one definition) under PREFIX (default
# /usr/local): bin/p11derive, lib/libp11derive.so, share/man/man1/p11derive*.1,
# share/bash-completion/completions/p11derive, share/zsh/site-functions/_p11derive,
# share/fish/vendor_completions.d/p11derive.fish. Builds first (unless P11DERIVE_BUILD
# names a build directory to install as it is).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
PREFIX=${PREFIX:-/usr/local}
# The build to install: P11DERIVE_BUILD (as built), else this checkout's
# release build, brought up to date first.
if [ -n "${P11DERIVE_BUILD:-}" ]; then
    BIN=$P11DERIVE_BUILD
else
    BIN=target/release
    cargo build --release --quiet
fi
install -D -m 0755 "$BIN/p11derive" "$PREFIX/bin/p11derive"
install -D -m 0755 "$BIN/libp11derive.so" "$PREFIX/lib/libp11derive.so"
install -d "$PREFIX/share/man/man1" "$PREFIX/share/bash-completion/completions" \
    "$PREFIX/share/zsh/site-functions" "$PREFIX/share/fish/vendor_completions.d"
"$BIN/p11derive" man "$PREFIX/share/man/man1" >/dev/null
"$BIN/p11derive" completions bash >"$PREFIX/share/bash-completion/completions/p11derive"
"$BIN/p11derive" completions zsh >"$PREFIX/share/zsh/site-functions/_p11derive"
"$BIN/p11derive" completions fish >"$PREFIX/share/fish/vendor_completions.d/p11derive.fish"
echo "installed under $PREFIX: bin/p11derive, lib/libp11derive.so, $(ls "$PREFIX/share/man/man1" | grep -c '^p11derive') man pages (man p11derive), bash/zsh/fish completions"
