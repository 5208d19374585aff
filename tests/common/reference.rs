//! Whether the SLIP-39 reference implementation (`shamir-mnemonic` 0.3.0 from PyPI) is there
//! for python3: included with `#[path]` by the tests that call it.

use std::io::Write;
use std::process::{Command, Stdio};

/// Whether python3 imports the reference implementation. Without it the calling test fails
/// under CI (the variable `CI` is set) and is skipped with a message elsewhere.
pub fn reference_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import shamir_mnemonic"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let message = "the SLIP-39 reference implementation is not importable by python3 \
                       (`import shamir_mnemonic` failed): run tools/setup.sh, or \
                       `python3 -m pip install shamir-mnemonic==0.3.0`";
        if std::env::var_os("CI").is_some() {
            panic!("{message}");
        }
        let _ = writeln!(std::io::stderr(), "skipped: {message}");
    }
    ok
}
