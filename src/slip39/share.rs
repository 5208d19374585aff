//! One share as mnemonic words: SLIP-39's layout, 10-bit word packing and RS1024 checksum.
//!
//! Words, 10 bits each: identifier (15 bits), extendable flag (1), iteration
//! exponent (4); group index, group threshold - 1, group count - 1, member
//! index, member threshold - 1 (4 bits each); the share value, left-padded
//! with zero bits to whole words; 3 checksum words (RS1024 over the
//! customization string "shamir" or "shamir_extendable" and the words).

use zeroize::Zeroize;

use super::wordlist::{self, MAX_WORD};
use super::Error;
use crate::secure::{self, SecretBytes};

/// Words before the value: identifier/flags/exponent (2), group and member
/// parameters (2).
const HEADER_WORDS: usize = 4;
const CHECKSUM_WORDS: usize = 3;
/// The shortest share: a 128-bit value (13 words).
const MIN_VALUE_WORDS: usize = 13;
/// The longest value accepted when reading (1024 bits), a bound on memory.
const MAX_VALUE_WORDS: usize = 103;

/// One decoded share.
pub struct Share {
    pub identifier: u16,
    pub extendable: bool,
    pub iteration_exponent: u8,
    pub group_index: u8,
    pub group_threshold: u8,
    pub group_count: u8,
    pub member_index: u8,
    pub member_threshold: u8,
    pub(super) value: SecretBytes,
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Share {{ set {}, group {} of {} (need {}), member {} (need {}), {} bytes }}",
            self.identifier,
            self.group_index + 1,
            self.group_count,
            self.group_threshold,
            self.member_index + 1,
            self.member_threshold,
            self.value.len()
        )
    }
}

/// The RS1024 checksum state, fed one 10-bit value at a time.
struct Rs1024(u32);

impl Rs1024 {
    const GEN: [u32; 10] = [
        0x00E0_E040,
        0x01C1_C080,
        0x0383_8100,
        0x0707_0200,
        0x0E0E_0009,
        0x1C0C_2412,
        0x3808_6C24,
        0x3090_FC48,
        0x21B1_F890,
        0x03F3_F120,
    ];

    fn new(extendable: bool) -> Rs1024 {
        let custom: &[u8] = if extendable {
            b"shamir_extendable"
        } else {
            b"shamir"
        };
        let mut s = Rs1024(1);
        for &b in custom {
            s.feed(u16::from(b));
        }
        s
    }

    fn feed(&mut self, v: u16) {
        let top = self.0 >> 20;
        self.0 = ((self.0 & 0x000F_FFFF) << 10) ^ u32::from(v);
        for (i, g) in Self::GEN.iter().enumerate() {
            self.0 ^= g & 0u32.wrapping_sub((top >> i) & 1);
        }
    }

    /// The 3 checksum words for the values fed so far.
    fn checksum(mut self) -> [u16; CHECKSUM_WORDS] {
        for _ in 0..CHECKSUM_WORDS {
            self.feed(0);
        }
        let pm = self.0 ^ 1;
        self.0.zeroize();
        [
            (pm >> 20) as u16 & 1023,
            (pm >> 10) as u16 & 1023,
            pm as u16 & 1023,
        ]
    }
}

impl Drop for Rs1024 {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl Share {
    fn header(&self) -> [u16; HEADER_WORDS] {
        let id = (u32::from(self.identifier & 0x7fff) << 5)
            | (u32::from(self.extendable) << 4)
            | u32::from(self.iteration_exponent & 15);
        let params = (u32::from(self.group_index) << 16)
            | (u32::from(self.group_threshold - 1) << 12)
            | (u32::from(self.group_count - 1) << 8)
            | (u32::from(self.member_index) << 4)
            | u32::from(self.member_threshold - 1);
        [
            (id >> 10) as u16,
            (id & 1023) as u16,
            (params >> 10) as u16,
            (params & 1023) as u16,
        ]
    }

    /// The share as words, single spaces, in locked memory.
    pub fn mnemonic(&self) -> Result<SecretBytes, String> {
        // On a secret stack: the word indices pass through locals.
        secure::confined(|| self.encode())
    }

    fn encode(&self) -> Result<SecretBytes, String> {
        let value_words = (self.value.len() * 8).div_ceil(10);
        let words = HEADER_WORDS + value_words + CHECKSUM_WORDS;
        let mut out = SecretBytes::with_capacity(words * (MAX_WORD + 1))?;
        let mut sum = Rs1024::new(self.extendable);
        let mut put = |out: &mut SecretBytes, index: u16| {
            append_word(out, index);
            sum.feed(index);
        };
        for w in self.header() {
            put(&mut out, w);
        }
        // The value, big-endian, after `pad` zero bits that fill the first word.
        let pad = value_words * 10 - self.value.len() * 8;
        let (mut acc, mut bits) = (0u32, pad);
        for &b in self.value.iter() {
            acc = (acc << 8) | u32::from(b);
            bits += 8;
            if bits >= 10 {
                bits -= 10;
                put(&mut out, ((acc >> bits) & 1023) as u16);
                acc &= (1 << bits) - 1;
            }
        }
        acc.zeroize();
        debug_assert_eq!(bits, 0);
        let mut check = sum.checksum();
        for &w in &check {
            append_word(&mut out, w);
        }
        check.zeroize();
        Ok(out)
    }

    /// Reads a share from its words (whitespace-separated, any case).
    pub fn from_mnemonic(text: &[u8]) -> Result<Share, Error> {
        secure::confined(|| Share::decode(text))
    }

    fn decode(text: &[u8]) -> Result<Share, Error> {
        let count = text
            .split(u8::is_ascii_whitespace)
            .filter(|w| !w.is_empty())
            .count();
        let fixed = HEADER_WORDS + CHECKSUM_WORDS;
        if !(fixed + MIN_VALUE_WORDS..=fixed + MAX_VALUE_WORDS).contains(&count) {
            return Err(Error::Length(count));
        }
        let value_words = count - HEADER_WORDS - CHECKSUM_WORDS;
        let pad = (value_words * 10) % 16;
        if pad > 8 {
            return Err(Error::Length(count));
        }
        let value_len = (value_words * 10 - pad) / 8;
        let mut value = SecretBytes::with_capacity(value_len).map_err(Error::Memory)?;
        let mut header = [0u16; HEADER_WORDS];
        let mut first = true;
        let mut sum: Option<Rs1024> = None;
        let (mut acc, mut bits) = (0u32, 0usize);
        let mut padding_ok = true;
        let words = text
            .split(u8::is_ascii_whitespace)
            .filter(|w| !w.is_empty());
        for (position, typed) in words.enumerate() {
            let index = lookup(position + 1, typed)?;
            if position < HEADER_WORDS {
                header[position] = index;
            }
            if position == 1 {
                // The second word holds the extendable flag, which picks the
                // checksum's customization string.
                let mut s = Rs1024::new((index >> 4) & 1 == 1);
                s.feed(header[0]);
                s.feed(index);
                sum = Some(s);
                continue;
            }
            if let Some(s) = sum.as_mut() {
                s.feed(index);
            }
            if position < HEADER_WORDS || position >= HEADER_WORDS + value_words {
                continue;
            }
            acc = (acc << 10) | u32::from(index);
            bits += 10;
            if first {
                first = false;
                bits -= pad;
                padding_ok = acc >> bits == 0;
                acc &= (1 << bits) - 1;
            }
            while bits >= 8 {
                bits -= 8;
                value.push(&[(acc >> bits) as u8]);
                acc &= (1 << bits) - 1;
            }
        }
        acc.zeroize();
        let checksum_ok = sum.as_ref().is_some_and(|s| s.0 == 1);
        drop(sum);
        if !checksum_ok {
            return Err(Error::Checksum);
        }
        if !padding_ok {
            return Err(Error::Padding);
        }
        let id = (u32::from(header[0]) << 10) | u32::from(header[1]);
        let params = (u32::from(header[2]) << 10) | u32::from(header[3]);
        let nibble = |shift: u32| ((params >> shift) & 15) as u8;
        let share = Share {
            identifier: (id >> 5) as u16,
            extendable: (id >> 4) & 1 == 1,
            iteration_exponent: (id & 15) as u8,
            group_index: nibble(16),
            group_threshold: nibble(12) + 1,
            group_count: nibble(8) + 1,
            member_index: nibble(4),
            member_threshold: nibble(0) + 1,
            value,
        };
        if share.group_threshold > share.group_count {
            return Err(Error::Invalid(format!(
                "the share says {} groups are needed of {}: it is damaged or not a SLIP-39 \
                 share; check its words",
                share.group_threshold, share.group_count
            )));
        }
        if share.group_index >= share.group_count {
            return Err(Error::Invalid(format!(
                "the share is of group {} of {}: it is damaged or not a SLIP-39 share; check \
                 its words",
                share.group_index + 1,
                share.group_count
            )));
        }
        Ok(share)
    }

    /// The share set's identifier, in decimal (the same on every share of a set).
    pub fn set_id(&self) -> String {
        self.identifier.to_string()
    }

    /// The share value (secret).
    pub(super) fn value(&self) -> &[u8] {
        &self.value
    }
}

/// Appends a word, after a space unless it is the first.
fn append_word(out: &mut SecretBytes, index: u16) {
    if !out.is_empty() {
        out.push(b" ");
    }
    out.push(wordlist::word(index).as_bytes());
}

/// The index of the word at `position` (1-based), lower-cased on the stack.
fn lookup(position: usize, typed: &[u8]) -> Result<u16, Error> {
    let mut lower = [0u8; MAX_WORD];
    let found = if typed.len() <= MAX_WORD {
        for (l, t) in lower.iter_mut().zip(typed) {
            *l = t.to_ascii_lowercase();
        }
        wordlist::index_of(&lower[..typed.len()])
    } else {
        None
    };
    lower.zeroize();
    found.ok_or_else(|| {
        // Not a SLIP-39 word: named (with the word it was probably meant to
        // be) when it looks like one typed wrong: letters only, at most a few
        // more than the longest word. A token with other characters, or
        // longer, may be real words run together (a comma between them):
        // its letters are share material, so only its position is said.
        let word_like = typed.len() <= MAX_WORD + 4 && typed.iter().all(u8::is_ascii_alphabetic);
        let shown: String = if word_like {
            String::from_utf8_lossy(typed).to_lowercase()
        } else {
            String::new()
        };
        Error::Word {
            position,
            suggestion: wordlist::suggestion(shown.as_bytes()),
            word: shown,
        }
    })
}
