//! Scanning this process's memory for secrets (`/proc/self/maps` + `/proc/self/mem`): needles are held only XORed with a mask, the read buffer is wiped after every chunk, and hits are told apart by the mapping that holds them (locked arena and secret stacks, or anywhere else).

use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use zeroize::Zeroize;

pub struct Needle {
    pub name: String,
    pub masked: Vec<u8>,
}

pub struct Hits {
    pub name: String,
    pub at: Vec<usize>,
}

/// Needles as a child printed them: `NAME MASKED-HEX` per line.
pub fn parse_needles(text: &str) -> Vec<Needle> {
    text.lines()
        .map(|l| {
            let (name, masked) = l.split_once(' ').expect("NAME HEX");
            Needle {
                name: name.to_string(),
                masked: super::unhex(masked),
            }
        })
        .collect()
}

/// Random bytes from the kernel.
pub fn random(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b
}

/// Every mapping of this process, with its VmFlags and locked size.
pub struct Mapping {
    pub range: Range<usize>,
    pub flags: String,
    pub locked_kib: usize,
}

pub fn mappings() -> Vec<Mapping> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut out: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let head = line.split_once(' ').and_then(|(r, _)| r.split_once('-'));
        if let Some((a, b)) = head {
            if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                out.push(Mapping {
                    range: a..b,
                    flags: String::new(),
                    locked_kib: 0,
                });
                continue;
            }
        }
        let m = out.last_mut().expect("smaps starts with a mapping");
        if let Some(v) = line.strip_prefix("Locked:") {
            m.locked_kib = v.trim().trim_end_matches(" kB").parse().unwrap();
        } else if let Some(v) = line.strip_prefix("VmFlags:") {
            m.flags = v.trim().to_string();
        }
    }
    out
}

pub fn has_flag(m: &Mapping, flag: &str) -> bool {
    m.flags.split_whitespace().any(|f| f == flag)
}

/// Locked memory for secrets: the arena, and the secret stacks that
/// computations on keys run on.
pub struct Locked {
    pub arena: Range<usize>,
    pub stacks: Vec<Range<usize>>,
}

impl Locked {
    pub fn contains(&self, a: &usize) -> bool {
        self.arena.contains(a) || self.stacks.iter().any(|s| s.contains(a))
    }
}

/// Where each needle occurs in this process's memory (every mapping, any
/// protection: /proc/self/mem reads those too, unreadable ones are skipped).
pub fn scan(needles: &[Needle], mask: &[u8]) -> Vec<Hits> {
    const CHUNK: usize = 1 << 20;
    const OVERLAP: usize = 64;
    let mem = File::open("/proc/self/mem").unwrap();
    let mut buf = vec![0u8; CHUNK + OVERLAP];
    let own = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    let mut hits: Vec<Hits> = needles
        .iter()
        .map(|n| Hits {
            name: n.name.clone(),
            at: Vec::new(),
        })
        .collect();
    let ranges: Vec<Range<usize>> = mappings().into_iter().map(|m| m.range).collect();
    for range in ranges {
        let mut at = range.start;
        while at < range.end {
            let want = (range.end - at).min(CHUNK + OVERLAP);
            let Ok(n) = mem.read_at(&mut buf[..want], at as u64) else {
                break;
            };
            if n == 0 {
                break;
            }
            for (needle, hit) in needles.iter().zip(hits.iter_mut()) {
                let len = needle.masked.len();
                if n < len {
                    continue;
                }
                let first = needle.masked[0] ^ mask[0];
                for i in 0..=n - len {
                    if buf[i] == first && (0..len).all(|j| buf[i + j] ^ mask[j] == needle.masked[j])
                    {
                        let addr = at + i;
                        let dup = hit.at.last() == Some(&addr);
                        if !own.contains(&addr) && !dup {
                            hit.at.push(addr);
                        }
                    }
                }
            }
            buf[..n].zeroize();
            if n < want || at + n >= range.end {
                break;
            }
            at += n - OVERLAP;
        }
    }
    hits
}

/// The /proc/self/maps lines of the mappings holding `addrs`, for messages.
pub fn where_(addrs: &[&usize]) -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let mut out = String::new();
    for line in maps.lines() {
        let Some((a, b)) = line.split_once(' ').and_then(|(r, _)| r.split_once('-')) else {
            continue;
        };
        let (a, b) = (
            usize::from_str_radix(a, 16).unwrap(),
            usize::from_str_radix(b, 16).unwrap(),
        );
        if addrs.iter().any(|&&x| (a..b).contains(&x)) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

pub fn outside<'a>(hits: &'a [Hits], name: &str, locked: &Locked) -> Vec<&'a usize> {
    let h = hits.iter().find(|h| h.name == name).unwrap();
    h.at.iter().filter(|a| !locked.contains(a)).collect()
}

pub fn count(hits: &[Hits], name: &str) -> usize {
    hits.iter().find(|h| h.name == name).unwrap().at.len()
}

/// A mapping of `kib` KiB, excluded from dumps, locked in full, with an
/// inaccessible guard page below it (and above it, when `both_sides`).
pub fn guarded(maps: &[Mapping], i: usize, both_sides: bool) {
    let m = &maps[i];
    assert!(has_flag(m, "lo"), "not locked: {}", m.flags);
    assert_eq!(m.locked_kib * 1024, m.range.len(), "not locked in full");
    let mut neighbours = vec![&maps[i - 1]];
    if both_sides {
        neighbours.push(&maps[i + 1]);
    }
    for guard in neighbours {
        assert!(
            guard.range.end == m.range.start || guard.range.start == m.range.end,
            "no adjacent guard page"
        );
        assert!(
            !has_flag(guard, "rd") && !has_flag(guard, "wr"),
            "guard page accessible: {}",
            guard.flags
        );
    }
}

/// The provider's arena (the one mapping of the configured size) and its
/// secret stacks (of both depths), all locked, non-dumpable and guarded.
pub fn locked(arena_kib: usize) -> Locked {
    let maps = mappings();
    let sized = |kib: usize| -> Vec<usize> {
        (0..maps.len())
            .filter(|&i| maps[i].range.len() == kib * 1024 && has_flag(&maps[i], "dd"))
            .collect()
    };
    let arena = sized(arena_kib);
    assert_eq!(arena.len(), 1, "one {arena_kib} KiB non-dumpable mapping");
    guarded(&maps, arena[0], true);
    use p11derive::secure::Depth;
    let small = sized(Depth::Small.kib());
    let deep = sized(Depth::Deep.kib());
    assert!(
        small.len() >= 2 && deep.len() >= 2,
        "the secret stacks mapped at C_Initialize"
    );
    let stacks: Vec<usize> = small.into_iter().chain(deep).collect();
    for &i in &stacks {
        guarded(&maps, i, false);
    }
    Locked {
        arena: maps[arena[0]].range.clone(),
        stacks: stacks.iter().map(|&i| maps[i].range.clone()).collect(),
    }
}
