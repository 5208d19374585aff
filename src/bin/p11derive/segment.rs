//! Archive segment files (`audit archive`): JSON lines, written and read
//! back one line at a time (bounded memory whatever the segment's length).
//!
//! 1. a header naming the store, the main-chain range and the two
//!    checkpoints that bound it;
//! 2. the main chain's records of the range, in order;
//! 3. the writers' lanes' records the range covers (PostgreSQL);
//! 4. a trailer with the SHA-256 of every byte before it and the counts.
//!
//! The archive record names a segment by the SHA-256 of the whole file
//! (trailer included): what `sha256sum FILE` prints.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use p11derive::audit::{Event, LanePlace, Record};
use p11derive::store::{hex, unhex32};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const FORMAT: &str = "p11derive-audit-segment";
pub const VERSION: u64 = 1;

/// The longest line a segment may hold (a record is a few hundred bytes;
/// a checkpoint header with many assets and lanes far less than this).
pub const MAX_LINE: u64 = 16 << 20;

/// A record as a segment line: the fields `audit export` lists (enough
/// to rebuild the record exactly).
pub fn record_line(r: &Record, mac: &[u8]) -> Value {
    crate::audit_cmd::record_json(r, Some(mac))
}

/// The record and MAC a segment line (or a checkpoint's `record`) holds.
pub fn parse_record(v: &Value) -> Result<(Record, [u8; 32]), String> {
    let num = |k: &str| v.get(k).and_then(Value::as_u64);
    let opt_num = |k: &str| -> Result<Option<u64>, String> {
        match v.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("{k} is not a number")),
        }
    };
    let opt_text = |k: &str| -> Result<Option<String>, String> {
        match v.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_str()
                .map(|s| Some(s.to_string()))
                .ok_or_else(|| format!("{k} is not text")),
        }
    };
    let event = v
        .get("event")
        .and_then(Value::as_str)
        .and_then(Event::parse)
        .ok_or("no known event")?;
    let input_sha256 = match opt_text("input_sha256")? {
        None => None,
        Some(h) => Some(unhex32(&h).ok_or("input_sha256 is not 32 bytes of hex")?),
    };
    let r = Record {
        seq: opt_num("seq")?.unwrap_or(0),
        time_ns: num("time_ns").ok_or("no time_ns")?,
        pid: u32::try_from(num("pid").ok_or("no pid")?).map_err(|_| "pid out of range")?,
        session: opt_num("session")?,
        event,
        asset: opt_text("asset")?,
        version: opt_num("version")?
            .map(u32::try_from)
            .transpose()
            .map_err(|_| "version out of range")?,
        mechanism: opt_num("mechanism")?,
        input_sha256,
        rv: num("rv").ok_or("no rv")?,
        detail: opt_text("detail")?.ok_or("no detail")?,
        actor: opt_text("actor")?,
    };
    let mac = opt_text("mac")?
        .and_then(|m| unhex32(&m))
        .ok_or("no 32-byte mac")?;
    Ok((r, mac))
}

/// A segment being written: every line hashed as it goes.
pub struct Writer {
    out: BufWriter<File>,
    before_trailer: Sha256,
    whole: Sha256,
    pub records: u64,
    pub lane_records: u64,
    /// The buffer each record's line is made in (one allocation).
    line: Vec<u8>,
}

impl Writer {
    pub fn create(path: &Path) -> std::io::Result<Writer> {
        // Owner-only: a segment holds actors, asset names and input hashes.
        let mut open = std::fs::OpenOptions::new();
        open.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
        let file = open.open(path)?;
        Ok(Writer {
            out: BufWriter::with_capacity(1 << 16, file),
            before_trailer: Sha256::new(),
            whole: Sha256::new(),
            records: 0,
            lane_records: 0,
            line: Vec::with_capacity(1024),
        })
    }

    fn put(&mut self, v: &Value, hashed: bool) -> std::io::Result<()> {
        let mut b = serde_json::to_vec(v)?;
        b.push(b'\n');
        self.put_line(&b, hashed)
    }

    /// One whole line (newline included), hashed and written.
    fn put_line(&mut self, b: &[u8], hashed: bool) -> std::io::Result<()> {
        if hashed {
            self.before_trailer.update(b);
        }
        self.whole.update(b);
        self.out.write_all(b)
    }

    /// A record's line, as `audit export` writes it (the same bytes as
    /// [`record_line`]'s value, or a lane record's with its place).
    fn put_record(
        &mut self,
        r: &Record,
        mac: &[u8],
        at: Option<&LanePlace>,
    ) -> std::io::Result<()> {
        let mut b = std::mem::take(&mut self.line);
        b.clear();
        crate::export_line::write(&mut b, r, mac, at)?;
        let put = self.put_line(&b, true);
        self.line = b;
        put
    }

    pub fn header(&mut self, h: &Value) -> std::io::Result<()> {
        self.put(h, true)
    }

    pub fn main(&mut self, r: &Record, mac: &[u8]) -> std::io::Result<()> {
        self.records += 1;
        self.put_record(r, mac, None)
    }

    pub fn lane(&mut self, at: &LanePlace, r: &Record, mac: &[u8]) -> std::io::Result<()> {
        self.lane_records += 1;
        self.put_record(r, mac, Some(at))
    }

    /// Writes the trailer and flushes; the file (not yet synced) and the
    /// whole file's SHA-256.
    pub fn finish(mut self) -> std::io::Result<(File, [u8; 32])> {
        let inner: [u8; 32] = self.before_trailer.clone().finalize().into();
        let trailer = json!({
            "sha256": hex(&inner),
            "records": self.records,
            "lane_records": self.lane_records,
        });
        self.put(&trailer, false)?;
        let whole: [u8; 32] = self.whole.clone().finalize().into();
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        Ok((file, whole))
    }
}

/// One line of a segment after its header.
pub enum Item {
    Main(Record, [u8; 32]),
    Lane(LanePlace, Record, [u8; 32]),
}

/// A segment read back line by line; [`Reader::finish`] checks the
/// trailer.
pub struct Reader {
    path: PathBuf,
    input: BufReader<File>,
    before_trailer: Sha256,
    whole: Sha256,
    line_no: u64,
    pub header: Value,
    trailer: Option<Value>,
    records: u64,
    lane_records: u64,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader, String> {
        let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut r = Reader {
            path: path.to_path_buf(),
            input: BufReader::with_capacity(1 << 16, file),
            before_trailer: Sha256::new(),
            whole: Sha256::new(),
            line_no: 0,
            header: Value::Null,
            trailer: None,
            records: 0,
            lane_records: 0,
        };
        let header = r
            .line()?
            .ok_or_else(|| r.bad("it is empty (not a segment)"))?;
        if header.get("format").and_then(Value::as_str) != Some(FORMAT)
            || header.get("version").and_then(Value::as_u64) != Some(VERSION)
        {
            return Err(r.bad(&format!(
                "its first line is not a {FORMAT} version {VERSION} header"
            )));
        }
        r.header = header;
        Ok(r)
    }

    fn bad(&self, why: &str) -> String {
        format!(
            "segment {} (line {}): {why}",
            self.path.display(),
            self.line_no
        )
    }

    /// The next line as JSON; a trailer is kept aside (and must be last).
    fn line(&mut self) -> Result<Option<Value>, String> {
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = std::io::Read::take(&mut self.input, MAX_LINE + 1)
                .read_until(b'\n', &mut buf)
                .map_err(|e| self.bad(&e.to_string()))?;
            if n == 0 {
                return Ok(None);
            }
            self.line_no += 1;
            if n as u64 > MAX_LINE {
                return Err(self.bad(&format!(
                    "the line is longer than {} MiB: not a segment line (the file is damaged \
                     or not a segment)",
                    MAX_LINE >> 20
                )));
            }
            if self.trailer.is_some() {
                return Err(self.bad("there are lines after its trailer"));
            }
            if buf.last() != Some(&b'\n') {
                return Err(self.bad("its last line is cut short (a half-written file?)"));
            }
            self.whole.update(&buf);
            let v: Value = serde_json::from_slice(&buf)
                .map_err(|e| self.bad(&format!("not a JSON line: {e}")))?;
            if v.get("records").is_some() && v.get("sha256").is_some() && v.get("event").is_none() {
                self.trailer = Some(v);
                continue;
            }
            self.before_trailer.update(&buf);
            return Ok(Some(v));
        }
    }

    /// The next record, or `None` at the trailer.
    pub fn next_item(&mut self) -> Result<Option<Item>, String> {
        let Some(v) = self.line()? else {
            return Ok(None);
        };
        let (r, mac) = parse_record(&v).map_err(|e| self.bad(&e))?;
        match v.get("lane").and_then(Value::as_u64) {
            None => {
                self.records += 1;
                Ok(Some(Item::Main(r, mac)))
            }
            Some(lane) => {
                self.lane_records += 1;
                let at = LanePlace {
                    lane,
                    pos: v.get("pos").and_then(Value::as_u64).unwrap_or(0),
                    change: v.get("change").and_then(Value::as_u64).unwrap_or(0),
                };
                Ok(Some(Item::Lane(at, r, mac)))
            }
        }
    }

    /// After the last record: the trailer is there, its hash and counts
    /// match. The whole file's SHA-256.
    pub fn finish(mut self) -> Result<[u8; 32], String> {
        if self.line()?.is_some() {
            return Err(self.bad("a line after the records it counted"));
        }
        let Some(t) = self.trailer.take() else {
            return Err(self.bad("it has no trailer (a half-written file?)"));
        };
        let inner: [u8; 32] = self.before_trailer.clone().finalize().into();
        if t.get("sha256").and_then(Value::as_str) != Some(hex(&inner).as_str()) {
            return Err(self.bad(
                "its trailer's SHA-256 is not the hash of its contents: the file was altered",
            ));
        }
        if t.get("records").and_then(Value::as_u64) != Some(self.records)
            || t.get("lane_records").and_then(Value::as_u64) != Some(self.lane_records)
        {
            return Err(self.bad("its trailer's counts are not the records it holds"));
        }
        Ok(self.whole.clone().finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_reads_back_and_an_altered_byte_is_named() {
        let dir = std::env::temp_dir().join(format!("seg-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("s.jsonl");
        let _ = std::fs::remove_file(&path);
        let mut w = Writer::create(&path).unwrap();
        w.header(&json!({"format": FORMAT, "version": VERSION, "first": 1, "last": 1}))
            .unwrap();
        let mut r = Record::new(Event::Sign, 0).asset("a", Some(1)).detail("d");
        r.seq = 1;
        r.input_sha256 = Some([3; 32]);
        w.main(&r, &[7; 32]).unwrap();
        let (_, whole) = w.finish().unwrap();
        let mut rd = Reader::open(&path).unwrap();
        match rd.next_item().unwrap() {
            Some(Item::Main(back, mac)) => assert_eq!((back, mac), (r, [7; 32])),
            _ => panic!("no record"),
        }
        assert!(rd.next_item().unwrap().is_none());
        assert_eq!(rd.finish().unwrap(), whole);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes
            .windows(12)
            .position(|w| w == b"\"detail\":\"d\"")
            .unwrap();
        bytes[at + 10] = b'e';
        std::fs::write(&path, &bytes).unwrap();
        let mut rd = Reader::open(&path).unwrap();
        while rd.next_item().unwrap().is_some() {}
        assert!(rd.finish().unwrap_err().contains("altered"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
