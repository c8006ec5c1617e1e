use super::{Dtype, Source, FOOTER_MAGIC, MAGIC, VERSION};
use crate::error::{Error, IoContext, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::Xxh3;

/// Streams documents into `path.tmp`; [`ShardWriter::finish`] fsyncs and renames it to `path`.
/// Dropping an unfinished writer removes the temporary file.
pub struct ShardWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    hasher: Xxh3,
    dtype: Dtype,
    tokenizer_sha256: [u8; 32],
    offsets: Vec<u64>,
    sources: Vec<Source>,
    n_tokens: u64,
    scratch: Vec<u8>,
}

impl ShardWriter {
    pub fn create(path: &Path, dtype: Dtype, tokenizer_sha256: [u8; 32]) -> Result<Self> {
        let tmp = tmp_path(path);
        let file = File::create(&tmp).ctx(&tmp)?;
        let mut w = ShardWriter {
            path: path.to_path_buf(),
            tmp,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            hasher: Xxh3::new(),
            dtype,
            tokenizer_sha256,
            offsets: vec![0],
            sources: Vec::new(),
            n_tokens: 0,
            scratch: Vec::new(),
        };
        w.write(MAGIC)?;
        Ok(w)
    }

    pub fn n_docs(&self) -> usize {
        self.sources.len()
    }

    pub fn n_tokens(&self) -> u64 {
        self.n_tokens
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        let out = self.out.as_mut().expect("writer used after finish");
        out.write_all(bytes).ctx(&self.tmp)
    }

    /// Append one document. Ids must fit the dtype (checked: a wider id is a tokenizer/dtype
    /// mismatch and would silently wrap otherwise).
    pub fn push(&mut self, ids: &[u32], source: Source) -> Result<()> {
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        match self.dtype {
            Dtype::U16 => {
                buf.reserve(ids.len() * 2);
                for &id in ids {
                    let narrow = u16::try_from(id).map_err(|_| {
                        Error::shard(&self.path, format!("token id {id} does not fit dtype u16"))
                    })?;
                    buf.extend_from_slice(&narrow.to_le_bytes());
                }
            }
            Dtype::U32 => {
                buf.reserve(ids.len() * 4);
                for &id in ids {
                    buf.extend_from_slice(&id.to_le_bytes());
                }
            }
        }
        self.write(&buf)?;
        self.scratch = buf;
        self.n_tokens += ids.len() as u64;
        self.offsets.push(self.n_tokens);
        self.sources.push(source);
        Ok(())
    }

    /// Append documents `docs` of shard `from` as they are: one copy of their token bytes (no
    /// decode / re-encode), their offsets and their provenance. The dtypes must match (the
    /// ids were checked when `from` was written).
    pub fn push_docs_from(&mut self, from: &super::Shard, docs: Range<usize>) -> Result<()> {
        if from.dtype() != self.dtype {
            return Err(Error::shard(
                &self.path,
                format!(
                    "cannot copy {:?} tokens of {} into a {:?} shard",
                    from.dtype(),
                    from.path().display(),
                    self.dtype
                ),
            ));
        }
        if docs.start > docs.end || docs.end > from.n_docs() {
            return Err(Error::shard(
                from.path(),
                format!("documents {docs:?} asked of a shard with {}", from.n_docs()),
            ));
        }
        if docs.is_empty() {
            return Ok(());
        }
        let first = from.doc_range(docs.start).start;
        let end = from.doc_range(docs.end - 1).end;
        let width = self.dtype.width();
        self.write(&from.token_bytes()[first * width..end * width])?;
        for d in docs {
            let r = from.doc_range(d);
            self.n_tokens += r.len() as u64;
            self.offsets.push(self.n_tokens);
            self.sources.push(from.doc_source(d));
        }
        Ok(())
    }

    /// Write the index and footer, fsync, and atomically rename into place. Returns the
    /// checksum (hex), which manifests record.
    pub fn finish(mut self) -> Result<String> {
        let token_bytes = self.n_tokens as usize * self.dtype.width();
        let pad = super::pad8(token_bytes) - token_bytes;
        self.write(&[0u8; 8][..pad])?;
        let mut index = Vec::with_capacity(self.offsets.len() * 8 + self.sources.len() * 16);
        for off in &self.offsets {
            index.extend_from_slice(&off.to_le_bytes());
        }
        for s in &self.sources {
            index.extend_from_slice(&s.file.to_le_bytes());
            index.extend_from_slice(&s.row.to_le_bytes());
        }
        self.write(&index)?;
        let mut footer = Vec::with_capacity(super::FOOTER_LEN);
        footer.extend_from_slice(&VERSION.to_le_bytes());
        footer.extend_from_slice(&(self.dtype.width() as u32).to_le_bytes());
        footer.extend_from_slice(&(self.sources.len() as u64).to_le_bytes());
        footer.extend_from_slice(&self.n_tokens.to_le_bytes());
        footer.extend_from_slice(&self.tokenizer_sha256);
        self.write(&footer)?;
        let checksum = self.hasher.digest();
        let mut tail = Vec::with_capacity(16);
        tail.extend_from_slice(&checksum.to_le_bytes());
        tail.extend_from_slice(FOOTER_MAGIC);
        let mut out = self.out.take().expect("finish called twice");
        out.write_all(&tail).ctx(&self.tmp)?;
        let file = out
            .into_inner()
            .map_err(|e| Error::io(&self.tmp, e.error()))?;
        file.sync_all().ctx(&self.tmp)?;
        drop(file);
        commit(&self.tmp, &self.path)?;
        Ok(format!("{checksum:016x}"))
    }
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Rename `tmp` over `path` and fsync the directory so the rename itself survives a crash.
pub(crate) fn commit(tmp: &Path, path: &Path) -> Result<()> {
    std::fs::rename(tmp, path).ctx(path)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Write a small file (manifest, stats) atomically: tmp + fsync + rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    {
        let mut f = File::create(&tmp).ctx(&tmp)?;
        f.write_all(bytes).ctx(&tmp)?;
        f.sync_all().ctx(&tmp)?;
    }
    commit(&tmp, path)
}
