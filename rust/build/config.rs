//! The resolved build configuration. Python (`tinyllama/data/spec.py`) parses and validates the
//! user's TOML spec, resolves paths, and hands this over as JSON: the Rust side trusts the
//! shape but still checks what only it can (files exist, tokenizer fits the dtype).

use crate::shard::Dtype;
use crate::source::{OnError, SourceOptions};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DedupMode {
    None,
    Exact,
    Near,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CorpusConfig {
    pub name: String,
    /// Directory the relative `paths` globs are relative to (the spec file's directory). Not
    /// recorded in the mix: manifests name input files under their patterns' directories
    /// (`source::discover`), so a mix is relocatable and the same from a bucket.
    pub base: PathBuf,
    /// Glob patterns: relative or absolute paths, or `s3://` URLs (both may be mixed).
    pub paths: Vec<String>,
    pub text: String,
    #[serde(default)]
    pub exclude: Vec<(String, Vec<String>)>,
    pub on_error: OnError,
    pub dedup: DedupMode,
    pub holdout_docs: u64,
    pub max_doc_bytes: u64,
    /// `[corpora.NAME.filters]`: (filter name, its settings table), in the order the chain
    /// applies them (`filter::ORDER`; Python puts them in it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<(String, serde_json::Value)>,
}

impl CorpusConfig {
    pub fn source_options(&self) -> SourceOptions {
        SourceOptions {
            text: self.text.clone(),
            exclude: self.exclude.clone(),
            on_error: self.on_error,
            max_doc_bytes: self.max_doc_bytes,
        }
    }
}

/// One branch of a family: its name and the stages that follow the trunk's.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BranchConfig {
    pub name: String,
    pub stages: serde_json::Value,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BuildConfig {
    pub name: String,
    pub seed: u64,
    pub seq_len: u32,
    pub tokenizer: PathBuf,
    pub out: PathBuf,
    pub workers: usize,
    /// Wrap every document as `<s> doc </s>` (see the spec docs for why both default on).
    pub add_bos: bool,
    pub add_eos: bool,
    /// Target tokens per shard; shards hold whole documents.
    pub shard_tokens: u64,
    /// Force a token dtype; default: the narrowest that fits the vocabulary.
    #[serde(default)]
    pub dtype: Option<Dtype>,
    pub corpora: Vec<CorpusConfig>,
    /// Dedup parameters and the training stages, recorded verbatim in the locked `mix.json`.
    #[serde(default)]
    pub dedup: serde_json::Value,
    #[serde(default)]
    pub stages: serde_json::Value,
    /// A family's branches (`[[branches.NAME.stages]]`), in the spec's order: each continues
    /// the trunk (`stages`) with its own stages. Empty for a plain spec, and then not
    /// serialised, so a plain spec's identity is what it always was.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub branches: Vec<BranchConfig>,
    /// `[decontaminate]` (`paths`, absolute, and `ngram`), applied to every corpus after its
    /// own filters. Part of the identity through its resolved settings (files by name and
    /// sha256), never by path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decontaminate: Option<serde_json::Value>,
    /// Records read and not yet written at any moment of a per-file stage (bounds memory; see
    /// `build::stream`); default: a few batches per worker. How to build, not what: not part
    /// of the identity.
    #[serde(default)]
    pub in_flight_docs: Option<usize>,
    /// MiB of document text read and not yet written at any moment of a per-file stage (with
    /// `in_flight_docs`, what bounds memory when documents are huge); default: 32 MiB, or
    /// 4 MiB per worker beyond 8 workers. Not part of the identity either.
    #[serde(default)]
    pub in_flight_mb: Option<usize>,
    /// Replace a complete mix of another identity found in `out` (`mix build --force`).
    /// How to build, not what: never serialised, so never part of the identity.
    #[serde(default, skip_serializing)]
    pub force: bool,
}

impl BuildConfig {
    /// Identity of the build's *result*, from content only: the settings that shape the
    /// output, the tokenizer's fingerprint and each input file's name and size — not where
    /// the spec, the inputs (their glob patterns included) or the output live, nor how many
    /// threads make it. A complete mix
    /// with the same identity is up to date; resumed staging must carry the same identity.
    ///
    /// Filters enter through `filters`, their resolved settings (defaults filled in, files by
    /// name and content), not through the spec's tables: the same filters spelled differently
    /// are the same build, and a moved benchmark file is not a new one.
    pub fn identity(
        &self,
        tokenizer_sha256: &str,
        inputs: &[Vec<(String, u64)>],
        filters: &serde_json::Value,
    ) -> String {
        let mut v = serde_json::to_value(self).expect("config serialises");
        if let Some(obj) = v.as_object_mut() {
            for key in [
                "out",
                "workers",
                "in_flight_docs",
                "in_flight_mb",
                "tokenizer",
                "decontaminate",
            ] {
                obj.remove(key);
            }
            if !filters.is_null() {
                obj.insert("filters".into(), filters.clone());
            }
            if let Some(corpora) = obj.get_mut("corpora").and_then(|c| c.as_array_mut()) {
                for (c, files) in corpora.iter_mut().zip(inputs) {
                    if let Some(c) = c.as_object_mut() {
                        // The files they found (by name under the pattern's directory, and size)
                        // stand for the patterns: the same files are the same build whether
                        // the patterns name a directory, another directory or a bucket.
                        c.remove("base");
                        c.remove("paths");
                        c.remove("filters");
                        c.insert("inputs".into(), serde_json::json!(files));
                    }
                }
            }
            obj.insert("tokenizer_sha256".into(), tokenizer_sha256.into());
        }
        let bytes = serde_json::to_vec(&v).expect("value serialises");
        format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&bytes))
    }
}
