//! Tokenize: load any Hugging Face `tokenizer.json` (plain or zstd-compressed) and encode
//! documents in parallel, with ids identical to the Python `tokenizers` package.
//!
//! This module owns two facts the rest of the project asks it for (the build, the HF export,
//! generation): how a tokenizer file is read ([`read_tokenizer_json`]: zstd or not by its
//! magic number, never by its name) and which ids are BOS / EOS / UNK
//! ([`Tokenizer::bos_id`], [`Tokenizer::eos_id`], [`Tokenizer::unk_id`]).
//!
//! Tokenizers of the Llama 2 shape go through [`fast::FastEncoder`] (exact, several times
//! faster: see its docs for why it is exact); any other shape uses the `tokenizers` crate.

mod bpe;
mod fast;
#[cfg(test)]
mod tests;

use crate::error::{Error, Result};
use rayon::prelude::*;
use std::path::Path;

/// zstd frame magic number, little endian.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

const BOS_NAMES: &[&str] = &[
    "<s>",
    "<bos>",
    "<|begin_of_text|>",
    "<|startoftext|>",
    "[CLS]",
];
const EOS_NAMES: &[&str] = &["</s>", "<eos>", "<|end_of_text|>", "<|endoftext|>", "[SEP]"];
const UNK_NAMES: &[&str] = &["<unk>", "[UNK]", "<|unk|>"];

/// The tokenizer.json bytes of `path`, decompressed when the file is a zstd frame (by its
/// magic number: a compressed file named `tokenizer.json` is still compressed). The one reader
/// of tokenizer files: loading, the copy into a built mix, the HF export.
pub fn read_tokenizer_json(path: &Path) -> Result<Vec<u8>> {
    let raw =
        std::fs::read(path).map_err(|e| Error::tokenizer(path, format!("cannot read: {e}")))?;
    if raw.starts_with(&ZSTD_MAGIC) {
        return zstd::decode_all(raw.as_slice())
            .map_err(|e| Error::tokenizer(path, format!("not a valid zstd stream: {e}")));
    }
    Ok(raw)
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// `None` when the tokenizer's shape is not the one the fast path supports.
    fast: Option<fast::FastEncoder>,
    /// Why the fast path is off (for tests and debugging).
    #[allow(dead_code)]
    slow_reason: Option<String>,
    sha256: String,
    path: String,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
}

impl Tokenizer {
    /// Load `tokenizer.json` or `tokenizer.json.zst` (recognised by its zstd magic number).
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_json_bytes(&read_tokenizer_json(path)?, path)
    }

    /// Parse tokenizer.json bytes; `path` only names the source in errors.
    pub fn from_json_bytes(json: &[u8], path: &Path) -> Result<Self> {
        let bad = |e: &dyn std::fmt::Display| {
            Error::tokenizer(path, format!("not a valid tokenizer.json: {e}"))
        };
        let inner = tokenizers::Tokenizer::from_bytes(json).map_err(|e| bad(&e))?;
        use sha2::Digest;
        let sha256 = hex::encode(sha2::Sha256::digest(json));
        // The crate's own serialization: every default filled in, exactly as it will run.
        let canonical: serde_json::Value = inner
            .to_string(false)
            .map_err(|e| bad(&e))
            .and_then(|s| serde_json::from_str(&s).map_err(|e| bad(&e)))?;
        let (fast, slow_reason) = match fast::FastEncoder::new(&canonical, |t| inner.token_to_id(t))
        {
            Ok(f) => (Some(f), None),
            Err(reason) => (None, Some(reason)),
        };
        let bos = find_special(&inner, BOS_NAMES);
        let eos = find_special(&inner, EOS_NAMES);
        let unk = find_special(&inner, UNK_NAMES);
        Ok(Tokenizer {
            inner,
            fast,
            slow_reason,
            sha256,
            path: path.display().to_string(),
            bos,
            eos,
            unk,
        })
    }

    /// sha256 of the (decompressed) tokenizer.json bytes: the fingerprint stored in every
    /// shard, the same whether the file was loaded plain or zstd-compressed.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Beginning-of-sequence id (`<s>` for Llama): the first of the usual names that is an
    /// added token (special ones preferred), else in the vocabulary. What a build writes
    /// before each document, what an export declares and what generation starts with.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence id (`</s>` for Llama), found like [`Tokenizer::bos_id`].
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Unknown-token id (`<unk>` for Llama), found like [`Tokenizer::bos_id`].
    pub fn unk_id(&self) -> Option<u32> {
        self.unk
    }

    /// Encode one text. `add_special_tokens` applies the tokenizer's post-processor (the BOS of
    /// Llama 2), exactly like `tokenizers.Tokenizer.encode`.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        if let Some(fast) = &self.fast {
            return Ok(fast.encode(text, add_special_tokens));
        }
        self.encode_slow(text, add_special_tokens)
    }

    /// The `tokenizers` crate's encode (the reference the fast path is tested against).
    fn encode_slow(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|e| Error::tokenizer(&self.path, format!("encode failed: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encode many texts in parallel (rayon); output order = input order. Long documents are
    /// themselves split across threads, so one huge document does not serialise the batch.
    pub fn encode_batch(&self, texts: &[&str], add_special_tokens: bool) -> Result<Vec<Vec<u32>>> {
        texts
            .par_iter()
            .map(|t| self.encode(t, add_special_tokens))
            .collect()
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::tokenizer(&self.path, format!("decode failed: {e}")))
    }
}

/// The first of `names` that is an added token, special ones preferred; else the first that
/// is in the vocabulary (a tokenizer.json may leave `<s>` out of `added_tokens`).
fn find_special(inner: &tokenizers::Tokenizer, names: &[&str]) -> Option<u32> {
    let added = inner.get_added_tokens_decoder();
    for want_special in [true, false] {
        for name in names {
            let hit = added
                .iter()
                .filter(|(_, t)| t.special == want_special && t.content == *name)
                .map(|(id, _)| *id)
                .min();
            if hit.is_some() {
                return hit;
            }
        }
    }
    names.iter().find_map(|name| inner.token_to_id(name))
}

#[allow(dead_code)]
fn assert_send_sync<T: Send + Sync>() {}
const _: fn() = assert_send_sync::<Tokenizer>;
