//! datatrove's quality heuristics, ported with its semantics, settings and reason strings, for
//! English text:
//!
//! | spec name           | datatrove class          | file          |
//! |---------------------|--------------------------|---------------|
//! | `gopher_quality`    | `GopherQualityFilter`    | gopher.rs     |
//! | `gopher_repetition` | `GopherRepetitionFilter` | gopher.rs     |
//! | `c4`                | `C4QualityFilter`        | c4.rs         |
//! | `fineweb`           | `FineWebQualityFilter`   | fineweb.rs    |
//!
//! Contract: each filter's settings are its datatrove constructor arguments with the same
//! defaults (minus `exclusion_writer` and `language`: English only), overridable key by key;
//! `judge` returns datatrove's own reason for a drop. Words and sentences come from
//! [`words`], a port of the spaCy tokenizer datatrove uses for English; lines, strips and
//! lengths follow Python's `str` methods (code points, Python's whitespace and line breaks),
//! helpers below. Where datatrove would raise (a ratio over zero words when a check that
//! guards it is turned off) the ratio here is IEEE (`inf` / `NaN`), never a panic.

pub mod c4;
pub mod fineweb;
pub mod gopher;
pub mod words;

pub use c4::C4Quality;
pub use fineweb::FineWebQuality;
pub use gopher::{GopherQuality, GopherRepetition};
use words::py_isspace;

/// A heuristic filter's resolved settings plus the digest of the word rules it splits with
/// (another spaCy may split differently: the lock must say which rules ran).
fn with_rules(mut settings: serde_json::Value, word_rules: &str) -> serde_json::Value {
    settings["word_rules"] = word_rules.into();
    settings
}

/// Python's `len(s)`: code points.
#[inline]
pub(crate) fn py_len(s: &str) -> usize {
    if s.is_ascii() {
        s.len()
    } else {
        s.chars().count()
    }
}

/// Python's `s.strip()`.
#[inline]
pub(crate) fn py_strip(s: &str) -> &str {
    s.trim_matches(py_isspace)
}

/// Python's `s.split()` (no argument).
pub(crate) fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(py_isspace).filter(|w| !w.is_empty())
}

/// Python's `s.splitlines()`.
pub(crate) fn py_splitlines(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0usize;
    let mut it = s.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        let brk = matches!(
            c,
            '\n' | '\r'
                | '\x0b'
                | '\x0c'
                | '\x1c'
                | '\x1d'
                | '\x1e'
                | '\u{85}'
                | '\u{2028}'
                | '\u{2029}'
        );
        if brk {
            out.push(&s[start..i]);
            let mut next = i + c.len_utf8();
            if c == '\r' {
                if let Some(&(_, '\n')) = it.peek() {
                    it.next();
                    next += 1;
                }
            }
            start = next;
        }
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

/// datatrove's `find_duplicates`: (duplicate elements, their code points).
pub(crate) fn find_duplicates(items: &[&str]) -> (usize, usize) {
    let mut seen = ahash::AHashSet::with_capacity(items.len());
    let (mut n, mut chars) = (0usize, 0usize);
    for &it in items {
        if !seen.insert(it) {
            n += 1;
            chars += py_len(it);
        }
    }
    (n, chars)
}

#[cfg(test)]
pub(crate) mod testdata {
    //! Real documents of the English test slice (python/tests/data), for the filters' tests.
    use std::io::BufRead;

    /// Load the English word rules for a test: from `$TINYLLAMA_WORD_RULES`, the folder
    /// `python -m tinyllama.data.word_rules` prints (`just test` sets it). They are spaCy's and
    /// datatrove's, not this repository's, so a test without them fails saying so.
    pub fn rules() {
        let dir = std::env::var("TINYLLAMA_WORD_RULES").expect(
            "set TINYLLAMA_WORD_RULES to the folder `python -m tinyllama.data.word_rules` \
             prints (just test does): the English word rules come from the installed spaCy",
        );
        super::words::load(std::path::Path::new(&dir)).expect("word rules load");
    }

    pub fn slimpajama() -> Vec<String> {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/python/tests/data/corpora/slimpajama/train/chunk1"
        );
        let mut docs = Vec::new();
        for name in [
            "example_train_0000.jsonl.zst",
            "example_train_0001.jsonl.zst",
        ] {
            let f = std::fs::File::open(format!("{dir}/{name}")).expect("test slice");
            let r = std::io::BufReader::new(zstd::Decoder::new(f).expect("zstd"));
            for line in r.lines() {
                let v: serde_json::Value =
                    serde_json::from_str(&line.expect("line")).expect("json");
                docs.push(v["text"].as_str().expect("text").to_string());
            }
        }
        docs
    }

    /// The first document of the slice that contains `needle`.
    pub fn doc_with(needle: &str) -> String {
        slimpajama()
            .into_iter()
            .find(|d| d.contains(needle))
            .unwrap_or_else(|| panic!("no test document contains {needle:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_string_helpers() {
        testdata::rules(); // Python's whitespace table comes with them
        assert_eq!(
            py_splitlines("a\r\nb\rc\n\nd\n"),
            vec!["a", "b", "c", "", "d"]
        );
        assert_eq!(py_splitlines(""), Vec::<&str>::new());
        assert_eq!(py_strip("\x1f a\u{a0}"), "a");
        assert_eq!(
            py_split(" a\tb\u{3000}c ").collect::<Vec<_>>(),
            vec!["a", "b", "c"]
        );
        assert_eq!(py_len("héllo"), 5);
        assert_eq!(find_duplicates(&["ab", "c", "ab", "ab"]), (2, 4));
    }
}
