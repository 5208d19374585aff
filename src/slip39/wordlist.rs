//! The SLIP-39 wordlist: 1024 words of 4 to 8 letters, sorted, each known by its first 4 letters.

use std::sync::OnceLock;

/// The list as SLIP-0039 publishes it (taken from the reference package).
const TEXT: &str = include_str!("wordlist.txt");

/// The number of words: one word carries 10 bits.
pub const RADIX: usize = 1024;

/// The longest word, in bytes.
pub const MAX_WORD: usize = 8;

fn words() -> &'static [&'static str] {
    static WORDS: OnceLock<Vec<&'static str>> = OnceLock::new();
    WORDS.get_or_init(|| {
        TEXT.lines()
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .collect()
    })
}

/// The word for a 10-bit index.
pub fn word(index: u16) -> &'static str {
    words()[index as usize & (RADIX - 1)]
}

/// The index of a word given in lower case (an exact match only).
pub fn index_of(word: &[u8]) -> Option<u16> {
    words()
        .binary_search_by(|w| w.as_bytes().cmp(word))
        .ok()
        .map(|i| i as u16)
}

/// The word that starts with the same 4 letters as `typed`, when one does
/// (a hint for a mistyped word; SLIP-39 words differ in their first 4).
pub fn suggestion(typed: &[u8]) -> Option<&'static str> {
    let prefix = typed.get(..4)?;
    words()
        .iter()
        .find(|w| w.as_bytes().starts_with(prefix))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_has_1024_sorted_words_with_unique_4_letter_prefixes() {
        let w = words();
        assert_eq!(w.len(), RADIX);
        for pair in w.windows(2) {
            assert!(pair[0] < pair[1], "not sorted: {} {}", pair[0], pair[1]);
            assert_ne!(pair[0].get(..4), pair[1].get(..4), "shared prefix");
        }
        for word in w {
            assert!((4..=MAX_WORD).contains(&word.len()), "{word}");
            assert!(word.bytes().all(|b| b.is_ascii_lowercase()), "{word}");
        }
        assert_eq!(word(0), "academic");
        assert_eq!(word(1023), "zero");
        assert_eq!(index_of(b"academic"), Some(0));
        assert_eq!(index_of(b"acad"), None);
        assert_eq!(suggestion(b"acadmic"), Some("academic"));
        assert_eq!(suggestion(b"xyzzy"), None);
    }
}
