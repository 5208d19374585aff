//! Whether the Python reference implementations (pinned by tools/setup.sh) are there for
//! python3: included with `#[path]` by the tests that call them.

use std::io::Write;
use std::process::{Command, Stdio};

/// Whether python3 imports the reference implementation. Without it the calling test fails
/// under CI (the variable `CI` is set) and is skipped with a message elsewhere.
#[allow(dead_code)]
pub fn reference_available() -> bool {
    python_imports(
        "import shamir_mnemonic",
        "the SLIP-39 reference implementation",
        "`python3 -m pip install shamir-mnemonic==0.3.0`",
    )
}

/// Whether python3 runs `import` (an independent implementation a test
/// checks against, `what`). Without it the calling test fails under CI (the
/// variable `CI` is set) and is skipped with a message naming `install`
/// elsewhere.
#[allow(dead_code)]
pub fn python_imports(import: &str, what: &str, install: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", import])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let message = format!(
            "{what} is not importable by python3 (`{import}` failed): run tools/setup.sh, or \
             {install}"
        );
        if std::env::var_os("CI").is_some() {
            panic!("{message}");
        }
        let _ = writeln!(std::io::stderr(), "skipped: {message}");
    }
    ok
}
