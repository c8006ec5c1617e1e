//! Object storage: the one layer every bucket reader and writer goes through (`s3://bucket/key`).
//!
//! Contract:
//! - The engine is the `object_store` crate (what polars, datafusion and delta-rs use). S3 and
//!   S3-compatible stores are built in; credentials, region and endpoint come only from the
//!   standard environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//!   `AWS_REGION` / `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL` for an S3-compatible store,
//!   `AWS_ALLOW_HTTP=true` for a plain-http one). Nothing here writes a host or a credential
//!   anywhere: errors name the `s3://` URL only.
//! - Retries with exponential backoff on throttling (503 SlowDown), 5xx and dropped connections
//!   (`RETRIES` retries within `RETRY_TIMEOUT`), by the engine's retry layer; a GET body cut
//!   short after its headers (which the engine does not retry) is fetched again from the start,
//!   as many times.
//! - Objects are written whole (a single PUT, or a multipart upload completed in one call: a
//!   reader never sees part of one) and verified after the write (its size read back); a
//!   download goes to `NAME.part`, is checked against the size (and ETag) the listing gave, then
//!   renamed into place, so a truncated transfer never takes the place of a good file
//!   (`download_checked` also runs the caller's check, a shard's checksum, before the rename; a
//!   failed or full-disk write removes the `.part` and names the URL and the local dir).
//! - `put_if_absent` is a conditional create (`If-None-Match: *`) and `put_if_match` a
//!   conditional replace (`If-Match: ETAG`): of two writers racing for one key exactly one wins.
//!   The lease of a prefix (a mix being built, a run uploading; `tinyllama/storage.py`) is built
//!   on them.
//!
//! - Inputs are read as streams and range reads conditional on their listed ETag, resuming a
//!   body cut short ([`read`]).
//!
//! Every failure is `Error::Remote` naming the URL, in one line.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path as Key;
use object_store::{
    BackoffConfig, GetOptions, ObjectStore, PutMode, PutOptions, PutPayload, RetryConfig,
    UpdateVersion, WriteMultipart,
};

use crate::error::{Error, IoContext, Result};

pub mod read;

/// Retries of one request before it fails (throttling, 5xx, a reset connection): about 25 s of
/// backoff in all. `TINYLLAMA_S3_RETRIES` overrides it (the tests' dead endpoint: 0).
const RETRIES: usize = 8;
const RETRY_TIMEOUT: Duration = Duration::from_secs(120);
/// Files larger than this are uploaded in parts of this size.
const PART: usize = 32 << 20;

/// Whether `path` names an object store location rather than a local path.
pub fn is_url(path: &str) -> bool {
    path.contains("://")
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tinyllama-storage")
            .enable_all()
            .build()
            .expect("a tokio runtime starts")
    })
}

/// One object: its key in the bucket, size and ETag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
}

/// A bucket, opened from the environment.
#[derive(Clone)]
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    /// Retries of one request (`RETRIES`, or `TINYLLAMA_S3_RETRIES`).
    retries: usize,
    /// `s3://bucket`: what URLs in messages start with.
    base: String,
}

/// Splits `s3://bucket/some/key` into the bucket and the key (no leading or trailing `/`).
pub fn parse(url: &str) -> Result<(String, String, String)> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(remote(url, "not a URL (expected s3://bucket/key)"));
    };
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(remote(url, "no bucket name (expected s3://bucket/key)"));
    }
    Ok((
        scheme.to_string(),
        bucket.to_string(),
        key.trim_matches('/').to_string(),
    ))
}

fn remote(url: &str, msg: impl std::fmt::Display) -> Error {
    Error::Remote {
        url: url.to_string(),
        msg: msg.to_string().replace('\n', "; "),
    }
}

/// What went wrong, in one short line: the store's own error (`<Code>` and `<Message>` of its XML
/// body, and the HTTP status) rather than the engine's dump of the body; a refusal of the
/// credentials or of their rights starts with "access denied".
fn describe(e: &object_store::Error) -> String {
    match e {
        object_store::Error::NotFound { .. } => return "no such object".to_string(),
        object_store::Error::AlreadyExists { .. } => return "already exists".to_string(),
        object_store::Error::Precondition { .. } => {
            return "changed since it was listed (its ETag differs): it was replaced while being read"
                .to_string()
        }
        _ => {}
    }
    let text = e.to_string();
    let status = text
        .find("status ")
        .and_then(|i| text[i + 7..].split(':').next())
        .map(str::trim);
    // The engine names a denial as such for some requests only (a listing's 403 is "Generic").
    let denied = matches!(
        e,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
    ) || status.is_some_and(|s| s.starts_with("401") || s.starts_with("403"));
    let http = status.map(|s| format!(" (HTTP {s})")).unwrap_or_default();
    match xml_tag(&text, "Code") {
        Some(code) => {
            let message = xml_tag(&text, "Message")
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            let what = if denied { "access denied: " } else { "" };
            format!("{what}{code}{message}{http}")
        }
        None if denied => format!("access denied{http}"), // a HEAD's answer has no body
        None => text,
    }
}

fn xml_tag<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = text.find(&open)? + open.len();
    let end = start + text[start..].find(&format!("</{tag}>"))?;
    Some(text[start..end].trim())
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Bucket {
    /// The bucket of `url` and the key it names. Only `s3://` is built in (say so for others).
    pub fn open(url: &str) -> Result<(Bucket, String)> {
        let (scheme, bucket, key) = parse(url)?;
        if scheme != "s3" {
            return Err(remote(
                url,
                format!(
                    "{scheme}:// is not supported by this build (s3:// and S3-compatible stores are)"
                ),
            ));
        }
        let retries = env("TINYLLAMA_S3_RETRIES")
            .and_then(|v| v.parse().ok())
            .unwrap_or(RETRIES);
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: retries,
                retry_timeout: RETRY_TIMEOUT,
            });
        if let Some(endpoint) = env("AWS_ENDPOINT_URL") {
            builder = builder.with_endpoint(endpoint);
        }
        if env("AWS_ALLOW_HTTP").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            builder = builder.with_allow_http(true);
        }
        if env("AWS_REGION").is_none() && env("AWS_DEFAULT_REGION").is_none() {
            builder = builder.with_region("us-east-1");
        }
        let store = builder.build().map_err(|e| remote(url, e))?;
        Ok((
            Bucket {
                store: Arc::new(store),
                retries,
                base: format!("s3://{bucket}"),
            },
            key,
        ))
    }

    /// The URL of `key`, for messages.
    pub fn url(&self, key: &str) -> String {
        if key.is_empty() {
            self.base.clone()
        } else {
            format!("{}/{key}", self.base)
        }
    }

    fn err(&self, key: &str, e: object_store::Error) -> Error {
        remote(&self.url(key), describe(&e))
    }

    /// Every object under `prefix` (a key prefix: `a/b` lists `a/b/...`), sorted by key.
    pub fn list(&self, prefix: &str) -> Result<Vec<Object>> {
        let p = Key::from(prefix.trim_matches('/'));
        let store = self.store.clone();
        let found = runtime().block_on(async move {
            let mut out = Vec::new();
            let mut stream = store.list(Some(&p));
            while let Some(meta) = stream.next().await {
                out.push(meta?);
            }
            Ok::<_, object_store::Error>(out)
        });
        let mut objects: Vec<Object> = found
            .map_err(|e| self.err(prefix, e))?
            .into_iter()
            .map(|m| Object {
                key: m.location.to_string(),
                size: m.size as u64,
                etag: m.e_tag,
            })
            .collect();
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    /// The object at `key`, or None.
    pub fn head(&self, key: &str) -> Result<Option<Object>> {
        let k = Key::from(key);
        match runtime().block_on(self.store.head(&k)) {
            Ok(m) => Ok(Some(Object {
                key: key.to_string(),
                size: m.size as u64,
                etag: m.e_tag,
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(key, e)),
        }
    }

    /// The bytes of `key`; with `etag`, only if the object is still the one listed.
    pub fn get(&self, key: &str, etag: Option<&str>) -> Result<Vec<u8>> {
        let k = Key::from(key);
        let opts = GetOptions {
            if_match: etag.map(str::to_string),
            ..Default::default()
        };
        let store = self.store.clone();
        let retries = self.retries;
        let bytes = runtime()
            .block_on(async move {
                // The engine retries a request that fails; a body cut short after good headers
                // (a dropped connection mid-transfer) is retried here, from the start.
                let mut failed = 0;
                loop {
                    let body = store.get_opts(&k, opts.clone()).await?.bytes().await;
                    match body {
                        Err(object_store::Error::Generic { .. }) if failed < retries => {
                            failed += 1;
                            tokio::time::sleep(Duration::from_millis(100 << failed.min(6))).await;
                        }
                        other => return other,
                    }
                }
            })
            .map_err(|e| self.err(key, e))?;
        Ok(bytes.to_vec())
    }

    /// Bytes `[start, end)` of `key` (a parquet footer, a row group).
    pub fn get_range(&self, key: &str, start: u64, end: u64) -> Result<Vec<u8>> {
        let k = Key::from(key);
        let bytes = runtime()
            .block_on(self.store.get_range(&k, start as usize..end as usize))
            .map_err(|e| self.err(key, e))?;
        Ok(bytes.to_vec())
    }

    fn check_written(&self, key: &str, size: u64) -> Result<Object> {
        match self.head(key)? {
            Some(o) if o.size == size => Ok(o),
            Some(o) => Err(remote(
                &self.url(key),
                format!("wrote {size} bytes, the store holds {}", o.size),
            )),
            None => Err(remote(&self.url(key), "written, then not found")),
        }
    }

    /// Writes `data` at `key` (whole), then checks the store holds that many bytes.
    pub fn put(&self, key: &str, data: Vec<u8>) -> Result<Object> {
        let size = data.len() as u64;
        let k = Key::from(key);
        runtime()
            .block_on(self.store.put(&k, PutPayload::from(data)))
            .map_err(|e| self.err(key, e))?;
        self.check_written(key, size)
    }

    /// Creates `key` with `data` unless it exists: true if this call created it.
    pub fn put_if_absent(&self, key: &str, data: Vec<u8>) -> Result<bool> {
        let k = Key::from(key);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match runtime().block_on(self.store.put_opts(&k, PutPayload::from(data), opts)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(self.err(key, e)),
        }
    }

    /// Replaces `key` with `data` only if it is still the object with `etag` (`If-Match`): of
    /// two writers that read the same version and race to replace it, exactly one wins. What a
    /// lease's renewal and the takeover of a stale one are built on. True if this call wrote.
    pub fn put_if_match(&self, key: &str, data: Vec<u8>, etag: &str) -> Result<bool> {
        let k = Key::from(key);
        let opts = PutOptions {
            mode: PutMode::Update(UpdateVersion {
                e_tag: Some(etag.to_string()),
                version: None,
            }),
            ..Default::default()
        };
        match runtime().block_on(self.store.put_opts(&k, PutPayload::from(data), opts)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err(key, e)),
        }
    }

    pub fn delete(&self, key: &str) -> Result<()> {
        let k = Key::from(key);
        match runtime().block_on(self.store.delete(&k)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(key, e)),
        }
    }

    /// Uploads a local file to `key` (in parts past `PART` bytes: completed in one call, so the
    /// object appears whole or not at all), then checks its size.
    pub fn upload(&self, src: &Path, key: &str) -> Result<Object> {
        let size = std::fs::metadata(src).ctx(src)?.len();
        if size as usize <= PART {
            return self.put(key, std::fs::read(src).ctx(src)?);
        }
        let k = Key::from(key);
        let store = self.store.clone();
        let src_owned = src.to_path_buf();
        let result = runtime().block_on(async move {
            let upload = store.put_multipart(&k).await?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
            use std::io::Read;
            let mut f =
                std::fs::File::open(&src_owned).map_err(|e| object_store::Error::Generic {
                    store: "local",
                    source: Box::new(e),
                })?;
            let mut buf = vec![0u8; PART];
            loop {
                let n = f.read(&mut buf).map_err(|e| object_store::Error::Generic {
                    store: "local",
                    source: Box::new(e),
                })?;
                if n == 0 {
                    break;
                }
                writer.wait_for_capacity(2).await?;
                writer.write(&buf[..n]);
            }
            writer.finish().await?;
            Ok::<_, object_store::Error>(())
        });
        result.map_err(|e| self.err(key, e))?;
        self.check_written(key, size)
    }

    /// Downloads `key` to `dest` through `dest.part` (fsynced, then renamed), checking the
    /// size it was listed with and, given `etag`, that it is still that object.
    pub fn download(&self, key: &str, dest: &Path, want: Option<&Object>) -> Result<u64> {
        self.download_checked(key, dest, want, |_| Ok(()))
    }

    /// [`Bucket::download`] that runs `check` on the complete `.part` before the rename: what
    /// fails the check never takes `dest`'s place (the shard cache verifies a shard's checksum
    /// there). On any failure the `.part` is removed; a full disk (ENOSPC, EFBIG past a file
    /// size limit, EDQUOT) is one line naming the URL and the directory that is full.
    pub fn download_checked(
        &self,
        key: &str,
        dest: &Path,
        want: Option<&Object>,
        check: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<u64> {
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).map_err(|e| self.local_err(key, dir, e))?;
        }
        let mut part = dest.as_os_str().to_owned();
        part.push(".part");
        let part = std::path::PathBuf::from(part);
        let written = (|| {
            use std::io::{Read, Write};
            let mut f = std::fs::File::create(&part).map_err(|e| self.local_err(key, &part, e))?;
            let n = match want {
                // Streamed as listed (size, ETag): never the whole object in memory (a shard
                // is hundreds of MB); a body cut short is resumed by the reader, an object
                // replaced meanwhile fails its If-Match, one shorter than listed never ends.
                Some(o) => {
                    let mut reader =
                        read::ObjectReader::new(self, key, o.etag.as_deref(), 0..o.size);
                    let mut buf = vec![0u8; 1 << 20];
                    let mut n = 0u64;
                    loop {
                        let got = reader.read(&mut buf).map_err(|e| {
                            read::remote_failure(&e).unwrap_or_else(|| remote(&self.url(key), e))
                        })?;
                        if got == 0 {
                            break;
                        }
                        f.write_all(&buf[..got])
                            .map_err(|e| self.local_err(key, &part, e))?;
                        n += got as u64;
                    }
                    if n != o.size {
                        return Err(remote(
                            &self.url(key),
                            format!(
                                "downloaded {n} bytes, it was listed with {}: truncated",
                                o.size
                            ),
                        ));
                    }
                    n
                }
                None => {
                    let bytes = self.get(key, None)?;
                    f.write_all(&bytes)
                        .map_err(|e| self.local_err(key, &part, e))?;
                    bytes.len() as u64
                }
            };
            f.sync_all().map_err(|e| self.local_err(key, &part, e))?;
            drop(f);
            check(&part)?;
            std::fs::rename(&part, dest).map_err(|e| self.local_err(key, dest, e))?;
            Ok(n)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&part); // never left behind to be taken for a file
        }
        written
    }

    /// A local write of a download failed: one line naming the URL and the local path, and
    /// saying so plainly when the disk (or the process's file size limit) is full.
    fn local_err(&self, key: &str, path: &Path, e: std::io::Error) -> Error {
        let full = matches!(
            e.raw_os_error(),
            Some(libc::ENOSPC) | Some(libc::EFBIG) | Some(libc::EDQUOT)
        );
        let dir = path.parent().unwrap_or(path).display();
        if full {
            remote(
                &self.url(key),
                format!("the local disk is full: writing into {dir} failed ({e}); free space there or choose another directory"),
            )
        } else {
            remote(
                &self.url(key),
                format!("writing {} failed: {e}", path.display()),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_bucket_and_key() {
        assert_eq!(
            parse("s3://b/a/b/c/").unwrap(),
            ("s3".into(), "b".into(), "a/b/c".into())
        );
        assert_eq!(
            parse("s3://b").unwrap(),
            ("s3".into(), "b".into(), "".into())
        );
        assert!(parse("s3:///key").is_err());
        assert!(parse("/local/path").is_err());
        assert!(is_url("s3://b/k") && !is_url("runs/a"));
        let e = Bucket::open("gs://b/k").err().unwrap().to_string();
        assert!(e.starts_with("gs://b/k: gs:// is not supported"), "{e}");
    }

    #[test]
    fn a_store_error_body_becomes_its_code_and_message() {
        let body = "<?xml version=\"1.0\"?>\n<Error><Code>SignatureDoesNotMatch</Code><Message>The request \
                    signature we calculated does not match.</Message><RequestId>X</RequestId></Error>";
        let e = object_store::Error::PermissionDenied {
            path: "p/k".into(),
            source: format!("Client error with status 403 Forbidden: {body}").into(),
        };
        assert_eq!(
            describe(&e),
            "access denied: SignatureDoesNotMatch: The request signature we calculated does not \
             match. (HTTP 403 Forbidden)"
        );
        let plain = object_store::Error::Generic {
            store: "S3",
            source: "connection refused".into(),
        };
        assert_eq!(describe(&plain), "Generic S3 error: connection refused");
        let listing = object_store::Error::Generic {
            store: "S3",
            source: format!("Client error with status 403 Forbidden: {body}").into(),
        };
        assert!(describe(&listing).starts_with("access denied: SignatureDoesNotMatch: "));
        let head = object_store::Error::PermissionDenied {
            path: "k".into(),
            source: "Client error with status 403 Forbidden: No Body".into(),
        };
        assert_eq!(describe(&head), "access denied (HTTP 403 Forbidden)");
        let gone = object_store::Error::NotFound {
            path: "k".into(),
            source: "x".into(),
        };
        assert_eq!(describe(&gone), "no such object");
    }
}
