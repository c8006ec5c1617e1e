//! Parallelism inside a file, for the per-file build stages (fingerprint, tokenize).
//!
//! ```text
//! reader threads (one file each at a time, largest file first)
//!   read + decompress + split lines -> batches of raw lines       (in file order)
//!   wait for permits: at most `in_flight.docs` records and `in_flight.bytes` bytes of text
//!   read and not yet written
//!   spawn map(batch) on the pool  ->  any thread, in any order
//! ordered sink: a finished job queues its batch; whichever job holds the file's writer
//!   writes every batch that is next in order (its own and the ones queued behind it), then
//!   frees their permits; a job that finds the writer busy leaves its batch to the holder
//! after the file's last batch is written: finish (commit) the file's output
//! ```
//!
//! Contract: the writer of a file sees its batches in file order, one at a time, exactly as a
//! sequential loop would give them, so every output byte is independent of the number of
//! threads, of the batch boundaries' timing and of the in-flight caps. Memory is bounded by
//! the caps: a record and its text count from the moment it is read until its batch is
//! written (records waiting behind a slower batch included). Counting bytes as well as records
//! matters for source trees and dumps whose documents run from bytes to tens of MB: a run of
//! huge files under a record cap alone would hold hundreds of MB. A batch never holds more
//! than the caps (except one document bigger than the byte cap, which then travels alone), so
//! caps of 1 still make progress.
//!
//! Deadlock freedom: pool threads only run `map` + the ordered sink, which never wait on other
//! jobs (queueing takes a lock for an insert; a busy writer is left to its holder). Only reader threads
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

/// What may be in flight at once in a per-file stage: records read and not yet written, and
/// the bytes of their text. How to build, not what: never part of the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InFlight {
    pub docs: usize,
    pub bytes: usize,
}

impl InFlight {
    /// The caps a config leaves unset, independent of anything that shapes the output: enough
    /// batches to keep every thread busy while the reader runs ahead (4 per worker, at least
    /// 8), and at least 32 MiB, room for the huge documents source trees hold (generated
    /// headers of 10-25 MB) beside their neighbours: a document bigger than the byte cap runs
    /// alone while the other threads idle. Measured on the Linux tree (2 workers, no dedup):
    /// heap peaks at 0.5 GB with 32 MiB, 0.6 GB with 64 MiB, 0.3 GB with 8 MiB, and 1.9 GB
    /// under the record cap alone (4096 documents: all of its 20 MB headers at once).
    pub fn default_for(workers: usize) -> Self {
        let batches = (4 * workers.max(1)).max(8);
        InFlight {
            docs: batches * BATCH_RECORDS,
            bytes: (batches * BATCH_BYTES).max(32 << 20),
        }
    }
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
    /// The most bytes of text read and not yet written at any moment.
    pub peak_bytes_in_flight: usize,
    pub batches: usize,
}

/// Run `stage` over the files `order` (the order readers take them in: largest first keeps
/// the tail short) on `pool`, `readers` files at a time, within the `in_flight` caps.
/// Returns each file's result, by file index.
pub fn run<S: Stage>(
    pool: &rayon::ThreadPool,
    stage: &S,
    order: &[usize],
    readers: usize,
    in_flight: InFlight,
    progress: &Progress,
) -> Result<(Done<S>, RunStats)> {
    let permits = Permits::new(in_flight);
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
            peak_in_flight: permits.peak().docs,
            peak_bytes_in_flight: permits.peak().bytes,
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

/// A file's finished batches on their way to its writer.
struct Queue<S: Stage> {
    /// Batches written so far (the number of the next one to write).
    next: usize,
    /// By batch number: the permits it holds and its work.
    waiting: BTreeMap<usize, (Size, Worked<S>)>,
    /// The first failure in batch order; later batches are then dropped unwritten.
    error: Option<Error>,
}

struct FileSlot<S: Stage> {
    file: S::File,
    decoder: Option<Decoder>,
    queue: Mutex<Queue<S>>,
    /// Signalled (with `queue`) each time a batch is written.
    written: Condvar,
    /// Held by the one job writing; `None` once the file is finished.
    writer: Mutex<Option<S::Writer>>,
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
            queue: Mutex::new(Queue {
                next: 0,
                waiting: BTreeMap::new(),
                error: None,
            }),
            written: Condvar::new(),
            writer: Mutex::new(Some(writer)),
        });
        let max_records = BATCH_RECORDS.min(self.permits.cap.docs);
        let max_bytes = BATCH_BYTES.min(self.permits.cap.bytes);
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
            // Cut before a record that would take the batch past the byte cap (a huge
            // document goes alone: its neighbours do not wait inside its batch), and after
            // one that fills the batch.
            let len = record.text_len();
            if !batch.is_empty()
                && bytes + len > max_bytes
                && !self.send(&slot, &mut spawned, &mut batch, &mut bytes, &mut read_error)
            {
                break;
            }
            bytes += len;
            batch.push(record);
            if (batch.len() >= max_records || bytes >= max_bytes)
                && !self.send(&slot, &mut spawned, &mut batch, &mut bytes, &mut read_error)
            {
                break;
            }
        }
        if read_error.is_none() && !batch.is_empty() {
            self.spawn(&slot, spawned, batch, bytes);
            spawned += 1;
        }
        // Wait for every job of this file (they hold permits and reference the slot).
        let mut queue = lock(&slot.queue);
        while queue.next < spawned {
            queue = slot.written.wait(queue).unwrap_or_else(|p| p.into_inner());
        }
        // A failed batch comes before the point where reading failed: its error is the
        // first in row order, as a sequential read would report.
        if let Some(e) = queue.error.take().or(read_error) {
            return Err(e);
        }
        drop(queue);
        let writer = lock(&slot.writer)
            .take()
            .expect("writer is there until finish");
        self.stage.finish(&slot.file, writer)
    }

    /// Spawn the job of `batch` (the file's batch number `spawned`) and start a new one;
    /// false when reading must stop: a job failed (its error is reported in batch order) or
    /// the build was cancelled (`read_error`).
    fn send(
        &self,
        slot: &Arc<FileSlot<S>>,
        spawned: &mut usize,
        batch: &mut Vec<Deferred>,
        bytes: &mut usize,
        read_error: &mut Option<Error>,
    ) -> bool {
        if self.progress.cancelled() {
            *read_error = Some(Error::Interrupted);
            return false;
        }
        if lock(&slot.queue).error.is_some() {
            return false;
        }
        self.spawn(slot, *spawned, std::mem::take(batch), std::mem::take(bytes));
        *spawned += 1;
        true
    }

    fn spawn(&self, slot: &Arc<FileSlot<S>>, seq: usize, batch: Vec<Deferred>, bytes: usize) {
        let size = Size {
            docs: batch.len(),
            bytes,
        };
        self.permits.acquire(size);
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
            lock(&slot.queue).waiting.insert(seq, (size, worked));
            write_ready(stage, &slot, permits);
        });
    }
}

/// Write every queued batch of `slot` that is next in order, unless another job holds the
/// writer: then it will (it looks at the queue again after letting the writer go, so a batch
/// queued while it held it is never stranded). Pool threads never wait behind another write.
fn write_ready<S: Stage>(stage: &S, slot: &FileSlot<S>, permits: &Permits) {
    loop {
        let mut writer = match slot.writer.try_lock() {
            Ok(w) => w,
            Err(std::sync::TryLockError::WouldBlock) => return,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        };
        loop {
            let (size, worked, failed) = {
                let mut q = lock(&slot.queue);
                let next = q.next;
                let Some((size, worked)) = q.waiting.remove(&next) else {
                    break;
                };
                (size, worked, q.error.is_some())
            };
            let written = if failed {
                Ok(()) // after a failure, batches are only counted off
            } else {
                let w = writer.as_mut().expect("writer is there until finish");
                worked.and_then(|(b, m)| caught(|| stage.sink(&slot.file, w, b, m)))
            };
            {
                let mut q = lock(&slot.queue);
                if let Err(e) = written {
                    q.error.get_or_insert(e);
                }
                q.next += 1;
            }
            permits.release(size);
            slot.written.notify_all();
        }
        drop(writer);
        let q = lock(&slot.queue);
        if !q.waiting.contains_key(&q.next) {
            return;
        }
    }
}

/// A lock whose holder cannot have panicked mid-update (jobs' panics are caught), so a
/// poisoned one is taken as is.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How much one batch holds: records and bytes of text.
#[derive(Clone, Copy, Debug, Default)]
struct Size {
    docs: usize,
    bytes: usize,
}

/// Counting permits for records and bytes in flight, with the peaks seen.
struct Permits {
    cap: InFlight,
    state: Mutex<PermitState>,
    freed: Condvar,
}

#[derive(Default)]
struct PermitState {
    /// What the batches in flight claim (each at most the caps).
    claimed: Size,
    /// What they hold, and its peak: above the byte cap only while one document bigger than
    /// the cap is in flight alone.
    held: Size,
    peak: Size,
}

impl Permits {
    fn new(cap: InFlight) -> Self {
        Permits {
            cap: InFlight {
                docs: cap.docs.max(1),
                bytes: cap.bytes.max(1),
            },
            state: Mutex::new(PermitState::default()),
            freed: Condvar::new(),
        }
    }
    /// A batch's claim: at most the caps (batches are cut to fit; a single document bigger
    /// than the byte cap claims all of it, so it waits for the others and travels alone).
    fn claim(&self, size: Size) -> Size {
        Size {
            docs: size.docs.min(self.cap.docs),
            bytes: size.bytes.min(self.cap.bytes),
        }
    }
    /// Wait until `size` more fits.
    fn acquire(&self, size: Size) {
        let n = self.claim(size);
        let mut st = lock(&self.state);
        while st.claimed.docs + n.docs > self.cap.docs
            || st.claimed.bytes + n.bytes > self.cap.bytes
        {
            st = self.freed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.claimed.docs += n.docs;
        st.claimed.bytes += n.bytes;
        st.held.docs += size.docs;
        st.held.bytes += size.bytes;
        st.peak.docs = st.peak.docs.max(st.held.docs);
        st.peak.bytes = st.peak.bytes.max(st.held.bytes);
    }
    fn release(&self, size: Size) {
        let n = self.claim(size);
        {
            let mut st = lock(&self.state);
            st.claimed.docs -= n.docs;
            st.claimed.bytes -= n.bytes;
            st.held.docs -= size.docs;
            st.held.bytes -= size.bytes;
        }
        self.freed.notify_all();
    }
    fn peak(&self) -> Size {
        lock(&self.state).peak
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::{options, slim};
    use crate::source;
    use std::path::{Path, PathBuf};

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

    fn small(docs: usize) -> InFlight {
        InFlight {
            docs,
            bytes: 1 << 30,
        }
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
        // What the byte caps count: each record's length as read (a JSON line, escapes and all).
        let largest = files
            .iter()
            .flat_map(|f| {
                let (records, _) =
                    source::open_deferred(f, &options(), &source::Progress::new()).unwrap();
                records.map(|r| r.unwrap().text_len())
            })
            .max()
            .unwrap();
        let total_docs: usize = want.iter().map(Vec::len).sum();
        for (threads, readers, docs, bytes) in [
            (1, 1, 1 << 20, 1 << 30),
            (2, 1, 3, 1 << 30),
            (4, 2, 64, 1 << 30),
            (4, 3, 1, 1 << 30),
            (2, 2, 700, 1 << 30),
            // Byte caps: below the largest document (which then goes alone), a few documents,
            // a few batches.
            (2, 1, 1 << 20, largest / 2),
            (4, 2, 1 << 20, 20_000),
            (2, 2, 1 << 20, 3 << 20),
        ] {
            let cap = InFlight { docs, bytes };
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
                assert_eq!(out, want, "threads {threads} readers {readers} cap {cap:?}");
            }
            assert!(stats.peak_in_flight <= docs, "{stats:?} cap {cap:?}");
            assert!(stats.peak_in_flight > 0);
            // Over the byte cap only with one document bigger than it, alone.
            assert!(
                stats.peak_bytes_in_flight <= bytes.max(largest),
                "{stats:?} cap {cap:?}"
            );
            if docs <= 3 {
                // Batches were cut to the cap: many more batches than documents / 512.
                assert!(stats.batches * docs >= total_docs);
            }
            if bytes <= 20_000 {
                let text: usize = want.iter().flatten().map(|d| d.2).sum();
                assert!(stats.batches >= text / bytes, "{stats:?} cap {cap:?}");
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
            .install(|| run(&p, &stage, &[0], 1, small(8), &Progress::default()))
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
        let err = run(
            &pool(2),
            &stage,
            &[0, 1],
            2,
            small(100),
            &Progress::default(),
        )
        .unwrap_err();
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
        let out = run(&pool(2), &stage, &[0], 1, small(100), &progress);
        assert!(matches!(out, Err(Error::Interrupted)), "{out:?}");
    }
}
