//! Who may do what: roles, asset patterns and the role matrix, plus per-pattern policies (pure; no store, no I/O).
//!
//! The caller brings everything: the user's roles and patterns, the action,
//! the asset, the policy and the clock. Nothing here reads a store, the
//! system time or the backing HSM, so the provider and the CLI decide alike
//! and the tests inject any time they like. Counting (the rate limits) is
//! the store's job; this module only names and explains such refusals.

#![forbid(unsafe_code)]

use std::fmt;

mod policy;
mod time;

pub use policy::{parse_mechanism, Days, Hours, Policy, Rate};
pub use time::{format_time, parse_time, utc_parts};

/// A role a user holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Admin,
    Officer,
    Signer,
    Auditor,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Officer, Role::Signer, Role::Auditor];

    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Officer => "officer",
            Role::Signer => "signer",
            Role::Auditor => "auditor",
        }
    }

    /// A role by its name, in any letter case.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL
            .into_iter()
            .find(|r| r.name().eq_ignore_ascii_case(s.trim()))
    }

    /// What the role may do, asset patterns aside (the role matrix).
    fn grants(self, action: Action) -> bool {
        use Action::*;
        match self {
            Role::Admin => matches!(action, ManageUsers | ManagePolicy | ManageRoot | ReadPublic),
            Role::Officer => matches!(action, CreateAsset | Lifecycle | SeePrivate | ReadPublic),
            Role::Signer => matches!(action, Use(_) | SeePrivate | SessionObjects | ReadPublic),
            Role::Auditor => matches!(action, ReadAudit | ReadPublic),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The most characters a pattern (like an asset id) may have.
const PATTERN_MAX: usize = 64;

/// An asset pattern: asset-id characters (`A-Z a-z 0-9 . _ -`) plus `*` (any
/// run of characters, possibly none) and `?` (exactly one); 1 to 64
/// characters. `*` alone matches every asset.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pattern(String);

impl Pattern {
    pub fn parse(s: &str) -> Result<Pattern, String> {
        let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '*' | '?');
        if s.is_empty() || s.len() > PATTERN_MAX || !s.chars().all(ok) {
            return Err(format!(
                "asset pattern {s:?} is invalid: use 1 to {PATTERN_MAX} characters of \
                 A-Z a-z 0-9 . _ - plus * (any run) and ? (one character), e.g. \"hot-*\""
            ));
        }
        Ok(Pattern(s.to_string()))
    }

    /// The pattern that matches every asset.
    pub fn any() -> Pattern {
        Pattern("*".into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether some asset matches both patterns (exact: a search over the
    /// pairs of positions in the two patterns, at most 65 × 65).
    pub fn overlaps(&self, other: &Pattern) -> bool {
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        let mut seen = vec![false; (a.len() + 1) * (b.len() + 1)];
        let mut todo = vec![(0usize, 0usize)];
        // What a pattern at `i` may do next: skip a star (matching nothing),
        // or take one character (`None`: any; `Some(c)`: exactly c) and move on.
        let steps = |p: &[u8], i: usize| -> Vec<(usize, Option<u8>, bool)> {
            match p.get(i) {
                None => vec![],
                Some(b'*') => vec![(i + 1, None, true), (i, None, false)],
                Some(b'?') => vec![(i + 1, None, false)],
                Some(&c) => vec![(i + 1, Some(c), false)],
            }
        };
        while let Some((i, j)) = todo.pop() {
            let k = i * (b.len() + 1) + j;
            if seen[k] {
                continue;
            }
            seen[k] = true;
            if i == a.len() && j == b.len() {
                return true;
            }
            let (sa, sb) = (steps(a, i), steps(b, j));
            for &(ni, _, empty) in &sa {
                if empty {
                    todo.push((ni, j));
                }
            }
            for &(nj, _, empty) in &sb {
                if empty {
                    todo.push((i, nj));
                }
            }
            for &(ni, ca, _) in sa.iter().filter(|s| !s.2) {
                for &(nj, cb, _) in sb.iter().filter(|s| !s.2) {
                    if ca.is_none() || cb.is_none() || ca == cb {
                        todo.push((ni, nj));
                    }
                }
            }
        }
        false
    }

    /// Whether `asset` matches, in time linear in the asset's length: the
    /// pattern's pieces between stars are matched leftmost-first, which is
    /// exact for globs (a later match never leaves more room than the first).
    pub fn matches(&self, asset: &str) -> bool {
        // Asset ids are ASCII: bytes, without allocating; anything else by
        // characters (so `?` stands for one character, never a byte).
        if asset.is_ascii() {
            glob(self.0.as_bytes(), asset.as_bytes())
        } else {
            let text: Vec<char> = asset.chars().collect();
            glob(self.0.as_bytes(), &text)
        }
    }
}

/// A unit of matched text (a byte of ASCII, or a character) against a pattern byte.
trait Unit: Copy {
    fn is(self, pattern_byte: u8) -> bool;
}

impl Unit for u8 {
    fn is(self, pattern_byte: u8) -> bool {
        self == pattern_byte
    }
}

impl Unit for char {
    fn is(self, pattern_byte: u8) -> bool {
        self == char::from(pattern_byte)
    }
}

/// A glob over `text`: the pieces between the first and last star are found
/// leftmost-first, which is exact (an earlier match never leaves less room
/// for the rest), so the time is at most the text's length times the
/// pattern's (64), with no backtracking.
fn glob<T: Unit>(pattern: &[u8], text: &[T]) -> bool {
    let star = |b: &u8| *b == b'*';
    let (Some(first_star), Some(last_star)) = (
        pattern.iter().position(star),
        pattern.iter().rposition(star),
    ) else {
        // No star: the whole text, unit for unit.
        return text.len() == pattern.len() && piece_at(pattern, text, 0);
    };
    let (head, tail) = (&pattern[..first_star], &pattern[last_star + 1..]);
    if text.len() < head.len() + tail.len()
        || !piece_at(head, text, 0)
        || !piece_at(tail, text, text.len() - tail.len())
    {
        return false;
    }
    let end = text.len() - tail.len();
    let mut at = head.len();
    for piece in pattern[first_star..last_star].split(star) {
        match (at..)
            .take_while(|i| i + piece.len() <= end)
            .find(|&i| piece_at(piece, text, i))
        {
            Some(i) => at = i + piece.len(),
            None => return false,
        }
    }
    true
}

/// Whether `piece` (no stars; `?` any one unit) stands in `text` at `at`.
fn piece_at<T: Unit>(piece: &[u8], text: &[T], at: usize) -> bool {
    text.get(at..at + piece.len())
        .is_some_and(|window| window.iter().zip(piece).all(|(t, &p)| p == b'?' || t.is(p)))
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A comma-separated list of patterns (`hot-*,warm-1`); spaces around an
/// item are ignored, an empty item is refused.
pub fn parse_patterns(s: &str) -> Result<Vec<Pattern>, String> {
    s.split(',')
        .map(|item| {
            let item = item.trim();
            if item.is_empty() {
                Err(format!(
                    "asset pattern list {s:?} has an empty item: separate patterns with single \
                     commas, e.g. \"hot-*,warm-1\""
                ))
            } else {
                Pattern::parse(item)
            }
        })
        .collect()
}

/// Patterns as a person writes them: `hot-*,warm-1`.
pub fn patterns_text(patterns: &[Pattern]) -> String {
    let texts: Vec<&str> = patterns.iter().map(Pattern::as_str).collect();
    texts.join(",")
}

/// What a caller wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Key use on an asset.
    Use(UseKind),
    /// Token key creation (`C_GenerateKey[Pair]` with `CKA_TOKEN=true`, `asset create`).
    CreateAsset,
    /// rotate, finish, trim, suspend, resume, retire (CLI).
    Lifecycle,
    /// Session keys and objects a client makes for itself.
    SessionObjects,
    /// List or read a private (key) object of an asset.
    SeePrivate,
    ManageUsers,
    ManagePolicy,
    /// The root's recovery into a backing HSM, and its backup drills.
    ManageRoot,
    /// audit verify, export and tail; status; metrics.
    ReadAudit,
    /// Public objects: every logged-in user may.
    ReadPublic,
}

/// The kinds of key use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UseKind {
    Sign,
    Verify,
    Encrypt,
    Decrypt,
    Wrap,
    Unwrap,
}

impl UseKind {
    pub const ALL: [UseKind; 6] = [
        UseKind::Sign,
        UseKind::Verify,
        UseKind::Encrypt,
        UseKind::Decrypt,
        UseKind::Wrap,
        UseKind::Unwrap,
    ];

    pub fn name(self) -> &'static str {
        match self {
            UseKind::Sign => "sign",
            UseKind::Verify => "verify",
            UseKind::Encrypt => "encrypt",
            UseKind::Decrypt => "decrypt",
            UseKind::Wrap => "wrap",
            UseKind::Unwrap => "unwrap",
        }
    }
}

impl Action {
    /// Every action (each key use once).
    pub const ALL: [Action; 15] = [
        Action::Use(UseKind::Sign),
        Action::Use(UseKind::Verify),
        Action::Use(UseKind::Encrypt),
        Action::Use(UseKind::Decrypt),
        Action::Use(UseKind::Wrap),
        Action::Use(UseKind::Unwrap),
        Action::CreateAsset,
        Action::Lifecycle,
        Action::SessionObjects,
        Action::SeePrivate,
        Action::ManageUsers,
        Action::ManagePolicy,
        Action::ManageRoot,
        Action::ReadAudit,
        Action::ReadPublic,
    ];

    /// What the action is, as a verb phrase for messages ("sign", "manage users").
    pub fn name(&self) -> String {
        match self {
            Action::Use(kind) => kind.name(),
            Action::CreateAsset => "create an asset",
            Action::Lifecycle => "change an asset's lifecycle",
            Action::SessionObjects => "make session objects",
            Action::SeePrivate => "see private objects",
            Action::ManageUsers => "manage users",
            Action::ManagePolicy => "manage policies",
            Action::ManageRoot => "recover the root or drill its backup shares",
            Action::ReadAudit => "read the audit log",
            Action::ReadPublic => "read public objects",
        }
        .to_string()
    }
}

/// Why something was refused: a stable rule name for audit records (`role`,
/// `pattern`, `mechanism`, `hours`, `days`, `expired`, `asset-rate`,
/// `user-rate`) and a sentence for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub rule: String,
    pub why: String,
}

impl Denied {
    pub fn new(rule: &str, why: impl Into<String>) -> Denied {
        Denied {
            rule: rule.to_string(),
            why: why.into(),
        }
    }
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (rule {})", self.why, self.rule)
    }
}

impl std::error::Error for Denied {}

/// Whether a user with `roles` and `patterns` may do `action` on `asset`
/// (`None` for an action that concerns no asset). Several roles grant the
/// union of what each grants; an action on an asset also needs one of the
/// user's patterns to match it. Public objects are open to every logged-in
/// user, whatever their roles and patterns.
pub fn permits(
    roles: &[Role],
    patterns: &[Pattern],
    action: Action,
    asset: Option<&str>,
) -> Result<(), Denied> {
    if action == Action::ReadPublic {
        return Ok(());
    }
    if !roles.iter().any(|r| r.grants(action)) {
        let granting: Vec<&str> = Role::ALL
            .into_iter()
            .filter(|r| r.grants(action))
            .map(Role::name)
            .collect();
        let held = if roles.is_empty() {
            "this user holds no role".to_string()
        } else {
            let held: Vec<&str> = roles.iter().map(|r| r.name()).collect();
            format!("this user holds only {}", held.join(", "))
        };
        return Err(Denied::new(
            "role",
            format!(
                "to {} needs the role {}; {held} (an admin can grant roles with `p11derive user roles`)",
                action.name(),
                granting.join(" or "),
            ),
        ));
    }
    match asset {
        Some(asset) if !patterns.iter().any(|p| p.matches(asset)) => {
            let held = if patterns.is_empty() {
                "this user has no asset patterns".to_string()
            } else {
                format!("this user's patterns are {}", patterns_text(patterns))
            };
            Err(Denied::new(
                "pattern",
                format!(
                    "to {} on asset {asset:?} needs an asset pattern that matches it; {held}",
                    action.name()
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// Whether `roles` together could do everything alone: admin together with
/// signer or officer (an admin could grant themself any asset). `init` and
/// `user add` refuse such a combination.
pub fn too_powerful(roles: &[Role]) -> bool {
    roles.contains(&Role::Admin)
        && (roles.contains(&Role::Signer) || roles.contains(&Role::Officer))
}

#[cfg(test)]
mod tests;
