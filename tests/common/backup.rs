//! Helpers for the root-backup tests (issue 22): ceremonies through `init --backup`, share
//! files, wiping the backing token, the root rebuilt in the test, python's SLIP-39 reference
//! implementation and a small pseudo-terminal driver. Included with `#[path]` by the test
//! files that need it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;

/// The exit code of a CLI run (-1 for a signal).
pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// Runs the CLI with `args`; it must exit `want`. The output, for more checks.
pub fn expect_exit(s: &Setup, args: &[&str], want: i32) -> Output {
    let o = cli(s, args);
    assert_eq!(
        code(&o),
        want,
        "p11derive {}: {}",
        args.join(" "),
        output_text(&o)
    );
    o
}

/// A refusal: exit `want`, and stderr names `fragment`.
pub fn refused(s: &Setup, args: &[&str], want: i32, fragment: &str) -> Output {
    let o = expect_exit(s, args, want);
    assert!(
        stderr(&o).contains(fragment),
        "p11derive {}: the message should say {fragment:?}: {}",
        args.join(" "),
        output_text(&o)
    );
    o
}

/// `init --backup ...` with `--json` and `extra` options, shares into `dir`: its JSON.
pub fn ceremony(s: &Setup, dir: &Path, plan: &[&str], extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--json", "init"];
    args.extend_from_slice(plan);
    args.extend_from_slice(&["--shares-dir", dir.to_str().unwrap()]);
    args.extend_from_slice(extra);
    let o = expect_exit(s, &args, 0);
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", output_text(&o)))
}

/// The share file of group `g`, member `m` (1-based) in `dir`.
pub fn share(dir: &Path, g: usize, m: usize) -> PathBuf {
    dir.join(format!("share-g{g}-m{m}.txt"))
}

/// The words of a share file (its last line that is not a `#` comment).
pub fn words(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    text.lines()
        .rfind(|l| !l.starts_with('#') && !l.trim().is_empty())
        .unwrap_or_else(|| panic!("no words in {}", file.display()))
        .trim()
        .to_string()
}

/// `--share FILE` for each file.
pub fn share_args(files: &[PathBuf]) -> Vec<String> {
    files
        .iter()
        .flat_map(|f| ["--share".to_string(), f.display().to_string()])
        .collect()
}

/// `--share FILE` for each file, as `&str`s for `cli` (a test leaks these few strings).
pub fn sargs(files: &[PathBuf]) -> Vec<&'static str> {
    share_args(files)
        .into_iter()
        .map(|a| &*Box::leak(a.into_boxed_str()))
        .collect()
}

/// `root recover` with these share files and `extra` options.
pub fn recover(s: &Setup, files: &[PathBuf], extra: &[&str]) -> Output {
    let shares = share_args(files);
    let mut args: Vec<&str> = vec!["root", "recover"];
    args.extend(shares.iter().map(String::as_str));
    args.extend_from_slice(extra);
    cli(s, &args)
}

/// Deletes the backing token and makes an empty one with the same label: the HSM is lost.
pub fn wipe(s: &Setup) {
    let conf = softhsm_dir().join("softhsm2.conf");
    // The token's directory is moved out of SoftHSM's token directory in one rename (a
    // concurrent slot scan sees the whole token or none), then removed.
    let found = token_dirs(&s.token_label);
    assert_eq!(found.len(), 1, "token {}: {found:?}", s.token_label);
    let gone = softhsm_dir().join(format!("wiped-{}", s.token_label));
    std::fs::rename(&found[0], &gone).unwrap();
    std::fs::remove_dir_all(&gone).unwrap();
    let mut last = None;
    for _ in 0..20 {
        let init = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", &s.token_label])
            .args(["--pin", PIN, "--so-pin", SO_PIN])
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .expect("softhsm2-util runs");
        // A failed scan after the token was made still made it: one is
        // there, and another try would make a second of the same label.
        if init.status.success() || token_dirs(&s.token_label).len() == 1 {
            return;
        }
        last = Some(output_text(&init));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("re-init token {}: {last:?}", s.token_label);
}

/// Whether the backing token holds the root (a secret key labelled `p11derive-root`), as
/// SoftHSM itself lists it (pkcs11-tool on SoftHSM's module, not the provider).
pub fn token_has_root(s: &Setup) -> bool {
    root_count(s) > 0
}

/// How many secret keys labelled `p11derive-root` the backing token holds (pkcs11-tool on
/// SoftHSM's module).
pub fn root_count(s: &Setup) -> usize {
    let o = Command::new("pkcs11-tool")
        .args(["--module", SOFTHSM, "--token-label", &s.token_label])
        .args([
            "--login",
            "--pin",
            PIN,
            "--list-objects",
            "--type",
            "secrkey",
        ])
        .env("SOFTHSM2_CONF", softhsm_dir().join("softhsm2.conf"))
        .output()
        .expect("pkcs11-tool runs");
    assert!(o.status.success(), "pkcs11-tool: {}", output_text(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| {
            l.trim_start().starts_with("label:") && l.trim_end().ends_with("p11derive-root")
        })
        .count()
}

/// The root the shares in `files` rebuild with `passphrase`, combined in the test with the
/// project's SLIP-39 combiner.
pub fn root_of(files: &[PathBuf], passphrase: &[u8]) -> Vec<u8> {
    let mut c = p11derive::slip39::Combiner::new();
    for f in files {
        let sh = p11derive::slip39::Share::from_mnemonic(words(f).as_bytes())
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        c.add(sh).unwrap();
    }
    assert!(c.ready(), "{}", c.progress());
    c.combine(passphrase).unwrap().to_vec()
}

/// Runs a python3 snippet (tools/vectors importable) with `args`; its stdout, trimmed.
pub fn python(script: &str, args: &[&str]) -> String {
    let vectors = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/vectors");
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .env("PYTHONPATH", vectors)
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "python3: {}", output_text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The public point (uncompressed SEC1, hex) of version `counter` of asset `asset` of type
/// `kind` under `root`, derived by tools/vectors/gen_vectors.py.
pub fn reference_point(root: &[u8], asset: &str, counter: u32, kind: &str) -> String {
    python(
        "import sys, gen_vectors as g\n\
         print(g.make_vector('t', bytes.fromhex(sys.argv[1]), sys.argv[2], int(sys.argv[3]), \
         sys.argv[4])['public_point'])",
        &[&hex(root), asset, &counter.to_string(), kind],
    )
}

/// The root fingerprint (design §6.2) of `root`, computed in python.
pub fn reference_fingerprint(root: &[u8]) -> String {
    python(
        "import sys, hmac, hashlib\n\
         r = bytes.fromhex(sys.argv[1])\n\
         print(hmac.new(r, b'p11derive-v1\\x02root fingerprint', hashlib.sha256)\
         .digest()[:16].hex())",
        &[&hex(root)],
    )
}

/// `asset pubkey NAME --hex`, which must succeed.
pub fn pubkey(s: &Setup, name: &str) -> String {
    let o = expect_exit(s, &["asset", "pubkey", name, "--hex"], 0);
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Signs a digest with asset `label`'s key through the provider (cryptoki, CKM_ECDSA); the
/// signature must verify under `point` (hex), checked with k256/p256.
pub fn provider_signs(s: &Setup, label: &str, kind: &str, point: &str) {
    let _turn = turn();
    let p = s.load();
    let session = p.user_session();
    let key = private_key(&session, label);
    let digest = [0x5au8; 32];
    let sig = session
        .sign(&cryptoki::mechanism::Mechanism::Ecdsa, key, &digest)
        .expect("C_Sign");
    assert!(
        ecdsa_verifies(kind, &unhex(point), &digest, &sig),
        "{label}: the signature does not verify under {point}"
    );
}

/// The `root` audit records' details.
pub fn root_records(s: &Setup) -> Vec<String> {
    s.audit_records(&[])
        .iter()
        .filter(|r| r["event"] == "root")
        .map(|r| r["detail"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Runs `program args` on a pseudo-terminal (python3's pty) with the setup's environment:
/// for each (wanted, typed) step, waits until the terminal shows `wanted` (after what the
/// previous step waited for), then types `typed`. (exit code, everything shown).
pub fn drive_pty(s: &Setup, args: &[&str], steps: &[(&str, &str)]) -> (i32, String) {
    let script = r#"
import json, os, pty, sys, time
steps = json.loads(sys.argv[1])
args = sys.argv[2:]
pid, fd = pty.fork()
if pid == 0:
    os.execv(args[0], args)
seen = b""
mark = 0
deadline = time.time() + 120
def more():
    global seen
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        return False
    if not chunk:
        return False
    seen += chunk
    return True
for want, typed in steps:
    w = want.encode()
    while w not in seen[mark:]:
        if time.time() > deadline or not more():
            sys.stdout.write(seen.decode(errors="replace"))
            sys.stdout.write("\n[driver: never saw %r]\n" % want)
            try:
                os.kill(pid, 9)
            except OSError:
                pass
            os.waitpid(pid, 0)
            sys.exit(99)
    mark = seen.index(w, mark) + len(w)
    time.sleep(0.1)
    os.write(fd, typed.encode())
while more():
    pass
_, status = os.waitpid(pid, 0)
sys.stdout.write(seen.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let steps: Vec<[&str; 2]> = steps.iter().map(|(w, t)| [*w, *t]).collect();
    let o = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(serde_json::to_string(&steps).unwrap())
        .arg(cli_path())
        .args(args)
        .env("P11DERIVE_CONF", &s.config)
        .env("P11DERIVE_PIN", PIN)
        .env("SOFTHSM2_CONF", softhsm_dir().join("softhsm2.conf"))
        .output()
        .expect("python3 runs");
    (
        o.status.code().unwrap_or(-1),
        format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o)),
    )
}

/// Every run of `words` consecutive words of `phrase`.
pub fn word_runs(phrase: &str, words: usize) -> Vec<String> {
    let w: Vec<&str> = phrase.split_whitespace().collect();
    w.windows(words).map(|r| r.join(" ")).collect()
}

/// Panics when `haystack` (named `what`) holds any 4 consecutive words of any of `shares`,
/// or `root` in hex or raw.
pub fn holds_no_secret(what: &str, haystack: &[u8], shares: &[String], root: &[u8]) {
    let text = String::from_utf8_lossy(haystack).to_lowercase();
    for sh in shares {
        for run in word_runs(sh, 4) {
            assert!(!text.contains(&run), "{what} holds share words {run:?}");
        }
    }
    assert!(!text.contains(&hex(root)), "{what} holds the root in hex");
    assert!(
        !haystack.windows(root.len()).any(|w| w == root),
        "{what} holds the root's bytes"
    );
}

/// Runs the CLI with `args` under gdb, stopped at its end (the `exit_group` system call, after
/// every destructor ran), and searches every readable mapping of that process for the needles
/// `needles` returns then (when the command's files exist). (exit code, what gdb and the
/// command printed, the names of the needles found, with where).
pub fn scan_at_exit(
    s: &Setup,
    args: &[&str],
    needles: impl FnOnce() -> Vec<(String, Vec<u8>)>,
) -> (i32, String, Vec<String>) {
    use std::os::unix::fs::FileExt;
    let stopped = s.dir.join("gdb-stopped");
    let go = s.dir.join("gdb-go");
    let _ = std::fs::remove_file(&stopped);
    let _ = std::fs::remove_file(&go);
    let script = s.dir.join("at-exit.gdb");
    std::fs::write(
        &script,
        format!(
            "set pagination off\ncatch syscall exit_group\nrun\npython\nimport gdb, os, time\n\
             code = int(gdb.parse_and_eval('$rdi'))\npid = gdb.selected_inferior().pid\n\
             open('{0}.tmp', 'w').write('%d %d' % (pid, code))\nos.rename('{0}.tmp', '{0}')\n\
             deadline = time.time() + 120\n\
             while not os.path.exists('{1}') and time.time() < deadline:\n    time.sleep(0.05)\n\
             end\nkill\n",
            stopped.display(),
            go.display()
        ),
    )
    .unwrap();
    let child = Command::new("gdb")
        .args(["-batch", "-nx", "--readnever", "-x"])
        .arg(&script)
        .arg("--args")
        .arg(cli_path())
        .args(args)
        .env("P11DERIVE_CONF", &s.config)
        .env("P11DERIVE_PIN", PIN)
        .env("SOFTHSM2_CONF", softhsm_dir().join("softhsm2.conf"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("gdb runs");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !stopped.exists() {
        assert!(
            std::time::Instant::now() < until,
            "gdb never stopped the command"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let stop = std::fs::read_to_string(&stopped).unwrap();
    let (pid, code) = stop.split_once(' ').unwrap();
    let needles = needles();
    let mut heads: std::collections::HashMap<&[u8], Vec<usize>> = Default::default();
    for (i, (_, n)) in needles.iter().enumerate() {
        assert!(n.len() >= 4, "a needle of fewer than 4 bytes");
        heads.entry(&n[..4]).or_default().push(i);
    }
    let mut seen = vec![false; needles.len()];
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut found = Vec::new();
    for line in maps.lines() {
        let mut parts = line.split_whitespace();
        let (range, perms) = (parts.next().unwrap(), parts.next().unwrap());
        let (a, b) = range.split_once('-').unwrap();
        let a = u64::from_str_radix(a, 16).unwrap();
        let b = u64::from_str_radix(b, 16).unwrap();
        if !perms.starts_with('r') || b - a > 1 << 28 {
            continue;
        }
        let mut data = vec![0u8; (b - a) as usize];
        if mem.read_exact_at(&mut data, a).is_err() {
            continue;
        }
        // One pass: each position's first 4 bytes looked up among the needles'.
        for at in 0..data.len().saturating_sub(3) {
            let Some(which) = heads.get(&data[at..at + 4]) else {
                continue;
            };
            for &i in which {
                let (name, n) = &needles[i];
                if data[at..].starts_with(n) && !seen[i] {
                    seen[i] = true;
                    found.push(format!("{name} at {:#x} in {line}", a + at as u64));
                }
            }
        }
    }
    std::fs::write(&go, "").unwrap();
    let out = child.wait_with_output().expect("gdb ends");
    (code.parse().unwrap(), output_text(&out), found)
}

/// The provider, loaded through cryptoki, cannot sign with `label` (no root in the backing
/// token): the step that failed and why.
pub fn provider_cannot_sign(s: &Setup, label: &str) -> String {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    let _turn = turn();
    std::env::set_var("P11DERIVE_CONF", &s.config);
    let ctx = Pkcs11::new(module_path()).expect("load libp11derive.so");
    let tried = (|| -> Result<Vec<u8>, String> {
        let step = |what: &str, e: cryptoki::error::Error| format!("{what}: {e}");
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .map_err(|e| step("C_Initialize", e))?;
        let slots = ctx
            .get_slots_with_token()
            .map_err(|e| step("C_GetSlotList", e))?;
        let slot = *slots.first().ok_or("no slot")?;
        let session = ctx
            .open_rw_session(slot)
            .map_err(|e| step("C_OpenSession", e))?;
        let pin = cryptoki::types::AuthPin::from(PIN);
        session
            .login(cryptoki::session::UserType::User, Some(&pin))
            .map_err(|e| step("C_Login", e))?;
        try_sign(&session, label).map_err(|rv| format!("C_Sign: {rv:?}"))
    })();
    let _ = ctx.clone().finalize();
    match tried {
        Ok(_) => panic!("the provider signed with {label} without a root"),
        Err(why) => why,
    }
}

/// A new backing token whose root is made by `init --backup 2-of-3` into `DIR/ceremony`:
/// (the setup, the shares directory, the root's fingerprint).
pub fn backed_up_2_of_3() -> (Setup, PathBuf, String) {
    let s = setup_with(None, false);
    let d = s.dir.join("ceremony");
    let init = ceremony(&s, &d, &["--backup", "2-of-3"], &[]);
    let fp = init["root_fingerprint"].as_str().unwrap().to_string();
    assert_eq!(fp.len(), 32, "{init}");
    (s, d, fp)
}
