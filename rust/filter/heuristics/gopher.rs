//! Gopher's quality and repetition rules (Rae et al. 2021, Table A1) as datatrove implements
//! them: `GopherQualityFilter` and `GopherRepetitionFilter`, same order of checks, same
//! reasons, same defaults. A ratio is computed as datatrove computes it (f64 of the counts),
//! and a setting of `false`/`0` turns its check off as `None`/`0` does in datatrove.

use super::words::{self, py_isalpha, tables};
use super::{find_duplicates, py_len, py_splitlines, py_strip};
use crate::error::Result;
use crate::filter::{DocFilter, Params};
use ahash::{AHashMap, AHashSet};
use serde_json::Value;

const NAME_QUALITY: &str = "gopher_quality";
const NAME_REPETITION: &str = "gopher_repetition";
const STOP_WORDS: [&str; 8] = ["the", "be", "to", "of", "and", "that", "have", "with"];

/// datatrove's `GopherQualityFilter`.
pub struct GopherQuality {
    min_doc_words: Option<f64>,
    max_doc_words: Option<f64>,
    min_avg_word_length: Option<f64>,
    max_avg_word_length: Option<f64>,
    max_symbol_word_ratio: Option<f64>,
    max_bullet_lines_ratio: Option<f64>,
    max_ellipsis_lines_ratio: Option<f64>,
    max_non_alpha_words_ratio: Option<f64>,
    min_stop_words: Option<f64>,
    stop_words: AHashSet<String>,
    settings: Value,
}

/// Python truthiness of an optional number: `None` and `0` turn the check off.
fn on(v: Option<f64>) -> Option<f64> {
    v.filter(|&x| x != 0.0)
}

impl GopherQuality {
    pub fn new(params: &Value) -> Result<Self> {
        let word_rules = super::words::require(NAME_QUALITY)?;
        let mut p = Params::new(NAME_QUALITY, params)?;
        let f = GopherQuality {
            min_doc_words: on(p.opt_f64("min_doc_words", Some(50.0))?),
            max_doc_words: on(p.opt_f64("max_doc_words", Some(100000.0))?),
            min_avg_word_length: on(p.opt_f64("min_avg_word_length", Some(3.0))?),
            max_avg_word_length: on(p.opt_f64("max_avg_word_length", Some(10.0))?),
            max_symbol_word_ratio: on(p.opt_f64("max_symbol_word_ratio", Some(0.1))?),
            max_bullet_lines_ratio: on(p.opt_f64("max_bullet_lines_ratio", Some(0.9))?),
            max_ellipsis_lines_ratio: on(p.opt_f64("max_ellipsis_lines_ratio", Some(0.3))?),
            max_non_alpha_words_ratio: on(p.opt_f64("max_non_alpha_words_ratio", Some(0.8))?),
            min_stop_words: on(p.opt_f64("min_stop_words", Some(2.0))?),
            stop_words: p.strings("stop_words", &STOP_WORDS)?.into_iter().collect(),
            settings: Value::Null,
        };
        Ok(GopherQuality {
            settings: super::with_rules(p.finish()?, word_rules),
            ..f
        })
    }
}

impl DocFilter for GopherQuality {
    fn name(&self) -> &str {
        NAME_QUALITY
    }
    fn settings(&self) -> Value {
        self.settings.clone()
    }
    fn judge(&self, text: &str) -> Option<String> {
        let drop = |r: &str| Some(r.to_string());
        let words = words::words(text);
        let n_words = words.len() as f64;
        let punct = &tables().punctuation;
        let (mut n_non_symbol, mut non_symbol_chars) = (0usize, 0usize);
        for w in &words {
            if w.chars().any(|c| !punct.contains(c)) {
                n_non_symbol += 1;
                non_symbol_chars += py_len(w);
            }
        }
        let n_ns = n_non_symbol as f64;
        if self.min_doc_words.is_some_and(|m| n_ns < m) {
            return drop("gopher_short_doc");
        }
        if self.max_doc_words.is_some_and(|m| n_ns > m) {
            return drop("gopher_long_doc");
        }
        // np.mean of no words is NaN: both comparisons fail, as in datatrove
        let avg = non_symbol_chars as f64 / n_ns;
        if self.min_avg_word_length.is_some_and(|m| avg < m) {
            return drop("gopher_below_avg_threshold");
        }
        if self.max_avg_word_length.is_some_and(|m| avg > m) {
            return drop("gopher_above_avg_threshold");
        }
        if let Some(m) = self.max_symbol_word_ratio {
            if text.matches('#').count() as f64 / n_words > m {
                return drop("gopher_too_many_hashes");
            }
            let ellipses = text.matches("...").count() + text.matches('…').count();
            if ellipses as f64 / n_words > m {
                return drop("gopher_too_many_ellipsis");
            }
        }
        let lines = py_splitlines(text);
        let n_lines = lines.len() as f64;
        if let Some(m) = self.max_bullet_lines_ratio {
            let bullets = lines
                .iter()
                .filter(|l| {
                    let l = l.trim_start_matches(words::py_isspace);
                    l.starts_with('•') || l.starts_with('-')
                })
                .count();
            if bullets as f64 / n_lines > m {
                return drop("gopher_too_many_bullets");
            }
        }
        if let Some(m) = self.max_ellipsis_lines_ratio {
            let ends = lines
                .iter()
                .filter(|l| {
                    let l = l.trim_end_matches(words::py_isspace);
                    l.ends_with("...") || l.ends_with('…')
                })
                .count();
            if ends as f64 / n_lines > m {
                return drop("gopher_too_many_end_ellipsis");
            }
        }
        if let Some(m) = self.max_non_alpha_words_ratio {
            let alpha = words.iter().filter(|w| w.chars().any(py_isalpha)).count();
            if (alpha as f64 / n_words) < m {
                return drop("gopher_below_alpha_threshold");
            }
        }
        if let Some(m) = self.min_stop_words {
            let found: AHashSet<&str> = words
                .iter()
                .copied()
                .filter(|w| self.stop_words.contains(*w))
                .collect();
            if (found.len() as f64) < m {
                return drop("gopher_enough_stop_words");
            }
        }
        None
    }
}

/// datatrove's `GopherRepetitionFilter`.
pub struct GopherRepetition {
    dup_line_frac: Option<f64>,
    dup_para_frac: Option<f64>,
    dup_line_char_frac: Option<f64>,
    dup_para_char_frac: Option<f64>,
    top_n_grams: Vec<(usize, f64)>,
    dup_n_grams: Vec<(usize, f64)>,
    settings: Value,
}

impl GopherRepetition {
    pub fn new(params: &Value) -> Result<Self> {
        let word_rules = super::words::require(NAME_REPETITION)?;
        let mut p = Params::new(NAME_REPETITION, params)?;
        let f = GopherRepetition {
            dup_line_frac: on(p.opt_f64("dup_line_frac", Some(0.3))?),
            dup_para_frac: on(p.opt_f64("dup_para_frac", Some(0.3))?),
            dup_line_char_frac: on(p.opt_f64("dup_line_char_frac", Some(0.2))?),
            dup_para_char_frac: on(p.opt_f64("dup_para_char_frac", Some(0.2))?),
            top_n_grams: p.pairs("top_n_grams", &[(2, 0.2), (3, 0.18), (4, 0.16)])?,
            dup_n_grams: p.pairs(
                "dup_n_grams",
                &[
                    (5, 0.15),
                    (6, 0.14),
                    (7, 0.13),
                    (8, 0.12),
                    (9, 0.11),
                    (10, 0.10),
                ],
            )?,
            settings: Value::Null,
        };
        Ok(GopherRepetition {
            settings: super::with_rules(p.finish()?, word_rules),
            ..f
        })
    }
}

/// `re.split(r"\n{2,}", s)` (`min_run` 2) or `re.split("\n+", s)` (`min_run` 1).
fn split_newline_runs(s: &str, min_run: usize) -> Vec<&str> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let (mut start, mut i) = (0usize, 0usize);
    while i < b.len() {
        if b[i] == b'\n' {
            let mut j = i;
            while j < b.len() && b[j] == b'\n' {
                j += 1;
            }
            if j - i >= min_run {
                out.push(&s[start..i]);
                start = j;
            }
            i = j;
        } else {
            i += 1;
        }
    }
    out.push(&s[start..]);
    out
}

/// Words laid end to end (`sep` between them) with the byte and code point offset of each,
/// so that an n-gram `sep.join(words[i..i+n])` is the slice between offsets `i` and `i+n`.
struct Joined {
    buf: String,
    byte: Vec<usize>,
    chars: Vec<usize>,
}

impl Joined {
    fn new(words: &[&str], sep: &str) -> Self {
        let mut j = Joined {
            buf: String::with_capacity(words.iter().map(|w| w.len() + 1).sum()),
            byte: Vec::with_capacity(words.len() + 1),
            chars: Vec::with_capacity(words.len() + 1),
        };
        let mut c = 0usize;
        for w in words {
            j.byte.push(j.buf.len());
            j.chars.push(c);
            j.buf.push_str(w);
            j.buf.push_str(sep);
            c += py_len(w) + py_len(sep);
        }
        j.byte.push(j.buf.len());
        j.chars.push(c);
        j
    }
    /// The n-gram of words `i..i+n` (without the trailing separator) and its code points.
    #[inline]
    fn gram(&self, i: usize, n: usize, sep_len: usize) -> (&str, usize) {
        let end = self.byte[i + n] - sep_len;
        (
            &self.buf[self.byte[i]..end],
            self.chars[i + n] - self.chars[i] - sep_len,
        )
    }
}

/// datatrove's `find_top_duplicate(get_n_grams(words, n))`: code points of the most frequent
/// n-gram times its count (ties: the first seen, as `Counter.most_common(1)`).
fn top_duplicate(spaced: &Joined, n_words: usize, n: usize) -> Option<usize> {
    if n_words < n {
        return None;
    }
    let mut counts: AHashMap<&str, (usize, usize, usize)> = AHashMap::new();
    for i in 0..=n_words - n {
        let (g, chars) = spaced.gram(i, n, 1);
        counts.entry(g).or_insert((0, i, chars)).0 += 1;
    }
    let best = counts
        .values()
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
        .expect("at least one n-gram");
    Some(best.0 * best.2)
}

/// datatrove's `find_all_duplicate(words, n)`: code points of the n-grams (words glued with
/// no separator) already seen, skipping past each repeat.
fn all_duplicate(glued: &Joined, n_words: usize, n: usize) -> usize {
    let mut seen: AHashSet<&str> = AHashSet::new();
    let (mut repeated, mut idx) = (0usize, 0usize);
    while idx + n <= n_words {
        let (g, chars) = glued.gram(idx, n, 0);
        if seen.contains(g) {
            repeated += chars;
            idx += n;
        } else {
            seen.insert(g);
            idx += 1;
        }
    }
    repeated
}

impl DocFilter for GopherRepetition {
    fn name(&self) -> &str {
        NAME_REPETITION
    }
    fn settings(&self) -> Value {
        self.settings.clone()
    }
    fn judge(&self, text: &str) -> Option<String> {
        if text.is_empty() {
            return Some("empty".into());
        }
        let text_len = py_len(text) as f64;
        let paragraphs = split_newline_runs(py_strip(text), 2);
        let (dups, chars) = find_duplicates(&paragraphs);
        if self
            .dup_para_frac
            .is_some_and(|m| dups as f64 / paragraphs.len() as f64 > m)
        {
            return Some("dup_para_frac".into());
        }
        if self
            .dup_para_char_frac
            .is_some_and(|m| chars as f64 / text_len > m)
        {
            return Some("dup_para_char_frac".into());
        }
        let lines = split_newline_runs(text, 1);
        let (dups, chars) = find_duplicates(&lines);
        if self
            .dup_line_frac
            .is_some_and(|m| dups as f64 / lines.len() as f64 > m)
        {
            return Some("dup_line_frac".into());
        }
        if self
            .dup_line_char_frac
            .is_some_and(|m| chars as f64 / text_len > m)
        {
            return Some("dup_line_char_frac".into());
        }
        let words = words::words(text);
        let n_words = words.len();
        if !self.top_n_grams.is_empty() {
            let spaced = Joined::new(&words, " ");
            for &(n, frac) in &self.top_n_grams {
                if let Some(top) = top_duplicate(&spaced, n_words, n) {
                    if top as f64 / text_len > frac {
                        return Some(format!("top_{n}_gram"));
                    }
                }
            }
        }
        if !self.dup_n_grams.is_empty() {
            let glued = Joined::new(&words, "");
            for &(n, frac) in &self.dup_n_grams {
                if all_duplicate(&glued, n_words, n) as f64 / text_len > frac {
                    return Some(format!("duplicated_{n}_n_grams"));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::testdata::doc_with;
    use super::*;
    use serde_json::json;

    fn q(params: Value) -> GopherQuality {
        super::super::testdata::rules();
        GopherQuality::new(&params).unwrap()
    }
    fn r(params: Value) -> GopherRepetition {
        super::super::testdata::rules();
        GopherRepetition::new(&params).unwrap()
    }

    #[test]
    fn quality_keeps_and_drops_real_text_for_each_reason() {
        // A real anecdote of the slice that datatrove keeps (checked with datatrove 0.10).
        let doc = doc_with("A circus foreman was making the rounds");
        assert_eq!(q(json!({})).judge(&doc), None);
        let first_line = doc.lines().next().unwrap();
        let short: Vec<&str> = doc.split(' ').take(30).collect();
        assert_eq!(
            q(json!({})).judge(&short.join(" ")).as_deref(),
            Some("gopher_short_doc")
        );
        assert_eq!(
            q(json!({"max_doc_words": 60})).judge(&doc).as_deref(),
            Some("gopher_long_doc")
        );
        assert_eq!(
            q(json!({"min_avg_word_length": 6})).judge(&doc).as_deref(),
            Some("gopher_below_avg_threshold")
        );
        assert_eq!(
            q(json!({"max_avg_word_length": 3})).judge(&doc).as_deref(),
            Some("gopher_above_avg_threshold")
        );
        let hashes = doc.replace(' ', " #");
        assert_eq!(
            q(json!({})).judge(&hashes).as_deref(),
            Some("gopher_too_many_hashes")
        );
        let dots = doc
            .replace(". ", "... ")
            .replace(", ", "... ")
            .replace("; ", "... ");
        assert_eq!(
            q(json!({"max_symbol_word_ratio": 0.05}))
                .judge(&dots)
                .as_deref(),
            Some("gopher_too_many_ellipsis")
        );
        let bullets: String = doc.lines().map(|l| format!("- {l}\n")).collect();
        assert_eq!(
            q(json!({})).judge(&bullets).as_deref(),
            Some("gopher_too_many_bullets")
        );
        let ends: String = doc.lines().map(|l| format!("{l}...\n")).collect();
        assert_eq!(
            q(json!({"max_symbol_word_ratio": false}))
                .judge(&ends)
                .as_deref(),
            Some("gopher_too_many_end_ellipsis")
        );
        let numbers = format!("{doc} {}", "1 2 3 4 5 6 7 8 9 10 ".repeat(10));
        assert_eq!(
            q(json!({})).judge(&numbers).as_deref(),
            Some("gopher_below_alpha_threshold")
        );
        assert_eq!(
            q(json!({"stop_words": ["foreman", "zebra", "quokka"], "min_stop_words": 2}))
                .judge(&doc)
                .as_deref(),
            Some("gopher_enough_stop_words")
        );
        assert!(!first_line.is_empty());
    }

    #[test]
    fn repetition_keeps_and_drops_real_text_for_each_reason() {
        let doc = doc_with("A circus foreman was making the rounds");
        assert_eq!(r(json!({})).judge(&doc), None);
        assert_eq!(r(json!({})).judge("").as_deref(), Some("empty"));
        let paras = format!("{doc}\n\n{doc}\n\n{doc}");
        assert_eq!(r(json!({})).judge(&paras).as_deref(), Some("dup_para_frac"));
        assert_eq!(
            r(json!({"dup_para_frac": false})).judge(&paras).as_deref(),
            Some("dup_para_char_frac")
        );
        let line = doc.lines().next().unwrap();
        let lines = format!("{doc}{}", format!("\n{line}").repeat(12));
        let off = json!({"dup_para_frac": false, "dup_para_char_frac": false});
        assert_eq!(
            r(off.clone()).judge(&lines).as_deref(),
            Some("dup_line_frac")
        );
        let mut off2 = off.clone();
        off2["dup_line_frac"] = json!(false);
        assert_eq!(
            r(off2.clone()).judge(&lines).as_deref(),
            Some("dup_line_char_frac")
        );
        let glued = format!("{doc} {}", doc.replace('\n', " "));
        off2["dup_line_char_frac"] = json!(false);
        let chant = format!("{doc} {}", "the foreman ".repeat(60));
        assert_eq!(r(off2.clone()).judge(&chant).as_deref(), Some("top_2_gram"));
        off2["top_n_grams"] = json!([]);
        assert_eq!(
            r(off2.clone()).judge(&glued).as_deref(),
            Some("duplicated_5_n_grams")
        );
        assert!(GopherRepetition::new(&json!({"top_n_grams": [[0, 0.1]]})).is_err());
    }

    #[test]
    fn ngram_helpers_follow_datatrove() {
        let words = ["a", "b", "a", "b", "ccc", "a", "b"];
        let spaced = Joined::new(&words, " ");
        // "a b" x3 = 3 * 3 code points
        assert_eq!(top_duplicate(&spaced, words.len(), 2), Some(9));
        let glued = Joined::new(&words, "");
        // "ab" seen at 0, again at 2 (+2, skip to 4), "ccca" new, "ab" at 5 (+2)
        assert_eq!(all_duplicate(&glued, words.len(), 2), 4);
        assert_eq!(
            split_newline_runs("a\n\nb\n\n\nc\nd", 2),
            vec!["a", "b", "c\nd"]
        );
        assert_eq!(split_newline_runs("\na\n\nb\n", 1), vec!["", "a", "b", ""]);
    }
}
