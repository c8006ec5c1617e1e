//! One input file of a corpus, on local disk or in a bucket: where it is, the name the lock
//! gives it, its size, and how to read it.
//!
//! - The name is its path under its pattern's directory (see [`discover`](super::discover)): the
//!   same files give the same names, hence the same identity and lock, whether they are read
//!   from a directory or from a bucket. Never a host, an endpoint or a credential.
//! - JSONL and zstd read an input as one stream from its start ([`Input::reader`]: a file, or
//!   a GET body pulled chunk by chunk, `storage::read`); parquet reads it through a
//!   [`ChunkReader`] ([`Input::chunks`]): the footer, then windows of its column chunks by
//!   range reads. A remote read is conditional on the ETag the listing gave.
//! - Content digest (sha256 of every byte, recorded in the manifest): a stream reader hashes
//!   what it reads ([`Digest`]), so JSONL and zstd inputs cost no second read when the reader
//!   got to the end; parquet reads only the columns it needs, so its digest is one more
//!   sequential pass over the file ([`Input::sha256`]), as is that of a stream stopped early
//!   (a corrupt zstd frame skipped with `on_error = "skip"`).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use parquet::errors::ParquetError;
use parquet::file::reader::{ChunkReader, Length};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::storage::read::{fetch, ObjectReader, RemoteReadError};
use crate::storage::Bucket;

/// One input file.
#[derive(Clone)]
pub struct Input {
    /// Its path under its pattern's directory, `/`-separated: what the lock and reports call it.
    pub name: String,
    pub size: u64,
    pub at: Location,
}

#[derive(Clone)]
pub enum Location {
    Local(PathBuf),
    /// An object as listed: reads are conditional on `etag`.
    Remote {
        bucket: Bucket,
        key: String,
        etag: Option<String>,
    },
}

impl Location {
    /// The path or the `s3://` URL: what messages name.
    pub fn shown(&self) -> PathBuf {
        match self {
            Location::Local(p) => p.clone(),
            Location::Remote { bucket, key, .. } => PathBuf::from(bucket.url(key)),
        }
    }
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} bytes at {})",
            self.name,
            self.size,
            self.shown().display()
        )
    }
}

impl Input {
    /// A local file named by its own path (loose files outside a corpus).
    pub fn local(path: &Path) -> Result<Input> {
        let size = std::fs::metadata(path).ctx(path)?.len();
        Ok(Input {
            name: path.to_string_lossy().replace('\\', "/"),
            size,
            at: Location::Local(path.to_path_buf()),
        })
    }

    /// The path or the `s3://` URL: what messages name.
    pub fn shown(&self) -> PathBuf {
        self.at.shown()
    }

    /// The local path, if it is a local file.
    pub fn path(&self) -> Option<&Path> {
        match &self.at {
            Location::Local(p) => Some(p),
            Location::Remote { .. } => None,
        }
    }

    /// Its bytes from the start, as a stream.
    pub fn reader(&self) -> Result<Box<dyn Read + Send>> {
        match &self.at {
            Location::Local(p) => Ok(Box::new(File::open(p).ctx(p)?)),
            Location::Remote { bucket, key, etag } => Ok(Box::new(ObjectReader::new(
                bucket,
                key,
                etag.as_deref(),
                0..self.size,
            ))),
        }
    }

    /// Random access for parquet.
    pub fn chunks(&self) -> Result<Chunks> {
        match &self.at {
            Location::Local(p) => Ok(Chunks::Local(File::open(p).ctx(p)?)),
            Location::Remote { bucket, key, etag } => Ok(Chunks::Remote(Arc::new(RemoteChunks {
                bucket: bucket.clone(),
                key: key.clone(),
                etag: etag.clone(),
                size: self.size,
                windows: Mutex::new(VecDeque::new()),
                failure: Mutex::new(None),
            }))),
        }
    }

    /// sha256 (hex) of every byte, by one sequential pass; the input must still hold the
    /// `size` bytes it was found with.
    pub fn sha256(&self) -> Result<String> {
        let digest = Digest::default();
        let mut reader = Hashing::new(self.reader()?, digest.clone());
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(read_error(self, e)),
            }
        }
        digest.complete(self.size).ok_or_else(|| {
            Error::io(
                self.shown(),
                format!("changed while read: {} bytes when found", self.size),
            )
        })
    }
}

/// A read error of `input` as the one line naming it (a remote failure as it came).
pub fn read_error(input: &Input, e: io::Error) -> Error {
    crate::storage::read::remote_failure(&e).unwrap_or_else(|| Error::io(input.shown(), e))
}

/// The running sha256 of the bytes a [`Hashing`] reader passed on, shared with whoever
/// wants the result when the reading is over.
#[derive(Clone, Default)]
pub struct Digest(Arc<Mutex<DigestState>>);

#[derive(Default)]
struct DigestState {
    hasher: Sha256,
    bytes: u64,
    eof: bool,
}

impl Digest {
    fn state(&self) -> std::sync::MutexGuard<'_, DigestState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// sha256 (hex) of the whole input, if the reader read all of its `size` bytes and saw
    /// its end; None otherwise (it stopped early: hash it with [`Input::sha256`]).
    pub fn complete(&self, size: u64) -> Option<String> {
        let st = self.state();
        (st.eof && st.bytes == size).then(|| hex::encode(st.hasher.clone().finalize()))
    }
}

/// A reader that feeds what it reads to a [`Digest`].
pub struct Hashing<R> {
    inner: R,
    digest: Digest,
}

impl<R: Read> Hashing<R> {
    pub fn new(inner: R, digest: Digest) -> Self {
        Hashing { inner, digest }
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut st = self.digest.state();
        if n == 0 && !buf.is_empty() {
            st.eof = true;
        }
        st.hasher.update(&buf[..n]);
        st.bytes += n as u64;
        Ok(n)
    }
}

/// Bytes fetched per range read of a remote parquet file, and how many such windows are kept
/// (the text column and an exclude column are read in alternation): bounds memory per file.
const WINDOW: u64 = 4 << 20;
const KEEP_WINDOWS: usize = 4;

/// What the parquet reader reads through: a local file, or range reads of an object.
pub enum Chunks {
    Local(File),
    Remote(Arc<RemoteChunks>),
}

pub struct RemoteChunks {
    bucket: Bucket,
    key: String,
    etag: Option<String>,
    size: u64,
    /// Recently fetched windows: (offset, bytes), newest first.
    windows: Mutex<VecDeque<(u64, Bytes)>>,
    /// The first remote failure: the parquet crate turns it into its own error, and the
    /// reader must not take it for corrupt data (which `skip` would count).
    failure: Mutex<Option<Error>>,
}

impl Chunks {
    /// A handle to ask [`RemoteChunks::failure`] after the parquet reader took ownership.
    pub fn handle(&self) -> Option<Arc<RemoteChunks>> {
        match self {
            Chunks::Local(_) => None,
            Chunks::Remote(r) => Some(r.clone()),
        }
    }
}

impl RemoteChunks {
    /// The remote failure behind a parquet error, if there was one.
    pub fn failure(&self) -> Option<Error> {
        self.failure.lock().ok()?.clone()
    }

    fn failed(&self, e: Error) -> Error {
        if let Ok(mut f) = self.failure.lock() {
            f.get_or_insert_with(|| e.clone());
        }
        e
    }

    /// The bytes from `pos` to the end of the window holding it (fetched if not kept).
    fn window_at(&self, pos: u64) -> Result<Bytes> {
        if pos >= self.size {
            return Ok(Bytes::new());
        }
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((start, bytes)) = windows
            .iter()
            .find(|(start, bytes)| *start <= pos && pos < start + bytes.len() as u64)
        {
            return Ok(bytes.slice((pos - start) as usize..));
        }
        let end = (pos + WINDOW).min(self.size);
        let bytes = fetch(&self.bucket, &self.key, self.etag.as_deref(), pos..end)
            .map_err(|e| self.failed(e))?;
        windows.push_front((pos, bytes.clone()));
        windows.truncate(KEEP_WINDOWS);
        Ok(bytes)
    }
}

impl Length for Chunks {
    fn len(&self) -> u64 {
        match self {
            Chunks::Local(f) => Length::len(f),
            Chunks::Remote(r) => r.size,
        }
    }
}

/// Reads a remote parquet file from an offset, window by window.
struct WindowReader {
    chunks: Arc<RemoteChunks>,
    pos: u64,
    current: Bytes,
}

impl Read for WindowReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.current.is_empty() {
            self.current = self
                .chunks
                .window_at(self.pos)
                .map_err(|e| io::Error::other(RemoteReadError(e)))?;
        }
        let n = self.current.len().min(buf.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        self.pos += n as u64;
        Ok(n)
    }
}

impl ChunkReader for Chunks {
    type T = Box<dyn Read + Send>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        match self {
            Chunks::Local(f) => {
                use std::io::{Seek, SeekFrom};
                let mut file = f.try_clone()?;
                file.seek(SeekFrom::Start(start))?;
                Ok(Box::new(BufReader::new(file)))
            }
            Chunks::Remote(r) => Ok(Box::new(WindowReader {
                chunks: r.clone(),
                pos: start,
                current: Bytes::new(),
            })),
        }
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        match self {
            Chunks::Local(f) => f.get_bytes(start, length),
            Chunks::Remote(r) => {
                let end = start + length as u64;
                if end > r.size {
                    return Err(ParquetError::EOF(format!(
                        "asked for bytes {start}..{end} of a {}-byte file",
                        r.size
                    )));
                }
                let window = r.window_at(start).map_err(external)?;
                if window.len() >= length {
                    return Ok(window.slice(..length));
                }
                // Longer than what is kept: one range read of exactly these bytes.
                fetch(&r.bucket, &r.key, r.etag.as_deref(), start..end)
                    .map_err(|e| external(r.failed(e)))
            }
        }
    }
}

fn external(e: Error) -> ParquetError {
    ParquetError::External(Box::new(RemoteReadError(e)))
}
