//! FineWeb's extra page rules (Penedo et al. 2024) as datatrove's `FineWebQualityFilter`
//! implements them: the share of non-blank lines ending in terminal punctuation, the share of
//! short lines, the share of characters in duplicated lines, and newlines per word.

use super::words::{self, tables};
use super::{find_duplicates, py_len, py_strip};
use crate::error::Result;
use crate::filter::{DocFilter, Params};
use serde_json::Value;

const NAME: &str = "fineweb";

/// datatrove's `FineWebQualityFilter`.
pub struct FineWebQuality {
    line_punct_thr: f64,
    line_punct_exclude_zero: bool,
    stop_chars: Vec<String>,
    short_line_thr: f64,
    short_line_length: usize,
    char_duplicates_ratio: f64,
    new_line_ratio: f64,
    settings: Value,
}

impl FineWebQuality {
    pub fn new(params: &Value) -> Result<Self> {
        let word_rules = super::words::require(NAME)?;
        let mut p = Params::new(NAME, params)?;
        let default_stop: Vec<&str> = tables()
            .terminal_punctuation
            .iter()
            .map(String::as_str)
            .collect();
        let f = FineWebQuality {
            line_punct_thr: p.f64("line_punct_thr", 0.12)?,
            line_punct_exclude_zero: p.bool("line_punct_exclude_zero", false)?,
            stop_chars: p.strings("stop_chars", &default_stop)?,
            short_line_thr: p.f64("short_line_thr", 0.67)?,
            short_line_length: p.usize("short_line_length", 30)?,
            char_duplicates_ratio: p.f64("char_duplicates_ratio", 0.01)?,
            new_line_ratio: p.f64("new_line_ratio", 0.3)?,
            settings: Value::Null,
        };
        Ok(FineWebQuality {
            settings: super::with_rules(p.finish()?, word_rules),
            ..f
        })
    }

    fn ends_with_stop(&self, line: &str) -> bool {
        self.stop_chars
            .iter()
            .any(|s| !s.is_empty() && line.ends_with(s.as_str()))
            // Python's str.endswith(("", ...)) is true for the empty suffix
            || self.stop_chars.iter().any(String::is_empty)
    }
}

impl DocFilter for FineWebQuality {
    fn name(&self) -> &str {
        NAME
    }
    fn settings(&self) -> Value {
        self.settings.clone()
    }
    fn judge(&self, text: &str) -> Option<String> {
        let lines: Vec<&str> = text
            .split('\n')
            .filter(|l| !py_strip(l).is_empty())
            .collect();
        if lines.is_empty() {
            return Some("empty".into());
        }
        let n = lines.len() as f64;
        let ratio = lines.iter().filter(|l| self.ends_with_stop(l)).count() as f64 / n;
        if ratio < self.line_punct_thr && !(ratio == 0.0 && self.line_punct_exclude_zero) {
            return Some("line_punct_ratio".into());
        }
        let short = lines
            .iter()
            .filter(|l| py_len(l) <= self.short_line_length)
            .count() as f64;
        if short / n > self.short_line_thr {
            return Some("short_line_ratio".into());
        }
        let chars = py_len(text) - text.matches('\n').count();
        if find_duplicates(&lines).1 as f64 / chars as f64 > self.char_duplicates_ratio {
            return Some("char_dup_ratio".into());
        }
        let n_words = words::words(text).len() as f64;
        if text.matches('\n').count() as f64 / n_words > self.new_line_ratio {
            return Some("list_ratio".into());
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::testdata::doc_with;
    use super::*;
    use serde_json::json;

    fn fw(params: Value) -> FineWebQuality {
        super::super::testdata::rules();
        FineWebQuality::new(&params).unwrap()
    }

    #[test]
    fn keeps_and_drops_real_text_for_each_reason() {
        // A real anecdote of the slice that datatrove keeps (checked with datatrove 0.10).
        let doc = doc_with("A circus foreman was making the rounds");
        assert_eq!(fw(json!({})).judge(&doc), None);
        assert_eq!(fw(json!({})).judge(" \n\t\n").as_deref(), Some("empty"));
        assert_eq!(
            fw(json!({"line_punct_thr": 0.9})).judge(&doc).as_deref(),
            Some("line_punct_ratio")
        );
        assert_eq!(
            fw(json!({"stop_chars": ["%"], "line_punct_exclude_zero": true})).judge(&doc),
            None
        );
        assert_eq!(
            fw(json!({"short_line_length": 100})).judge(&doc).as_deref(),
            Some("short_line_ratio")
        );
        let line = doc.lines().nth(1).unwrap();
        let dup = format!("{doc}\n{line}");
        assert_eq!(fw(json!({})).judge(&dup).as_deref(), Some("char_dup_ratio"));
        assert_eq!(
            fw(json!({"new_line_ratio": 0.05})).judge(&doc).as_deref(),
            Some("list_ratio")
        );
    }
}
