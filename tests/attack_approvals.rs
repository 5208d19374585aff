//! An independent attack on k-of-n approvals (issue 21): users with fewer rights, a store
//! writer without PIN or service credential, approvers replaying approvals, races, a
//! pass-through process on the same store, and crafted inputs. Each test asserts the attack is
//! refused and that nothing changed; an attack that succeeds is marked `FINDING:`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectClass;
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use serde_json::Value;

fn secret_of(user: &str) -> String {
    format!("{user}-secret-1")
}

fn run(s: &Setup, user: &str, args: &[&str]) -> Output {
    as_user(s, user, &secret_of(user), args)
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn expect(s: &Setup, user: &str, args: &[&str], want: i32) -> Output {
    let o = run(s, user, args);
    assert_eq!(code(&o), want, "{user} {args:?}: {}", output_text(&o));
    o
}

fn json_of(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", output_text(o)))
}

fn openssl(args: &[&str]) -> Output {
    let o = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(o.status.success(), "openssl {args:?}: {}", output_text(&o));
    o
}

fn keygen(dir: &Path, name: &str, kind: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    let k = key.to_str().unwrap();
    let algorithm: &[&str] = match kind {
        "ed25519" => &["-algorithm", "ed25519"],
        _ => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    };
    openssl(&[&["genpkey", "-out", k], algorithm].concat());
    openssl(&[
        "pkey",
        "-in",
        k,
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    (key, public)
}

fn admin(s: &Setup, args: &[&str]) {
    ok_as(s, "admin", ADMIN, args);
}

fn as_admin(s: &Setup, args: &[&str]) -> Output {
    as_user(s, "admin", ADMIN, args)
}

/// carol (officer), bob (signer), dave (auditor), vault-1 (P-256), approvers ann, ben
/// (Ed25519) and cyd (P-256).
struct Cast {
    s: Setup,
}

impl Cast {
    fn new() -> Cast {
        let s = users_setup_on(None);
        add_user(&s, "carol", "officer", "*", &secret_of("carol"));
        add_user(&s, "bob", "signer", "*", &secret_of("bob"));
        add_user(&s, "dave", "auditor", "*", &secret_of("dave"));
        expect(
            &s,
            "carol",
            &["asset", "create", "vault-1", "--type", "p256"],
            0,
        );
        for (name, kind) in [("ann", "ed25519"), ("ben", "ed25519"), ("cyd", "p256")] {
            let (_, public) = keygen(&s.dir, name, kind);
            admin(
                &s,
                &["approver", "add", name, "--key", public.to_str().unwrap()],
            );
        }
        Cast { s }
    }

    fn key(&self, approver: &str) -> PathBuf {
        self.s.dir.join(format!("{approver}.key"))
    }

    fn gated(&self, user: &str, args: &[&str]) -> String {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let o = expect(&self.s, user, &all, 5);
        let v = json_of(&o);
        assert_eq!(v["status"], "pending", "{v}");
        v["request"].as_str().unwrap().to_string()
    }

    fn export(&self, id: &str, reject: bool) -> PathBuf {
        let out = self.s.dir.join(format!("{id}-{reject}.bytes"));
        let o = out.to_str().unwrap();
        let mut args = vec!["request", "export", id, "--out", o];
        if reject {
            args.push("--reject");
        }
        expect(&self.s, "carol", &args, 0);
        out
    }

    fn sign(&self, approver: &str, bytes: &Path) -> PathBuf {
        let sig = PathBuf::from(format!("{}.{approver}.sig", bytes.display()));
        openssl(&[
            "pkeyutl",
            "-sign",
            "-rawin",
            "-inkey",
            self.key(approver).to_str().unwrap(),
            "-in",
            bytes.to_str().unwrap(),
            "-out",
            sig.to_str().unwrap(),
        ]);
        sig
    }

    fn submit(&self, id: &str, approver: &str, sig: &Path) -> Output {
        run(
            &self.s,
            "carol",
            &[
                "request",
                "approve",
                id,
                "--approver",
                approver,
                "--signature",
                sig.to_str().unwrap(),
            ],
        )
    }

    fn approve(&self, id: &str, approver: &str) -> Output {
        let bytes = self.export(id, false);
        let sig = self.sign(approver, &bytes);
        self.submit(id, approver, &sig)
    }

    fn new_sign(&self, digest: &[u8]) -> String {
        let args = ["--json", "request", "new", "sign", "vault-1", "--digest"];
        let o = expect(&self.s, "bob", &[&args[..], &[&hex(digest)]].concat(), 0);
        json_of(&o)["id"].as_str().unwrap().to_string()
    }

    fn approved_by(&self, id: &str, approvers: &[&str]) {
        for a in approvers {
            let o = self.approve(id, a);
            assert_eq!(code(&o), 0, "{a}: {}", output_text(&o));
        }
    }

    fn request(&self, id: &str) -> Value {
        json_of(&expect(
            &self.s,
            "dave",
            &["--json", "request", "show", id],
            0,
        ))
    }

    fn asset_state(&self, name: &str) -> String {
        let v = json_of(&expect(
            &self.s,
            "dave",
            &["asset", "show", name, "--json"],
            0,
        ));
        v["state"].as_str().unwrap().to_string()
    }

    fn records(&self) -> Vec<Value> {
        let o = expect(&self.s, "dave", &["audit", "export"], 0);
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// Released signatures (`sign` records with rv 0).
    fn signatures(&self) -> usize {
        self.records()
            .iter()
            .filter(|r| r["event"] == "sign" && r["rv"] == 0)
            .count()
    }

    fn transitions(&self) -> usize {
        self.records()
            .iter()
            .filter(|r| r["event"] == "transition")
            .count()
    }
}

fn retire_waiting() -> (Cast, String) {
    let c = Cast::new();
    admin(&c.s, &["quorum", "set", "retire", "--approvals", "2"]);
    let id = c.gated("carol", &["asset", "retire", "vault-1", "--yes"]);
    (c, id)
}

fn signing() -> Cast {
    let c = Cast::new();
    admin(
        &c.s,
        &[
            "quorum",
            "set",
            "sign",
            "--assets",
            "vault-*",
            "--approvals",
            "2",
        ],
    );
    c
}

fn approved_digest(c: &Cast, digest: &[u8]) -> String {
    let id = c.new_sign(digest);
    c.approved_by(&id, &["ann", "cyd"]);
    id
}

const BOB: &str = "bob:bob-secret-1";

fn bob_session(p: &Provider) -> (cryptoki::session::Session, cryptoki::object::ObjectHandle) {
    let session = p.session();
    session
        .login(UserType::User, Some(&AuthPin::from(BOB)))
        .expect("bob logs in");
    let key = private_key(&session, "vault-1");
    (session, key)
}

/// pkcs11-tool logged in as bob signs `digest` (CKM_ECDSA) with vault-1.
fn tool_sign(c: &Cast, digest: &[u8], tag: &str) -> Output {
    let input = c.s.dir.join(format!("{tag}.in"));
    std::fs::write(&input, digest).unwrap();
    let out = c.s.dir.join(format!("{tag}.sig"));
    let _ = std::fs::remove_file(&out);
    tool(
        &c.s,
        &[
            "--login",
            "--pin",
            BOB,
            "--sign",
            "-m",
            "ECDSA",
            "--label",
            "vault-1",
            "-i",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
    )
}

// ---------------------------------------------------------------- (b)+(d) store writer, rollback

/// A store writer takes a copy of the store while an approved digest is pending (after the
/// signer's login), lets the signature use the approvals, and puts the copy back at once: a new
/// process must not find the approvals unused again.
#[test]
fn a_store_put_back_right_after_an_approved_signature_does_not_release_a_second_one() {
    put_back_after_an_approved_signature(0);
}

/// The same, the copy put back 2.5 s after the signature (longer than `[store]
/// anchor_interval_ms`) while the signing process stays idle.
#[test]
fn a_store_put_back_seconds_after_an_approved_signature_of_an_idle_process_does_not_release_a_second_one(
) {
    put_back_after_an_approved_signature(2500);
}

fn put_back_after_an_approved_signature(wait_ms: u64) {
    let _t = turn();
    let c = signing();
    let d = [0x44u8; 32];
    let id = approved_digest(&c, &d);
    let p = c.s.load();
    let (session, key) = bob_session(&p);
    let copy = c.s.dir.join("before-sign.db");
    backup(&c.s.store, &copy);
    session
        .sign(&Mechanism::Ecdsa, key, &d)
        .expect("approved once");
    sqlite(&c.s.store, &format!(".restore '{}'", copy.display()));
    // Another process (pkcs11-tool) asks for the same digest.
    let o = tool_sign(&c, &d, "again");
    // FINDING: consuming an approved signature's request is a state change (ledger name
    // request:ID) but the provider's commit (Store::commit_batch_tx via Provider::confirm_job
    // in src/token/sign.rs) moves the HSM anchor only when it is older than
    // [store] anchor_interval_ms (anchor_if_stale), not synchronously as docs/security.md
    // ("moves forward at every state change ... synchronously") says; and anchor_if_stale runs
    // only after a commit, so a signing process that then stays idle never moves it. A store
    // writer who puts back a copy taken after the signer's login finds the request pending
    // again, and any other process (here pkcs11-tool) signs the same approved digest a second
    // time; the signing process notices only at its next commit, logout or finalize.
    let second = std::fs::read(c.s.dir.join("again.sig")).unwrap_or_default();
    let released =
        o.status.success() && ecdsa_verifies("p256", &point_of(&c, "vault-1"), &d, &second);
    assert!(
        !released,
        "FINDING: approvals of request {id} used twice after the store was put back \
         {wait_ms} ms after the signature: {}",
        output_text(&o)
    );
    drop(session);
    drop(p);
}

/// The asset's newest public key point.
fn point_of(c: &Cast, asset: &str) -> Vec<u8> {
    let v = json_of(&expect(
        &c.s,
        "dave",
        &["asset", "show", asset, "--json"],
        0,
    ));
    version_keys(&v).last().unwrap().1.clone()
}

/// The store file put back to its copy from before a CLI execution (the request pending and
/// approved): the CLI moved the HSM anchor with the execution, so the copy is refused and the
/// request does not run a second time.
#[test]
fn a_store_put_back_after_an_executed_request_does_not_run_it_again() {
    let (c, id) = retire_waiting();
    c.approved_by(&id, &["ann", "ben"]);
    let copy = c.s.dir.join("approved.db");
    backup(&c.s.store, &copy);
    expect(&c.s, "carol", &["request", "execute", &id], 0);
    assert_eq!(c.transitions(), 1);
    sqlite(&c.s.store, &format!(".restore '{}'", copy.display()));
    let o = run(&c.s, "carol", &["request", "execute", &id]);
    assert_eq!(code(&o), 1, "{}", output_text(&o));
    assert!(stderr(&o).contains("anchor"), "{}", stderr(&o));
    // Nor does an admin's execution, or a reading, use the copy.
    let o = as_admin(&c.s, &["request", "execute", &id]);
    assert_eq!(code(&o), 1, "{}", output_text(&o));
    let o = run(&c.s, "dave", &["request", "show", &id]);
    assert_eq!(code(&o), 1, "{}", output_text(&o));
}

/// An older copy of one request row (pending, approved) put back over the executed row after
/// its signature: refused when read, naming the request, and no second signature.
#[test]
fn an_older_copy_of_a_consumed_request_row_put_back_is_refused() {
    let _t = turn();
    let c = signing();
    let d = [0x45u8; 32];
    let id = approved_digest(&c, &d);
    let copy = c.s.dir.join("approved.db");
    backup(&c.s.store, &copy);
    let o = tool_sign(&c, &d, "first");
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(c.request(&id)["status"], "executed");
    let cols = "operation, lookup, body, requested_by, created_at, expires_at, state, \
                approvals, outcome, change_seq, state_mac";
    let set: Vec<String> = cols
        .split(", ")
        .map(|col| format!("{col} = (SELECT {col} FROM b.requests WHERE name = '{id}')"))
        .collect();
    sqlite(
        &c.s.store,
        &format!(
            "ATTACH '{}' AS b; UPDATE main.requests SET {} WHERE name = '{id}';",
            copy.display(),
            set.join(", ")
        ),
    );
    let before = c.signatures();
    let tool_o = tool_sign(&c, &d, "second");
    assert!(
        !tool_o.status.success(),
        "signed again: {}",
        output_text(&tool_o)
    );
    let o = run(&c.s, "dave", &["request", "show", &id]);
    assert_eq!(code(&o), 1, "{}", output_text(&o));
    assert!(stderr(&o).contains(&id), "{}", stderr(&o));
    assert!(stderr(&o).contains("older copy"), "{}", stderr(&o));
    assert_eq!(c.signatures(), before);
}

/// SQL edits by a store writer: the request's bytes rewritten to another asset; approvals
/// copied from an approved request onto another; a quorum rule lowered; a request deleted.
#[test]
fn sql_edits_of_requests_and_rules_do_not_run_anything() {
    let edits = [
        "UPDATE requests SET body = CAST(replace(CAST(body AS TEXT), 'vault-1', 'vault-2') AS BLOB) \
         WHERE name = 'ID'",
        "UPDATE requests SET approvals = (SELECT approvals FROM requests WHERE name = 'OK') \
         WHERE name = 'ID'",
        "UPDATE quorums SET approvals = 1",
        "UPDATE requests SET state = 'pending', approvals = '' WHERE name = 'ID'",
    ];
    for sql in edits {
        let c = Cast::new();
        expect(
            &c.s,
            "carol",
            &["asset", "create", "vault-2", "--type", "p256"],
            0,
        );
        admin(&c.s, &["quorum", "set", "retire", "--approvals", "2"]);
        let ok_id = c.gated("carol", &["asset", "retire", "vault-2", "--yes"]);
        c.approved_by(&ok_id, &["ann", "ben"]);
        let id = c.gated("carol", &["asset", "retire", "vault-1", "--yes"]);
        assert_eq!(code(&c.approve(&id, "cyd")), 0);
        sqlite(
            &c.s.store,
            &sql.replace("'ID'", &format!("'{id}'"))
                .replace("'OK'", &format!("'{ok_id}'")),
        );
        let o = run(&c.s, "carol", &["request", "execute", &id]);
        assert_eq!(code(&o), 1, "{sql}: {}", output_text(&o));
        let named = if sql.contains("quorums") {
            "quorum rule \"retire:*\""
        } else {
            id.as_str()
        };
        assert!(stderr(&o).contains(named), "{sql}: {}", stderr(&o));
        // The row the edit targets is named when read, and nothing changed.
        let o = run(&c.s, "dave", &["audit", "verify"]);
        assert_ne!(code(&o), 0, "{sql}: audit verify passed");
        for a in ["vault-1", "vault-2"] {
            let o = run(&c.s, "dave", &["asset", "show", a, "--json"]);
            if code(&o) == 0 {
                assert_eq!(json_of(&o)["state"], "ACTIVE", "{sql}: {a}");
            }
        }
    }
}

// ---------------------------------------------------------------- (a) users with fewer rights

/// A rule set by an admin while bob's session is open binds that session's next signature.
#[test]
fn a_sign_rule_set_after_login_binds_an_open_session() {
    let _t = turn();
    let c = Cast::new();
    let p = c.s.load();
    let (session, key) = bob_session(&p);
    session
        .sign(&Mechanism::Ecdsa, key, &[1u8; 32])
        .expect("no rule yet");
    admin(
        &c.s,
        &[
            "quorum",
            "set",
            "sign",
            "--assets",
            "vault-*",
            "--approvals",
            "2",
        ],
    );
    assert_eq!(
        rv_of(session.sign(&Mechanism::Ecdsa, key, &[2u8; 32])),
        RvError::FunctionRejected
    );
    admin(
        &c.s,
        &["quorum", "remove", "sign", "--assets", "vault-*", "--yes"],
    );
    admin(&c.s, &["policy", "set", "vault-*", "--approvals", "2"]);
    assert_eq!(
        rv_of(session.sign(&Mechanism::Ecdsa, key, &[3u8; 32])),
        RvError::FunctionRejected
    );
    assert_eq!(c.signatures(), 1);
}

/// A signer, an officer and an auditor try to weaken the rules, register themselves as
/// approvers, execute, cancel or approve with what they hold.
#[test]
fn users_with_fewer_rights_cannot_weaken_or_bypass_the_quorum() {
    let (c, id) = retire_waiting();
    let (_, bob_pub) = keygen(&c.s.dir, "bobkey", "ed25519");
    let bp = bob_pub.to_str().unwrap();
    for user in ["bob", "carol", "dave"] {
        for args in [
            &["quorum", "remove", "retire", "--yes"][..],
            &["quorum", "set", "retire", "--approvals", "1"],
            &["approver", "add", user, "--key", bp],
            &["approver", "remove", "ann", "--yes"],
            &["policy", "set", "vault-*", "--approvals", "0"],
        ] {
            let o = run(&c.s, user, args);
            assert_eq!(code(&o), 3, "{user} {args:?}: {}", output_text(&o));
        }
    }
    // bob, dave: not the requester nor an admin.
    for user in ["bob", "dave"] {
        expect(&c.s, user, &["request", "cancel", &id, "--yes"], 3);
        expect(&c.s, user, &["request", "execute", &id], 3);
    }
    // carol, the requester, cannot execute without approvals, nor retire directly.
    expect(&c.s, "carol", &["request", "execute", &id], 3);
    let o = run(
        &c.s,
        "carol",
        &["--json", "asset", "retire", "vault-1", "--yes"],
    );
    assert_eq!(code(&o), 5, "{}", output_text(&o));
    // Nor may the approver list or rules be read as unchanged-but-weakened.
    let rules = json_of(&as_admin(&c.s, &["--json", "quorum", "list"]));
    assert_eq!(rules.as_array().unwrap().len(), 1, "{rules}");
    assert_eq!(rules[0]["approvals"], 2, "{rules}");
    let approvers = json_of(&as_admin(&c.s, &["--json", "approver", "list"]));
    assert_eq!(approvers.as_array().unwrap().len(), 3, "{approvers}");
    assert_eq!(c.asset_state("vault-1"), "ACTIVE");
    assert_eq!(c.request(&id)["status"], "pending");
    assert_eq!(c.request(&id)["approvals"], 0);
    // An officer cannot propose a signature, nor sign one through the provider.
    expect(
        &c.s,
        "carol",
        &[
            "request",
            "new",
            "sign",
            "vault-1",
            "--digest",
            &hex(&[7; 32]),
        ],
        3,
    );
}

// ---------------------------------------------------------------- (c) replay and reuse

/// One person's key under two names: the same key again, and the same P-256 key re-encoded
/// with a compressed point, are refused at registration.
#[test]
fn one_key_under_two_names_is_refused_also_when_reencoded() {
    let c = Cast::new();
    let cyd_pub = c.s.dir.join("cyd.pub");
    let compressed = c.s.dir.join("cyd-compressed.pub");
    openssl(&[
        "ec",
        "-pubin",
        "-in",
        cyd_pub.to_str().unwrap(),
        "-pubout",
        "-conv_form",
        "compressed",
        "-out",
        compressed.to_str().unwrap(),
    ]);
    assert_ne!(
        std::fs::read(&cyd_pub).unwrap(),
        std::fs::read(&compressed).unwrap()
    );
    let ann_pub = c.s.dir.join("ann.pub");
    for (name, key) in [
        ("cyd2", &compressed),
        ("cyd3", &cyd_pub),
        ("ann2", &ann_pub),
    ] {
        let o = as_admin(
            &c.s,
            &["approver", "add", name, "--key", key.to_str().unwrap()],
        );
        assert_eq!(code(&o), 3, "{name}: {}", output_text(&o));
    }
    let approvers = json_of(&as_admin(&c.s, &["--json", "approver", "list"]));
    assert_eq!(approvers.as_array().unwrap().len(), 3, "{approvers}");
}

/// ann approves, is removed; her key is registered again under a new name, which approves
/// again: one person, one count. A removed name is never reused.
#[test]
fn an_approver_removed_and_readded_under_another_name_counts_once() {
    let (c, id) = retire_waiting();
    assert_eq!(code(&c.approve(&id, "ann")), 0);
    admin(&c.s, &["approver", "remove", "ann", "--yes"]);
    let ann_pub = c.s.dir.join("ann.pub");
    let o = as_admin(
        &c.s,
        &["approver", "add", "ann", "--key", ann_pub.to_str().unwrap()],
    );
    assert_eq!(code(&o), 3, "{}", output_text(&o));
    admin(
        &c.s,
        &[
            "approver",
            "add",
            "anne",
            "--key",
            ann_pub.to_str().unwrap(),
        ],
    );
    // ann's signature over the same bytes, submitted as anne.
    let sig = c.sign("ann", &c.export(&id, false));
    assert_eq!(code(&c.submit(&id, "anne", &sig)), 0);
    let o = expect(&c.s, "carol", &["request", "execute", &id], 3);
    assert!(stderr(&o).contains("has 1"), "{}", stderr(&o));
    assert_eq!(c.asset_state("vault-1"), "ACTIVE");
}

/// An approval from another store (same approver key, registered in both) is worthless here;
/// an approve signature is not a rejection; a P-256 signature re-encoded (raw r||s, or the
/// other s) is not a second verdict.
#[test]
fn approvals_from_another_store_or_as_another_verdict_or_reencoded_do_not_count() {
    let (a, id_a) = retire_waiting();
    let (b, id_b) = retire_waiting();
    // b's ann gets a's ann key instead: remove and add under a new name.
    admin(&b.s, &["approver", "remove", "ann", "--yes"]);
    let ann_a = a.s.dir.join("ann.pub");
    admin(
        &b.s,
        &["approver", "add", "ann-a", "--key", ann_a.to_str().unwrap()],
    );
    let sig_a = a.sign("ann", &a.export(&id_a, false));
    let o = b.submit(&id_b, "ann-a", &sig_a);
    assert_eq!(code(&o), 3, "{}", output_text(&o));
    // The approve signature as a rejection.
    let o = run(
        &b.s,
        "carol",
        &[
            "request",
            "reject",
            &id_b,
            "--approver",
            "ben",
            "--signature",
            b.sign("ben", &b.export(&id_b, false)).to_str().unwrap(),
        ],
    );
    assert_eq!(code(&o), 3, "{}", output_text(&o));
    assert_eq!(b.request(&id_b)["status"], "pending");
    // cyd approves; the same signature hex-encoded is not a second verdict by cyd.
    let cyd = b.sign("cyd", &b.export(&id_b, false));
    assert_eq!(code(&b.submit(&id_b, "cyd", &cyd)), 0);
    let hexed = b.s.dir.join("cyd.hex");
    std::fs::write(&hexed, hex(&std::fs::read(&cyd).unwrap())).unwrap();
    assert_eq!(code(&b.submit(&id_b, "cyd", &hexed)), 3);
    assert_eq!(b.request(&id_b)["approvals"], 1);
    expect(&b.s, "carol", &["request", "execute", &id_b], 3);
    assert_eq!(b.asset_state("vault-1"), "ACTIVE");
    assert_eq!(a.request(&id_a)["approvals"], 0);
}

// ---------------------------------------------------------------- (d) races

/// Two `request execute` of one approved request at once: one runs, one transition.
#[test]
fn executing_one_request_twice_at_once_runs_it_once() {
    let (c, id) = retire_waiting();
    c.approved_by(&id, &["ann", "ben"]);
    let before = c.transitions();
    let spawn = || {
        c.s.cli()
            .env("P11DERIVE_USER", "carol")
            .env("P11DERIVE_PIN", secret_of("carol"))
            .args(["request", "execute", &id])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let kids: Vec<_> = (0..3).map(|_| spawn()).collect();
    let outs: Vec<Output> = kids
        .into_iter()
        .map(|k| k.wait_with_output().unwrap())
        .collect();
    let ok = outs.iter().filter(|o| code(o) == 0).count();
    assert_eq!(
        ok,
        1,
        "{:?}",
        outs.iter().map(output_text).collect::<Vec<_>>()
    );
    assert_eq!(c.asset_state("vault-1"), "RETIRED");
    assert_eq!(c.transitions(), before + 1);
    assert_eq!(c.request(&id)["status"], "executed");
}

/// The approval that completes the quorum (on-quorum execution) and a cancellation at once:
/// never both a cancelled request and a retired asset.
#[test]
fn approving_and_cancelling_at_once_never_runs_a_cancelled_request() {
    let c = Cast::new();
    let mut text = std::fs::read_to_string(&c.s.config).unwrap();
    text.push_str("\n[approvals]\nexecute = \"on-quorum\"\n");
    std::fs::write(&c.s.config, text).unwrap();
    admin(&c.s, &["quorum", "set", "retire", "--approvals", "2"]);
    let id = c.gated("carol", &["asset", "retire", "vault-1", "--yes"]);
    assert_eq!(code(&c.approve(&id, "ann")), 0);
    let sig = c.sign("ben", &c.export(&id, false));
    let approve =
        c.s.cli()
            .env("P11DERIVE_USER", "carol")
            .env("P11DERIVE_PIN", secret_of("carol"))
            .args([
                "request",
                "approve",
                &id,
                "--approver",
                "ben",
                "--signature",
                sig.to_str().unwrap(),
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
    let cancel = as_admin(&c.s, &["request", "cancel", &id, "--yes"]);
    let approve = approve.wait_with_output().unwrap();
    let status = c.request(&id)["status"].as_str().unwrap().to_string();
    let state = c.asset_state("vault-1");
    match status.as_str() {
        "cancelled" => {
            assert_eq!(code(&cancel), 0, "{}", output_text(&cancel));
            assert_eq!(
                state,
                "ACTIVE",
                "cancelled yet ran: {}",
                output_text(&approve)
            );
        }
        "executed" => {
            assert_ne!(code(&cancel), 0, "{}", output_text(&cancel));
            assert_eq!(state, "RETIRED");
        }
        s => panic!(
            "request {s}: {} / {}",
            output_text(&approve),
            output_text(&cancel)
        ),
    }
}

// ---------------------------------------------------------------- (e) pass-through process

/// The same store and token with users mode off and `[policy] destroy_retires = true`: the
/// PIN holder's process neither signs with a governed asset nor retires it by C_DestroyObject,
/// and its CLI neither retires it nor removes the rules.
#[test]
fn a_pass_through_process_neither_signs_with_nor_destroys_a_governed_asset() {
    let _t = turn();
    let c = signing();
    admin(&c.s, &["quorum", "set", "retire", "--approvals", "2"]);
    admin(&c.s, &["quorum", "set", "suspend", "--approvals", "2"]);
    let d = [0x61u8; 32];
    let id = c.new_sign(&d);
    assert_eq!(code(&c.approve(&id, "ann")), 0);
    let plain = c.s.dir.join("plain.toml");
    let text = std::fs::read_to_string(&c.s.config).unwrap();
    let text = text.replace("enabled = true", "enabled = false");
    std::fs::write(
        &plain,
        format!("{text}\n[policy]\ndestroy_retires = true\n"),
    )
    .unwrap();
    std::env::set_var("P11DERIVE_CONF", &plain);
    let ctx = Pkcs11::new(module_path()).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = ctx.get_slots_with_token().unwrap()[0];
    let session = ctx.open_rw_session(slot).unwrap();
    session
        .login(UserType::User, Some(&AuthPin::from(PIN)))
        .unwrap();
    let key = private_key(&session, "vault-1");
    assert_eq!(
        rv_of(session.sign(&Mechanism::Ecdsa, key, &d)),
        RvError::FunctionRejected
    );
    assert_eq!(
        rv_of(session.sign(&Mechanism::EcdsaSha256, key, b"anything")),
        RvError::FunctionRejected
    );
    let alias = find_one(&session, "vault-1", ObjectClass::PRIVATE_KEY).unwrap();
    assert_eq!(
        rv_of(session.destroy_object(alias)),
        RvError::FunctionRejected
    );
    ctx.finalize().unwrap();
    // Its CLI.
    let pt = |args: &[&str]| {
        c.s.cli()
            .env("P11DERIVE_CONF", &plain)
            .args(args)
            .output()
            .unwrap()
    };
    // Governed transitions: refused (3), naming the rule; users-mode commands: failed (1).
    for (args, want, says) in [
        (
            &["asset", "retire", "vault-1", "--yes"][..],
            3,
            "quorum retire",
        ),
        (&["asset", "suspend", "vault-1"], 3, "quorum suspend"),
        (
            &["quorum", "remove", "retire", "--yes"],
            1,
            "users mode only",
        ),
        (
            &["quorum", "remove", "sign", "--assets", "vault-*", "--yes"],
            1,
            "users mode only",
        ),
        (&["request", "execute", &id], 1, "users mode only"),
    ] {
        let o = pt(args);
        assert_eq!(code(&o), want, "pass-through {args:?}: {}", output_text(&o));
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    }
    assert_eq!(c.asset_state("vault-1"), "ACTIVE");
    assert_eq!(c.request(&id)["status"], "pending");
    assert_eq!(c.request(&id)["approvals"], 1);
    assert_eq!(c.signatures(), 0);
    let rules = json_of(&as_admin(&c.s, &["--json", "quorum", "list"]));
    assert_eq!(rules.as_array().unwrap().len(), 3, "{rules}");
}

/// Policies asking for approvals, changes of which a quorum governs: a pass-through CLI on the
/// same store neither removes nor lowers them, and a pass-through process does not sign.
#[test]
fn a_pass_through_cli_does_not_remove_a_governed_policy_asking_for_approvals() {
    let c = Cast::new();
    admin(&c.s, &["policy", "set", "vault-*", "--approvals", "2"]);
    admin(
        &c.s,
        &[
            "quorum",
            "set",
            "policy",
            "--assets",
            "vault-*",
            "--approvals",
            "2",
        ],
    );
    let o = as_admin(&c.s, &["policy", "remove", "vault-*", "--yes"]);
    assert_eq!(code(&o), 5, "{}", output_text(&o));
    let plain = c.s.dir.join("plain.toml");
    let text = std::fs::read_to_string(&c.s.config).unwrap();
    std::fs::write(&plain, text.replace("enabled = true", "enabled = false")).unwrap();
    for args in [
        &["policy", "remove", "vault-*", "--yes"][..],
        &["policy", "set", "vault-*", "--approvals", "0"],
        &["policy", "set", "vault-*", "--approvals", "1"],
    ] {
        let o =
            c.s.cli()
                .env("P11DERIVE_CONF", &plain)
                .args(args)
                .output()
                .unwrap();
        assert_eq!(code(&o), 1, "pass-through {args:?}: {}", output_text(&o));
        assert!(stderr(&o).contains("users mode only"), "{}", stderr(&o));
    }
    let o = as_admin(&c.s, &["--json", "policy", "show", "vault-*"]);
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    let shown = output_text(&o);
    assert!(
        shown.contains("\"approvals\": 2") || shown.contains("\"approvals\":2"),
        "{shown}"
    );
}

/// In users mode an officer's C_DestroyObject with destroy_retires is refused by the retire rule.
#[test]
fn an_officers_destroy_object_does_not_retire_a_governed_asset() {
    let _t = turn();
    let (c, _id) = retire_waiting();
    let mut text = std::fs::read_to_string(&c.s.config).unwrap();
    text.push_str("\n[policy]\ndestroy_retires = true\n");
    std::fs::write(&c.s.config, text).unwrap();
    let p = c.s.load();
    let session = p.session();
    session
        .login(UserType::User, Some(&AuthPin::from("carol:carol-secret-1")))
        .expect("carol logs in");
    let alias = find_one(&session, "vault-1", ObjectClass::PRIVATE_KEY).unwrap();
    assert_eq!(
        rv_of(session.destroy_object(alias)),
        RvError::FunctionRejected
    );
    drop(session);
    drop(p);
    assert_eq!(c.asset_state("vault-1"), "ACTIVE");
}

// ---------------------------------------------------------------- (f) crafted inputs

#[test]
fn crafted_ids_names_digests_and_signature_files_are_refused_cleanly() {
    let (c, id) = retire_waiting();
    // Odd request ids: nothing found, nothing panics.
    for bad in [
        "' OR 1=1 --",
        "../../etc/passwd",
        "%",
        "*",
        "",
        "\n",
        &id.to_uppercase()[..31],
    ] {
        for args in [
            &["request", "show", bad][..],
            &["request", "execute", bad],
            &["request", "cancel", bad, "--yes"],
        ] {
            let o = run(&c.s, "carol", args);
            assert_eq!(code(&o), 4, "{args:?}: {}", output_text(&o));
            assert!(
                stderr(&o).contains("no request"),
                "{args:?}: {}",
                stderr(&o)
            );
        }
    }
    // The id in another case is the same request, not another one.
    let o = run(
        &c.s,
        "dave",
        &["--json", "request", "show", &id.to_uppercase()],
    );
    if code(&o) == 0 {
        assert_eq!(json_of(&o)["id"], id.as_str());
    }
    // Approver names and groups with newlines or ': '.
    let (_, public) = keygen(&c.s.dir, "odd", "ed25519");
    let k = public.to_str().unwrap();
    for (name, groups) in [
        ("eve\nverdict: approve", ""),
        ("eve: approve", ""),
        ("eve approve", ""),
        ("eve", "a\nb"),
        ("eve", "x: y"),
        ("eve", "A"),
    ] {
        let o = as_admin(
            &c.s,
            &["approver", "add", name, "--key", k, "--groups", groups],
        );
        if groups.is_empty() {
            let o2 = as_admin(&c.s, &["approver", "add", name, "--key", k]);
            assert_eq!(code(&o2), 2, "{name:?}: {}", output_text(&o2));
        } else {
            assert_eq!(code(&o), 2, "{name:?} {groups:?}: {}", output_text(&o));
        }
    }
    // Patterns with a newline.
    let o = as_admin(
        &c.s,
        &[
            "quorum",
            "set",
            "sign",
            "--assets",
            "vault-*\nverdict: approve",
            "--approvals",
            "1",
        ],
    );
    assert_ne!(code(&o), 0, "{}", output_text(&o));
    // Digests of odd lengths or not hex.
    for dg in ["abc", "", "zz", &"00".repeat(65), "0x00"] {
        let o = run(
            &c.s,
            "bob",
            &["request", "new", "sign", "vault-1", "--digest", dg],
        );
        assert_eq!(code(&o), 2, "{dg:?}: {}", output_text(&o));
    }
    // A huge signature file, and garbage.
    let huge = c.s.dir.join("huge.sig");
    std::fs::write(&huge, vec![b'a'; 64 << 20]).unwrap();
    let o = c.submit(&id, "ann", &huge);
    assert_eq!(code(&o), 3, "{}", output_text(&o));
    assert!(stderr(&o).contains("does not verify"), "{}", stderr(&o));
    let _ = std::fs::remove_file(&huge);
    let junk = c.s.dir.join("junk.sig");
    std::fs::write(&junk, b"\x30\x06\x02\x01\x00\x02\x01\x00").unwrap();
    let o = c.submit(&id, "cyd", &junk);
    assert_eq!(code(&o), 3, "{}", output_text(&o));
    assert!(stderr(&o).contains("does not verify"), "{}", stderr(&o));
    let zero = c.s.dir.join("zero.sig");
    std::fs::write(&zero, [0u8; 64]).unwrap();
    let o = c.submit(&id, "ann", &zero);
    assert_eq!(code(&o), 3, "{}", output_text(&o));
    assert!(stderr(&o).contains("does not verify"), "{}", stderr(&o));
    let r = c.request(&id);
    assert_eq!(r["approvals"], 0, "{r}");
    assert_eq!(r["status"], "pending", "{r}");
    assert_eq!(c.asset_state("vault-1"), "ACTIVE");
}

/// ECDSA-SHA256 in several parts: the approved message is signed once; the same digest
/// through CKM_ECDSA, or another message, is refused.
#[test]
fn multi_part_ecdsa_sha256_releases_only_the_approved_message_once() {
    let _t = turn();
    let c = signing();
    let msg = b"pay 1 BTC to alice, nonce 7".to_vec();
    let f = c.s.dir.join("tx.bin");
    std::fs::write(&f, &msg).unwrap();
    let o = expect(
        &c.s,
        "bob",
        &[
            "--json",
            "request",
            "new",
            "sign",
            "vault-1",
            "--message",
            f.to_str().unwrap(),
            "--mechanism",
            "CKM_ECDSA_SHA256",
        ],
        0,
    );
    let id = json_of(&o)["id"].as_str().unwrap().to_string();
    c.approved_by(&id, &["ben", "cyd"]);
    let p = c.s.load();
    let (session, key) = bob_session(&p);
    let parts = |m: &[u8]| -> cryptoki::error::Result<Vec<u8>> {
        session.sign_init(&Mechanism::EcdsaSha256, key)?;
        for chunk in m.chunks(5) {
            session.sign_update(chunk)?;
        }
        session.sign_final()
    };
    // Another message first, then the digest itself through CKM_ECDSA.
    assert_eq!(
        rv_of(parts(b"pay 9 BTC to mallory")),
        RvError::FunctionRejected
    );
    let digest: [u8; 32] = unhex(&sha256_hex(&msg)).try_into().unwrap();
    assert_eq!(
        rv_of(session.sign(&Mechanism::Ecdsa, key, &digest)),
        RvError::FunctionRejected
    );
    assert_eq!(c.request(&id)["status"], "pending");
    parts(&msg).expect("the approved message in parts");
    assert_eq!(rv_of(parts(&msg)), RvError::FunctionRejected);
    assert_eq!(
        rv_of(session.sign(&Mechanism::EcdsaSha256, key, &msg)),
        RvError::FunctionRejected
    );
    assert_eq!(c.request(&id)["status"], "executed");
    drop(session);
    drop(p);
    assert_eq!(c.signatures(), 1);
}

/// An HMAC asset under a sign rule: no MAC without approvals, once with them, and not under
/// another HMAC mechanism.
#[test]
fn an_hmac_asset_under_a_sign_rule_macs_only_approved_messages_once() {
    let _t = turn();
    let c = Cast::new();
    expect(
        &c.s,
        "carol",
        &["asset", "create", "mac-1", "--type", "hmac-sha256"],
        0,
    );
    admin(
        &c.s,
        &[
            "quorum",
            "set",
            "sign",
            "--assets",
            "mac-*",
            "--approvals",
            "2",
        ],
    );
    let msg = b"settle batch 42".to_vec();
    let f = c.s.dir.join("m.bin");
    std::fs::write(&f, &msg).unwrap();
    let o = run(
        &c.s,
        "bob",
        &[
            "--json",
            "request",
            "new",
            "sign",
            "mac-1",
            "--message",
            f.to_str().unwrap(),
            "--mechanism",
            "CKM_SHA256_HMAC",
        ],
    );
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    let id = json_of(&o)["id"].as_str().unwrap().to_string();
    let p = c.s.load();
    let session = p.session();
    session
        .login(UserType::User, Some(&AuthPin::from(BOB)))
        .unwrap();
    let key = find_one(&session, "mac-1", ObjectClass::SECRET_KEY).expect("mac-1");
    let mac = |m: &[u8]| session.sign(&Mechanism::Sha256Hmac, key, m);
    assert_eq!(rv_of(mac(&msg)), RvError::FunctionRejected);
    c.approved_by(&id, &["ann", "ben"]);
    assert_eq!(
        rv_of(session.sign(&Mechanism::Sha384Hmac, key, &msg)),
        RvError::FunctionRejected
    );
    assert_eq!(rv_of(mac(b"settle batch 43")), RvError::FunctionRejected);
    // The key itself never leaves: C_WrapKey refuses a derived key.
    assert_eq!(
        rv_of(session.wrap_key(&Mechanism::AesKeyWrap, key, key)),
        RvError::KeyUnextractable
    );
    mac(&msg).expect("approved MAC");
    assert_eq!(rv_of(mac(&msg)), RvError::FunctionRejected);
    drop(session);
    drop(p);
    assert_eq!(c.signatures(), 1);
}

/// Four sessions of one process (threads) race for one approved digest: one signature.
#[test]
fn sessions_of_one_process_racing_for_one_approved_digest_get_one_signature() {
    let _t = turn();
    let c = signing();
    let d = [0x71u8; 32];
    let id = approved_digest(&c, &d);
    let p = c.s.load();
    let (first, _) = bob_session(&p);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
    let got: Vec<Result<Vec<u8>, RvError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (ctx, slot, barrier) = (p.ctx.clone(), p.slot, barrier.clone());
                scope.spawn(move || {
                    let session = ctx.open_rw_session(slot).unwrap();
                    let key = private_key(&session, "vault-1");
                    barrier.wait();
                    session
                        .sign(&Mechanism::Ecdsa, key, &d)
                        .map_err(|e| rv_code(&e).unwrap_or(RvError::GeneralError))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let signed = got.iter().filter(|g| g.is_ok()).count();
    assert_eq!(signed, 1, "{got:?}");
    assert!(
        got.iter()
            .all(|g| g.is_ok() || g == &Err(RvError::FunctionRejected)),
        "{got:?}"
    );
    drop(first);
    drop(p);
    assert_eq!(c.request(&id)["status"], "executed");
    assert_eq!(c.signatures(), 1);
}

/// Expiries out of range, chosen by the requester, are refused.
#[test]
fn a_requester_cannot_choose_an_expiry_out_of_range() {
    let c = signing();
    for e in [
        "100000d",
        "91d",
        "-5m",
        "0s",
        "91d",
        "1w",
        "99999999999999999999d",
    ] {
        let o = run(
            &c.s,
            "bob",
            &[
                "request",
                "new",
                "sign",
                "vault-1",
                "--digest",
                &hex(&[1; 32]),
                "--expires",
                e,
            ],
        );
        assert_eq!(code(&o), 2, "{e}: {}", output_text(&o));
    }
    let o = expect(&c.s, "dave", &["--json", "request", "list", "--all"], 0);
    assert_eq!(
        json_of(&o).as_array().map_or(0, Vec::len),
        0,
        "{}",
        output_text(&o)
    );
}

/// A rule on a pattern is not escaped by naming the asset otherwise (case, a version label,
/// spaces).
#[test]
fn a_patterned_rule_is_not_escaped_by_another_spelling_of_the_asset() {
    let c = Cast::new();
    admin(
        &c.s,
        &[
            "quorum",
            "set",
            "retire",
            "--assets",
            "vault-*",
            "--approvals",
            "2",
        ],
    );
    // Names are case-sensitive (another case is no asset: 4); others are no asset id (2).
    for (name, want) in [
        ("VAULT-1", 4),
        ("Vault-1", 4),
        ("vault-1@v1", 2),
        (" vault-1", 2),
        ("vault-1 ", 2),
        ("./vault-1", 2),
    ] {
        let o = run(&c.s, "carol", &["asset", "retire", name, "--yes"]);
        assert_eq!(code(&o), want, "{name:?}: {}", output_text(&o));
        assert_eq!(
            c.asset_state("vault-1"),
            "ACTIVE",
            "{name:?}: {}",
            output_text(&o)
        );
    }
}
