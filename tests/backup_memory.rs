//! Where a recovery's secrets live in memory (issue 22): the root rebuilt from SLIP-39 shares, the shares' values and their words are found only in locked memory (the arena, the secret stacks) while they are used, and nowhere in this process once they are dropped.
//!
//! As in tests/memory.rs, the test never holds those secrets itself: a
//! ceremony (`p11derive init --backup`, another process) writes the share
//! files, and the reference implementation (PyPI `shamir-mnemonic`, a
//! child process) reads them and prints each secret XORed with a mask this
//! test chose. The shares are then read and combined here through the
//! library the CLI uses (`backup::read_share_file`, `slip39::Combiner`,
//! `backup::HeldRoot`), and this process's memory is scanned.

mod common;

use std::path::Path;
use std::process::Command;

use common::memscan::*;
use common::*;
use p11derive::backup::{read_share_file, HeldRoot};
use p11derive::slip39::Combiner;

/// An arena size no other mapping of the process has, to tell it apart.
const ARENA_KIB: usize = 88;

/// Prints, XORed with the mask: the master secret (the root) the two share
/// files combine to, and each share's value and words.
const MASKED: &str = r##"
import sys
from shamir_mnemonic import combine_mnemonics
from shamir_mnemonic.share import Share
mask = bytes.fromhex(sys.argv[1])
def words(path):
    lines = [l.strip() for l in open(path) if l.strip() and not l.startswith("#")]
    return " ".join(lines)
shares = [words(p) for p in sys.argv[2:]]
def show(name, secret):
    assert len(secret) <= len(mask)
    print(name, bytes(a ^ b for a, b in zip(secret, mask)).hex())
show("root", combine_mnemonics(shares))
for i, w in enumerate(shares):
    show(f"value-{i}", Share.from_mnemonic(w).value)
    show(f"words-{i}", w.encode())
"##;

fn needles(mask: &[u8], files: &[&Path]) -> Vec<Needle> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(MASKED)
        .arg(hex(mask))
        .args(files)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "the reference implementation (pip install shamir-mnemonic==0.3.0; tools/setup.sh \
         installs it): {}",
        stderr(&out)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let found = parse_needles(&text);
    assert_eq!(found.len(), 5, "{text}");
    found
}

/// No hit of any needle outside locked memory.
fn only_locked(hits: &[Hits], arena: &Locked, when: &str) {
    for h in hits {
        let out = outside(hits, &h.name, arena);
        assert!(
            out.is_empty(),
            "{when}: the {} found outside locked memory at {out:x?} (arena {:x?}), in\n{}",
            h.name,
            arena.arena,
            where_(&out)
        );
    }
}

#[test]
fn a_rebuilt_root_and_its_shares_live_only_in_locked_memory_and_are_gone_after() {
    let _turn = turn();
    let s = setup_with(None, false);
    let dir = s.dir.join("shares");
    let out = s
        .cli()
        .args(["init", "--backup", "2-of-3", "--shares-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "init --backup: {}", stderr(&out));
    let files = [dir.join("share-g1-m1.txt"), dir.join("share-g1-m3.txt")];
    let mask = random(512);
    let needles = needles(&mask, &[&files[0], &files[1]]);

    p11derive::secure::configure(ARENA_KIB as u64, false).expect("the arena");
    let arena = locked(ARENA_KIB);
    {
        let mut c = Combiner::new();
        for f in &files {
            c.add(read_share_file(f).expect("a share file"))
                .expect("a share of the set");
        }
        let secret = c.combine(b"").expect("the shares combine");
        let root = HeldRoot::from_bytes(&secret).expect("32 bytes");
        drop(secret);
        let fp = root.fingerprint().expect("the fingerprint");
        assert_ne!(fp, [0; 16]);

        let hits = scan(&needles, &mask);
        only_locked(&hits, &arena, "while the root is held");
        // The scan does find them where they are: the root in the arena, and
        // each share's value (the combiner keeps them until it is dropped).
        assert!(count(&hits, "root") >= 1, "the held root is in the arena");
        for i in 0..2 {
            assert!(
                count(&hits, &format!("value-{i}")) >= 1,
                "share {i}'s value is held in the arena"
            );
        }
        drop(root);
        drop(c);
    }
    let hits = scan(&needles, &mask);
    for h in &hits {
        assert!(
            h.at.is_empty(),
            "the {} is still in memory after it was dropped, at {:x?}, in\n{}",
            h.name,
            h.at,
            where_(&h.at.iter().collect::<Vec<_>>())
        );
    }
}
