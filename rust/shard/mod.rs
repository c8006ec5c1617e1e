//! Shard: the on-disk token format of a built corpus, its atomic writer and its mmap reader.
//!
//! A corpus is a sequence of shards; a shard holds whole documents. Layout (little-endian),
//! footer-based like parquet so that the writer streams and checksums in one pass:
//!
//! ```text
//! [0, 8)        magic  "TLSHARD1"
//! [8, ..)       tokens      n_tokens x width bytes (width 2 = u16, 4 = u32), zero-padded to 8 bytes
//!               offsets     (n_docs + 1) x u64   token offset of each document; last = n_tokens
//!               sources     n_docs x (u64 file index, u64 row)   provenance of each document
//! footer (72 B) version u32 | width u32 | n_docs u64 | n_tokens u64 | tokenizer sha256 [32]
//!               | checksum u64 (xxh3-64 of every byte before it) | magic "TLSHEND1"
//! ```
//!
//! The tokens start 8 bytes into a page-aligned mmap, so they can be viewed as `&[u16]` /
//! `&[u32]` with no copy. Writers write `NAME.tmp`, fsync, then rename: a shard either exists
//! whole or not at all, whatever instant the process is killed.

mod reader;
mod stream;
mod writer;

pub use reader::Shard;
pub(crate) use stream::spans as stream_spans;
pub use stream::CorpusStream;
pub use writer::{write_atomic, ShardWriter};

pub const MAGIC: &[u8; 8] = b"TLSHARD1";
pub const FOOTER_MAGIC: &[u8; 8] = b"TLSHEND1";
pub const VERSION: u32 = 1;
pub const FOOTER_LEN: usize = 72;
/// Byte offset of the first token (right after `MAGIC`).
pub const TOKENS_AT: usize = MAGIC.len();

/// Little-endian token bytes of `dtype` (`out.len()` tokens' worth) decoded into `out` as u32.
pub fn decode_tokens(dtype: Dtype, bytes: &[u8], out: &mut [u32]) {
    match dtype {
        Dtype::U16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = u32::from(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        Dtype::U32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
    }
}

/// Bytes per token: u16 when every id fits (vocab <= 65536, e.g. Llama 2's 32000), else u32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    U16,
    U32,
}

impl Dtype {
    pub fn width(self) -> usize {
        match self {
            Dtype::U16 => 2,
            Dtype::U32 => 4,
        }
    }
    pub fn from_width(w: u32) -> Option<Dtype> {
        match w {
            2 => Some(Dtype::U16),
            4 => Some(Dtype::U32),
            _ => None,
        }
    }
    /// The narrowest dtype that holds ids `0..vocab_size`.
    pub fn for_vocab(vocab_size: usize) -> Dtype {
        if vocab_size <= u16::MAX as usize + 1 {
            Dtype::U16
        } else {
            Dtype::U32
        }
    }
    pub fn max_id(self) -> u64 {
        match self {
            Dtype::U16 => u16::MAX as u64,
            Dtype::U32 => u32::MAX as u64,
        }
    }
}

/// Where a document came from: the index of its input file (sorted order) and its row there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Source {
    pub file: u64,
    pub row: u64,
}

fn pad8(n: usize) -> usize {
    (n + 7) & !7
}

/// Byte length of the body (magic + tokens + offsets + sources), i.e. where the footer starts.
fn body_len(width: usize, n_docs: usize, n_tokens: usize) -> usize {
    8 + pad8(n_tokens * width) + (n_docs + 1) * 8 + n_docs * 16
}

/// Byte length of a whole shard file: what a shard of `n_docs` / `n_tokens` must measure.
pub fn file_len(width: usize, n_docs: usize, n_tokens: usize) -> usize {
    body_len(width, n_docs, n_tokens) + FOOTER_LEN
}

#[cfg(test)]
mod tests;
