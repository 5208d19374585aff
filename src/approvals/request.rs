//! A request's canonical bytes (version 1): what approvers read and sign, in a text encoding standard tools can show and sign byte for byte.
//!
//! ```text
//! p11derive request v1
//! store: 5d41402abc4b2a76b9719d911017c592
//! id: 0f3a9c21d4e5b6a7c8d9e0f1a2b3c4d5
//! operation: retire
//! asset: payments-1
//! basis: 12
//! requested-by: carol
//! requested-at: 2026-12-05T10:00:00Z
//! expires-at: 2026-12-06T10:00:00Z
//! ```
//!
//! Each line is `key: value` ending in one LF; no other whitespace. The
//! first line names the encoding and its version; `store` is the store's id
//! (the first 16 bytes of its first record's MAC, hex), so an approval made
//! for one store is worthless in another; `id` is the request's random id;
//! `operation` and its parameters (in the order each operation defines)
//! follow; then who asked, when, and until when approvals count. Values are
//! printable ASCII; any other byte, and `\`, is written `\xHH`.
//!
//! An approver signs the **verdict bytes**: the canonical bytes followed by
//! one more line, `verdict: approve` or `verdict: reject`. `p11derive
//! request export` writes exactly these bytes.

use crate::access::{format_time, parse_time};

/// The first line of version 1.
pub const MAGIC: &str = "p11derive request v1";

/// An approver's decision on a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Approve,
    Reject,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Approve => "approve",
            Verdict::Reject => "reject",
        }
    }

    pub fn parse(s: &str) -> Option<Verdict> {
        match s {
            "approve" => Some(Verdict::Approve),
            "reject" => Some(Verdict::Reject),
            _ => None,
        }
    }
}

/// The operations a request can stand for, as the quorum rules name them.
pub const OPERATIONS: [&str; 12] = [
    "rotate", "finish", "trim", "suspend", "resume", "retire", "user", "policy", "approver",
    "quorum", "recover", "sign",
];

/// Whether `op` is an operation name a quorum rule can name.
pub fn is_operation(op: &str) -> bool {
    OPERATIONS.contains(&op)
}

/// Whether `op`'s quorum rules are matched against an asset name (the
/// others' rules name the pattern `*`, or for `policy` the policy's pattern).
pub fn on_assets(op: &str) -> bool {
    matches!(
        op,
        "rotate" | "finish" | "trim" | "suspend" | "resume" | "retire" | "sign"
    )
}

/// A request as its canonical bytes state it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestDoc {
    /// The store's id, 32 hex digits.
    pub store: String,
    /// The request's id, 32 hex digits.
    pub id: String,
    pub operation: String,
    /// The operation's parameters, in its order.
    pub params: Vec<(String, String)>,
    /// The user who asked (`-`: a pass-through caller).
    pub requested_by: String,
    pub requested_at: i64,
    pub expires_at: i64,
}

fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'\\' {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

fn unescape(v: &str) -> Result<String, String> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            let hex = v
                .get(i + 2..i + 4)
                .filter(|_| b.get(i + 1) == Some(&b'x'))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("value {v:?} holds a '\\' not followed by xHH"))?;
            out.push(hex);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("value {v:?} is not UTF-8"))
}

impl RequestDoc {
    /// The parameter `key`'s value, if the operation has it.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The canonical bytes (version 1).
    pub fn canonical(&self) -> Vec<u8> {
        let mut s = String::with_capacity(256);
        let mut line = |k: &str, v: &str| {
            s.push_str(k);
            s.push_str(": ");
            s.push_str(&escape(v));
            s.push('\n');
        };
        let mut head = String::from(MAGIC);
        head.push('\n');
        line("store", &self.store);
        line("id", &self.id);
        line("operation", &self.operation);
        for (k, v) in &self.params {
            line(k, v);
        }
        line("requested-by", &self.requested_by);
        line("requested-at", &format_time(self.requested_at));
        line("expires-at", &format_time(self.expires_at));
        head.push_str(&s);
        head.into_bytes()
    }

    /// The bytes an approver signs for `verdict`.
    pub fn verdict_bytes(&self, verdict: Verdict) -> Vec<u8> {
        let mut b = self.canonical();
        b.extend_from_slice(format!("verdict: {}\n", verdict.name()).as_bytes());
        b
    }

    /// Reads canonical bytes back (exactly: `parse(b).canonical() == b`).
    pub fn parse(bytes: &[u8]) -> Result<RequestDoc, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "the request is not UTF-8 text")?;
        let body = text
            .strip_prefix(MAGIC)
            .and_then(|t| t.strip_prefix('\n'))
            .ok_or_else(|| format!("the request does not start with {MAGIC:?}"))?;
        if !body.ends_with('\n') {
            return Err("the request's last line does not end with a line feed".into());
        }
        let mut fields = Vec::new();
        for l in body[..body.len() - 1].split('\n') {
            let (k, v) = l
                .split_once(": ")
                .ok_or_else(|| format!("line {l:?} is not `key: value`"))?;
            if k.is_empty()
                || !k
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(format!("line {l:?}: {k:?} is not a key"));
            }
            fields.push((k.to_string(), unescape(v)?));
        }
        let n = fields.len();
        if n < 6 {
            return Err("the request lacks lines (store, id, operation, requested-by, requested-at, expires-at)".into());
        }
        let want = |i: usize, key: &str| -> Result<String, String> {
            match fields.get(i) {
                Some((k, v)) if k == key => Ok(v.clone()),
                Some((k, _)) => Err(format!("line {} is {k:?} where {key:?} belongs", i + 2)),
                None => Err(format!("no {key:?} line")),
            }
        };
        let doc = RequestDoc {
            store: want(0, "store")?,
            id: want(1, "id")?,
            operation: want(2, "operation")?,
            params: fields[3..n - 3].to_vec(),
            requested_by: want(n - 3, "requested-by")?,
            requested_at: parse_time(&want(n - 2, "requested-at")?)?,
            expires_at: parse_time(&want(n - 1, "expires-at")?)?,
        };
        if doc.canonical() != bytes {
            return Err("the request is not in canonical form".into());
        }
        Ok(doc)
    }

    /// A few lines a person reads before signing: the operation and its
    /// parameters, who asked, and the expiry.
    pub fn summary(&self) -> String {
        let mut s = format!("request {}: {}", self.id, self.operation);
        for (k, v) in &self.params {
            s.push_str(&format!("\n  {k}: {v}"));
        }
        s.push_str(&format!(
            "\n  requested by {} at {}\n  approvals count until {}",
            self.requested_by,
            format_time(self.requested_at),
            format_time(self.expires_at)
        ));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> RequestDoc {
        RequestDoc {
            store: "5d41402abc4b2a76b9719d911017c592".into(),
            id: "0f3a9c21d4e5b6a7c8d9e0f1a2b3c4d5".into(),
            operation: "retire".into(),
            params: vec![
                ("asset".into(), "payments-1".into()),
                ("basis".into(), "12".into()),
            ],
            requested_by: "carol".into(),
            requested_at: 1_796_464_800,
            expires_at: 1_796_551_200,
        }
    }

    #[test]
    fn canonical_bytes_are_the_documented_text() {
        let want = "p11derive request v1\nstore: 5d41402abc4b2a76b9719d911017c592\n\
                    id: 0f3a9c21d4e5b6a7c8d9e0f1a2b3c4d5\noperation: retire\n\
                    asset: payments-1\nbasis: 12\nrequested-by: carol\n\
                    requested-at: 2026-12-05T10:00:00Z\nexpires-at: 2026-12-06T10:00:00Z\n";
        assert_eq!(String::from_utf8(doc().canonical()).unwrap(), want);
        let v = doc().verdict_bytes(Verdict::Reject);
        assert!(String::from_utf8(v)
            .unwrap()
            .ends_with("expires-at: 2026-12-06T10:00:00Z\nverdict: reject\n"));
        assert_eq!(RequestDoc::parse(want.as_bytes()).unwrap(), doc());
    }

    #[test]
    fn odd_values_are_escaped_and_read_back() {
        let mut d = doc();
        d.params.push(("patterns".into(), "a\\b\nc: d é".into()));
        let b = d.canonical();
        let text = String::from_utf8(b.clone()).unwrap();
        assert!(
            text.contains("patterns: a\\x5cb\\x0ac: d \\xc3\\xa9\n"),
            "{text}"
        );
        assert_eq!(RequestDoc::parse(&b).unwrap(), d);
    }

    #[test]
    fn anything_but_canonical_bytes_is_refused() {
        let good = String::from_utf8(doc().canonical()).unwrap();
        for bad in [
            good.replace("p11derive request v1", "p11derive request v2"),
            good.replace("asset: ", "asset:"),
            good.replace("\n", "\r\n"),
            good.trim_end().to_string(),
            good.replace("2026-12-06T10:00:00Z", "2026-12-06"),
            good.replace("store: ", "shop: "),
            format!("{good}verdict: approve\n"),
        ] {
            assert!(RequestDoc::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
