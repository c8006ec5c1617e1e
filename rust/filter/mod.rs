//! Filter: decide from a document's text alone whether it is dropped before dedup.
//!
//! ```text
//! [corpora.web.filters]                 one DocFilter each, in this fixed order:
//!   language           = { keep = ["en"], min_score = 0.65 }     (language.rs)
//!   gopher_quality     = {}    gopher_repetition = {}             (heuristics/)
//!   c4                 = {}    fineweb           = {}
//! [decontaminate]      paths, ngram                               (decontam.rs)
//! ```
//!
//! Contract: a filter is a pure function of the text and its resolved settings (no state
//! across documents, no clock, no randomness), so a decision is the same on any thread, in
//! any process, on a rerun: the build may judge a document in more than one stage and always
//! agrees with itself. The first filter of the chain that drops a document names the
//! reason; later ones are not asked. Settings start from datatrove's defaults for the filter
//! of the same name and are overridden key by key; an unknown key is a spec error naming
//! `filters.<name>.<key>`. Every filter reports its resolved settings ([`DocFilter::settings`])
//! so the locked `mix.json` records exactly what ran.

pub mod decontam;
pub mod heuristics;
pub mod language;
pub mod report;

use crate::error::{Error, Result};
use serde_json::{Map, Value};

/// One document filter.
pub trait DocFilter: Send + Sync {
    /// The spec's name for it (`gopher_quality`, `language`, ...).
    fn name(&self) -> &str;
    /// `None` keeps the document; `Some(reason)` drops it. Reasons are short and stable
    /// (datatrove's own where it has one, e.g. `gopher_short_doc`), with details after a
    /// colon where they help (`decontaminated: hellaswag#1234: "the quick brown ..."`).
    fn judge(&self, text: &str) -> Option<String>;
    /// Every setting, defaults resolved, as recorded in the lock.
    fn settings(&self) -> Value;
}

/// The filters of one corpus, in order; judging stops at the first that drops.
#[derive(Default)]
pub struct FilterChain {
    filters: Vec<Box<dyn DocFilter>>,
}

impl FilterChain {
    pub fn new(filters: Vec<Box<dyn DocFilter>>) -> Self {
        FilterChain { filters }
    }
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }
    pub fn filters(&self) -> &[Box<dyn DocFilter>] {
        &self.filters
    }
    /// `None` keeps; `Some((i, reason))`: filter `i` of the chain dropped it.
    pub fn judge(&self, text: &str) -> Option<(usize, String)> {
        self.filters
            .iter()
            .enumerate()
            .find_map(|(i, f)| f.judge(text).map(|r| (i, r)))
    }
}

/// A filter built once and used by several chains (`[decontaminate]` is every corpus's:
/// its n-gram index is built once).
pub struct Shared(pub std::sync::Arc<dyn DocFilter>);

impl DocFilter for Shared {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn judge(&self, text: &str) -> Option<String> {
        self.0.judge(text)
    }
    fn settings(&self) -> Value {
        self.0.settings()
    }
}

impl FilterChain {
    /// Corpus `corpus`'s chain: its own `filters` (name, settings table), in the order given,
    /// then `shared` ones (`[decontaminate]`). A bad setting is an error naming
    /// `corpora.<corpus>.filters.<name>.<key>`.
    pub fn for_corpus(
        corpus: &str,
        filters: &[(String, Value)],
        shared: &[std::sync::Arc<dyn DocFilter>],
    ) -> Result<FilterChain> {
        let mut built: Vec<Box<dyn DocFilter>> = Vec::new();
        for (name, params) in filters {
            let f = filter(name, params).map_err(|e| match e {
                Error::Spec(msg) => Error::Spec(format!("corpora.{corpus}.{msg}")),
                other => other,
            })?;
            built.push(f);
        }
        for f in shared {
            built.push(Box::new(Shared(f.clone())));
        }
        Ok(FilterChain::new(built))
    }

    /// `[{"name", "settings"}]`, in chain order: what the lock records.
    pub fn settings(&self) -> Value {
        Value::Array(
            self.filters
                .iter()
                .map(|f| serde_json::json!({"name": f.name(), "settings": f.settings()}))
                .collect(),
        )
    }
}

/// The spec's filter names, in the order a chain applies them.
pub const ORDER: [&str; 6] = [
    "language",
    "gopher_quality",
    "gopher_repetition",
    "c4",
    "fineweb",
    "decontaminate",
];

/// Build the filter `name` with the spec's `params` (a TOML table as JSON; `{}` = defaults).
pub fn filter(name: &str, params: &Value) -> Result<Box<dyn DocFilter>> {
    match name {
        "language" => Ok(Box::new(language::LanguageFilter::new(params)?)),
        "decontaminate" => Ok(Box::new(decontam::Decontaminate::new(params)?)),
        "gopher_quality" => Ok(Box::new(heuristics::GopherQuality::new(params)?)),
        "gopher_repetition" => Ok(Box::new(heuristics::GopherRepetition::new(params)?)),
        "c4" => Ok(Box::new(heuristics::C4Quality::new(params)?)),
        "fineweb" => Ok(Box::new(heuristics::FineWebQuality::new(params)?)),
        _ => Err(Error::Spec(format!(
            "filters.{name}: unknown filter (known: {})",
            ORDER.join(", ")
        ))),
    }
}

/// Reads a filter's settings key by key, each with its default, then refuses leftovers.
pub struct Params {
    filter: String,
    map: Map<String, Value>,
    resolved: Map<String, Value>,
}

impl Params {
    pub fn new(filter: &str, params: &Value) -> Result<Self> {
        let map = match params {
            Value::Object(m) => m.clone(),
            Value::Null => Map::new(),
            _ => {
                return Err(Error::Spec(format!(
                    "filters.{filter}: expected a table of settings ({{}} for the defaults)"
                )))
            }
        };
        Ok(Params {
            filter: filter.to_string(),
            map,
            resolved: Map::new(),
        })
    }

    fn bad(&self, key: &str, what: &str) -> Error {
        Error::Spec(format!("filters.{}.{key}: expected {what}", self.filter))
    }

    pub fn f64(&mut self, key: &str, default: f64) -> Result<f64> {
        let v = match self.map.remove(key) {
            None => default,
            Some(v) => v.as_f64().ok_or_else(|| self.bad(key, "a number"))?,
        };
        self.resolved.insert(key.into(), v.into());
        Ok(v)
    }

    /// An optional number (`None` turns the check off, as datatrove's `None` does).
    pub fn opt_f64(&mut self, key: &str, default: Option<f64>) -> Result<Option<f64>> {
        let v = match self.map.remove(key) {
            None => default,
            Some(Value::Bool(false)) => None,
            Some(v) => Some(
                v.as_f64()
                    .ok_or_else(|| self.bad(key, "a number (or false to turn it off)"))?,
            ),
        };
        self.resolved
            .insert(key.into(), v.map_or(Value::Null, Value::from));
        Ok(v)
    }

    pub fn usize(&mut self, key: &str, default: usize) -> Result<usize> {
        let v = match self.map.remove(key) {
            None => default,
            Some(v) => {
                v.as_u64()
                    .ok_or_else(|| self.bad(key, "a whole number >= 0"))? as usize
            }
        };
        self.resolved.insert(key.into(), v.into());
        Ok(v)
    }

    /// A whole number that may be negative (datatrove's `-1` turns a check off).
    pub fn i64(&mut self, key: &str, default: i64) -> Result<i64> {
        let v = match self.map.remove(key) {
            None => default,
            Some(v) => v.as_i64().ok_or_else(|| self.bad(key, "a whole number"))?,
        };
        self.resolved.insert(key.into(), v.into());
        Ok(v)
    }

    /// `[[n, fraction], ...]` (datatrove's `top_n_grams` / `dup_n_grams`), n >= 1.
    pub fn pairs(&mut self, key: &str, default: &[(usize, f64)]) -> Result<Vec<(usize, f64)>> {
        let what = "a list of [n, fraction] pairs with n >= 1";
        let v: Vec<(usize, f64)> = match self.map.remove(key) {
            None => default.to_vec(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| match i.as_array().map(Vec::as_slice) {
                    Some([n, f]) => match (n.as_u64(), f.as_f64()) {
                        (Some(n), Some(f)) if n >= 1 => Some((n as usize, f)),
                        _ => None,
                    },
                    _ => None,
                })
                .collect::<Option<_>>()
                .ok_or_else(|| self.bad(key, what))?,
            Some(_) => return Err(self.bad(key, what)),
        };
        let resolved: Vec<Value> = v
            .iter()
            .map(|&(n, f)| Value::Array(vec![n.into(), f.into()]))
            .collect();
        self.resolved.insert(key.into(), resolved.into());
        Ok(v)
    }

    pub fn bool(&mut self, key: &str, default: bool) -> Result<bool> {
        let v = match self.map.remove(key) {
            None => default,
            Some(v) => v.as_bool().ok_or_else(|| self.bad(key, "true or false"))?,
        };
        self.resolved.insert(key.into(), v.into());
        Ok(v)
    }

    pub fn strings(&mut self, key: &str, default: &[&str]) -> Result<Vec<String>> {
        let v: Vec<String> = match self.map.remove(key) {
            None => default.iter().map(|s| s.to_string()).collect(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .ok_or_else(|| self.bad(key, "a list of strings"))?,
            Some(_) => return Err(self.bad(key, "a list of strings")),
        };
        self.resolved.insert(key.into(), v.clone().into());
        Ok(v)
    }

    /// Refuse keys nobody read; return the resolved settings (for [`DocFilter::settings`]).
    pub fn finish(self) -> Result<Value> {
        if let Some(key) = self.map.keys().next() {
            let known: Vec<&str> = self.resolved.keys().map(String::as_str).collect();
            return Err(Error::Spec(format!(
                "filters.{}.{key}: unknown setting (known: {})",
                self.filter,
                known.join(", ")
            )));
        }
        Ok(Value::Object(self.resolved))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_resolve_defaults_and_refuse_unknown_keys() {
        let mut p = Params::new("demo", &serde_json::json!({"a": 0.5})).unwrap();
        assert_eq!(p.f64("a", 0.1).unwrap(), 0.5);
        assert_eq!(p.usize("b", 3).unwrap(), 3);
        assert_eq!(p.finish().unwrap(), serde_json::json!({"a": 0.5, "b": 3}));
        let mut p = Params::new("demo", &serde_json::json!({"typo": 1})).unwrap();
        p.f64("a", 0.1).unwrap();
        let err = p.finish().unwrap_err().to_string();
        assert!(err.contains("filters.demo.typo"), "{err}");
        assert!(filter("nope", &Value::Null).is_err());
    }
}
