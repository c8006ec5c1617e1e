//! Parallelism inside a file, for the per-file build stages (fingerprint, tokenize).
//!
//! ```text
//! reader threads (one file each at a time, largest file first)
//!   read + decompress + split lines -> batches of raw lines       (in file order)
//!   wait for permits: at most `docs_in_flight` records read and not yet written
//!   spawn map(batch) on the pool  ->  any thread, in any order
//! ordered sink: whichever job completes the next batch in order writes it (and any that
//!   were waiting behind it) into the file's writer, then frees their permits
//! after the file's last batch is written: finish (commit) the file's output
//! ```
//!
//! Contract: the writer of a file sees its batches in file order, one at a time, exactly as a
//! sequential loop would give them, so every output byte is independent of the number of
//! threads, of the batch boundaries' timing and of the in-flight cap. Memory is bounded by the
//! cap: a record counts from the moment it is read until its batch is written (records waiting
//! behind a slower batch included). A batch never holds more records than the cap, so a cap of
//! 1 still makes progress.
//!
//! Deadlock freedom: pool threads only run `map` + the ordered sink, which never wait on other
//! jobs (the sink takes the file's lock for as long as one write takes). Only reader threads
//! (plain OS threads) block: on permits, which the sinks free, and at a file's end for its own
//! jobs. The calling thread waits for the readers while running pool jobs itself when it is a
//! pool thread (a Ray task's stage runs on its plan's pool), so a pool of one thread works.
//! Errors: the first error of a file (a bad record with `on_error = fail`, a failed map or
//! write) stops that file's reading, is returned once its jobs are done, and stops the other
//! readers at their next batch; nothing of a failed file is finished (committed).

use super::progress::Progress;
use crate::error::{Error, Result};
use crate::source::{Decoder, Deferred, Record};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};

/// Records per batch (fewer when the in-flight cap is smaller) and text bytes per batch: small
/// enough that one big file spreads over every core, big enough that a job's overhead (a few
/// microseconds) is noise.
pub const BATCH_RECORDS: usize = 512;
pub const BATCH_BYTES: usize = 1 << 20;

/// The in-flight cap when the config leaves it unset: enough batches to keep every thread
/// busy while the reader runs ahead, independent of anything that shapes the output.
pub fn default_docs_in_flight(workers: usize) -> usize {
    (4 * BATCH_RECORDS * workers.max(1)).max(8 * BATCH_RECORDS)
}

/// One per-file stage.
pub trait Stage: Sync {
    /// What `map` reads for a file (immutable, shared by its jobs).
    type File: Send + Sync;
    /// The file's output, written in order by the sink.
    type Writer: Send;
    type Mapped: Send;
    type Done: Send;
    /// Begin file `index`: its records, context and writer; or its result right away when
    /// its output is already committed (a resumed build).
    fn start(&self, index: usize) -> Result<Start<Self>>;
    /// Work on one batch: any thread, any order (the parallel part).
    fn map(&self, file: &Self::File, batch: &[Record]) -> Result<Self::Mapped>;
    /// Write one batch's result: in file order, one at a time.
    fn sink(
        &self,
        file: &Self::File,
        writer: &mut Self::Writer,
        batch: Vec<Record>,
        mapped: Self::Mapped,
    ) -> Result<()>;
    /// After the file's last batch was written: commit its output.
    fn finish(&self, file: &Self::File, writer: Self::Writer) -> Result<Self::Done>;
}

pub enum Start<S: Stage + ?Sized> {
    Done(S::Done),
    Work {
        /// From `source::open_deferred`: the items and their decoder.
        records: crate::source::DeferredRecords,
        file: S::File,
        writer: S::Writer,
    },
}

/// Each file's result, by file index (ascending).
pub type Done<S> = Vec<(usize, <S as Stage>::Done)>;

/// What a run observed (for tests and benchmarks).
#[derive(Debug, Clone, Copy, Default)]
pub struct RunStats {
    /// The most records read and not yet written at any moment.
    pub peak_in_flight: usize,
    pub batches: usize,
}

/// Run `stage` over the files `order` (the order readers take them in: largest first keeps
/// the tail short) on `pool`, `readers` files at a time, at most `docs_in_flight` records in
/// flight. Returns each file's result, by file index.
pub fn run<S: Stage>(
    pool: &rayon::ThreadPool,
    stage: &S,
    order: &[usize],
    readers: usize,
    docs_in_flight: usize,
    progress: &Progress,
) -> Result<(Done<S>, RunStats)> {
    let permits = Permits::new(docs_in_flight.max(1));
    let batches = AtomicUsize::new(0);
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, S::Done)>> = Mutex::new(Vec::with_capacity(order.len()));
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    let readers = readers.clamp(1, order.len().max(1));
    let live = AtomicUsize::new(readers);
    pool.in_place_scope(|scope| {
        std::thread::scope(|threads| {
            for _ in 0..readers {
                threads.spawn(|| {
                    // Counted down however the reader ends (a panic included), so the wait
                    // below always ends; the scope then re-raises the panic.
                    let _live = CountDown(&live);
                    loop {
                        let k = next.fetch_add(1, Relaxed);
                        let Some(&index) = order.get(k) else { break };
                        if progress.cancelled() || failed.lock().expect("lock").is_some() {
                            break;
                        }
                        let ctx = Reader {
                            scope,
                            stage,
                            permits: &permits,
                            batches: &batches,
                            progress,
                        };
                        match ctx.file(index) {
                            Ok(done) => results.lock().expect("lock").push((index, done)),
                            Err(e) => {
                                failed.lock().expect("lock").get_or_insert(e);
                                break;
                            }
                        }
                    }
                });
            }
            // Wait for the readers; on a pool thread, run the pool's jobs meanwhile (a pool of
            // one thread would otherwise have nobody to run them).
            while live.load(Relaxed) > 0 {
                if rayon::yield_now() != Some(rayon::Yield::Executed) {
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
            }
        });
    });
    if let Some(e) = failed.into_inner().expect("lock") {
        return Err(e);
    }
    if progress.cancelled() {
        return Err(Error::Interrupted);
    }
    let mut results = results.into_inner().expect("lock");
    results.sort_by_key(|(i, _)| *i);
    Ok((
        results,
        RunStats {
            peak_in_flight: permits.peak(),
            batches: batches.into_inner(),
        },
    ))
}

struct CountDown<'a>(&'a AtomicUsize);

impl Drop for CountDown<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// A panic in a job, as an error of its file (a job must always reach the ordered sink, or
/// the file's reader would wait for it forever).
fn caught<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        Err(Error::Usage(format!(
            "internal error (please report): {what}"
        )))
    })
}

struct Reader<'s, 'scope, S: Stage> {
    scope: &'s rayon::Scope<'scope>,
    stage: &'scope S,
    permits: &'scope Permits,
    batches: &'scope AtomicUsize,
    progress: &'scope Progress,
}

/// A batch's decoded records and what `map` made of them.
type Worked<S> = Result<(Vec<Record>, <S as Stage>::Mapped)>;

/// A file's batches on their way to its writer.
struct Ordered<S: Stage> {
    next: usize,
    /// By batch number: its size (the permits it holds) and its work.
    waiting: BTreeMap<usize, (usize, Worked<S>)>,
    writer: Option<S::Writer>,
    error: Option<Error>,
}

struct FileSlot<S: Stage> {
    file: S::File,
    decoder: Option<Decoder>,
    ordered: Mutex<Ordered<S>>,
    written: Condvar,
}

impl<'scope, S: Stage> Reader<'_, 'scope, S> {
    /// Read file `index` into batches, spawn their jobs, wait for them, finish the file.
    fn file(&self, index: usize) -> Result<S::Done> {
        let ((records, decoder), file, writer) = match self.stage.start(index)? {
            Start::Done(done) => return Ok(done),
            Start::Work {
                records,
                file,
                writer,
            } => (records, file, writer),
        };
        let slot = Arc::new(FileSlot::<S> {
            file,
            decoder,
            ordered: Mutex::new(Ordered {
                next: 0,
                waiting: BTreeMap::new(),
                writer: Some(writer),
                error: None,
            }),
            written: Condvar::new(),
        });
        let max_records = BATCH_RECORDS.min(self.permits.cap);
        let mut spawned = 0usize;
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        let mut read_error = None;
        for record in records {
            let record = match record {
                Ok(r) => r,
                Err(e) => {
                    read_error = Some(e);
                    break;
                }
            };
            bytes += record.text_len();
            batch.push(record);
            if batch.len() >= max_records || bytes >= BATCH_BYTES {
                if self.progress.cancelled() {
                    read_error = Some(Error::Interrupted);
                    break;
                }
                if slot.ordered.lock().expect("lock").error.is_some() {
                    break; // a job failed: stop reading, report it below
                }
                self.spawn(&slot, spawned, std::mem::take(&mut batch));
                spawned += 1;
                bytes = 0;
            }
        }
        if read_error.is_none() && !batch.is_empty() {
            self.spawn(&slot, spawned, batch);
            spawned += 1;
        }
        // Wait for every job of this file (they hold permits and reference the slot).
        let mut ordered = slot.ordered.lock().expect("lock");
        while ordered.next < spawned {
            ordered = slot.written.wait(ordered).expect("lock");
        }
        // A failed batch comes before the point where reading failed: its error is the
        // first in row order, as a sequential read would report.
        if let Some(e) = ordered.error.take().or(read_error) {
            return Err(e);
        }
        let writer = ordered.writer.take().expect("writer is there until finish");
        drop(ordered);
        self.stage.finish(&slot.file, writer)
    }

    fn spawn(&self, slot: &Arc<FileSlot<S>>, seq: usize, batch: Vec<Deferred>) {
        let n = batch.len();
        self.permits.acquire(n);
        self.batches.fetch_add(1, Relaxed);
        let (slot, stage, permits, progress) =
            (Arc::clone(slot), self.stage, self.permits, self.progress);
        self.scope.spawn(move |_| {
            let worked = if progress.cancelled() {
                Err(Error::Interrupted)
            } else {
                caught(|| {
                    let records = batch
                        .into_iter()
                        .map(|item| match (&slot.decoder, item) {
                            (_, Deferred::Ready(r)) => Ok(r),
                            (Some(d), raw) => d.decode(raw),
                            (None, _) => Err(Error::Usage("a raw line without a decoder".into())),
                        })
                        .collect::<Result<Vec<Record>>>()?;
                    let mapped = stage.map(&slot.file, &records)?;
                    Ok((records, mapped))
                })
            };
            let mut ordered = slot.ordered.lock().expect("lock");
            ordered.waiting.insert(seq, (n, worked));
            loop {
                let next = ordered.next;
                let Some((n, worked)) = ordered.waiting.remove(&next) else {
                    break;
                };
                if ordered.error.is_none() {
                    let o = &mut *ordered;
                    let writer = o.writer.as_mut().expect("writer is there until finish");
                    let file = &slot.file;
                    let written =
                        worked.and_then(|(b, m)| caught(|| stage.sink(file, writer, b, m)));
                    if let Err(e) = written {
                        o.error = Some(e);
                    }
                }
                ordered.next += 1;
                permits.release(n);
            }
            drop(ordered);
            slot.written.notify_all();
        });
    }
}

/// Counting permits for records in flight, with the peak seen.
struct Permits {
    cap: usize,
    used: Mutex<usize>,
    freed: Condvar,
    peak: AtomicUsize,
}

impl Permits {
    fn new(cap: usize) -> Self {
        Permits {
            cap,
            used: Mutex::new(0),
            freed: Condvar::new(),
            peak: AtomicUsize::new(0),
        }
    }
    /// Wait until `n` more records fit (`n` <= cap: batches are cut to fit).
    fn acquire(&self, n: usize) {
        let n = n.min(self.cap);
        let mut used = self.used.lock().expect("lock");
        while *used + n > self.cap {
            used = self.freed.wait(used).expect("lock");
        }
        *used += n;
        self.peak.fetch_max(*used, Relaxed);
    }
    fn release(&self, n: usize) {
        let n = n.min(self.cap);
        *self.used.lock().expect("lock") -= n;
        self.freed.notify_all();
    }
    fn peak(&self) -> usize {
        self.peak.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{self, OnError, SourceOptions};
    use std::path::{Path, PathBuf};

    fn slim(i: usize) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
            "python/tests/data/corpora/slimpajama/train/chunk1/example_train_000{i}.jsonl.zst"
        ))
    }

    fn options() -> SourceOptions {
        SourceOptions {
            text: "text".into(),
            exclude: Vec::new(),
            on_error: OnError::Fail,
            max_doc_bytes: 64 << 20,
        }
    }

    /// A toy stage: per document, (row, a hash of its text, its length), written in order;
    /// `fail_at` makes the map of the batch holding that row fail.
    struct Digest {
        files: Vec<PathBuf>,
        fail_at: Option<u64>,
    }

    impl Stage for Digest {
        type File = ();
        type Writer = Vec<(u64, u64, usize)>;
        type Mapped = Vec<(u64, u64, usize)>;
        type Done = Vec<(u64, u64, usize)>;
        fn start(&self, index: usize) -> Result<Start<Self>> {
            Ok(Start::Work {
                records: source::open_deferred(
                    &self.files[index],
                    &options(),
                    &source::Progress::new(),
                )?,
                file: (),
                writer: Vec::new(),
            })
        }
        fn map(&self, _: &(), batch: &[Record]) -> Result<Self::Mapped> {
            let mut out = Vec::new();
            for r in batch {
                if let Record::Doc { row, text } = r {
                    if Some(*row) == self.fail_at {
                        return Err(Error::Usage(format!("planted failure at row {row}")));
                    }
                    out.push((
                        *row,
                        xxhash_rust::xxh3::xxh3_64(text.as_bytes()),
                        text.len(),
                    ));
                }
            }
            Ok(out)
        }
        fn sink(
            &self,
            _: &(),
            w: &mut Self::Writer,
            _: Vec<Record>,
            m: Self::Mapped,
        ) -> Result<()> {
            w.extend(m);
            Ok(())
        }
        fn finish(&self, _: &(), w: Self::Writer) -> Result<Self::Done> {
            Ok(w)
        }
    }

    fn sequential(file: &Path) -> Vec<(u64, u64, usize)> {
        source::open(file, &options())
            .unwrap()
            .filter_map(|r| match r.unwrap() {
                Record::Doc { row, text } => {
                    Some((row, xxhash_rust::xxh3::xxh3_64(text.as_bytes()), text.len()))
                }
                _ => None,
            })
            .collect()
    }

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    }

    /// Whatever the threads, readers and cap, every file's output is the sequential one; the
    /// records in flight never exceed the cap.
    #[test]
    fn output_is_the_sequential_one_and_in_flight_stays_under_the_cap() {
        let files = vec![slim(0), slim(1), slim(0)];
        let want: Vec<_> = files.iter().map(|f| sequential(f)).collect();
        let stage = Digest {
            files: files.clone(),
            fail_at: None,
        };
        for (threads, readers, cap) in [
            (1, 1, 1 << 20),
            (2, 1, 3),
            (4, 2, 64),
            (4, 3, 1),
            (2, 2, 700),
        ] {
            let (got, stats) = run(
                &pool(threads),
                &stage,
                &[2, 0, 1],
                readers,
                cap,
                &Progress::default(),
            )
            .unwrap();
            assert_eq!(got.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 1, 2]);
            for ((_, out), want) in got.iter().zip(&want) {
                assert_eq!(out, want, "threads {threads} readers {readers} cap {cap}");
            }
            assert!(stats.peak_in_flight <= cap, "{stats:?} cap {cap}");
            assert!(stats.peak_in_flight > 0);
            if cap <= 3 {
                // Batches were cut to the cap: many more batches than documents / 512.
                assert!(stats.batches * cap >= want.iter().map(Vec::len).sum::<usize>());
            }
        }
    }

    /// Called from a thread of the pool itself (a Ray task's stage), even a one-thread pool
    /// finishes.
    #[test]
    fn runs_from_inside_a_one_thread_pool() {
        let stage = Digest {
            files: vec![slim(0)],
            fail_at: None,
        };
        let p = pool(1);
        let (got, _) = p
            .install(|| run(&p, &stage, &[0], 1, 8, &Progress::default()))
            .unwrap();
        assert_eq!(got[0].1, sequential(&slim(0)));
    }

    /// A failing batch fails the run with its error; a cancelled run is interrupted.
    #[test]
    fn a_failed_map_or_a_cancel_stops_the_run() {
        let stage = Digest {
            files: vec![slim(0), slim(1)],
            fail_at: Some(300),
        };
        let err = run(&pool(2), &stage, &[0, 1], 2, 100, &Progress::default()).unwrap_err();
        assert!(
            err.to_string().contains("planted failure at row 300"),
            "{err}"
        );
        let progress = Progress::default();
        progress.cancel();
        let stage = Digest {
            files: vec![slim(0)],
            fail_at: None,
        };
        let out = run(&pool(2), &stage, &[0], 1, 100, &progress);
        assert!(matches!(out, Err(Error::Interrupted)), "{out:?}");
    }
}
