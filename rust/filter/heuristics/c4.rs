//! C4's page rules (Raffel et al. 2020) as datatrove's `C4QualityFilter` implements them:
//! line by line (`splitlines`, or spaCy sentences with `split_paragraph = false`), drop lines
//! with an over-long word, strip Wikipedia citations, drop lines without terminal punctuation
//! or with fewer than `min_words_per_line` words, with "javascript" or a policy phrase; drop
//! the page on "lorem ipsum" or a curly bracket, or when the kept lines hold fewer than
//! `min_num_sentences` sentences. Integer settings take `-1` to turn a check off, as there.
//! datatrove also rewrites the kept text; a filter here only judges, so that part is not ported.

use super::words;
use super::{py_len, py_split, py_splitlines, py_strip};
use crate::error::Result;
use crate::filter::{DocFilter, Params};
use fancy_regex::Regex;
use serde_json::Value;
use std::borrow::Cow;
use std::sync::OnceLock;

const NAME: &str = "c4";
const END_PUNCTUATION: [char; 5] = ['.', '?', '!', '"', '\''];
const POLICY_SUBSTRINGS: [&str; 6] = [
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
];

fn citation() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| Regex::new(r"\[\d*]|\[edit]|\[citation needed]").expect("citation regex"))
}

/// datatrove's `C4QualityFilter`.
pub struct C4Quality {
    split_paragraph: bool,
    remove_citations: bool,
    filter_no_terminal_punct: bool,
    min_num_sentences: i64,
    min_words_per_line: i64,
    max_word_length: i64,
    filter_lorem_ipsum: bool,
    filter_javascript: bool,
    filter_curly_bracket: bool,
    filter_policy: bool,
    settings: Value,
}

impl C4Quality {
    pub fn new(params: &Value) -> Result<Self> {
        let word_rules = super::words::require(NAME)?;
        let mut p = Params::new(NAME, params)?;
        let f = C4Quality {
            split_paragraph: p.bool("split_paragraph", true)?,
            remove_citations: p.bool("remove_citations", true)?,
            filter_no_terminal_punct: p.bool("filter_no_terminal_punct", true)?,
            min_num_sentences: p.i64("min_num_sentences", 5)?,
            min_words_per_line: p.i64("min_words_per_line", 3)?,
            max_word_length: p.i64("max_word_length", 1000)?,
            filter_lorem_ipsum: p.bool("filter_lorem_ipsum", true)?,
            filter_javascript: p.bool("filter_javascript", true)?,
            filter_curly_bracket: p.bool("filter_curly_bracket", true)?,
            filter_policy: p.bool("filter_policy", true)?,
            settings: Value::Null,
        };
        Ok(C4Quality {
            settings: super::with_rules(p.finish()?, word_rules),
            ..f
        })
    }
}

impl DocFilter for C4Quality {
    fn name(&self) -> &str {
        NAME
    }
    fn settings(&self) -> Value {
        self.settings.clone()
    }
    fn judge(&self, text: &str) -> Option<String> {
        let lines = if self.split_paragraph {
            py_splitlines(text)
        } else {
            words::sentences(text)
        };
        let mut num_sentences: i64 = 0;
        for line in lines {
            let line = py_strip(line);
            let n_words = if self.max_word_length != -1 {
                let mut n = 0i64;
                let mut too_long = false;
                for w in py_split(line) {
                    n += 1;
                    too_long |= py_len(w) as i64 > self.max_word_length;
                }
                if too_long {
                    continue;
                }
                n
            } else {
                py_split(line).count() as i64
            };
            let line: Cow<str> = if self.remove_citations && line.contains('[') {
                citation().replace_all(line, "")
            } else {
                Cow::Borrowed(line)
            };
            if self.filter_no_terminal_punct
                && (!line.ends_with(END_PUNCTUATION) || line.ends_with("..."))
            {
                continue;
            }
            if n_words < self.min_words_per_line {
                continue;
            }
            let lower = line.to_lowercase();
            if self.filter_lorem_ipsum && lower.contains("lorem ipsum") {
                return Some("lorem_ipsum".into());
            }
            if self.filter_javascript && lower.contains("javascript") {
                continue;
            }
            if self.filter_curly_bracket && line.contains('{') {
                return Some("curly_bracket".into());
            }
            if self.filter_policy && POLICY_SUBSTRINGS.iter().any(|p| lower.contains(p)) {
                continue;
            }
            if self.min_num_sentences != -1 {
                num_sentences += if self.split_paragraph {
                    words::count_sentences(&line) as i64
                } else {
                    1
                };
            }
        }
        if num_sentences < self.min_num_sentences {
            return Some("too_few_sentences".into());
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::testdata::doc_with;
    use super::*;
    use serde_json::json;

    fn c4(params: Value) -> C4Quality {
        super::super::testdata::rules();
        C4Quality::new(&params).unwrap()
    }

    #[test]
    fn keeps_and_drops_real_text_for_each_reason() {
        // A real anecdote of the slice that datatrove keeps (checked with datatrove 0.10).
        let doc = doc_with("A circus foreman was making the rounds");
        assert_eq!(c4(json!({})).judge(&doc), None);
        assert_eq!(c4(json!({"split_paragraph": false})).judge(&doc), None);
        assert_eq!(
            c4(json!({"min_num_sentences": 50})).judge(&doc).as_deref(),
            Some("too_few_sentences")
        );
        assert_eq!(c4(json!({"min_num_sentences": -1})).judge("no"), None);
        let lorem = format!("{doc}\nLorem ipsum dolor sit amet.");
        assert_eq!(c4(json!({})).judge(&lorem).as_deref(), Some("lorem_ipsum"));
        let curly = format!("{doc}\nThe act uses {{braces}} here.");
        assert_eq!(
            c4(json!({})).judge(&curly).as_deref(),
            Some("curly_bracket")
        );
        assert_eq!(
            c4(json!({"filter_curly_bracket": false})).judge(&curly),
            None
        );
        // A line of the same document counts only while it ends in terminal punctuation
        // and has enough words; one sentence per line here.
        let one: String = doc.lines().take(1).collect();
        assert_eq!(
            c4(json!({"min_num_sentences": 1, "filter_no_terminal_punct": false})).judge(&one),
            None
        );
        assert_eq!(
            c4(json!({"min_num_sentences": 1})).judge(&one).as_deref(),
            Some("too_few_sentences")
        );
        assert_eq!(
            c4(
                json!({"min_num_sentences": 1, "filter_no_terminal_punct": false,
                      "filter_javascript": true})
            )
            .judge("JavaScript is a scripting language for the web.")
            .as_deref(),
            Some("too_few_sentences")
        );
        assert!(C4Quality::new(&json!({"min_num_sentences": 2.5})).is_err());
    }
}
