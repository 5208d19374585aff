//! k-of-n approvals (issue 21) through the built `p11derive` and provider in users mode:
//! approvers' keys made and used with the `openssl` CLI, gated lifecycle changes recorded as
//! requests and run once approved, refused approvals, rows edited in SQL, and signatures of
//! approved digests released once (also to two racing processes).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use serde_json::Value;

fn secret_of(user: &str) -> String {
    format!("{user}-secret-1")
}

/// The CLI as `user` (with its secret).
fn run(s: &Setup, user: &str, args: &[&str]) -> Output {
    as_user(s, user, &secret_of(user), args)
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// As `user`; must exit `want`.
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

/// An approver's key pair made with openssl: (private PEM, public PEM).
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

/// A users-mode store with `carol` (officer), `bob` (signer), `dave` (auditor), the asset
/// `vault-1` (P-256), and the approvers ann, ben (Ed25519) and cyd (P-256).
struct Cast {
    s: Setup,
}

impl Cast {
    fn new() -> Cast {
        Cast::on(None)
    }

    /// The cast on a SQLite store, or on the PostgreSQL database `pg`.
    fn on(pg: Option<&str>) -> Cast {
        let s = users_setup_on(pg);
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

    /// A gated command run by `user`: exit 5 and the id of the request it recorded.
    fn gated(&self, user: &str, args: &[&str]) -> String {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let o = expect(&self.s, user, &all, 5);
        let v = json_of(&o);
        assert_eq!(v["status"], "pending", "{v}");
        v["request"].as_str().unwrap().to_string()
    }

    /// The verdict bytes of request `id` (`request export`), in a file.
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

    /// `approver`'s key signs `bytes` with openssl: the signature file.
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

    /// `request approve ID --approver NAME --signature SIG` (submitted by carol).
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

    /// `approver` approves request `id` properly (export, openssl, approve): the outcome.
    fn approve(&self, id: &str, approver: &str) -> Output {
        let bytes = self.export(id, false);
        let sig = self.sign(approver, &bytes);
        self.submit(id, approver, &sig)
    }

    /// `request new sign vault-1 --digest HEX` by bob: the request's id.
    fn new_sign(&self, digest: &[u8; 32]) -> String {
        let args = ["--json", "request", "new", "sign", "vault-1", "--digest"];
        let o = expect(&self.s, "bob", &[&args[..], &[&hex(digest)]].concat(), 0);
        json_of(&o)["id"].as_str().unwrap().to_string()
    }

    /// Each of `approvers` approves request `id`, which must be accepted.
    fn approved_by(&self, id: &str, approvers: &[&str]) {
        for a in approvers {
            let o = self.approve(id, a);
            assert_eq!(code(&o), 0, "{a}: {}", output_text(&o));
        }
    }

    /// `WHAT list --json` (approver, quorum), read by the admin.
    fn listed(&self, what: &str) -> Value {
        json_of(&as_user(&self.s, "admin", ADMIN, &["--json", what, "list"]))
    }

    /// `request show ID --json`.
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

    /// Every audit record (`audit export`, read by dave).
    fn records(&self) -> Vec<Value> {
        let o = expect(&self.s, "dave", &["audit", "export"], 0);
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    fn audit_verify(&self) -> Output {
        run(&self.s, "dave", &["audit", "verify"])
    }
}

/// The cast with retirements wanting two approvals, and carol's request to retire vault-1.
fn retire_waiting() -> (Cast, String) {
    let c = Cast::new();
    admin(&c.s, &["quorum", "set", "retire", "--approvals", "2"]);
    let id = c.gated("carol", &["asset", "retire", "vault-1", "--yes"]);
    (c, id)
}

fn admin(s: &Setup, args: &[&str]) {
    ok_as(s, "admin", ADMIN, args);
}

#[test]
fn two_of_three_approve_a_retire_which_then_runs_once_with_its_records() {
    let (c, id) = retire_waiting();
    assert_eq!(c.asset_state("vault-1"), "ACTIVE");
    // One approval is not enough.
    let o = c.approve(&id, "ann");
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    let o = expect(&c.s, "carol", &["request", "execute", &id], 3);
    assert!(
        stderr(&o).contains(&id) || stderr(&o).contains("approv"),
        "{}",
        stderr(&o)
    );
    assert_eq!(c.asset_state("vault-1"), "ACTIVE");
    assert_eq!(c.request(&id)["approvals"], 1);
    // The same approver again counts nothing.
    let o = c.approve(&id, "ann");
    assert_eq!(code(&o), 3, "{}", output_text(&o));
    assert!(stderr(&o).contains("ann"), "{}", stderr(&o));
    assert_eq!(c.request(&id)["approvals"], 1);
    // A second approver (P-256, signed by openssl: DER) completes the quorum.
    let o = c.approve(&id, "cyd");
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    expect(&c.s, "carol", &["request", "execute", &id], 0);
    assert_eq!(c.asset_state("vault-1"), "RETIRED");
    let shown = c.request(&id);
    assert_eq!(shown["status"], "executed", "{shown}");
    // It runs once.
    let o = expect(&c.s, "carol", &["request", "execute", &id], 3);
    assert!(stderr(&o).contains("executed"), "{}", stderr(&o));
    // The log: the request, two approvals, then the transition naming the request.
    let tag = format!("request={id}");
    let events: Vec<String> = c
        .records()
        .iter()
        .filter(|r| {
            let d = r["detail"].as_str().unwrap_or("");
            d.contains(&format!("id={id}")) || d.contains(&tag)
        })
        .map(|r| r["event"].as_str().unwrap().to_string())
        .collect();
    let pos = |e: &str, from: usize| {
        events[from..]
            .iter()
            .position(|x| x == e)
            .map(|p| p + from)
            .unwrap_or_else(|| panic!("no {e} after {from}: {events:?}"))
    };
    let r = pos("request", 0);
    let a1 = pos("approval", r + 1);
    let a2 = pos("approval", a1 + 1);
    pos("transition", a2 + 1);
    assert_eq!(
        events.iter().filter(|e| *e == "approval").count(),
        2,
        "{events:?}"
    );
    assert_eq!(
        events.iter().filter(|e| *e == "transition").count(),
        1,
        "{events:?}"
    );
    let o = c.audit_verify();
    assert_eq!(code(&o), 0, "{}", output_text(&o));
}

#[test]
fn approvals_over_other_bytes_or_by_other_keys_are_refused_and_a_rejection_ends_the_request() {
    let c = Cast::new();
    expect(
        &c.s,
        "carol",
        &["asset", "create", "vault-2", "--type", "p256"],
        0,
    );
    admin(&c.s, &["quorum", "set", "retire", "--approvals", "2"]);
    let id = c.gated("carol", &["asset", "retire", "vault-1", "--yes"]);
    let other = c.gated("carol", &["asset", "retire", "vault-2", "--yes"]);
    assert_ne!(id, other);
    let refused = |sig: &Path, approver: &str, why: &str| {
        let o = c.submit(&id, approver, sig);
        assert_eq!(code(&o), 3, "{why}: {}", output_text(&o));
        let r = c.request(&id);
        assert_eq!(r["status"], "pending", "{why}: {r}");
        assert_eq!(r["approvals"], 0, "{why}: {r}");
    };
    // ann's signature over the reject bytes, over another asset's request's bytes.
    refused(
        &c.sign("ann", &c.export(&id, true)),
        "ann",
        "reject bytes as approval",
    );
    refused(
        &c.sign("ann", &c.export(&other, false)),
        "ann",
        "another request",
    );
    // ann's good signature given as ben's, or as an approver no one registered.
    let good = c.sign("ann", &c.export(&id, false));
    refused(&good, "ben", "ann's signature as ben");
    refused(&good, "zed", "unknown approver");
    let o = c.submit(&id, "zed", &good);
    assert!(stderr(&o).contains("zed"), "{}", stderr(&o));
    // A sign request for another digest of the same asset.
    let (s1, s2) = (c.new_sign(&[1; 32]), c.new_sign(&[2; 32]));
    let o = c.submit(&s1, "ann", &c.sign("ann", &c.export(&s2, false)));
    assert_eq!(code(&o), 3, "{}", output_text(&o));
    assert_eq!(c.request(&s1)["approvals"], 0);
    // Nothing changed by the refusals: the good one still counts.
    assert_eq!(code(&c.submit(&id, "ann", &good)), 0);
    // cyd rejects: the request is dead for approvals and execution.
    let o = run(
        &c.s,
        "carol",
        &[
            "request",
            "reject",
            &id,
            "--approver",
            "cyd",
            "--signature",
            c.sign("cyd", &c.export(&id, true)).to_str().unwrap(),
        ],
    );
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    assert_eq!(c.request(&id)["status"], "rejected");
    let o = c.approve(&id, "ben");
    assert_eq!(code(&o), 3, "{}", output_text(&o));
    assert!(stderr(&o).contains("rejected"), "{}", stderr(&o));
    let o = expect(&c.s, "carol", &["request", "execute", &id], 3);
    assert!(stderr(&o).contains("rejected"), "{}", stderr(&o));
    assert_eq!(c.asset_state("vault-1"), "ACTIVE");
    assert_eq!(code(&c.audit_verify()), 0);
}

#[test]
fn approval_rows_edited_in_sql_are_caught() {
    // (what the edit does, the command that must fail)
    let id_marker = "ID";
    let cases: [(&str, &[&str]); 4] = [
        (
            "UPDATE requests SET approvals = approvals || approvals WHERE name = 'ID'",
            &["request", "show", "ID"],
        ),
        (
            "UPDATE requests SET state = 'executed' WHERE name = 'ID'",
            &["request", "show", "ID"],
        ),
        (
            "UPDATE approvers SET public_key = (SELECT public_key FROM approvers WHERE name = 'ben') \
             WHERE name = 'ann'",
            &["approver", "list"],
        ),
        ("DELETE FROM quorums WHERE operation = 'retire'", &["request", "execute", "ID"]),
    ];
    for (sql, args) in cases {
        let c = Cast::new();
        admin(&c.s, &["quorum", "set", "retire", "--approvals", "2"]);
        let id = c.gated("carol", &["asset", "retire", "vault-1", "--yes"]);
        assert_eq!(code(&c.approve(&id, "ann")), 0);
        sqlite(&c.s.store, &sql.replace(id_marker, &id));
        let args: Vec<String> = args.iter().map(|a| a.replace(id_marker, &id)).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let user = if args[0] == "approver" {
            "admin"
        } else {
            "carol"
        };
        let o = if user == "admin" {
            as_user(&c.s, "admin", ADMIN, &args)
        } else {
            run(&c.s, user, &args)
        };
        assert!(
            code(&o) != 0 && code(&o) != 5,
            "{sql}: {args:?} ran: {}",
            output_text(&o)
        );
        let named = if sql.contains("approvers") {
            "ann"
        } else if sql.contains("quorums") {
            "quorum rule \"retire:*\""
        } else {
            id.as_str()
        };
        assert!(stderr(&o).contains(named), "{sql}: {}", stderr(&o));
        let o = c.audit_verify();
        assert_ne!(
            code(&o),
            0,
            "{sql}: audit verify passed: {}",
            output_text(&o)
        );
        assert_eq!(c.asset_state("vault-1"), "ACTIVE", "{sql}");
    }
}

/// The asset's (only) public key point, from `asset show --json`.
fn point_of(c: &Cast, asset: &str) -> Vec<u8> {
    let v = json_of(&expect(
        &c.s,
        "dave",
        &["asset", "show", asset, "--json"],
        0,
    ));
    version_keys(&v).last().unwrap().1.clone()
}

/// A sign request for `digest` on vault-1 by bob, approved by ann and cyd: its id.
fn approved_digest(c: &Cast, digest: &[u8; 32]) -> String {
    let id = c.new_sign(digest);
    c.approved_by(&id, &["ann", "cyd"]);
    id
}

const BOB: &str = "bob:bob-secret-1";

/// A session of the loaded provider with bob logged in, and vault-1's private key.
fn bob_session(p: &Provider) -> (cryptoki::session::Session, cryptoki::object::ObjectHandle) {
    let session = p.session();
    let pin = cryptoki::types::AuthPin::from(BOB);
    session
        .login(cryptoki::session::UserType::User, Some(&pin))
        .expect("bob logs in");
    let key = private_key(&session, "vault-1");
    (session, key)
}

/// The cast with signatures of vault-* wanting two approvals.
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

#[test]
fn an_approved_digest_is_signed_once_through_the_provider() {
    let _t = turn();
    let c = signing();
    let d = [0x5au8; 32];
    let p = c.s.load();
    let (session, key) = bob_session(&p);
    let sign = |digest: &[u8; 32]| session.sign(&Mechanism::Ecdsa, key, digest);
    assert_eq!(rv_of(sign(&d)), RvError::FunctionRejected);
    let id = approved_digest(&c, &d);
    assert_eq!(c.request(&id)["status"], "pending");
    let sig = sign(&d).expect("the approved digest is signed");
    assert!(ecdsa_verifies("p256", &point_of(&c, "vault-1"), &d, &sig));
    assert_eq!(c.request(&id)["status"], "executed");
    // Used once; another digest was never approved.
    assert_eq!(rv_of(sign(&d)), RvError::FunctionRejected);
    assert_eq!(rv_of(sign(&[0x5b; 32])), RvError::FunctionRejected);
    drop(session);
    drop(p);
    // pkcs11-tool, logged in as bob, signs another approved digest once.
    let d2 = [0x77u8; 32];
    let id2 = approved_digest(&c, &d2);
    let input = c.s.dir.join("d2.bin");
    std::fs::write(&input, d2).unwrap();
    let out = c.s.dir.join("d2.sig");
    let (i, o) = (input.to_str().unwrap(), out.to_str().unwrap());
    let args = [
        "--login", "--pin", BOB, "--sign", "-m", "ECDSA", "--label", "vault-1",
    ];
    let tool_sign = || tool(&c.s, &[&args[..], &["-i", i, "-o", o]].concat());
    let o = tool_sign();
    assert!(o.status.success(), "pkcs11-tool: {}", output_text(&o));
    let sig = std::fs::read(&out).unwrap();
    assert!(ecdsa_verifies("p256", &point_of(&c, "vault-1"), &d2, &sig));
    assert_eq!(c.request(&id2)["status"], "executed");
    let o = tool_sign();
    assert!(!o.status.success(), "signed twice: {}", output_text(&o));
    let refused = c
        .records()
        .iter()
        .filter(|r| {
            r["event"] == "refused"
                && r["detail"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("sign refused at commit: rule=approvals")
        })
        .count();
    // Three refusals through cryptoki, one through pkcs11-tool (which then tries
    // C_SignUpdate, which CKM_ECDSA does not offer).
    assert_eq!(refused, 4);
    assert_eq!(code(&c.audit_verify()), 0);
}

#[test]
fn two_processes_racing_for_one_approved_digest_get_one_signature() {
    let _t = turn();
    let c = signing();
    let d = [0x33u8; 32];
    let id = approved_digest(&c, &d);
    std::env::set_var("P11DERIVE_CONF", &c.s.config);
    let outs: Vec<PathBuf> = (0..2)
        .map(|i| c.s.dir.join(format!("child-{i}.out")))
        .collect();
    let pids: Vec<_> = outs
        .iter()
        .map(|out| {
            fork_child(out, || {
                let (_ctx, session) = child_session_as(BOB)?;
                let key = private_key(&session, "vault-1");
                Ok(match session.sign(&Mechanism::Ecdsa, key, &d) {
                    Ok(sig) => format!("signed {}", hex(&sig)),
                    Err(e) => format!("refused {:?}", rv_code(&e)),
                })
            })
        })
        .collect();
    let got: Vec<String> = pids
        .into_iter()
        .zip(&outs)
        .map(|(pid, out)| reap(pid, out, "signer"))
        .collect();
    let signed: Vec<&String> = got.iter().filter(|g| g.starts_with("signed ")).collect();
    assert_eq!(signed.len(), 1, "{got:?}");
    let sig = unhex(signed[0].trim_start_matches("signed ").trim());
    assert!(ecdsa_verifies("p256", &point_of(&c, "vault-1"), &d, &sig));
    assert!(
        got.iter().any(|g| g.contains("FunctionRejected")),
        "{got:?}"
    );
    assert_eq!(c.request(&id)["status"], "executed");
    assert_eq!(
        c.records()
            .iter()
            .filter(|r| r["event"] == "sign" && r["rv"] == 0)
            .count(),
        1
    );
}

#[test]
fn request_sign_makes_approvals_offline_and_online_for_both_key_kinds() {
    let c = Cast::new();
    admin(&c.s, &["quorum", "set", "retire", "--approvals", "3"]);
    let id = c.gated("carol", &["asset", "retire", "vault-1", "--yes"]);
    let bytes = c.export(&id, false);
    // Offline: no store, no login; openssl verifies what it wrote.
    for a in ["ann", "cyd"] {
        let sig = c.s.dir.join(format!("{a}.offline.sig"));
        let (key, public) = (c.key(a), c.s.dir.join(format!("{a}.pub")));
        let [key, public, b, sig_s] =
            [&key, &public, &bytes, &sig].map(|p| p.to_str().unwrap().to_string());
        let offline = [
            "request", "sign", &id, "--key", &key, "--bytes", &b, "--out", &sig_s,
        ];
        let o =
            c.s.cli()
                .env_remove("P11DERIVE_PIN")
                .args(offline)
                .output()
                .unwrap();
        assert_eq!(code(&o), 0, "{a}: {}", output_text(&o));
        let check = ["-pubin", "-inkey", &public, "-in", &b, "-sigfile", &sig_s];
        // openssl verifies the offline signature over the exported bytes (or panics).
        openssl(&[&["pkeyutl", "-verify", "-rawin"][..], &check].concat());
        let o = c.submit(&id, a, &sig);
        assert_eq!(code(&o), 0, "{a}: {}", output_text(&o));
    }
    assert_eq!(c.request(&id)["approvals"], 2);
    // Online: ben signs through the store.
    let o = run(
        &c.s,
        "carol",
        &[
            "request",
            "sign",
            &id,
            "--key",
            c.key("ben").to_str().unwrap(),
            "--approver",
            "ben",
        ],
    );
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    assert_eq!(c.request(&id)["approvals"], 3);
    expect(&c.s, "carol", &["request", "execute", &id], 0);
    assert_eq!(c.asset_state("vault-1"), "RETIRED");
}

#[test]
fn an_approver_who_is_the_requester_does_not_count_and_only_the_requester_or_an_admin_cancels() {
    let c = Cast::new();
    // carol is also an approver: the same person.
    let (_, public) = keygen(&c.s.dir, "carol", "ed25519");
    admin(
        &c.s,
        &[
            "approver",
            "add",
            "carol",
            "--key",
            public.to_str().unwrap(),
        ],
    );
    admin(&c.s, &["quorum", "set", "retire", "--approvals", "2"]);
    let id = c.gated("carol", &["asset", "retire", "vault-1", "--yes"]);
    let _ = c.approve(&id, "carol");
    assert_eq!(code(&c.approve(&id, "ann")), 0);
    let o = expect(&c.s, "carol", &["request", "execute", &id], 3);
    assert!(stderr(&o).contains("approv"), "{}", stderr(&o));
    assert_eq!(c.asset_state("vault-1"), "ACTIVE");
    // bob neither requested it nor is an admin; carol may cancel.
    expect(&c.s, "bob", &["request", "cancel", &id, "--yes"], 3);
    assert_eq!(c.request(&id)["status"], "pending");
    expect(&c.s, "carol", &["request", "cancel", &id, "--yes"], 0);
    assert_eq!(c.request(&id)["status"], "cancelled");
    let o = c.approve(&id, "ben");
    assert_eq!(code(&o), 3, "{}", output_text(&o));
    assert!(stderr(&o).contains("cancelled"), "{}", stderr(&o));
}

#[test]
fn on_quorum_runs_the_operation_with_the_approval_that_completes_the_quorum() {
    let c = Cast::new();
    let mut text = std::fs::read_to_string(&c.s.config).unwrap();
    text.push_str("\n[approvals]\nexecute = \"on-quorum\"\n");
    std::fs::write(&c.s.config, text).unwrap();
    admin(&c.s, &["quorum", "set", "suspend", "--approvals", "2"]);
    let id = c.gated("carol", &["asset", "suspend", "vault-1"]);
    assert_eq!(code(&c.approve(&id, "ben")), 0);
    assert_eq!(c.asset_state("vault-1"), "ACTIVE");
    let o = c.approve(&id, "cyd");
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    assert_eq!(c.asset_state("vault-1"), "SUSPENDED");
    assert_eq!(c.request(&id)["status"], "executed");
}

#[test]
fn once_quorum_and_approver_changes_are_governed_an_admin_cannot_undo_a_rule_alone() {
    let c = Cast::new();
    // A rule no group of active approvers can meet is refused.
    let o = as_user(
        &c.s,
        "admin",
        ADMIN,
        &["quorum", "set", "retire", "--approvals", "4"],
    );
    assert_ne!(code(&o), 0, "{}", output_text(&o));
    admin(&c.s, &["quorum", "set", "retire", "--approvals", "2"]);
    admin(&c.s, &["quorum", "set", "approver", "--approvals", "2"]);
    admin(&c.s, &["quorum", "set", "quorum", "--approvals", "2"]);
    let json = ["--json"];
    let gated = |args: &[&str]| {
        let o = as_user(&c.s, "admin", ADMIN, &[&json[..], args].concat());
        assert_eq!(code(&o), 5, "{args:?}: {}", output_text(&o));
        json_of(&o)["request"].as_str().unwrap().to_string()
    };
    let id = gated(&["quorum", "remove", "retire", "--yes"]);
    let rules = c.listed("quorum");
    assert!(
        rules
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["operation"] == "retire"),
        "{rules}"
    );
    // Nor may the admin remove approvers to weaken the quorum.
    gated(&["approver", "remove", "ann", "--yes"]);
    let listed = c.listed("approver");
    assert_eq!(listed.as_array().unwrap().len(), 3, "{listed}");
    // With two approvals the rule goes (executed by the admin).
    c.approved_by(&id, &["ann", "ben"]);
    ok_as(&c.s, "admin", ADMIN, &["request", "execute", &id]);
    expect(&c.s, "carol", &["asset", "retire", "vault-1", "--yes"], 0);
    assert_eq!(c.asset_state("vault-1"), "RETIRED");
}

#[test]
fn only_who_may_run_an_operation_executes_it_and_only_a_signer_proposes_a_signature() {
    let (c, id) = retire_waiting();
    c.approved_by(&id, &["ann", "ben"]);
    // bob (a signer) and the admin may not retire assets, approved or not.
    expect(&c.s, "bob", &["request", "execute", &id], 3);
    let o = as_user(&c.s, "admin", ADMIN, &["request", "execute", &id]);
    assert_eq!(code(&o), 3, "{}", output_text(&o));
    assert_eq!(c.asset_state("vault-1"), "ACTIVE");
    assert_eq!(c.request(&id)["status"], "pending");
    // carol (an officer, not a signer) may not propose signatures.
    let d = hex(&[9; 32]);
    expect(
        &c.s,
        "carol",
        &["request", "new", "sign", "vault-1", "--digest", &d],
        3,
    );
    expect(&c.s, "carol", &["request", "execute", &id], 0);
}

#[test]
fn an_approved_ecdsa_digest_does_not_release_an_ecdsa_sha256_signature_of_its_message() {
    let _t = turn();
    let c = signing();
    let message = b"pay 5 BTC to mallory";
    let digest: [u8; 32] = unhex(&sha256_hex(message)).try_into().unwrap();
    let id = approved_digest(&c, &digest);
    let p = c.s.load();
    let (session, key) = bob_session(&p);
    // Same asset and digest, another mechanism: not what was approved.
    let r = session.sign(&Mechanism::EcdsaSha256, key, message);
    assert_eq!(rv_of(r), RvError::FunctionRejected);
    assert_eq!(c.request(&id)["status"], "pending");
    let sig = session.sign(&Mechanism::Ecdsa, key, &digest).unwrap();
    assert!(ecdsa_verifies(
        "p256",
        &point_of(&c, "vault-1"),
        &digest,
        &sig
    ));
}

#[test]
fn a_gated_user_add_runs_once_approved_and_the_new_user_logs_in_with_their_secret() {
    let c = Cast::new();
    admin(&c.s, &["quorum", "set", "user", "--approvals", "2"]);
    let f = c.s.dir.join("erin.secret");
    std::fs::write(&f, format!("{}\n", secret_of("erin"))).unwrap();
    let args = ["user", "add", "erin", "--roles", "auditor", "--secret-file"];
    let o = as_user(
        &c.s,
        "admin",
        ADMIN,
        &[&["--json"][..], &args, &[f.to_str().unwrap()]].concat(),
    );
    assert_eq!(code(&o), 5, "{}", output_text(&o));
    let id = json_of(&o)["request"].as_str().unwrap().to_string();
    let bytes = std::fs::read_to_string(c.export(&id, false)).unwrap();
    assert!(
        !bytes.contains(&secret_of("erin")),
        "the secret is in the bytes: {bytes}"
    );
    expect(&c.s, "erin", &["audit", "verify"], 3);
    // Hex and base64 signature files are accepted too.
    for (a, form) in [("ann", "hex"), ("ben", "base64")] {
        let signed = c.sign(a, &c.export(&id, false));
        let text = if form == "hex" {
            hex(&std::fs::read(&signed).unwrap())
        } else {
            let o = Command::new("base64")
                .arg("-w0")
                .arg(&signed)
                .output()
                .unwrap();
            String::from_utf8(o.stdout).unwrap()
        };
        let sig = c.s.dir.join(format!("{a}.{form}"));
        std::fs::write(&sig, text).unwrap();
        let o = c.submit(&id, a, &sig);
        assert_eq!(code(&o), 0, "{form}: {}", output_text(&o));
    }
    ok_as(&c.s, "admin", ADMIN, &["request", "execute", &id]);
    expect(&c.s, "erin", &["audit", "verify"], 0);
}

#[test]
fn a_policy_asking_for_approvals_gates_signatures_like_a_sign_rule() {
    let _t = turn();
    let c = Cast::new();
    admin(&c.s, &["policy", "set", "vault-*", "--approvals", "2"]);
    let d = [0x42u8; 32];
    let p = c.s.load();
    let (session, key) = bob_session(&p);
    assert_eq!(
        rv_of(session.sign(&Mechanism::Ecdsa, key, &d)),
        RvError::FunctionRejected
    );
    let id = approved_digest(&c, &d);
    let sig = session.sign(&Mechanism::Ecdsa, key, &d).expect("approved");
    assert!(ecdsa_verifies("p256", &point_of(&c, "vault-1"), &d, &sig));
    assert_eq!(c.request(&id)["status"], "executed");
}

#[test]
fn a_rule_for_a_group_counts_only_that_groups_approvers() {
    let c = Cast::new();
    let (_, public) = keygen(&c.s.dir, "gil", "p256");
    let key = public.to_str().unwrap();
    admin(
        &c.s,
        &[
            "approver",
            "add",
            "gil",
            "--key",
            key,
            "--groups",
            "treasury,risk",
        ],
    );
    // Two in treasury cannot be met: gil is its only member.
    let o = as_user(
        &c.s,
        "admin",
        ADMIN,
        &[
            "quorum",
            "set",
            "resume",
            "--approvals",
            "2",
            "--group",
            "treasury",
        ],
    );
    assert_ne!(code(&o), 0, "{}", output_text(&o));
    admin(
        &c.s,
        &[
            "quorum",
            "set",
            "suspend",
            "--assets",
            "vault-*",
            "--approvals",
            "1",
            "--group",
            "treasury",
        ],
    );
    // One rule per operation and pattern: the group's is on vault-*, this one on every asset.
    admin(&c.s, &["quorum", "set", "suspend", "--approvals", "2"]);
    let rules = c.listed("quorum");
    assert_eq!(rules.as_array().unwrap().len(), 2, "{rules}");
    let id = c.gated("carol", &["asset", "suspend", "vault-1"]);
    // Two approvals, none from treasury: the group's rule is unmet.
    c.approved_by(&id, &["ann", "ben"]);
    let o = expect(&c.s, "carol", &["request", "execute", &id], 3);
    assert!(stderr(&o).contains("treasury"), "{}", stderr(&o));
    assert_eq!(c.asset_state("vault-1"), "ACTIVE");
    assert_eq!(code(&c.approve(&id, "gil")), 0);
    expect(&c.s, "carol", &["request", "execute", &id], 0);
    assert_eq!(c.asset_state("vault-1"), "SUSPENDED");
}

#[test]
fn an_approval_by_an_approver_since_removed_no_longer_counts() {
    let (c, id) = retire_waiting();
    c.approved_by(&id, &["ann", "ben"]);
    admin(&c.s, &["approver", "remove", "ann", "--yes"]);
    let o = expect(&c.s, "carol", &["request", "execute", &id], 3);
    assert!(stderr(&o).contains("has 1"), "{}", stderr(&o));
    assert_eq!(c.asset_state("vault-1"), "ACTIVE");
    // A removed approver's new approvals are refused.
    assert_eq!(code(&c.approve(&id, "ann")), 3);
    assert_eq!(code(&c.approve(&id, "cyd")), 0);
    expect(&c.s, "carol", &["request", "execute", &id], 0);
    assert_eq!(c.asset_state("vault-1"), "RETIRED");
}

#[test]
fn a_refused_signature_is_proposed_to_approvers_and_released_once_they_approve() {
    let _t = turn();
    let c = signing();
    let d = [0x3cu8; 32];
    let p = c.s.load();
    let (session, key) = bob_session(&p);
    let sign = |digest: &[u8; 32]| session.sign(&Mechanism::Ecdsa, key, digest);
    let pending = || -> Vec<Value> {
        let all = json_of(&expect(&c.s, "dave", &["--json", "request", "list"], 0));
        all.as_array().unwrap().clone()
    };
    assert_eq!(rv_of(sign(&d)), RvError::FunctionRejected);
    // The provider recorded the proposal: bob's, of exactly this digest.
    let listed = pending();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let r = &listed[0];
    assert_eq!(r["operation"], "sign");
    assert_eq!(r["requested_by"], "bob");
    assert_eq!(r["params"]["asset"], "vault-1");
    assert_eq!(r["params"]["mechanism"], "CKM_ECDSA");
    assert_eq!(r["params"]["digest"], hex(&d));
    let id = r["id"].as_str().unwrap().to_string();
    // Trying again proposes nothing more while it is pending.
    assert_eq!(rv_of(sign(&d)), RvError::FunctionRejected);
    assert_eq!(pending().len(), 1);
    let named = c
        .records()
        .iter()
        .any(|r| r["event"] == "refused" && r["detail"].as_str().unwrap_or("").contains(&id));
    assert!(named, "no refusal names request {id}");
    c.approved_by(&id, &["ann", "cyd"]);
    let sig = sign(&d).expect("the proposed digest is signed once approved");
    assert!(ecdsa_verifies("p256", &point_of(&c, "vault-1"), &d, &sig));
    assert_eq!(c.request(&id)["status"], "executed");
    // Used once: the next attempt is refused and proposed afresh.
    assert_eq!(rv_of(sign(&d)), RvError::FunctionRejected);
    let again = pending();
    assert_eq!(again.len(), 1);
    assert_ne!(again[0]["id"], id.as_str());
    drop(session);
    drop(p);
    assert_eq!(code(&c.audit_verify()), 0);
}

#[test]
fn an_expired_request_takes_no_approval_and_releases_no_signature() {
    let _t = turn();
    let c = signing();
    let d = [0x4du8; 32];
    let args = [
        "--json",
        "request",
        "new",
        "sign",
        "vault-1",
        "--expires",
        "2s",
    ];
    let o = expect(
        &c.s,
        "bob",
        &[&args[..], &["--digest", &hex(&d)]].concat(),
        0,
    );
    let id = json_of(&o)["id"].as_str().unwrap().to_string();
    let o = c.approve(&id, "ann");
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    // cyd signs in time, but submits after the request expired.
    let bytes = c.export(&id, false);
    let sig = c.sign("cyd", &bytes);
    std::thread::sleep(std::time::Duration::from_millis(3_100));
    let o = c.submit(&id, "cyd", &sig);
    assert_eq!(code(&o), 3, "{}", output_text(&o));
    assert!(output_text(&o).contains("expired"), "{}", output_text(&o));
    assert_eq!(c.request(&id)["status"], "expired");
    let p = c.s.load();
    let (session, key) = bob_session(&p);
    assert_eq!(
        rv_of(session.sign(&Mechanism::Ecdsa, key, &d)),
        RvError::FunctionRejected
    );
}

/// On PostgreSQL, where uses no rule governs take the lane path: a host
/// that signed freely is bound by a sign rule another process sets at its
/// very next signature, and two processes racing for one approved digest
/// get one signature.
#[test]
fn on_postgresql_a_new_sign_rule_binds_a_running_host_and_an_approval_is_used_once() {
    let _t = turn();
    let url = pg_database(&pg_admin_url(), "p11derive_approvals_pg");
    let c = Cast::on(Some(&url));
    let p = c.s.load();
    let (session, key) = bob_session(&p);
    for i in 0..3u8 {
        session
            .sign(&Mechanism::Ecdsa, key, &[i; 32])
            .expect("no rule yet: signed");
    }
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
    let d = [0x61u8; 32];
    assert_eq!(
        rv_of(session.sign(&Mechanism::Ecdsa, key, &d)),
        RvError::FunctionRejected
    );
    drop(session);
    drop(p);
    // The refusal proposed d; approve that request, then race for it.
    let listed = json_of(&expect(&c.s, "dave", &["--json", "request", "list"], 0));
    let id = listed[0]["id"].as_str().unwrap().to_string();
    assert_eq!(listed[0]["params"]["digest"], hex(&d));
    c.approved_by(&id, &["ann", "ben"]);
    std::env::set_var("P11DERIVE_CONF", &c.s.config);
    let outs: Vec<PathBuf> = (0..2)
        .map(|i| c.s.dir.join(format!("pg-child-{i}.out")))
        .collect();
    let pids: Vec<_> = outs
        .iter()
        .map(|out| {
            fork_child(out, || {
                let (_ctx, session) = child_session_as(BOB)?;
                let key = private_key(&session, "vault-1");
                Ok(match session.sign(&Mechanism::Ecdsa, key, &d) {
                    Ok(sig) => format!("signed {}", hex(&sig)),
                    Err(e) => format!("refused {:?}", rv_code(&e)),
                })
            })
        })
        .collect();
    let got: Vec<String> = pids
        .into_iter()
        .zip(&outs)
        .map(|(pid, out)| reap(pid, out, "signer"))
        .collect();
    let signed = got.iter().filter(|g| g.starts_with("signed ")).count();
    assert_eq!(signed, 1, "{got:?}");
    assert_eq!(c.request(&id)["status"], "executed");
    assert_eq!(code(&c.audit_verify()), 0);
}
