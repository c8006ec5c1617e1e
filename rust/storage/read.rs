//! Streaming reads of one object, for inputs read straight from a bucket.
//!
//! Contract:
//! - Never the whole object in memory: [`ObjectReader`] is a `Read` over a byte range of an
//!   object, pulling the chunks of one GET's body stream on the storage runtime as the caller
//!   reads; [`fetch`] reads one bounded range (a parquet footer, a window of a column chunk).
//! - Every request is conditional on the ETag the listing gave (`If-Match`): an object
//!   replaced between listing and reading is one line naming its URL ("changed since it was
//!   listed"), never a mix of two versions' bytes.
//! - `object_store` 0.11 retries a request (throttling, 5xx, a reset before the response) but
//!   not a body cut short: once `get_opts` has returned, its stream is the raw response body
//!   (`client/get.rs` maps its errors to `Error::Generic`, no retry). So a body that errors or
//!   ends before the range's end is resumed here, by a new range request from the byte offset
//!   already handed out (same ETag), at most `resumes()` times per reader, with a short
//!   backoff; then one line naming the URL, the offset and the last cause.
//! - A server that answers a range request with other bytes than asked (it ignored `Range`)
//!   is an error, not data.

use std::io::{self, Read};
use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path as Key;
use object_store::{GetOptions, GetRange, ObjectStore};

use super::{env, remote, runtime, Bucket, RETRIES};
use crate::error::{Error, Result};

/// Resumes of one reader's body: the request retry budget (`TINYLLAMA_S3_RETRIES`), so one
/// knob bounds both.
fn resumes() -> usize {
    env("TINYLLAMA_S3_RETRIES")
        .and_then(|v| v.parse().ok())
        .unwrap_or(RETRIES)
}

/// An error of a remote read, carried through `io::Error` (the readers of `source` take a
/// `Read`) so that the caller can tell it from bad input: see [`remote_failure`].
#[derive(Debug)]
pub struct RemoteReadError(pub Error);

impl std::fmt::Display for RemoteReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
impl std::error::Error for RemoteReadError {}

/// The storage error inside `e`, if a remote read raised it.
pub fn remote_failure(e: &io::Error) -> Option<Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<RemoteReadError>())
        .map(|r| r.0.clone())
}

/// A `Read` over bytes `range` of one object, as it was listed (`etag`).
pub struct ObjectReader {
    bucket: Bucket,
    key: String,
    etag: Option<String>,
    /// Offset of the next byte handed out, and the end of the range.
    pos: u64,
    end: u64,
    stream: Option<BoxStream<'static, object_store::Result<Bytes>>>,
    chunk: Bytes,
    resumes_left: usize,
    resumed: usize,
}

impl ObjectReader {
    pub fn new(bucket: &Bucket, key: &str, etag: Option<&str>, range: Range<u64>) -> Self {
        ObjectReader {
            bucket: bucket.clone(),
            key: key.to_string(),
            etag: etag.map(str::to_string),
            pos: range.start,
            end: range.end,
            stream: None,
            chunk: Bytes::new(),
            resumes_left: resumes(),
            resumed: 0,
        }
    }

    /// One GET of `[pos, end)`, conditional on the listed ETag.
    fn open(&mut self) -> Result<()> {
        let opts = GetOptions {
            if_match: self.etag.clone(),
            range: Some(GetRange::Bounded(self.pos as usize..self.end as usize)),
            ..Default::default()
        };
        let store = self.bucket.store.clone();
        let k = Key::from(self.key.as_str());
        let got = runtime()
            .block_on(async move { store.get_opts(&k, opts).await })
            .map_err(|e| self.bucket.err(&self.key, e))?;
        if got.range.start as u64 != self.pos {
            return Err(remote(
                &self.bucket.url(&self.key),
                format!(
                    "asked for bytes from {}, the store sent bytes from {}",
                    self.pos, got.range.start
                ),
            ));
        }
        self.stream = Some(got.into_stream());
        Ok(())
    }

    /// The next non-empty chunk of the range (empty: the range is done).
    fn next_chunk(&mut self) -> Result<Bytes> {
        while self.pos < self.end {
            if self.stream.is_none() {
                self.open()?;
            }
            let stream = self.stream.as_mut().expect("opened above");
            let why = match runtime().block_on(stream.next()) {
                Some(Ok(bytes)) if bytes.is_empty() => continue,
                Some(Ok(mut bytes)) => {
                    let room = (self.end - self.pos) as usize;
                    if bytes.len() > room {
                        bytes.truncate(room);
                    }
                    return Ok(bytes);
                }
                Some(Err(e)) => e.to_string(),
                None => "the body ended early".to_string(),
            };
            // A body cut short: resume from the offset already handed out.
            self.stream = None;
            if self.resumes_left == 0 {
                return Err(remote(
                    &self.bucket.url(&self.key),
                    format!(
                        "read failed at byte {} of {} after {} resumed requests: {why}",
                        self.pos, self.end, self.resumed
                    ),
                ));
            }
            self.resumes_left -= 1;
            self.resumed += 1;
            std::thread::sleep(Duration::from_millis(50 << self.resumed.min(6)));
        }
        Ok(Bytes::new())
    }

    /// Requests resumed so far (a body cut short, then continued).
    pub fn resumed(&self) -> usize {
        self.resumed
    }
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.chunk.is_empty() {
            self.chunk = self
                .next_chunk()
                .map_err(|e| io::Error::other(RemoteReadError(e)))?;
        }
        let n = self.chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        let _ = self.chunk.split_to(n);
        self.pos += n as u64;
        Ok(n)
    }
}

/// Bytes `range` of an object as listed (`etag`), whole: resumed like [`ObjectReader`].
pub fn fetch(bucket: &Bucket, key: &str, etag: Option<&str>, range: Range<u64>) -> Result<Bytes> {
    let want = (range.end - range.start) as usize;
    let mut reader = ObjectReader::new(bucket, key, etag, range);
    let mut out = Vec::with_capacity(want);
    reader.read_to_end(&mut out).map_err(|e| {
        remote_failure(&e).unwrap_or_else(|| remote(&bucket.url(key), e.to_string()))
    })?;
    Ok(Bytes::from(out))
}
