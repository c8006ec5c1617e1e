//! Tokenize: load any Hugging Face `tokenizer.json` and encode documents in parallel, with
//! ids identical to the Python `tokenizers` package.

use crate::error::{Error, Result};
use std::path::Path;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    sha256: String,
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::tokenizer(path, e.to_string()))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| Error::tokenizer(path, e.to_string()))?;
        use sha2::Digest;
        let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
        Ok(Tokenizer { inner, sha256 })
    }

    /// sha256 of the tokenizer.json bytes: the fingerprint stored in every shard.
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

    /// Encode one text. `add_special_tokens` applies the tokenizer's post-processor (the BOS of
    /// Llama 2), exactly like `tokenizers.Tokenizer.encode`.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|e| Error::tokenizer("<encode>", e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encode many texts in parallel (rayon); output order = input order.
    pub fn encode_batch(&self, texts: &[&str], add_special_tokens: bool) -> Result<Vec<Vec<u32>>> {
        use rayon::prelude::*;
        texts
            .par_iter()
            .map(|t| self.encode(t, add_special_tokens))
            .collect()
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::tokenizer("<decode>", e.to_string()))
    }
}
