//! `p11derive policy set | show | remove` (users mode): the policies of assets and asset patterns, stored sealed and audited.

use p11derive::access::{self, parse_mechanism, Action, Days, Hours, Pattern, Policy, Rate};
use p11derive::audit::Event;
use p11derive::store::{unix_now, PolicyRow};
use serde_json::json;

use crate::approvals_cmd::{gate, policy_plan, Ctx};
use crate::args::Cli;
use crate::args_users::PolicyCommand;
use crate::common::{failed, print_json, Failure};
use crate::users::{acting, Acting, Want};

pub fn run(cli: &Cli, c: &PolicyCommand) -> Result<(), Failure> {
    match c {
        PolicyCommand::Set {
            pattern,
            mechanisms,
            asset_rate,
            user_rate,
            hours,
            days,
            expires,
            approvals,
            paths,
        } => {
            let mut p = Policy::new(Pattern::parse(pattern).map_err(Failure::Usage)?);
            if let Some(list) = mechanisms {
                for m in list.split(',') {
                    let m = parse_mechanism(m).map_err(Failure::Usage)?;
                    if !p.mechanisms.contains(&m) {
                        p.mechanisms.push(m);
                    }
                }
            }
            p.asset_rate = given(asset_rate, Rate::parse)?;
            p.user_rate = given(user_rate, Rate::parse)?;
            p.hours = given(hours, Hours::parse)?;
            p.days = given(days, Days::parse)?;
            p.expires = given(expires, access::parse_time)?;
            p.approvals = approvals.unwrap_or(0);
            if let Some(list) = paths {
                p.paths = Policy::parse_settings(p.pattern.clone(), &format!("paths={list}"))
                    .map_err(|m| Failure::Usage(format!("--paths {list}: {m}")))?
                    .paths;
            }
            acting(cli, Want::to(Action::ManagePolicy), true, |a| {
                if p.approvals > 0 {
                    crate::approvals_cmd::check_meetable(a.store, "sign", &p.pattern, p.approvals)?;
                }
                let old = existing(a, pattern)?;
                let what = match &old {
                    Some(o) if o.state != "removed" => "policy set (replaced)",
                    _ => "policy set",
                };
                let row = PolicyRow {
                    pattern: pattern.clone(),
                    settings: p.settings(),
                    state: "set".into(),
                    created_at: old.map_or_else(unix_now, |o| o.created_at),
                };
                gate(&Ctx::of(cli, a), policy_plan(a.store, &row, what)?)?;
                a.store
                    .put_policy(a.ak, &row, what, a.record(Event::Policy))?;
                report(cli, &row, &p, "set")
            })
        }
        PolicyCommand::Show { pattern } => {
            let want = Want::to(Action::ManagePolicy).or(Action::ReadAudit);
            acting(cli, want, false, |a| {
                let rows: Vec<PolicyRow> = match pattern {
                    Some(p) => vec![find(a, p)?],
                    None => a
                        .store
                        .policies()?
                        .into_iter()
                        .filter(|r| r.state != "removed")
                        .collect(),
                };
                let parsed = rows.iter().map(parse).collect::<Result<Vec<_>, _>>()?;
                if cli.json {
                    let all: Vec<serde_json::Value> = rows
                        .iter()
                        .zip(&parsed)
                        .map(|(r, p)| policy_json(r, p))
                        .collect();
                    return print_json(&match pattern {
                        Some(_) => all.into_iter().next().unwrap_or_default(),
                        None => serde_json::Value::Array(all),
                    });
                }
                if rows.is_empty() {
                    outln!("no policies: every asset is limited by the users' roles only");
                }
                for (r, p) in rows.iter().zip(&parsed) {
                    outln!("{}", line(r, p));
                }
                Ok(())
            })
        }
        PolicyCommand::Remove { pattern, yes } => {
            if !yes {
                return Err(Failure::Usage(format!(
                    "removing the policy for {pattern:?} lifts its limits from the assets it \
                     covers; confirm with --yes"
                )));
            }
            acting(cli, Want::to(Action::ManagePolicy), true, |a| {
                let mut row = find(a, pattern)?;
                if row.state == "removed" {
                    return Err(Failure::NotFound(format!(
                        "the policy for {pattern:?} was removed already"
                    )));
                }
                row.state = "removed".into();
                gate(
                    &Ctx::of(cli, a),
                    policy_plan(a.store, &row, "policy remove")?,
                )?;
                a.store
                    .put_policy(a.ak, &row, "policy remove", a.record(Event::Policy))?;
                let p = parse(&row)?;
                report(cli, &row, &p, "removed")
            })
        }
    }
}

/// An option's value parsed, if it was given (exit 2 naming a bad one).
fn given<T>(
    value: &Option<String>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<T>, Failure> {
    value
        .as_deref()
        .map(parse)
        .transpose()
        .map_err(Failure::Usage)
}

/// The stored row of `pattern`, removed or not.
fn existing(a: &Acting<'_>, pattern: &str) -> Result<Option<PolicyRow>, Failure> {
    Ok(a.store
        .policies()?
        .into_iter()
        .find(|r| r.pattern == pattern))
}

/// The stored row of `pattern`, or exit 4.
fn find(a: &Acting<'_>, pattern: &str) -> Result<PolicyRow, Failure> {
    existing(a, pattern)?.ok_or_else(|| {
        Failure::NotFound(format!(
            "no policy for {pattern:?} (see `p11derive policy show`)"
        ))
    })
}

fn parse(r: &PolicyRow) -> Result<Policy, Failure> {
    let pattern = Pattern::parse(&r.pattern).map_err(failed)?;
    Policy::parse_settings(pattern, &r.settings).map_err(|m| {
        failed(format!(
            "the policy for {:?} cannot be read: {m}",
            r.pattern
        ))
    })
}

fn policy_json(r: &PolicyRow, p: &Policy) -> serde_json::Value {
    json!({
        "pattern": r.pattern,
        "state": r.state,
        "settings": r.settings,
        "mechanisms": p.mechanisms.iter().map(|m| p11derive::error::mech_name(*m)).collect::<Vec<_>>(),
        "asset_rate": p.asset_rate.map(|x| x.to_string()),
        "user_rate": p.user_rate.map(|x| x.to_string()),
        "hours": p.hours.map(|x| x.to_string()),
        "days": p.days.map(|x| x.to_string()),
        "expires": p.expires.map(access::format_time),
        "approvals": p.approvals,
        "paths": p.paths.iter().map(|x| x.to_string()).collect::<Vec<_>>(),
        "created": access::format_time(r.created_at),
    })
}

fn line(r: &PolicyRow, p: &Policy) -> String {
    let settings = if r.settings.is_empty() {
        "(no limits)".to_string()
    } else {
        p.settings()
    };
    let removed = if r.state == "removed" {
        " [removed]"
    } else {
        ""
    };
    format!("{}{removed}  {settings}", r.pattern)
}

fn report(cli: &Cli, r: &PolicyRow, p: &Policy, done: &str) -> Result<(), Failure> {
    if cli.json {
        return print_json(&policy_json(r, p));
    }
    outln!("policy {done}: {}", line(r, p));
    Ok(())
}
