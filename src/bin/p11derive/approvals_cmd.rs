//! `p11derive approver | quorum | request …` (users mode): approvers and their keys, quorum rules, and requests that wait for k approvals before their operation runs.

use p11derive::access::{self, parse_mechanism, Action, Pattern};
use p11derive::approvals::keys::ApproverKey;
use p11derive::approvals::quorum::{self, parse_groups, Rule};
use p11derive::approvals::request::{RequestDoc, Verdict};
use p11derive::asset::Transition;
use p11derive::audit::{Event, Record};
use p11derive::derive::Secret32;
use p11derive::store::{
    approved_digest_lookup, hex, unix_now, ApproverRow, PolicyRow, QuorumRow, RequestRow, Store,
    UserRow,
};
use serde_json::json;

use crate::args::Cli;
use crate::args_approvals::{ApproverCommand, QuorumCommand};
use crate::common::{failed, print_json, Failure};
use crate::users::{acting, Acting, Want};

/// What a gated command needs to record a request in its place.
pub struct Ctx<'a> {
    pub cli: &'a Cli,
    pub config: &'a p11derive::config::Config,
    pub store: &'a Store,
    pub backend: &'a p11derive::backend::Backend,
    pub ak: &'a Secret32,
    pub actor: &'a str,
}

impl<'a> Ctx<'a> {
    pub fn of(cli: &'a Cli, a: &'a Acting<'a>) -> Ctx<'a> {
        Ctx {
            cli,
            config: a.config,
            store: a.store,
            backend: a.backend,
            ak: a.ak,
            actor: &a.caller.name,
        }
    }

    fn record(&self, event: Event) -> Record {
        Record::new(event, p11derive::ck::CKR_OK).actor(Some(self.actor))
    }
}

/// An operation a command is about to perform, as a request states it.
pub struct Plan {
    pub operation: &'static str,
    /// The asset, or a policy's pattern (`None`: the whole store).
    pub subject: Option<String>,
    pub params: Vec<(String, String)>,
}

pub(crate) fn p(k: &str, v: impl ToString) -> (String, String) {
    (k.to_string(), v.to_string())
}

/// Lets the operation `plan` run now when no quorum rule governs it (`Ok`);
/// otherwise records a request for it, prints its id and bytes, and ends the
/// command with exit 5.
pub fn gate(cx: &Ctx<'_>, plan: Plan) -> Result<(), Failure> {
    let rules = cx
        .store
        .rules_for(plan.operation, plan.subject.as_deref())?;
    if rules.is_empty() {
        return Ok(());
    }
    let expires = expiry(cx.config, None)?;
    let row = new_request(cx, plan.operation, plan.params, expires)?;
    let needs: Vec<String> = rules.iter().map(Rule::describe).collect();
    show_new_request(cx.cli, &row, &needs, json!({}))?;
    Err(Failure::Waiting(format!(
        "{} needs approvals ({}): request {} recorded; approvers sign it (`p11derive request \
         export {}`, then `request approve`), then `p11derive request execute {}`",
        plan.operation,
        needs.join("; "),
        row.id,
        row.id,
        row.id
    )))
}

/// Shows a request just recorded: what it asks, what it needs, the bytes
/// approvers sign (`--json`: with the fields of `more`).
pub(crate) fn show_new_request(
    cli: &Cli,
    row: &RequestRow,
    needs: &[String],
    more: serde_json::Value,
) -> Result<(), Failure> {
    let doc = row.doc().map_err(failed)?;
    if cli.json {
        let mut v = json!({
            "request": row.id,
            "operation": row.operation,
            "status": "pending",
            "needs": needs,
            "expires_at": access::format_time(row.expires_at),
            "bytes": String::from_utf8_lossy(&row.body),
        });
        if let (Some(o), serde_json::Value::Object(m)) = (v.as_object_mut(), more) {
            o.extend(m);
        }
        return print_json(&v);
    }
    outln!("{}", doc.summary());
    outln!("needs: {}", needs.join("; "));
    print_bytes(&doc);
    Ok(())
}

/// Prints the bytes approvers sign to approve `doc`, marked off.
pub(crate) fn print_bytes(doc: &RequestDoc) {
    outln!(
        "--- the bytes approvers sign (`p11derive request export {}`) ---",
        doc.id
    );
    outln!(
        "{}",
        String::from_utf8_lossy(&doc.verdict_bytes(Verdict::Approve)).trim_end()
    );
}

/// Records a new pending request for `operation` with `params`.
pub(crate) fn new_request(
    cx: &Ctx<'_>,
    operation: &str,
    params: Vec<(String, String)>,
    lifetime: i64,
) -> Result<RequestRow, Failure> {
    let mut id = [0u8; 16];
    cx.backend.random(&mut id).map_err(failed)?;
    let store_id = cx
        .store
        .store_id()?
        .ok_or_else(|| failed("the store has no first record (run `p11derive init`)"))?;
    let now = unix_now();
    let doc = RequestDoc {
        store: hex(&store_id),
        id: hex(&id),
        operation: operation.to_string(),
        params,
        requested_by: cx.actor.to_string(),
        requested_at: now,
        expires_at: now + lifetime,
    };
    let lookup = if operation == "sign" {
        let asset = doc.param("asset").unwrap_or_default();
        let mech = doc
            .param("mechanism")
            .and_then(|m| parse_mechanism(m).ok())
            .unwrap_or(0);
        let digest = doc.param("digest").and_then(unhex).unwrap_or_default();
        approved_digest_lookup(asset, mech, &digest)
    } else {
        p11derive::store::subject_of(&doc).unwrap_or_default()
    };
    let row = RequestRow {
        id: doc.id.clone(),
        operation: operation.to_string(),
        lookup,
        body: doc.canonical(),
        requested_by: cx.actor.to_string(),
        created_at: now,
        expires_at: doc.expires_at,
        state: "pending".into(),
        approvals: String::new(),
        outcome: String::new(),
    };
    cx.store
        .create_request(cx.ak, &row, cx.record(Event::Request))?;
    Ok(row)
}

/// A request's lifetime in seconds: `--expires`, else `[approvals] expires`.
pub(crate) fn expiry(
    config: &p11derive::config::Config,
    given: Option<&str>,
) -> Result<i64, Failure> {
    match given {
        Some(g) => p11derive::approvals::parse_duration(g).map_err(Failure::Usage),
        None => p11derive::approvals::parse_duration(&config.approvals.expires).map_err(|m| {
            failed(format!(
                "config file {}: [approvals] expires: {m}",
                config.source.display()
            ))
        }),
    }
}

pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// The plan of a lifecycle transition (`basis`: the asset's latest change,
/// so an asset changed since is not changed again on stale approvals).
pub fn transition_plan(store: &Store, asset: &str, t: Transition) -> Result<Plan, Failure> {
    let mut params = vec![p("asset", asset)];
    match t {
        Transition::Rotate { grace } => params.push(p("grace", if grace { "yes" } else { "no" })),
        Transition::Trim(n) => params.push(p("below", n)),
        _ => {}
    }
    params.push(p("basis", store.change_of("", asset)?));
    Ok(Plan {
        operation: t.operation(),
        subject: Some(asset.to_string()),
        params,
    })
}

/// The plan of a user's change (`row`: the user after it).
pub fn user_plan(store: &Store, row: &UserRow, what: &str, clear: bool) -> Result<Plan, Failure> {
    let basis = store.change_of("user:", &row.name)?;
    Ok(Plan {
        operation: "user",
        subject: None,
        params: vec![
            p("user", &row.name),
            p("change", what),
            p("roles", &row.roles),
            p("patterns", &row.patterns),
            p("state", &row.state),
            p("salt", hex(&row.salt)),
            p("verifier", hex(&row.verifier)),
            p("clear-failures", if clear { "yes" } else { "no" }),
            p("basis", basis),
        ],
    })
}

/// The plan of a policy's change.
pub fn policy_plan(store: &Store, row: &PolicyRow, what: &str) -> Result<Plan, Failure> {
    let basis = store.change_of("policy:", &row.pattern)?;
    Ok(Plan {
        operation: "policy",
        subject: Some(row.pattern.clone()),
        params: vec![
            p("pattern", &row.pattern),
            p("change", what),
            p("settings", &row.settings),
            p("state", &row.state),
            p("basis", basis),
        ],
    })
}

fn approver_plan(store: &Store, row: &ApproverRow, what: &str) -> Result<Plan, Failure> {
    let basis = store.change_of("approver:", &row.name)?;
    Ok(Plan {
        operation: "approver",
        subject: None,
        params: vec![
            p("approver", &row.name),
            p("change", what),
            p("kind", &row.key_kind),
            p("fingerprint", row.fingerprint()),
            p("key", hex(&row.public_key)),
            p("groups", &row.groups),
            p("state", &row.state),
            p("basis", basis),
        ],
    })
}

fn quorum_plan(store: &Store, row: &QuorumRow, what: &str) -> Result<Plan, Failure> {
    let basis = store.change_of("quorum:", &row.name)?;
    Ok(Plan {
        operation: "quorum",
        subject: None,
        params: vec![
            p("rule-operation", &row.operation),
            p("pattern", &row.pattern),
            p("change", what),
            p("approvals", row.approvals),
            p("group", &row.group),
            p("state", &row.state),
            p("basis", basis),
        ],
    })
}

pub fn approver(cli: &Cli, c: &ApproverCommand) -> Result<(), Failure> {
    match c {
        ApproverCommand::Add { name, key, groups } => {
            p11derive::accounts::check_name(name)
                .map_err(|m| Failure::Usage(m.replace("user name", "approver name")))?;
            let text = std::fs::read_to_string(key).map_err(|e| {
                failed(format!("cannot read the public key {}: {e}", key.display()))
            })?;
            let k = ApproverKey::from_pem(&text)
                .map_err(|m| Failure::Usage(format!("{}: {m}", key.display())))?;
            let groups = parse_groups(groups.as_deref().unwrap_or("")).map_err(Failure::Usage)?;
            acting(cli, Want::to(Action::ManageUsers), true, |a| {
                let old = a.store.approver(name)?;
                if let Some(o) = &old {
                    return Err(Failure::Refused(if o.state == "removed" {
                        format!(
                            "approver {name:?} was removed; a name is never given to another \
                             key holder (the audit log names it): choose another name"
                        )
                    } else {
                        format!(
                            "approver {name:?} is registered already (key {}); remove it first \
                             to register another key",
                            &o.fingerprint()[..16]
                        )
                    }));
                }
                if let Some(o) = a
                    .store
                    .approvers()?
                    .into_iter()
                    .find(|o| o.state == "active" && o.public_key == k.der())
                {
                    return Err(Failure::Refused(format!(
                        "that key is approver {:?}'s already: one key, one approver (else one \
                         person's signature would count twice)",
                        o.name
                    )));
                }
                let row = ApproverRow {
                    name: name.clone(),
                    key_kind: k.kind().name().into(),
                    public_key: k.der().to_vec(),
                    groups: groups.join(","),
                    state: "active".into(),
                    created_at: unix_now(),
                };
                let cx = Ctx::of(cli, a);
                gate(&cx, approver_plan(a.store, &row, "approver add")?)?;
                a.store
                    .put_approver(a.ak, &row, "approver add", a.record(Event::Approver))?;
                approver_report(cli, &row, "registered")
            })
        }
        ApproverCommand::List => {
            let want = Want::to(Action::ManageUsers).or(Action::ReadAudit);
            acting(cli, want, false, |a| {
                let rows: Vec<ApproverRow> = a.store.approvers()?;
                if cli.json {
                    let all: Vec<serde_json::Value> = rows.iter().map(approver_json).collect();
                    return print_json(&serde_json::Value::Array(all));
                }
                if rows.is_empty() {
                    outln!("no approvers: register one with `p11derive approver add NAME --key PUB.pem`");
                }
                for r in &rows {
                    outln!(
                        "{:<16} {:<8} {}  groups {}  {}",
                        r.name,
                        r.key_kind,
                        r.fingerprint(),
                        if r.groups.is_empty() { "-" } else { &r.groups },
                        r.state
                    );
                }
                Ok(())
            })
        }
        ApproverCommand::Remove { name, yes } => {
            if !yes {
                return Err(Failure::Usage(format!(
                    "removing approver {name:?} ends its approvals for good (pending requests \
                     lose them); confirm with --yes"
                )));
            }
            acting(cli, Want::to(Action::ManageUsers), true, |a| {
                let mut row = a
                    .store
                    .approver(name)?
                    .filter(|r| r.state == "active")
                    .ok_or_else(|| Failure::NotFound(format!("no approver {name:?}")))?;
                row.state = "removed".into();
                // A rule the remaining approvers cannot meet would block its
                // operation for good (including changing the rules).
                let rest: Vec<_> = a
                    .store
                    .approvers()?
                    .iter()
                    .filter(|r| r.name != *name)
                    .map(ApproverRow::counted)
                    .collect();
                for q in a.store.quorums()?.iter().filter(|q| q.state == "set") {
                    let rule = q.rule().map_err(failed)?;
                    if !quorum::satisfiable(&rule, &rest) {
                        return Err(Failure::Refused(format!(
                            "removing {name:?} would leave quorum rule {} unmeetable (too few \
                             approvers): register another approver first, or lower the rule",
                            rule.describe()
                        )));
                    }
                }
                let cx = Ctx::of(cli, a);
                gate(&cx, approver_plan(a.store, &row, "approver remove")?)?;
                a.store
                    .put_approver(a.ak, &row, "approver remove", a.record(Event::Approver))?;
                approver_report(cli, &row, "removed")
            })
        }
    }
}

fn approver_json(r: &ApproverRow) -> serde_json::Value {
    json!({
        "name": r.name,
        "kind": r.key_kind,
        "fingerprint": r.fingerprint(),
        "groups": parse_groups(&r.groups).unwrap_or_default(),
        "state": r.state,
        "created_at": access::format_time(r.created_at),
    })
}

fn approver_report(cli: &Cli, r: &ApproverRow, done: &str) -> Result<(), Failure> {
    if cli.json {
        return print_json(&approver_json(r));
    }
    outln!(
        "approver {:?} {done} ({} key {})",
        r.name,
        r.key_kind,
        r.fingerprint()
    );
    Ok(())
}

/// Refuses a rule (or a policy's `approvals`) the active approvers could
/// never meet: its operation would be blocked for good.
pub fn check_meetable(store: &Store, op: &str, pattern: &Pattern, k: u32) -> Result<(), Failure> {
    let rule = Rule::new(op, pattern.clone(), k, "").map_err(Failure::Usage)?;
    let approvers: Vec<_> = store
        .approvers()?
        .iter()
        .map(ApproverRow::counted)
        .collect();
    if quorum::satisfiable(&rule, &approvers) {
        return Ok(());
    }
    Err(Failure::Refused(format!(
        "{} could never be met: {} active approver(s) are registered; register approvers \
         first (`p11derive approver add`)",
        rule.describe(),
        approvers.iter().filter(|x| x.active).count()
    )))
}

/// A rule's pattern: `--assets`, or `*`.
pub(crate) fn rule_of(
    operation: &str,
    assets: Option<&str>,
    k: u32,
    group: Option<&str>,
) -> Result<Rule, Failure> {
    let pattern = Pattern::parse(assets.unwrap_or("*")).map_err(Failure::Usage)?;
    Rule::new(operation, pattern, k, group.unwrap_or("")).map_err(Failure::Usage)
}

pub fn quorum_cmd(cli: &Cli, c: &QuorumCommand) -> Result<(), Failure> {
    match c {
        QuorumCommand::Set {
            operation,
            assets,
            approvals,
            group,
        } => {
            let rule = rule_of(
                operation,
                assets.as_deref(),
                (*approvals).max(1),
                group.as_deref(),
            )?;
            if *approvals == 0 {
                return Err(Failure::Usage(
                    "--approvals 0 requires nothing: remove the rule with `p11derive quorum \
                     remove` instead"
                        .into(),
                ));
            }
            acting(cli, Want::to(Action::ManagePolicy), true, |a| {
                let approvers: Vec<_> = a
                    .store
                    .approvers()?
                    .iter()
                    .map(ApproverRow::counted)
                    .collect();
                if !quorum::satisfiable(&rule, &approvers) {
                    return Err(Failure::Refused(format!(
                        "quorum rule {} could never be met: {} active approver(s){} are \
                         registered; register approvers first (`p11derive approver add`)",
                        rule.describe(),
                        approvers
                            .iter()
                            .filter(|x| x.active
                                && (rule.group.is_empty() || x.groups.contains(&rule.group)))
                            .count(),
                        if rule.group.is_empty() {
                            String::new()
                        } else {
                            format!(" of group {}", rule.group)
                        }
                    )));
                }
                let old = a
                    .store
                    .quorums()?
                    .into_iter()
                    .find(|q| q.name == rule.key());
                let row = QuorumRow {
                    name: rule.key(),
                    operation: rule.operation.clone(),
                    pattern: rule.pattern.as_str().to_string(),
                    approvals: rule.approvals,
                    group: rule.group.clone(),
                    state: "set".into(),
                    created_at: old.as_ref().map_or_else(unix_now, |o| o.created_at),
                };
                let cx = Ctx::of(cli, a);
                gate(&cx, quorum_plan(a.store, &row, "quorum set")?)?;
                a.store
                    .put_quorum(a.ak, &row, "quorum set", a.record(Event::Quorum))?;
                quorum_report(cli, &row, "set")
            })
        }
        QuorumCommand::List => {
            let want = Want::to(Action::ManagePolicy).or(Action::ReadAudit);
            acting(cli, want, false, |a| {
                let rows: Vec<QuorumRow> = a
                    .store
                    .quorums()?
                    .into_iter()
                    .filter(|q| q.state == "set")
                    .collect();
                if cli.json {
                    return print_json(&serde_json::Value::Array(
                        rows.iter().map(quorum_json).collect(),
                    ));
                }
                if rows.is_empty() {
                    outln!("no quorum rules: no operation waits for approvals");
                }
                for r in &rows {
                    outln!("{}", r.rule().map_err(failed)?.describe());
                }
                Ok(())
            })
        }
        QuorumCommand::Remove {
            operation,
            assets,
            yes,
        } => {
            let rule = rule_of(operation, assets.as_deref(), 1, None)?;
            if !yes {
                return Err(Failure::Usage(format!(
                    "removing the quorum rule for {} on {:?} lets it run without approvals; \
                     confirm with --yes",
                    rule.operation,
                    rule.pattern.as_str()
                )));
            }
            acting(cli, Want::to(Action::ManagePolicy), true, |a| {
                let mut row = a
                    .store
                    .quorums()?
                    .into_iter()
                    .find(|q| q.name == rule.key() && q.state == "set")
                    .ok_or_else(|| {
                        Failure::NotFound(format!(
                            "no quorum rule for {} on {:?}",
                            rule.operation,
                            rule.pattern.as_str()
                        ))
                    })?;
                row.state = "removed".into();
                let cx = Ctx::of(cli, a);
                gate(&cx, quorum_plan(a.store, &row, "quorum remove")?)?;
                a.store
                    .put_quorum(a.ak, &row, "quorum remove", a.record(Event::Quorum))?;
                quorum_report(cli, &row, "removed")
            })
        }
    }
}

fn quorum_json(r: &QuorumRow) -> serde_json::Value {
    json!({
        "operation": r.operation,
        "pattern": r.pattern,
        "approvals": r.approvals,
        "group": if r.group.is_empty() { serde_json::Value::Null } else { r.group.clone().into() },
        "state": r.state,
    })
}

fn quorum_report(cli: &Cli, r: &QuorumRow, done: &str) -> Result<(), Failure> {
    if cli.json {
        return print_json(&quorum_json(r));
    }
    outln!(
        "quorum rule {done}: {}",
        r.rule().map_err(failed)?.describe()
    );
    Ok(())
}
