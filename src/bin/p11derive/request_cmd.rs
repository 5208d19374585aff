//! `p11derive request …` (users mode): requests waiting for approvals — list, show, export the bytes to sign, approve, reject, sign with a PEM key, execute, cancel — and signature proposals (`request new sign`).

use std::path::Path;

use p11derive::access::{self, parse_mechanism, Action, UseKind};
use p11derive::approvals::keys::{read_signature, sign_with_pem, ApproverKey};
use p11derive::approvals::quorum::Rule;
use p11derive::approvals::request::{on_assets, RequestDoc, Verdict};
use p11derive::asset::Transition;
use p11derive::audit::Event;
use p11derive::store::{
    hex, unix_now, ApproverRow, Execute, PolicyRow, QuorumRow, RequestRow, Store, StoreError,
    UserRow,
};
use p11derive::types::AssetId;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::approvals_cmd::{expiry, new_request, p, print_bytes, rule_of, unhex, Ctx};
use crate::args::Cli;
use crate::args_approvals::RequestCommand;
use crate::common::{failed, print_json, Failure};
use crate::users::{acting, Acting, Want};

pub fn request(cli: &Cli, c: &RequestCommand) -> Result<(), Failure> {
    match c {
        RequestCommand::New {
            operation,
            asset,
            digest,
            message,
            mechanism,
            expires,
        } => new_sign(
            cli,
            operation,
            asset,
            digest.as_deref(),
            message.as_deref(),
            mechanism.as_deref(),
            expires.as_deref(),
        ),
        RequestCommand::List { all } => acting(cli, Want::read_public(), false, |a| {
            let now = unix_now();
            let rows: Vec<RequestRow> = a
                .store
                .requests()?
                .into_iter()
                .filter(|r| *all || r.status(now) == "pending")
                .collect();
            if cli.json {
                let mut all = Vec::new();
                for r in &rows {
                    all.push(request_json(a.store, r, now)?);
                }
                return print_json(&serde_json::Value::Array(all));
            }
            if rows.is_empty() {
                outln!("no {}requests", if *all { "" } else { "pending " });
            }
            for r in &rows {
                let approvals = approvals_of(r).len();
                outln!(
                    "{}  {:<8} {:<9} by {:<12} {} approval(s)  expires {}  {}",
                    r.id,
                    r.operation,
                    r.status(now),
                    r.requested_by,
                    approvals,
                    access::format_time(r.expires_at),
                    subject_text(r)
                );
            }
            Ok(())
        }),
        RequestCommand::Show { id } => acting(cli, Want::read_public(), false, |a| {
            let r = find_request(a.store, id)?;
            let now = unix_now();
            if cli.json {
                return print_json(&request_json(a.store, &r, now)?);
            }
            let doc = r.doc().map_err(failed)?;
            outln!("{}", doc.summary());
            outln!(
                "status: {}{}",
                r.status(now),
                if r.outcome.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", r.outcome)
                }
            );
            for v in r.verdicts() {
                outln!(
                    "  {} by {} (key {}) at {}",
                    v.given.verdict.name(),
                    v.given.approver,
                    &v.given.fingerprint[..16.min(v.given.fingerprint.len())],
                    access::format_time(v.time)
                );
            }
            if r.status(now) == "pending" {
                let unmet = a.store.unmet(&r)?;
                if unmet.is_empty() {
                    outln!("approved: every quorum rule is met");
                } else {
                    outln!("still needed: {}", unmet.join("; "));
                }
            }
            Ok(())
        }),
        RequestCommand::Export { id, reject, out } => {
            acting(cli, Want::read_public(), false, |a| {
                let r = find_request(a.store, id)?;
                let doc = r.doc().map_err(failed)?;
                let verdict = if *reject {
                    Verdict::Reject
                } else {
                    Verdict::Approve
                };
                let bytes = doc.verdict_bytes(verdict);
                match out {
                    Some(path) => {
                        std::fs::write(path, &bytes)
                            .map_err(|e| failed(format!("cannot write {}: {e}", path.display())))?;
                        outln!("{}", doc.summary());
                        outln!(
                            "the {} bytes ({} bytes) are in {}: sign them, e.g. `openssl pkeyutl \
                             -sign -rawin -inkey KEY.pem -in {} -out SIG`",
                            verdict.name(),
                            bytes.len(),
                            path.display(),
                            path.display()
                        );
                    }
                    None => {
                        eprintln!("{}", doc.summary());
                        use std::io::Write;
                        let mut o = std::io::stdout().lock();
                        o.write_all(&bytes)
                            .and_then(|()| o.flush())
                            .map_err(failed)?;
                    }
                }
                Ok(())
            })
        }
        RequestCommand::Approve {
            id,
            approver,
            signature,
        } => verdict_cmd(cli, id, approver, Verdict::Approve, &read_sig(signature)?),
        RequestCommand::Reject {
            id,
            approver,
            signature,
        } => verdict_cmd(cli, id, approver, Verdict::Reject, &read_sig(signature)?),
        RequestCommand::Sign {
            id,
            key,
            reject,
            bytes,
            out,
            approver,
        } => {
            let verdict = if *reject {
                Verdict::Reject
            } else {
                Verdict::Approve
            };
            let pem = read_private_key(key)?;
            if let Some(bytes) = bytes {
                // Offline: the exported bytes, checked to be this request's
                // verdict bytes, signed; nothing else is touched.
                let b = std::fs::read(bytes)
                    .map_err(|e| failed(format!("cannot read {}: {e}", bytes.display())))?;
                let line = format!("verdict: {}\n", verdict.name());
                let doc = b
                    .strip_suffix(line.as_bytes())
                    .ok_or_else(|| {
                        failed(format!(
                            "{} does not end with {line:?}: export the bytes with `p11derive \
                             request export {id}{}`",
                            bytes.display(),
                            if *reject { " --reject" } else { "" }
                        ))
                    })
                    .and_then(|d| {
                        RequestDoc::parse(d)
                            .map_err(|m| failed(format!("{}: {m}", bytes.display())))
                    })?;
                if doc.id != *id {
                    return Err(failed(format!(
                        "{} holds request {}, not {id}",
                        bytes.display(),
                        doc.id
                    )));
                }
                let (sig, public) = sign_with_pem(&pem, &b)
                    .map_err(|m| failed(format!("{}: {m}", key.display())))?;
                let out = out
                    .as_ref()
                    .ok_or_else(|| Failure::Usage("--bytes needs --out".into()))?;
                std::fs::write(out, &sig)
                    .map_err(|e| failed(format!("cannot write {}: {e}", out.display())))?;
                outln!("{}", doc.summary());
                outln!(
                    "{} signed with key {} into {}",
                    verdict.name(),
                    public.fingerprint(),
                    out.display()
                );
                return Ok(());
            }
            let approver = approver.as_deref().ok_or_else(|| {
                Failure::Usage(
                    "say whose key it is with --approver NAME (or sign offline with --bytes FILE \
                     --out SIG)"
                        .into(),
                )
            })?;
            let doc_bytes = acting(cli, Want::read_public(), false, |a| {
                let r = find_request(a.store, id)?;
                Ok(r.doc().map_err(failed)?.verdict_bytes(verdict))
            })?;
            let (sig, _) = sign_with_pem(&pem, &doc_bytes)
                .map_err(|m| failed(format!("{}: {m}", key.display())))?;
            verdict_cmd(cli, id, approver, verdict, &sig)
        }
        RequestCommand::Execute { id } => execute(cli, id),
        RequestCommand::Cancel { id, yes } => {
            if !yes {
                return Err(Failure::Usage(format!(
                    "cancelling request {id} ends it for good; confirm with --yes"
                )));
            }
            acting(cli, Want::read_public(), true, |a| {
                let r = find_request(a.store, id)?;
                if r.requested_by != a.caller.name
                    && a.caller.permits(Action::ManageUsers, None).is_err()
                {
                    return Err(Failure::Refused(format!(
                        "request {id} is {:?}'s: only its requester or an admin may cancel it",
                        r.requested_by
                    )));
                }
                let r = a.store.cancel_request(
                    a.ak,
                    id,
                    &format!("cancelled by {}", a.caller.name),
                    unix_now(),
                    a.record(Event::Request),
                )?;
                outln!("request {} cancelled", r.id);
                Ok(())
            })
        }
    }
}

fn read_sig(path: &Path) -> Result<Vec<u8>, Failure> {
    let b = std::fs::read(path)
        .map_err(|e| failed(format!("cannot read the signature {}: {e}", path.display())))?;
    read_signature(&b).map_err(|m| Failure::Usage(format!("{}: {m}", path.display())))
}

fn read_private_key(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| {
        failed(format!(
            "cannot read the private key {}: {e}",
            path.display()
        ))
    })
}

fn find_request(store: &Store, id: &str) -> Result<RequestRow, Failure> {
    store.request(&id.to_ascii_lowercase())?.ok_or_else(|| {
        Failure::NotFound(format!(
            "no request {id:?} (see `p11derive request list --all`)"
        ))
    })
}

fn approvals_of(r: &RequestRow) -> Vec<String> {
    r.verdicts()
        .into_iter()
        .filter(|v| v.given.verdict == Verdict::Approve)
        .map(|v| v.given.approver)
        .collect()
}

fn subject_text(r: &RequestRow) -> String {
    r.doc()
        .ok()
        .map(|d| {
            d.params
                .iter()
                .filter(|(k, _)| {
                    matches!(
                        k.as_str(),
                        "asset"
                            | "user"
                            | "pattern"
                            | "approver"
                            | "rule-operation"
                            | "change"
                            | "below"
                    )
                })
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn request_json(store: &Store, r: &RequestRow, now: i64) -> Result<serde_json::Value, Failure> {
    let doc = r.doc().map_err(failed)?;
    let params: serde_json::Map<String, serde_json::Value> = doc
        .params
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into()))
        .collect();
    let needs = if r.status(now) == "pending" {
        store.unmet(r)?
    } else {
        Vec::new()
    };
    let verdicts: Vec<serde_json::Value> = r
        .verdicts()
        .iter()
        .map(|v| {
            json!({
                "verdict": v.given.verdict.name(),
                "approver": v.given.approver,
                "fingerprint": v.given.fingerprint,
                "time": access::format_time(v.time),
            })
        })
        .collect();
    Ok(json!({
        "id": r.id,
        "operation": r.operation,
        "params": params,
        "status": r.status(now),
        "requested_by": r.requested_by,
        "created_at": access::format_time(r.created_at),
        "expires_at": access::format_time(r.expires_at),
        "approvals": approvals_of(r).len(),
        "verdicts": verdicts,
        "needs": needs,
        "outcome": r.outcome,
    }))
}

/// `request new sign ASSET …`: a proposal approvers then sign.
#[allow(clippy::too_many_arguments)]
fn new_sign(
    cli: &Cli,
    operation: &str,
    asset: &str,
    digest: Option<&str>,
    message: Option<&Path>,
    mechanism: Option<&str>,
    expires: Option<&str>,
) -> Result<(), Failure> {
    if operation != "sign" {
        return Err(Failure::Usage(format!(
            "`request new` makes signature proposals only (`request new sign ASSET --digest \
             HEX`); for {operation:?} run its own command (e.g. `p11derive asset {operation} \
             NAME`): when a quorum rule governs it, it records the request itself"
        )));
    }
    AssetId::new(asset).map_err(Failure::Usage)?;
    let mech = match mechanism {
        Some(m) => parse_mechanism(m).map_err(Failure::Usage)?,
        None if message.is_some() => p11derive::ck::CKM_ECDSA_SHA256,
        None => p11derive::ck::CKM_ECDSA,
    };
    let digest = match (digest, message) {
        (Some(h), None) => unhex(h).ok_or_else(|| {
            Failure::Usage(format!(
                "--digest {h:?} is not hex (e.g. the 64 hex digits of a SHA-256)"
            ))
        })?,
        (None, Some(path)) => {
            if p11derive::mechanisms::signs_caller_digest(mech) {
                return Err(Failure::Usage(format!(
                    "{} signs a digest the client computed: give --digest HEX, or \
                     --message FILE with a mechanism that hashes it (e.g. --mechanism \
                     ECDSA-SHA256)",
                    p11derive::error::mech_name(mech)
                )));
            }
            let m = std::fs::read(path)
                .map_err(|e| failed(format!("cannot read {}: {e}", path.display())))?;
            Sha256::digest(&m).to_vec()
        }
        _ => {
            return Err(Failure::Usage(
                "give the digest to approve: --digest HEX, or --message FILE".into(),
            ))
        }
    };
    if digest.is_empty() || digest.len() > 64 {
        return Err(Failure::Usage(format!(
            "a digest of {} bytes: give the hash the client signs (e.g. 32 bytes)",
            digest.len()
        )));
    }
    if mech != p11derive::ck::CKM_ECDSA && digest.len() != 32 {
        return Err(Failure::Usage(format!(
            "for {} the digest approved is the SHA-256 of the message (32 bytes), not {} bytes",
            p11derive::error::mech_name(mech),
            digest.len()
        )));
    }
    acting(
        cli,
        Want::on(Action::Use(UseKind::Sign), asset),
        true,
        |a| {
            let lifetime = expiry(a.config, expires)?;
            let cx = Ctx::of(cli, a);
            // The version that signs now: an approval does not carry over to
            // another key after a rotation.
            let current = a
                .store
                .asset_by_name(&AssetId::new(asset).map_err(Failure::Usage)?)?
                .ok_or_else(|| Failure::NotFound(format!("no asset {asset:?}")))?
                .current;
            let params = vec![
                p("asset", asset),
                p("version", current),
                p("mechanism", p11derive::error::mech_name(mech)),
                p("digest", hex(&digest)),
            ];
            let row = new_request(&cx, "sign", params, lifetime)?;
            let needs: Vec<String> = a
                .store
                .rules_for("sign", Some(asset))?
                .iter()
                .map(Rule::describe)
                .collect();
            if cli.json {
                return print_json(&request_json(a.store, &row, unix_now())?);
            }
            let doc = row.doc().map_err(failed)?;
            outln!("{}", doc.summary());
            if needs.is_empty() {
                outln!(
                    "note: no quorum rule or policy asks for approvals of {asset:?} signatures now"
                );
            } else {
                outln!("needs: {}", needs.join("; "));
            }
            print_bytes(&doc);
            Ok(())
        },
    )
}

/// Records a verdict (verified in the store's transaction), then, with
/// `[approvals] execute = "on-quorum"`, runs an approved request at once.
fn verdict_cmd(
    cli: &Cli,
    id: &str,
    approver: &str,
    verdict: Verdict,
    sig: &[u8],
) -> Result<(), Failure> {
    let id = id.to_ascii_lowercase();
    let ready = acting(cli, Want::read_public(), true, |a| {
        let r = a.store.add_verdict(
            a.ak,
            &id,
            approver,
            verdict,
            sig,
            unix_now(),
            a.record(Event::Approval),
        )?;
        let unmet = if r.state == "pending" {
            a.store.unmet(&r)?
        } else {
            Vec::new()
        };
        if cli.json {
            print_json(&request_json(a.store, &r, unix_now())?)?;
        } else {
            outln!(
                "{} by {approver:?} recorded on request {id} ({})",
                verdict.name(),
                r.operation
            );
            match (r.state.as_str(), unmet.is_empty()) {
                ("rejected", _) => outln!("request {id} is rejected: it will never run"),
                (_, true) if r.operation == "sign" => {
                    outln!("approved: the next signature of exactly this digest is released")
                }
                (_, true) if r.operation == "recover" => outln!(
                    "approved: the root's recovery runs with its shares: `p11derive root recover \
                     --request {id} --share FILE ...` (not before its not-before time)"
                ),
                (_, true) => outln!("approved: run `p11derive request execute {id}`"),
                (_, false) => outln!("still needed: {}", unmet.join("; ")),
            }
        }
        Ok(r.state == "pending"
            && unmet.is_empty()
            && !matches!(r.operation.as_str(), "sign" | "recover"))
    })?;
    let config = crate::common::load_config(cli)?;
    if ready && config.approvals.execute == p11derive::config::ExecuteWhen::OnQuorum {
        return execute(cli, &id);
    }
    Ok(())
}

/// `request execute ID`: the operation the request states, run in one
/// transaction with its records once every rule is met.
fn execute(cli: &Cli, id: &str) -> Result<(), Failure> {
    let id = id.to_ascii_lowercase();
    // The user executing must be allowed the operation itself.
    let (row, doc) = {
        let config = crate::common::load_config(cli)?;
        let store = crate::common::open_store(&config)?;
        let r = find_request(&store, &id)?;
        let d = r.doc().map_err(failed)?;
        (r, d)
    };
    if doc.operation == "recover" {
        return Err(Failure::Refused(format!(
            "request {id} recovers the root: it runs with the backup shares, not here: \
             `p11derive root recover --request {id} --share FILE ...` (docs/backup.md)"
        )));
    }
    let asset = doc.param("asset").map(str::to_string);
    let want = match doc.operation.as_str() {
        op if on_assets(op) => Want::on(Action::Lifecycle, asset.as_deref().unwrap_or("")),
        "policy" | "quorum" => Want::to(Action::ManagePolicy),
        _ => Want::to(Action::ManageUsers),
    };
    let _ = row;
    acting(cli, want, true, |a| {
        let op = prepare(a, &doc)?;
        let r = a
            .store
            .execute_request(a.ak, &id, op, unix_now(), a.record(Event::Request))
            .map_err(|e| match e {
                StoreError::Refused(m) => Failure::Refused(m),
                e => e.into(),
            })?;
        if cli.json {
            return print_json(&request_json(a.store, &r, unix_now())?);
        }
        outln!("request {id} executed: {}", r.outcome);
        Ok(())
    })
}

fn param<'d>(doc: &'d RequestDoc, k: &str) -> Result<&'d str, Failure> {
    doc.param(k)
        .ok_or_else(|| failed(format!("request {}: no {k:?} parameter", doc.id)))
}

/// The operation a request's bytes state, made ready to run (a rotation's
/// new public key derived through the HSM first).
fn prepare(a: &Acting<'_>, doc: &RequestDoc) -> Result<Execute, Failure> {
    let bytes = |k: &str| -> Result<Vec<u8>, Failure> {
        unhex(param(doc, k)?).ok_or_else(|| {
            failed(format!(
                "request {}: its `{k}` is not hex; cancel it",
                doc.id
            ))
        })
    };
    Ok(match doc.operation.as_str() {
        op @ ("rotate" | "finish" | "trim" | "suspend" | "resume" | "retire") => {
            let name = AssetId::new(param(doc, "asset")?).map_err(failed)?;
            let t = match op {
                "rotate" => Transition::Rotate {
                    grace: param(doc, "grace")? == "yes",
                },
                "finish" => Transition::Finish,
                "trim" => Transition::Trim(param(doc, "below")?.parse().map_err(|_| {
                    failed(format!(
                        "request {}: its `below` is not a version number; cancel it",
                        doc.id
                    ))
                })?),
                "suspend" => Transition::Suspend,
                "resume" => Transition::Resume,
                _ => Transition::Retire,
            };
            let next = match t {
                Transition::Rotate { .. } => Some(
                    p11derive::lifecycle::next_version_key(a.backend, a.store, &name)
                        .map_err(Failure::from)?,
                ),
                _ => None,
            };
            Execute::Transition { name, t, next }
        }
        "user" => {
            let name = param(doc, "user")?.to_string();
            let created_at = a.store.user(&name)?.map_or_else(unix_now, |u| u.created_at);
            Execute::User {
                row: UserRow {
                    name,
                    roles: param(doc, "roles")?.into(),
                    patterns: param(doc, "patterns")?.into(),
                    salt: bytes("salt")?,
                    verifier: bytes("verifier")?,
                    state: param(doc, "state")?.into(),
                    created_at,
                },
                what: param(doc, "change")?.into(),
                clear_failures: param(doc, "clear-failures")? == "yes",
            }
        }
        "policy" => {
            let pattern = param(doc, "pattern")?.to_string();
            let created_at = a
                .store
                .policies()?
                .into_iter()
                .find(|p| p.pattern == pattern)
                .map_or_else(unix_now, |p| p.created_at);
            Execute::Policy {
                row: PolicyRow {
                    pattern,
                    settings: param(doc, "settings")?.into(),
                    state: param(doc, "state")?.into(),
                    created_at,
                },
                what: param(doc, "change")?.into(),
            }
        }
        "approver" => {
            let name = param(doc, "approver")?.to_string();
            let created_at = a
                .store
                .approver(&name)?
                .map_or_else(unix_now, |r| r.created_at);
            let key = bytes("key")?;
            ApproverKey::from_der(&key).map_err(failed)?;
            Execute::Approver {
                row: ApproverRow {
                    name,
                    key_kind: param(doc, "kind")?.into(),
                    public_key: key,
                    groups: param(doc, "groups")?.into(),
                    state: param(doc, "state")?.into(),
                    created_at,
                },
                what: param(doc, "change")?.into(),
            }
        }
        "quorum" => {
            let rule = rule_of(
                param(doc, "rule-operation")?,
                Some(param(doc, "pattern")?),
                param(doc, "approvals")?.parse().map_err(|_| {
                    failed(format!(
                        "request {}: its `approvals` is not a number; cancel it",
                        doc.id
                    ))
                })?,
                Some(param(doc, "group")?).filter(|g| !g.is_empty()),
            )?;
            let created_at = a
                .store
                .quorums()?
                .into_iter()
                .find(|q| q.name == rule.key())
                .map_or_else(unix_now, |q| q.created_at);
            Execute::Quorum {
                row: QuorumRow {
                    name: rule.key(),
                    operation: rule.operation.clone(),
                    pattern: rule.pattern.as_str().into(),
                    approvals: rule.approvals,
                    group: rule.group.clone(),
                    state: param(doc, "state")?.into(),
                    created_at,
                },
                what: param(doc, "change")?.into(),
            }
        }
        "sign" => {
            return Err(Failure::Refused(format!(
                "request {} approves a signature: C_Sign of exactly that digest uses it; there is \
                 nothing to execute",
                doc.id
            )))
        }
        op => {
            return Err(Failure::Refused(format!(
                "request {}: operation {op:?} is not executed by this version of p11derive",
                doc.id
            )))
        }
    })
}
