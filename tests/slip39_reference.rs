//! Interoperability with the SLIP-39 reference implementation
//! (`shamir-mnemonic` 0.3.0 from PyPI, installed by tools/setup.sh for the
//! `python3` on PATH): shares we make combine there, shares it makes combine
//! here, extendable or not.
//!
//! Without the module the test fails under CI (the variable `CI` is set) and
//! is skipped with a message elsewhere.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use p11derive::slip39::{split, Combiner, Group, Plan, Share};

#[path = "common/reference.rs"]
mod reference;
use reference::reference_available;

const MASTER: &str = "8f4b1d2c6a09e3375b8c10fe924d6e21a7c3b05d98e4f1623a0b7c5e8d9f4012";
const PASSPHRASE: &str = "custody";

/// Runs a python3 snippet with `input` on stdin; its stdout.
fn python(script: &str, args: &[&str], input: &str) -> String {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("stdin written");
    let out = child.wait_with_output().expect("python3 ends");
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The operating system's random bytes, standing in for the HSM's.
fn os_random(buf: &mut [u8]) -> Result<(), String> {
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .map_err(|e| format!("/dev/urandom: {e}"))
}

#[test]
fn our_shares_combine_in_the_reference() {
    if !reference_available() {
        return;
    }
    for (extendable, exponent) in [(false, 0), (true, 1)] {
        let plan = Plan {
            groups_needed: 2,
            groups: vec![
                Group {
                    threshold: 2,
                    count: 3,
                },
                Group {
                    threshold: 3,
                    count: 5,
                },
            ],
            iteration_exponent: exponent,
            extendable,
        };
        let shares =
            split(&unhex(MASTER), PASSPHRASE.as_bytes(), &plan, &os_random).expect("split");
        let mut input = String::new();
        for (g, m) in [(0, 2), (1, 4), (0, 0), (1, 1), (1, 3)] {
            let words = shares[g][m].mnemonic().expect("words");
            input.push_str(std::str::from_utf8(&words).expect("ascii"));
            input.push('\n');
        }
        let got = python(
            "import shamir_mnemonic as s, sys\n\
             lines = [l.strip() for l in sys.stdin if l.strip()]\n\
             sys.stdout.write(s.combine_mnemonics(lines, sys.argv[1].encode()).hex())",
            &[PASSPHRASE],
            &input,
        );
        assert_eq!(got, MASTER, "extendable {extendable}");
    }
}

#[test]
fn reference_shares_combine_here() {
    if !reference_available() {
        return;
    }
    for (extendable, exponent) in [("False", "0"), ("True", "1")] {
        let out = python(
            "import shamir_mnemonic as s, sys\n\
             groups = s.generate_mnemonics(2, [(2, 3), (3, 5), (1, 1)], \
             bytes.fromhex(sys.argv[1]), sys.argv[2].encode(), \
             extendable=sys.argv[3] == 'True', iteration_exponent=int(sys.argv[4]))\n\
             for g in groups:\n    print('|'.join(g))",
            &[MASTER, PASSPHRASE, extendable, exponent],
            "",
        );
        let groups: Vec<Vec<&str>> = out.lines().map(|l| l.split('|').collect()).collect();
        assert_eq!(groups.len(), 3);
        // Groups 2 and 3 (3 of group 2's members, the one of group 3).
        let mut c = Combiner::new();
        for words in [groups[1][4], groups[2][0], groups[1][0], groups[1][2]] {
            let share = Share::from_mnemonic(words.as_bytes()).expect("a reference share");
            assert_eq!(share.extendable, extendable == "True");
            c.add(share).expect("accepted");
        }
        assert!(c.ready(), "{}", c.progress());
        let secret = c.combine(PASSPHRASE.as_bytes()).expect("combined");
        assert_eq!(hex(&secret), MASTER, "extendable {extendable}");
        let wrong = c.combine(b"").expect("any passphrase decrypts");
        assert_ne!(hex(&wrong), MASTER);
    }
}
