//! Users mode through the built `p11derive` against SoftHSM: the first admin, users and roles, refusals, failed logins and lockout, a user row edited in SQL, policies, and pass-through mode left as it was.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Output;

use serde_json::Value;

use common::*;

const MAX_FAILURES: u32 = 3;

/// A users-mode set-up: a backing token, a config with `[users]` (the
/// service credential in a 0600 file) and, after [`users`], the first
/// admin `alice`.
struct Users {
    s: Setup,
}

fn secret_of(user: &str) -> String {
    format!("{user}-secret-123")
}

/// A private file holding `text`.
fn private_file(s: &Setup, name: &str, text: &str) -> PathBuf {
    let f = s.dir.join(name);
    std::fs::write(&f, text).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    f
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", output_text(o)))
}

/// A set-up in users mode, not yet initialized.
fn users_setup() -> Users {
    let s = setup_with(None, false);
    let pin = private_file(&s, "service.pin", &format!("{PIN}\n"));
    let mut text = std::fs::read_to_string(&s.config).unwrap();
    text.push_str(&format!(
        "\n[users]\nenabled = true\nservice_pin_file = \"{}\"\nmax_failures = {MAX_FAILURES}\n\
         lockout_seconds = 600\nmin_secret_len = 8\n",
        pin.display()
    ));
    std::fs::write(&s.config, text).unwrap();
    Users { s }
}

/// A users-mode set-up initialized with the first admin `alice`.
fn users() -> Users {
    let u = users_setup();
    let o = u.init("alice");
    assert_eq!(code(&o), 0, "init: {}", output_text(&o));
    u
}

impl Users {
    /// The CLI without the HSM PIN in the environment (users mode never
    /// needs it).
    fn bare(&self, args: &[&str]) -> Output {
        self.s
            .cli()
            .env_remove("P11DERIVE_PIN")
            .args(args)
            .output()
            .expect("p11derive runs")
    }

    fn init(&self, admin: &str) -> Output {
        let f = private_file(&self.s, &format!("{admin}.secret"), &secret_of(admin));
        let f = f.display().to_string();
        self.bare(&["init", "--admin", admin, "--pin-file", &f])
    }

    /// `p11derive --user USER --pin-file FILE ARGS…` with `secret`.
    fn with_secret(&self, user: &str, secret: &str, args: &[&str]) -> Output {
        let f = private_file(&self.s, &format!("given-{user}.secret"), secret);
        let f = f.display().to_string();
        let mut all = vec!["--user", user, "--pin-file", &f];
        all.extend_from_slice(args);
        self.bare(&all)
    }

    /// As `user`, with the right secret.
    fn as_user(&self, user: &str, args: &[&str]) -> Output {
        self.with_secret(user, &secret_of(user), args)
    }

    /// As `user`; must succeed.
    fn ok(&self, user: &str, args: &[&str]) -> Output {
        let o = self.as_user(user, args);
        assert_eq!(code(&o), 0, "{user} {args:?}: {}", output_text(&o));
        o
    }

    /// As `user`; must be refused with `exit`, the message returned.
    fn refused(&self, user: &str, args: &[&str], exit: i32) -> String {
        let o = self.as_user(user, args);
        assert_eq!(code(&o), exit, "{user} {args:?}: {}", output_text(&o));
        stderr(&o)
    }

    /// `alice` adds `name` with `roles` (and `patterns`).
    fn add(&self, name: &str, roles: &str, patterns: Option<&str>) {
        let f = private_file(&self.s, &format!("{name}.secret"), &secret_of(name));
        let f = f.display().to_string();
        let mut args = vec!["user", "add", name, "--roles", roles, "--secret-file", &f];
        if let Some(p) = patterns {
            args.extend_from_slice(&["--patterns", p]);
        }
        self.ok("alice", &args);
    }

    /// The audit records as `audit export` gives them (read by the auditor `dave`).
    fn records(&self) -> Vec<Value> {
        let o = self.ok("dave", &["audit", "export"]);
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn team(&self) {
        self.add("bob", "signer", Some("hot-*"));
        self.add("carol", "officer", Some("*"));
        self.add("dave", "auditor", None);
    }
}

#[test]
fn roles_separate_duties_and_every_refusal_names_user_rule_and_role() {
    let u = users();
    u.team();
    // The officer creates assets; no one else may.
    u.ok(
        "carol",
        &["asset", "create", "hot-1", "--type", "secp256k1"],
    );
    u.ok("carol", &["asset", "create", "cold-1", "--type", "p256"]);
    let m = u.refused(
        "bob",
        &["asset", "create", "hot-2", "--type", "secp256k1"],
        3,
    );
    assert!(
        m.contains("\"bob\"") && m.contains("officer") && m.contains("rule role"),
        "{m}"
    );
    assert!(m.contains("asset create"), "{m}");
    // The auditor reads the log but changes nothing; the admin uses no key.
    let m = u.refused("dave", &["asset", "rotate", "hot-1"], 3);
    assert!(m.contains("\"dave\"") && m.contains("officer"), "{m}");
    let m = u.refused("alice", &["asset", "rotate", "hot-1"], 3);
    assert!(m.contains("\"alice\"") && m.contains("rule role"), "{m}");
    // An officer limited to patterns is refused other assets by rule pattern.
    u.add("erin", "officer", Some("hot-*"));
    let m = u.refused("erin", &["asset", "suspend", "cold-1"], 3);
    assert!(m.contains("\"erin\"") && m.contains("rule pattern"), "{m}");
    u.ok("erin", &["asset", "rotate", "hot-1"]);
    // Public reads are open to every user; user management to admins only.
    let list = json(&u.ok("bob", &["asset", "list", "--json"]));
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");
    let m = u.refused("carol", &["user", "list"], 3);
    assert!(m.contains("admin") && m.contains("\"carol\""), "{m}");
    let m = u.refused("bob", &["audit", "export"], 3);
    assert!(m.contains("auditor"), "{m}");
    // Without a name: a usage error naming --user.
    let o = u.bare(&["asset", "list"]);
    assert_eq!(code(&o), 2, "{}", output_text(&o));
    assert!(stderr(&o).contains("--user"), "{}", stderr(&o));
    // The log names who did what, refusals with their rule.
    let records = u.records();
    let by = |event: &str, actor: &str| {
        records
            .iter()
            .filter(|r| r["event"] == event && r["actor"] == actor)
            .count()
    };
    assert_eq!(by("user", "init"), 1, "the first admin");
    assert_eq!(by("user", "alice"), 4, "bob, carol, dave, erin");
    assert!(by("refused", "bob") >= 2 && by("refused", "dave") >= 1);
    assert!(records.iter().any(|r| r["event"] == "refused"
        && r["actor"] == "bob"
        && r["asset"] == "hot-2"
        && r["detail"].as_str().unwrap_or("").contains("rule=role")));
    // No record of pass-through-mode commands' shape lost: every record
    // still has its MAC, and the whole log verifies.
    let o = u.ok("dave", &["audit", "verify"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("OK"),
        "{}",
        output_text(&o)
    );
    // Status is the auditor's, not the signer's.
    u.ok("dave", &["status"]);
    u.refused("bob", &["status"], 3);
    let tail = u.ok("dave", &["audit", "tail", "-n", "50"]);
    assert!(
        String::from_utf8_lossy(&tail.stdout).contains("by bob"),
        "{}",
        output_text(&tail)
    );
    // Re-anchoring is an admin's act, audited with the admin.
    u.refused("dave", &["audit", "reanchor", "--yes"], 3);
    u.ok("alice", &["audit", "reanchor", "--yes"]);
    assert!(u
        .records()
        .iter()
        .any(|r| r["event"] == "anchor" && r["actor"] == "alice"));
}

/// Runs the CLI on a pseudo-terminal (python3's pty): waits for each of
/// `prompts` in turn and types the matching answer (with a newline).
/// Returns (exit code, everything the terminal showed).
fn on_terminal_answering(u: &Users, args: &[&str], answers: &[(&str, &str)]) -> (i32, String) {
    let script = r#"
import os, pty, sys, time
n = int(sys.argv[1])
pairs = sys.argv[2:2 + 2 * n]
args = sys.argv[2 + 2 * n:]
pid, fd = pty.fork()
if pid == 0:
    os.execv(args[0], args)
seen = b""
deadline = time.time() + 60
for i in range(n):
    prompt, answer = pairs[2 * i].encode(), pairs[2 * i + 1]
    while seen.count(prompt) < 1 and time.time() < deadline:
        try:
            chunk = os.read(fd, 1024)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    seen = seen.replace(prompt, b"<" + prompt + b">", 1)
    time.sleep(0.05)
    os.write(fd, (answer + "\n").encode())
while True:
    try:
        chunk = os.read(fd, 1024)
    except OSError:
        break
    if not chunk:
        break
    seen += chunk
_, status = os.waitpid(pid, 0)
sys.stdout.write(seen.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let mut cmd = std::process::Command::new("python3");
    cmd.arg("-c").arg(script).arg(answers.len().to_string());
    for (prompt, answer) in answers {
        cmd.arg(prompt).arg(answer);
    }
    cmd.arg(cli_path())
        .args(args)
        .env("P11DERIVE_CONF", &u.s.config)
        .env_remove("P11DERIVE_PIN")
        .env("SOFTHSM2_CONF", softhsm_dir().join("softhsm2.conf"));
    let o = cmd.output().expect("python3 runs");
    (
        code(&o),
        format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o)),
    )
}

#[test]
fn secrets_are_asked_without_echo_and_new_ones_twice() {
    let u = users_setup();
    let first = "Secret of the first admin";
    let again = "The same again";
    let alice = secret_of("alice");
    // Two different answers: nothing is created.
    let (c, shown) = on_terminal_answering(
        &u,
        &["init", "--admin", "alice"],
        &[(first, &alice), (again, "something-else")],
    );
    assert_eq!(c, 1, "{shown}");
    assert!(shown.contains("differ"), "{shown}");
    assert!(!shown.contains(&alice), "the secret was echoed: {shown}");
    assert!(!u.s.store.exists(), "a store was created: {shown}");
    let (c, shown) = on_terminal_answering(
        &u,
        &["init", "--admin", "alice"],
        &[(first, &alice), (again, &alice)],
    );
    assert_eq!(c, 0, "{shown}");
    // The acting user's secret at the prompt, a new user's twice.
    let dave = secret_of("dave");
    let (c, shown) = on_terminal_answering(
        &u,
        &[
            "--user", "alice", "user", "add", "dave", "--roles", "auditor",
        ],
        &[
            ("Secret of user \"alice\"", &alice),
            ("New secret of user \"dave\"", &dave),
            (again, &dave),
        ],
    );
    assert_eq!(c, 0, "{shown}");
    assert!(!shown.contains(&dave) && !shown.contains(&alice), "{shown}");
    u.ok("dave", &["audit", "verify"]);
}

#[test]
fn failed_logins_are_delayed_counted_and_locked_out_until_an_admin_unlocks() {
    let u = users();
    u.team();
    let started = std::time::Instant::now();
    let wrong = u.with_secret("bob", "not-the-secret", &["asset", "list"]);
    assert!(started.elapsed() >= std::time::Duration::from_millis(100));
    assert_eq!(code(&wrong), 3, "{}", output_text(&wrong));
    let unknown = u.with_secret("mallory", "not-the-secret", &["asset", "list"]);
    assert_eq!(code(&unknown), 3, "{}", output_text(&unknown));
    // An unknown name and a wrong secret read the same.
    let said = |o: &Output, name: &str| -> Vec<String> {
        stderr(o)
            .lines()
            .filter(|l| l.starts_with("p11derive:"))
            .map(|l| l.replace(name, "NAME"))
            .collect()
    };
    assert_eq!(said(&wrong, "bob"), said(&unknown, "mallory"));
    assert!(
        stderr(&wrong).contains("CKR_PIN_INCORRECT"),
        "{}",
        stderr(&wrong)
    );
    let shown = json(&u.ok("alice", &["user", "show", "bob", "--json"]));
    assert_eq!(shown["failed_logins"], 1, "{shown}");
    assert!(shown.get("verifier").is_none() && shown.get("salt").is_none());
    for _ in 1..MAX_FAILURES {
        let o = u.with_secret("bob", "still-not-it", &["asset", "list"]);
        assert_eq!(code(&o), 3);
    }
    // Locked out: the right secret is refused too.
    let m = u.refused("bob", &["asset", "list"], 3);
    assert!(
        m.contains("CKR_PIN_LOCKED") && m.contains("user unlock"),
        "{m}"
    );
    let shown = json(&u.ok("alice", &["user", "show", "bob", "--json"]));
    assert!(shown["locked_until"].is_string(), "{shown}");
    u.ok("alice", &["user", "unlock", "bob"]);
    u.ok("bob", &["asset", "list"]);
    let shown = json(&u.ok("alice", &["user", "show", "bob", "--json"]));
    assert_eq!(shown["failed_logins"], 0, "{shown}");
    // An admin's lock holds against the right secret until unlocked.
    u.ok("alice", &["user", "lock", "bob"]);
    let m = u.refused("bob", &["asset", "list"], 3);
    assert!(m.contains("locked by an admin"), "{m}");
    u.ok("alice", &["user", "unlock", "bob"]);
    u.ok("bob", &["asset", "list"]);
    // Every failure and lockout is in the log, MACed.
    let records = u.records();
    assert!(records.iter().any(|r| r["event"] == "lockout"
        && r["actor"].is_null()
        && r["detail"]
            .as_str()
            .unwrap_or("")
            .contains("by an unknown name (digest ")));
    // A name that is no user's is never written down (it could be a
    // secret typed in the wrong place).
    assert!(!records.iter().any(|r| r.to_string().contains("mallory")));
    // The attempt that reached max_failures locked the name (a lockout
    // record, the failure count's change), and later ones were refused as
    // locked out (login-failed records).
    assert!(records.iter().any(|r| r["event"] == "lockout"
        && r["actor"] == "bob"
        && r["detail"].as_str().unwrap_or("").contains("locked out")));
    assert!(records
        .iter()
        .any(|r| r["event"] == "login-failed" && r["rv_name"] == "CKR_PIN_LOCKED"));
    // A name locked out before it was a user starts afresh when added.
    for _ in 0..MAX_FAILURES {
        let o = u.with_secret("mallory", "guessing-123", &["asset", "list"]);
        assert_eq!(code(&o), 3);
    }
    u.refused("mallory", &["asset", "list"], 3);
    u.add("mallory", "auditor", None);
    u.ok("mallory", &["asset", "list"]);
    u.ok("dave", &["audit", "verify"]);
}

#[test]
fn a_user_row_edited_in_sql_is_refused_and_audit_verify_names_it() {
    let u = users();
    u.team();
    u.ok("bob", &["asset", "list"]);
    sqlite(
        &u.s.store,
        "UPDATE users SET roles = 'admin' WHERE name = 'bob'",
    );
    for args in [
        &["asset", "list"][..],
        &["user", "list"],
        &["asset", "create", "hot-9", "--type", "p256"],
    ] {
        let o = u.as_user("bob", args);
        assert_ne!(code(&o), 0, "{args:?}: {}", output_text(&o));
        assert!(
            stderr(&o).contains("user \"bob\""),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    let o = u.as_user("dave", &["audit", "verify"]);
    assert_eq!(code(&o), 1, "{}", output_text(&o));
    assert!(
        stderr(&o).contains("FAILED") && stderr(&o).contains("user \"bob\""),
        "{}",
        stderr(&o)
    );
}

#[test]
fn policies_round_trip_and_are_audited_with_their_admin() {
    let u = users();
    u.team();
    // A policy's `approvals=2` is refused unless two approvers could meet it.
    for name in ["ann", "ben"] {
        let key = u.s.dir.join(format!("{name}.key"));
        let public = u.s.dir.join(format!("{name}.pub"));
        for args in [
            vec![
                "genpkey",
                "-algorithm",
                "ed25519",
                "-out",
                key.to_str().unwrap(),
            ],
            vec![
                "pkey",
                "-in",
                key.to_str().unwrap(),
                "-pubout",
                "-out",
                public.to_str().unwrap(),
            ],
        ] {
            let o = std::process::Command::new("openssl")
                .args(&args)
                .output()
                .unwrap();
            assert!(o.status.success(), "openssl {args:?}");
        }
        u.ok(
            "alice",
            &["approver", "add", name, "--key", public.to_str().unwrap()],
        );
    }
    let set = json(&u.ok(
        "alice",
        &[
            "policy",
            "set",
            "hot-*",
            "--mechanisms",
            "ECDSA,ECDSA-SHA256",
            "--asset-rate",
            "100/60s",
            "--user-rate",
            "10/60s",
            "--hours",
            "09:00-17:00",
            "--days",
            "mon-fri",
            "--expires",
            "2027-01-01",
            "--approvals",
            "2",
            "--json",
        ],
    ));
    assert_eq!(set["pattern"], "hot-*");
    assert_eq!(set["state"], "set");
    assert_eq!(
        set["mechanisms"],
        serde_json::json!(["CKM_ECDSA", "CKM_ECDSA_SHA256"])
    );
    assert_eq!(set["asset_rate"], "100/60s");
    assert_eq!(set["user_rate"], "10/60s");
    assert_eq!(set["hours"], "09:00-17:00");
    assert_eq!(set["days"], "mon-fri");
    assert_eq!(set["expires"], "2027-01-01T00:00:00Z");
    assert_eq!(set["approvals"], 2);
    // The auditor may read policies; a signer may not.
    let shown = json(&u.ok("dave", &["policy", "show", "--json"]));
    assert_eq!(shown.as_array().map(Vec::len), Some(1), "{shown}");
    assert_eq!(shown[0]["settings"], set["settings"]);
    u.refused("bob", &["policy", "show"], 3);
    u.refused("dave", &["policy", "set", "cold-*", "--approvals", "1"], 3);
    // Replacing is allowed; the new one is the whole policy.
    u.ok("alice", &["policy", "set", "hot-*", "--asset-rate", "5/h"]);
    let one = json(&u.ok("alice", &["policy", "show", "hot-*", "--json"]));
    assert_eq!(one["asset_rate"], "5/3600s", "{one}");
    assert!(
        one["mechanisms"].as_array().is_some_and(Vec::is_empty),
        "{one}"
    );
    assert!(one["hours"].is_null(), "{one}");
    // Bad values are usage errors naming them.
    let m = u.refused(
        "alice",
        &["policy", "set", "hot-*", "--asset-rate", "lots"],
        2,
    );
    assert!(m.contains("lots"), "{m}");
    let m = u.refused(
        "alice",
        &["policy", "set", "hot-*", "--mechanisms", "RSA-9"],
        2,
    );
    assert!(m.contains("RSA-9"), "{m}");
    u.refused("alice", &["policy", "remove", "hot-*"], 2);
    u.refused("alice", &["policy", "remove", "cold-*", "--yes"], 4);
    u.ok("alice", &["policy", "remove", "hot-*", "--yes"]);
    let shown = json(&u.ok("alice", &["policy", "show", "--json"]));
    assert_eq!(shown, serde_json::json!([]));
    let one = json(&u.ok("alice", &["policy", "show", "hot-*", "--json"]));
    assert_eq!(one["state"], "removed");
    let records = u.records();
    let changes: Vec<&Value> = records.iter().filter(|r| r["event"] == "policy").collect();
    assert_eq!(changes.len(), 3, "set, replaced, removed");
    assert!(changes.iter().all(|r| r["actor"] == "alice"));
    u.ok("dave", &["audit", "verify"]);
}

#[test]
fn user_management_refuses_bad_values_too_much_power_and_the_last_admin() {
    let u = users();
    u.add("dave", "auditor", None);
    let secret = private_file(&u.s, "x.secret", "long-enough-1");
    let s = secret.display().to_string();
    let add = |name: &str, roles: &str, patterns: &str, exit: i32| {
        let mut args = vec!["user", "add", name, "--roles", roles, "--secret-file", &s];
        if !patterns.is_empty() {
            args.extend_from_slice(&["--patterns", patterns]);
        }
        u.refused("alice", &args, exit)
    };
    let m = add("x", "admin,signer", "*", 2);
    assert!(m.contains("admin together with officer or signer"), "{m}");
    let m = add("x", "wizard", "*", 2);
    assert!(m.contains("\"wizard\""), "{m}");
    let m = add("x", "signer", "hot *", 2);
    assert!(m.contains("hot *"), "{m}");
    let m = add("x", "signer", "", 2);
    assert!(m.contains("--patterns"), "{m}");
    let m = add("bad name", "auditor", "", 2);
    assert!(m.contains("bad name"), "{m}");
    let m = add("dave", "auditor", "", 3);
    assert!(m.contains("exists"), "{m}");
    let short = private_file(&u.s, "short.secret", "short");
    let short = short.display().to_string();
    let m = u.refused(
        "alice",
        &[
            "user",
            "add",
            "x",
            "--roles",
            "auditor",
            "--secret-file",
            &short,
        ],
        2,
    );
    assert!(m.contains("min_secret_len"), "{m}");
    // The last active admin can neither go nor lock themself out.
    let m = u.refused("alice", &["user", "remove", "alice", "--yes"], 3);
    assert!(m.contains("last active admin"), "{m}");
    u.refused("alice", &["user", "lock", "alice"], 3);
    u.refused(
        "alice",
        &["user", "roles", "alice", "--roles", "auditor"],
        3,
    );
    u.refused(
        "alice",
        &["user", "roles", "dave", "--roles", "admin,officer"],
        2,
    );
    u.refused("alice", &["user", "show", "nobody"], 4);
    // With a second admin it can.
    u.add("frank", "admin", None);
    u.ok("frank", &["user", "remove", "alice", "--yes"]);
    let m = u.refused("frank", &["user", "add", "alice", "--roles", "auditor"], 3);
    assert!(m.contains("removed"), "{m}");
    // A removed user logs in no more, like an unknown name.
    let m = u.refused("alice", &["user", "list"], 3);
    assert!(m.contains("CKR_PIN_INCORRECT"), "{m}");
    // reset-secret: the old secret stops working, the new one works.
    let new = private_file(&u.s, "dave-new.secret", "a-brand-new-one");
    let new = new.display().to_string();
    u.ok(
        "frank",
        &["user", "reset-secret", "dave", "--secret-file", &new],
    );
    u.refused("dave", &["audit", "tail"], 3);
    let o = u.with_secret("dave", "a-brand-new-one", &["audit", "tail"]);
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    // Listing shows roles and state, never the verifier.
    let list = json(&u.ok("frank", &["user", "list", "--json"]));
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "dave", "frank"]);
    assert_eq!(list[0]["state"], "removed");
    assert!(
        !String::from_utf8_lossy(&u.ok("frank", &["user", "list"]).stdout).contains("verifier")
    );
    // init again: the store has users already.
    let o = u.init("zed");
    assert_eq!(code(&o), 3, "{}", output_text(&o));
}

#[test]
fn init_in_users_mode_needs_the_admin_and_never_the_hsm_pin() {
    let u = users_setup();
    let o = u.bare(&["init"]);
    assert_eq!(code(&o), 2, "{}", output_text(&o));
    assert!(stderr(&o).contains("--admin"), "{}", stderr(&o));
    // The HSM PIN is the service credential's: P11DERIVE_PIN is the admin's secret.
    let o =
        u.s.cli()
            .env("P11DERIVE_PIN", secret_of("alice"))
            .args(["init", "--admin", "alice", "--json"])
            .output()
            .unwrap();
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    assert_eq!(json(&o)["admin"], "alice");
    let o =
        u.s.cli()
            .env("P11DERIVE_PIN", secret_of("alice"))
            .env("P11DERIVE_USER", "alice")
            .args(["user", "list"])
            .output()
            .unwrap();
    assert_eq!(code(&o), 0, "{}", output_text(&o));
}

#[test]
fn pass_through_mode_is_unchanged_and_users_commands_say_how_to_turn_it_on() {
    let s = setup(None);
    s.create_asset("hot-1", "secp256k1");
    let o = cli(&s, &["audit", "verify"]);
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    let o = cli(&s, &["user", "list"]);
    assert_eq!(code(&o), 1, "{}", output_text(&o));
    assert!(
        stderr(&o).contains("[users] enabled = true") && stderr(&o).contains("init --admin"),
        "{}",
        stderr(&o)
    );
    let o = cli(&s, &["init", "--admin", "alice"]);
    assert_eq!(code(&o), 2, "{}", output_text(&o));
    // A --user given there is not silently taken for a restriction.
    let o = cli(&s, &["--user", "bob", "asset", "rotate", "hot-1"]);
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    assert!(stderr(&o).contains("--user is ignored"), "{}", stderr(&o));
    // Records made in pass-through mode carry no actor.
    let o = cli(&s, &["audit", "export"]);
    assert!(!String::from_utf8_lossy(&o.stdout).contains("\"actor\""));
}

#[test]
fn moving_a_pass_through_store_to_users_mode_keeps_assets_and_chain() {
    let s = setup(None);
    s.create_asset("hot-1", "secp256k1");
    let pin = private_file(&s, "service.pin", PIN);
    let mut text = std::fs::read_to_string(&s.config).unwrap();
    text.push_str(&format!(
        "\n[users]\nenabled = true\nservice_pin_file = \"{}\"\n",
        pin.display()
    ));
    std::fs::write(&s.config, text).unwrap();
    let u = Users { s };
    let o = u.init("alice");
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("kept"));
    u.add("dave", "auditor", None);
    let list = json(&u.ok("dave", &["asset", "list", "--json"]));
    assert_eq!(list[0]["asset_id"], "hot-1");
    u.ok("dave", &["audit", "verify"]);
}

#[test]
fn the_users_commands_have_help_with_examples() {
    for args in [
        &["user", "--help"][..],
        &["user", "add", "--help"],
        &["policy", "set", "--help"],
        &["policy", "show", "--help"],
    ] {
        let o = std::process::Command::new(cli_path())
            .args(args)
            .output()
            .unwrap();
        assert_eq!(code(&o), 0, "{args:?}");
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            text.contains("Example") || args.len() == 2,
            "{args:?}: {text}"
        );
    }
    let o = std::process::Command::new(cli_path())
        .args(["user", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    for sub in [
        "add",
        "list",
        "show",
        "remove",
        "lock",
        "unlock",
        "reset-secret",
        "roles",
    ] {
        assert!(text.contains(sub), "{sub}: {text}");
    }
}
