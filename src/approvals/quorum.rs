//! Quorum rules (which operations need how many approvals, from which group) and the count of a request's approvals against them.

use crate::access::Pattern;

use super::request::{is_operation, on_assets, Verdict};

/// A quorum rule: `operation` on what `pattern` matches needs `approvals`
/// distinct approvers (of `group`, or any when empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub operation: String,
    pub pattern: Pattern,
    pub approvals: u32,
    pub group: String,
}

impl Rule {
    /// Checks a rule's parts: a known operation, the pattern `*` for an
    /// operation that is not on assets or policies, at least one approval.
    pub fn new(
        operation: &str,
        pattern: Pattern,
        approvals: u32,
        group: &str,
    ) -> Result<Rule, String> {
        if !is_operation(operation) {
            return Err(format!(
                "operation {operation:?} is not one a quorum can govern: name one of {}",
                super::request::OPERATIONS.join(", ")
            ));
        }
        if !on_assets(operation) && operation != "policy" && pattern.as_str() != "*" {
            return Err(format!(
                "a quorum rule for {operation:?} applies to the whole store: give no --assets \
                 (or '*'), not {:?}",
                pattern.as_str()
            ));
        }
        if approvals == 0 {
            return Err("a quorum rule needs at least 1 approval (remove the rule instead)".into());
        }
        if !group.is_empty() {
            check_group(group)?;
        }
        Ok(Rule {
            operation: operation.to_string(),
            pattern,
            approvals,
            group: group.to_string(),
        })
    }

    /// The rule's name in the store: `OPERATION:PATTERN`.
    pub fn key(&self) -> String {
        format!("{}:{}", self.operation, self.pattern.as_str())
    }

    /// Whether the rule governs `operation` on `subject` (an asset, or a
    /// policy's pattern; `None` for operations on the whole store).
    pub fn applies(&self, operation: &str, subject: Option<&str>) -> bool {
        if self.operation != operation {
            return false;
        }
        match subject {
            None => true,
            // A policy change is governed when the policy's pattern and the
            // rule's can match a common asset (`c*` against `cold-*`).
            Some(s) if operation == "policy" => {
                Pattern::parse(s).map_or(true, |p| p.overlaps(&self.pattern))
            }
            Some(s) => self.pattern.matches(s),
        }
    }

    /// `retire on "pay-*": 2 approvals from group treasury`.
    pub fn describe(&self) -> String {
        let from = if self.group.is_empty() {
            "any approver".to_string()
        } else {
            format!("group {}", self.group)
        };
        format!(
            "{} on {:?}: {} approval{} from {from}",
            self.operation,
            self.pattern.as_str(),
            self.approvals,
            if self.approvals == 1 { "" } else { "s" }
        )
    }
}

/// An approver group's name: 1 to 64 of `a-z 0-9 . _ -`, starting with a
/// letter or digit.
pub fn check_group(g: &str) -> Result<(), String> {
    let ok = !g.is_empty()
        && g.len() <= 64
        && g.as_bytes()[0].is_ascii_alphanumeric()
        && g.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "group {g:?} is not a group name: use 1 to 64 of a-z, 0-9, '.', '_', '-', starting \
             with a letter or digit"
        ))
    }
}

/// Groups as given (`treasury,risk`): checked, sorted, without repeats;
/// stored as the comma list.
pub fn parse_groups(list: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for g in list.split(',').map(str::trim).filter(|g| !g.is_empty()) {
        check_group(g)?;
        out.push(g.to_string());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// An approver as a count needs it.
#[derive(Debug, Clone)]
pub struct Approver {
    pub name: String,
    pub groups: Vec<String>,
    pub active: bool,
    /// The fingerprint of the key registered now.
    pub fingerprint: String,
}

/// An approval or rejection recorded on a request (its signature was
/// verified when it was recorded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Given {
    pub approver: String,
    /// The fingerprint of the key that signed it.
    pub fingerprint: String,
    pub verdict: Verdict,
}

/// The approvals that count: by an approver who is still active and still
/// holds the key that signed, not the requester, once per approver and
/// once per key (two names holding one key are one person).
pub fn counted<'a>(
    approvers: &'a [Approver],
    given: &[Given],
    requester: &str,
) -> Vec<&'a Approver> {
    let mut out: Vec<&Approver> = Vec::new();
    for g in given.iter().filter(|g| g.verdict == Verdict::Approve) {
        let Some(a) = approvers.iter().find(|a| a.name == g.approver) else {
            continue;
        };
        if a.active
            && a.fingerprint == g.fingerprint
            && a.name != requester
            && !out
                .iter()
                .any(|o| o.name == a.name || o.fingerprint == a.fingerprint)
        {
            out.push(a);
        }
    }
    out
}

/// What each rule still lacks (empty: every rule is met), in words.
pub fn unmet(
    rules: &[&Rule],
    approvers: &[Approver],
    given: &[Given],
    requester: &str,
) -> Vec<String> {
    let ok = counted(approvers, given, requester);
    rules
        .iter()
        .filter_map(|r| {
            let have = ok
                .iter()
                .filter(|a| r.group.is_empty() || a.groups.contains(&r.group))
                .count() as u64;
            (have < u64::from(r.approvals)).then(|| format!("quorum {} has {have}", r.describe()))
        })
        .collect()
}

/// Whether the active approvers could ever meet `rule` (a rule no one can
/// meet would block its operation for good).
pub fn satisfiable(rule: &Rule, approvers: &[Approver]) -> bool {
    let n = approvers
        .iter()
        .filter(|a| a.active && (rule.group.is_empty() || a.groups.contains(&rule.group)))
        .count() as u64;
    n >= u64::from(rule.approvals)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approver(name: &str, groups: &[&str]) -> Approver {
        Approver {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            active: true,
            fingerprint: format!("fp-{name}"),
        }
    }

    fn ok(name: &str) -> Given {
        Given {
            approver: name.into(),
            fingerprint: format!("fp-{name}"),
            verdict: Verdict::Approve,
        }
    }

    #[test]
    fn distinct_current_approvers_other_than_the_requester_count() {
        let rule = Rule::new("retire", Pattern::parse("*").unwrap(), 2, "").unwrap();
        let mut people = vec![
            approver("ann", &[]),
            approver("ben", &["cfo"]),
            approver("cy", &[]),
        ];
        let rules = [&rule];
        assert_eq!(unmet(&rules, &people, &[ok("ann")], "zed").len(), 1);
        assert_eq!(
            unmet(&rules, &people, &[ok("ann"), ok("ann")], "zed").len(),
            1
        );
        assert!(unmet(&rules, &people, &[ok("ann"), ok("ben")], "zed").is_empty());
        // The requester's own approval does not count.
        assert_eq!(
            unmet(&rules, &people, &[ok("ann"), ok("ben")], "ben").len(),
            1
        );
        // A key replaced since, or an approver removed since, does not count.
        let mut stale = ok("ben");
        stale.fingerprint = "fp-old".into();
        assert_eq!(unmet(&rules, &people, &[ok("ann"), stale], "zed").len(), 1);
        people[0].active = false;
        assert_eq!(
            unmet(&rules, &people, &[ok("ann"), ok("ben")], "zed").len(),
            1
        );
        // A rejection is no approval; an unknown name counts for nothing.
        let mut no = ok("cy");
        no.verdict = Verdict::Reject;
        assert_eq!(
            unmet(&rules, &people, &[ok("ben"), no, ok("nobody")], "zed").len(),
            1
        );
    }

    #[test]
    fn a_group_rule_counts_its_members_only() {
        let rule = Rule::new("sign", Pattern::parse("cold-*").unwrap(), 1, "cfo").unwrap();
        let people = vec![approver("ann", &[]), approver("ben", &["cfo"])];
        assert!(rule.applies("sign", Some("cold-1")) && !rule.applies("sign", Some("hot-1")));
        assert_eq!(unmet(&[&rule], &people, &[ok("ann")], "-").len(), 1);
        assert!(unmet(&[&rule], &people, &[ok("ben")], "-").is_empty());
        assert!(satisfiable(&rule, &people));
        let two = Rule::new("sign", Pattern::parse("*").unwrap(), 2, "cfo").unwrap();
        assert!(!satisfiable(&two, &people));
    }

    #[test]
    fn a_policy_rule_governs_every_policy_that_can_cover_its_assets() {
        let rule = Rule::new("policy", Pattern::parse("cold-*").unwrap(), 2, "").unwrap();
        for covered in ["c*", "*", "cold-1", "*old-?", "cold-*", "?old*", "*-hot"] {
            assert!(rule.applies("policy", Some(covered)), "{covered}");
        }
        for apart in ["hot-*", "cold", "c", "warm-1", "hot*", "col?"] {
            assert!(!rule.applies("policy", Some(apart)), "{apart}");
        }
    }

    #[test]
    fn pattern_overlap_is_exact() {
        let o = |a: &str, b: &str| {
            Pattern::parse(a)
                .unwrap()
                .overlaps(&Pattern::parse(b).unwrap())
        };
        assert!(o("a*b", "*b") && o("a?c", "ab*") && o("*", "x") && o("a*", "*z"));
        assert!(!o("a*", "b*") && !o("a?", "abc") && !o("*a", "*b") && !o("ab", "a"));
    }

    #[test]
    fn rules_are_checked() {
        let any = Pattern::parse("*").unwrap();
        assert!(Rule::new("launch", any.clone(), 1, "").is_err());
        assert!(Rule::new("user", Pattern::parse("a*").unwrap(), 1, "").is_err());
        assert!(Rule::new("retire", any.clone(), 0, "").is_err());
        assert!(Rule::new("retire", any, 1, "Bad Group").is_err());
        assert_eq!(parse_groups("risk, cfo,risk").unwrap(), ["cfo", "risk"]);
    }
}
