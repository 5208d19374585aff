//! HD paths below a master key: `m/44'/60'/0'/0/5`, parsed, checked, shown.

use std::fmt;

use super::{HARDENED, MAX_DEPTH};

/// The form a path takes, for messages.
const FORM: &str = "write m, or m/ then indices separated by /, each a decimal number below \
                    2^31 and ' (or h, H) for a hardened child: m/44'/60'/0'/0/5";

/// A path below a master key: 0 to 255 child indices, the hardened ones with
/// the bit `0x80000000` set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Path(Vec<u32>);

/// How an audit record of an HD child's signature begins its detail.
const RECORD_PREFIX: &str = "path=";

impl Path {
    /// Parses `m`, `m/44'/60'/0'/0/5` (`h` or `H` mark a hardened index as
    /// well as `'`). Each index is below 2^31 before its mark; at most 255.
    pub fn parse(s: &str) -> Result<Path, String> {
        let mut parts = s.split('/');
        if parts.next() != Some("m") {
            return Err(format!("HD path {s:?} does not start with m: {FORM}"));
        }
        let mut out = Vec::new();
        for (n, part) in parts.enumerate() {
            let position = n + 1;
            if out.len() == MAX_DEPTH {
                return Err(format!(
                    "HD path {s:?} has more than {MAX_DEPTH} levels: a key is at most \
                     {MAX_DEPTH} levels below its master"
                ));
            }
            let (digits, hardened) = match part.strip_suffix(['\'', 'h', 'H']) {
                Some(d) => (d, true),
                None => (part, false),
            };
            if part.is_empty() {
                return Err(format!(
                    "HD path {s:?}: level {position} is empty (a / too many?): {FORM}"
                ));
            }
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "HD path {s:?}: level {position} {part:?} is not an index: {FORM}"
                ));
            }
            // Only digits: a failed parse is an overflow.
            let value = digits.parse::<u64>().unwrap_or(u64::MAX);
            if value >= u64::from(HARDENED) {
                return Err(format!(
                    "HD path {s:?}: level {position} {part:?} is too large: an index is below \
                     2^31 = {HARDENED} (hardened ones too, before their mark: 2147483647' is \
                     the last)"
                ));
            }
            let index = value as u32;
            out.push(if hardened { index | HARDENED } else { index });
        }
        Ok(Path(out))
    }

    /// A path from a `CK_ULONG` array: each value below 2^32 (the hardened
    /// bit set for a hardened child), at most 255 of them.
    pub fn from_indices(v: &[u64]) -> Result<Path, String> {
        if v.len() > MAX_DEPTH {
            return Err(format!(
                "an HD path of {} indices is too long: at most {MAX_DEPTH}",
                v.len()
            ));
        }
        v.iter()
            .enumerate()
            .map(|(n, &i)| {
                u32::try_from(i).map_err(|_| {
                    format!(
                        "HD path index {n} is {i:#x}: an index is below 2^32 (0x80000000 \
                         added for a hardened child)"
                    )
                })
            })
            .collect::<Result<Vec<u32>, String>>()
            .map(Path)
    }

    /// The indices, hardened bit included.
    pub fn indices(&self) -> &[u32] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// This path followed by `more`, within the depth limit.
    pub fn join(&self, more: &Path) -> Result<Path, String> {
        if self.len() + more.len() > MAX_DEPTH {
            return Err(format!(
                "HD path {self} followed by {} levels is {} levels deep: at most {MAX_DEPTH}",
                more.len(),
                self.len() + more.len()
            ));
        }
        Ok(Path([self.0.as_slice(), more.0.as_slice()].concat()))
    }

    /// Whether `prefix` is this path or an ancestor of it.
    pub fn starts_with(&self, prefix: &Path) -> bool {
        self.0.starts_with(&prefix.0)
    }

    /// The path an audit record of a signature names (`path=m/…` in its
    /// detail, as the token writes it for an HD child's signature); the
    /// empty path `m` (the asset version's own key) otherwise.
    pub fn of_record_detail(detail: &str) -> Path {
        detail
            .strip_prefix(RECORD_PREFIX)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|p| Path::parse(p).ok())
            .unwrap_or_default()
    }

    /// How an audit record's detail names this path: `path=m/44'/60'/0'/0/5`.
    pub fn record_detail(&self) -> String {
        format!("{RECORD_PREFIX}{self}")
    }

    /// Whether any index is hardened (so no public derivation reaches it).
    pub fn any_hardened(&self) -> bool {
        self.0.iter().any(|&i| is_hardened(i))
    }
}

/// Whether an index asks for a hardened child.
pub fn is_hardened(index: u32) -> bool {
    index & HARDENED != 0
}

/// One index as a path shows it: `5`, or `44'` for a hardened one.
pub fn show_index(index: u32) -> String {
    if is_hardened(index) {
        format!("{}'", index & !HARDENED)
    } else {
        index.to_string()
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("m")?;
        for &i in &self.0 {
            write!(f, "/{}", show_index(i))?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Path {
    type Err = String;

    fn from_str(s: &str) -> Result<Path, String> {
        Path::parse(s)
    }
}
