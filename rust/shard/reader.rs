use super::{body_len, Dtype, Source, FOOTER_LEN, FOOTER_MAGIC, MAGIC, VERSION};
use crate::error::{Error, IoContext, Result};
use memmap2::Mmap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A shard opened by mmap. Token slices borrow the mapping: nothing is copied.
pub struct Shard {
    path: PathBuf,
    map: Mmap,
    dtype: Dtype,
    n_docs: usize,
    n_tokens: usize,
    tokenizer_sha256: [u8; 32],
    checksum: u64,
}

fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}
fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}

impl Shard {
    /// Open and validate the structure (magic, version, sizes). The checksum is checked by
    /// [`Shard::verify`], which reads every byte.
    pub fn open(path: &Path) -> Result<Shard> {
        let file = File::open(path).ctx(path)?;
        // SAFETY: shards are immutable once renamed into place; nobody writes a mapped file.
        let map = unsafe { Mmap::map(&file) }.ctx(path)?;
        let bad = |msg: String| Error::shard(path, msg);
        if map.len() < 8 + FOOTER_LEN || &map[..8] != MAGIC {
            return Err(bad("not a tinyllama shard (bad magic or truncated)".into()));
        }
        let footer = &map[map.len() - FOOTER_LEN..];
        if &footer[64..72] != FOOTER_MAGIC {
            return Err(bad("truncated or corrupt footer".into()));
        }
        let version = le_u32(&footer[0..]);
        if version != VERSION {
            return Err(bad(format!(
                "shard format version {version}, this build reads {VERSION}"
            )));
        }
        let dtype = Dtype::from_width(le_u32(&footer[4..]))
            .ok_or_else(|| bad("corrupt footer: token width".into()))?;
        let n_docs = le_u64(&footer[8..]) as usize;
        let n_tokens = le_u64(&footer[16..]) as usize;
        let expected = n_tokens
            .checked_mul(dtype.width())
            .map(|_| body_len(dtype.width(), n_docs, n_tokens) + FOOTER_LEN);
        if expected != Some(map.len()) {
            return Err(bad(format!(
                "size {} does not match its footer ({n_docs} docs, {n_tokens} tokens): truncated or corrupt",
                map.len()
            )));
        }
        let mut tokenizer_sha256 = [0u8; 32];
        tokenizer_sha256.copy_from_slice(&footer[24..56]);
        let checksum = le_u64(&footer[56..]);
        Ok(Shard {
            path: path.to_path_buf(),
            map,
            dtype,
            n_docs,
            n_tokens,
            tokenizer_sha256,
            checksum,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }
    pub fn n_docs(&self) -> usize {
        self.n_docs
    }
    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }
    pub fn tokenizer_sha256(&self) -> String {
        hex::encode(self.tokenizer_sha256)
    }
    pub fn checksum_hex(&self) -> String {
        format!("{:016x}", self.checksum)
    }

    /// Recompute the xxh3 checksum over the whole file; a flipped byte anywhere is reported
    /// with the shard's name.
    pub fn verify(&self) -> Result<()> {
        let covered = &self.map[..self.map.len() - 16];
        let actual = xxhash_rust::xxh3::xxh3_64(covered);
        if actual != self.checksum {
            return Err(Error::shard(
                &self.path,
                format!("checksum mismatch (stored {:016x}, computed {actual:016x}): the file is corrupt", self.checksum),
            ));
        }
        Ok(())
    }

    /// Every token id must be `< vocab_size` (the mix's tokenizer): an id past the vocabulary
    /// is reported with the shard and the document holding it, never handed to a model (where
    /// it would end as a bare index error). Reads every token.
    pub fn check_ids(&self, vocab_size: u64) -> Result<()> {
        // A branch-free max first (it vectorises); the position only when there is a bad id.
        let bytes = self.token_bytes();
        let width = self.dtype.width();
        let id_at = |c: &[u8]| -> u64 {
            match self.dtype {
                Dtype::U16 => u64::from(u16::from_le_bytes([c[0], c[1]])),
                Dtype::U32 => u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            }
        };
        let max = match self.dtype {
            Dtype::U16 => bytes
                .chunks_exact(2)
                .fold(0u16, |m, c| m.max(u16::from_le_bytes([c[0], c[1]])))
                as u64,
            Dtype::U32 => bytes.chunks_exact(4).fold(0u32, |m, c| {
                m.max(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            }) as u64,
        };
        if max < vocab_size {
            return Ok(());
        }
        let first_bad = bytes
            .chunks_exact(width)
            .position(|c| id_at(c) >= vocab_size);
        let Some(at) = first_bad else { return Ok(()) };
        let mut id = [0u32; 1];
        self.read_tokens(at..at + 1, &mut id);
        // The document holding token `at`: the last one whose start is <= at.
        let (mut doc, mut past) = (0usize, self.n_docs);
        while doc + 1 < past {
            let mid = (doc + past) / 2;
            if self.doc_range(mid).start <= at {
                doc = mid;
            } else {
                past = mid;
            }
        }
        Err(Error::shard(
            &self.path,
            format!(
                "document {doc}: token id {} is outside the tokenizer's vocabulary of {vocab_size} \
                 (the shard was not made with this mix's tokenizer, or is corrupt)",
                id[0]
            ),
        ))
    }

    /// What a reader checks the first time it touches the shard: the checksum over every
    /// byte ([`Shard::verify`]) and, given the vocabulary size, every token id
    /// ([`Shard::check_ids`]).
    pub fn check(&self, vocab_size: Option<u64>) -> Result<()> {
        self.verify()?;
        match vocab_size {
            Some(v) => self.check_ids(v),
            None => Ok(()),
        }
    }

    fn index_start(&self) -> usize {
        8 + super::pad8(self.n_tokens * self.dtype.width())
    }

    /// Token range of document `i` within [`Shard::tokens_u16`] / [`Shard::tokens_u32`].
    pub fn doc_range(&self, i: usize) -> Range<usize> {
        let base = self.index_start() + i * 8;
        le_u64(&self.map[base..]) as usize..le_u64(&self.map[base + 8..]) as usize
    }

    pub fn doc_source(&self, i: usize) -> Source {
        let base = self.index_start() + (self.n_docs + 1) * 8 + i * 16;
        Source {
            file: le_u64(&self.map[base..]),
            row: le_u64(&self.map[base + 8..]),
        }
    }

    /// The raw little-endian token bytes (what Python views with numpy).
    pub fn token_bytes(&self) -> &[u8] {
        &self.map[super::TOKENS_AT..super::TOKENS_AT + self.n_tokens * self.dtype.width()]
    }

    /// Copy tokens `range` into `out` as u32 (the loader's gather primitive).
    pub fn read_tokens(&self, range: Range<usize>, out: &mut [u32]) {
        let w = self.dtype.width();
        super::decode_tokens(
            self.dtype,
            &self.token_bytes()[range.start * w..range.end * w],
            out,
        );
    }

    /// Document `i` as owned u32 ids.
    pub fn doc(&self, i: usize) -> Vec<u32> {
        let r = self.doc_range(i);
        let mut out = vec![0u32; r.len()];
        self.read_tokens(r, &mut out);
        out
    }
}
