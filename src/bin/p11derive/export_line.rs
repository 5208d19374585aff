//! `audit export`'s lines, written straight to a buffered output: the same
//! bytes as `serde_json::Value` of `record_json` (its keys in the sorted
//! order a `serde_json::Map` keeps them), without building a map, hex
//! strings or a locked, flushed `println!` per record.

use std::io::{self, Write};

use p11derive::audit::{LanePlace, Record};
use serde::Serialize;

/// One exported record; the fields in the order `serde_json::Map` (a
/// `BTreeMap`) sorts the keys of `record_json`, so the bytes match.
#[derive(Serialize)]
struct Line<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<&'a str>,
    asset: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    change: Option<u64>,
    detail: &'a str,
    event: &'static str,
    input_sha256: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lane: Option<u64>,
    mac: &'a str,
    mechanism: Option<u64>,
    mechanism_name: Option<String>,
    pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pos: Option<u64>,
    rv: u64,
    rv_name: &'static str,
    seq: Option<u64>,
    session: Option<u64>,
    time: &'a str,
    time_ns: u64,
    version: Option<u32>,
}

/// Lower-case hex of `b` into `buf` (twice `b`'s length).
fn hex_into<'b>(b: &[u8], buf: &'b mut [u8]) -> &'b str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, x) in b.iter().enumerate() {
        buf[2 * i] = DIGITS[usize::from(x >> 4)];
        buf[2 * i + 1] = DIGITS[usize::from(x & 0xf)];
    }
    std::str::from_utf8(&buf[..2 * b.len()]).expect("hex digits are ASCII")
}

/// Writes one record as `audit export` lists it, and a newline: a main
/// chain record (`lane` None: `seq` its number) or a lane's (`seq` null,
/// with `lane`, `pos` and `change`).
pub fn write(
    out: &mut impl Write,
    r: &Record,
    mac: &[u8],
    lane: Option<&LanePlace>,
) -> io::Result<()> {
    let mut mac_hex = [0u8; 128];
    let mut input_hex = [0u8; 64];
    let mac_long;
    let mac = if mac.len() <= 64 {
        hex_into(mac, &mut mac_hex)
    } else {
        mac_long = p11derive::store::hex(mac);
        &mac_long
    };
    let time = super::audit_cmd::rfc3339(r.time_ns);
    let line = Line {
        actor: r.actor.as_deref(),
        asset: r.asset.as_deref(),
        change: lane.map(|l| l.change),
        detail: &r.detail,
        event: r.event.name(),
        input_sha256: r.input_sha256.as_ref().map(|h| hex_into(h, &mut input_hex)),
        lane: lane.map(|l| l.lane),
        mac,
        mechanism: r.mechanism,
        mechanism_name: r.mechanism.map(p11derive::error::mech_name),
        pid: r.pid,
        pos: lane.map(|l| l.pos),
        rv: r.rv,
        rv_name: p11derive::error::rv_name(r.rv),
        seq: if lane.is_some() { None } else { Some(r.seq) },
        session: r.session,
        time: &time,
        time_ns: r.time_ns,
        version: r.version,
    };
    serde_json::to_writer(&mut *out, &line).map_err(io::Error::from)?;
    out.write_all(b"\n")
}

/// What a write's result means for the export: a closed pipe (`| head`)
/// ends it quietly (`closed`, and nothing more is written, as with
/// `outln!`); any other error fails the command.
pub fn settle(result: io::Result<()>, closed: &mut bool) {
    match result {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => *closed = true,
        Err(e) => {
            eprintln!("p11derive: cannot write the output: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit_cmd::Listed;
    use p11derive::audit::Event;
    use p11derive::store::LaneRow;

    fn record(i: u64) -> Record {
        Record {
            seq: i,
            time_ns: 1_700_000_000_123_456_789 + i * 1_000_000_007,
            pid: 4242 + i as u32,
            session: i.is_multiple_of(2).then_some(i * 3),
            event: [Event::Sign, Event::Login, Event::LoginFailed][i as usize % 3],
            asset: (!i.is_multiple_of(3)).then(|| format!("asset-{i} \"q\" \\ é")),
            version: (!i.is_multiple_of(4)).then_some(i as u32),
            mechanism: (i % 2 == 1).then_some([0x1041, 0x1050, 0x8000_0001][i as usize % 3]),
            input_sha256: (i % 3 == 1).then_some([i as u8; 32]),
            rv: [0, 0x101, 0xa0, 0x8000_0000][i as usize % 4],
            detail: ["", "bulk 7", "a\nb\t\u{1}\u{7f}\u{2028} ✓", "k=v \"x\""][i as usize % 4]
                .to_string(),
            actor: (i % 5 == 2).then(|| format!("user{i}\"")),
        }
    }

    /// Every line is byte for byte what `serde_json` made of the
    /// `Value` `audit export` printed before: main-chain and lane records,
    /// with and without each optional field, strings needing escapes.
    #[test]
    fn lines_are_the_values_bytes() {
        for i in 0..48 {
            let mac: Vec<u8> = (0..32).map(|b| (b * 7 + i) as u8).collect();
            let main = Listed::Main(record(i), mac.clone());
            let lane = Listed::Lane(LaneRow {
                at: LanePlace {
                    lane: i % 3 + 1,
                    pos: i * 11,
                    change: i / 2,
                },
                id: i as i64,
                record: record(i),
                mac: mac.clone(),
            });
            for l in [main, lane] {
                let mut got = Vec::new();
                match &l {
                    Listed::Main(r, m) => write(&mut got, r, m, None).unwrap(),
                    Listed::Lane(x) => write(&mut got, &x.record, &x.mac, Some(&x.at)).unwrap(),
                }
                let want = format!("{}\n", l.json());
                assert_eq!(String::from_utf8(got).unwrap(), want, "record {i}");
            }
        }
    }
}
