//! The loader: a ring of preallocated token buffers filled ahead of the trainer.
//!
//! `slots` buffers, each big enough for the largest per-rank batch of the schedule, are
//! allocated once. Worker threads claim the next step to fill and a free buffer, gather that
//! rank's windows into it (`WindowSource::read_window`) and park it as ready; the consumer
//! takes buffers strictly in step order as `Slot`s. A buffer moves by ownership (a `Box`
//! whose heap block never moves), so the consumer can expose it without a copy, and it only
//! goes back to the free list when the `Slot` is dropped: a buffer the trainer still reads is
//! never written. What a slot holds is a pure function of (schedule, step, rank, world,
//! source): the number of threads only changes when it is ready, never what it holds.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::sampler::Sample;
use super::schedule::Schedule;
use crate::error::{Error, Result};

/// Reads one window (`seq_len + 1` tokens) of a corpus's token stream into `out`.
pub trait WindowSource: Send + Sync {
    fn read_window(&self, corpus: u32, window: u64, out: &mut [u32]) -> Result<()>;
}

#[derive(Clone, Debug)]
pub struct LoaderConfig {
    pub rank: u32,
    pub world: u32,
    /// Buffers in the ring (at least 1; one more than the trainer holds at once keeps the
    /// workers busy).
    pub slots: usize,
    /// Worker threads (at least 1).
    pub threads: usize,
    /// First step to deliver.
    pub start_step: u64,
    /// One past the last step to deliver (`None`: the end of the schedule).
    pub end_step: Option<u64>,
}

/// A filled buffer: rank's slice of the global batch at `step`, handed out in step order.
/// Dropping it returns the buffer to the ring.
pub struct Slot {
    step: u64,
    seq_len: u32,
    samples: Vec<Sample>,
    buf: Option<Box<[u32]>>,
    shared: Arc<Shared>,
}

impl Slot {
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Sequences in this slot.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Tokens, row-major `[len(), seq_len + 1]`.
    pub fn tokens(&self) -> &[u32] {
        let n = self.samples.len() * (self.seq_len as usize + 1);
        self.buf.as_ref().map_or(&[], |b| &b[..n])
    }

    /// Where each sequence came from.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            let mut st = self.shared.lock();
            st.free.push(buf);
            drop(st);
            self.shared.work.notify_all();
        }
    }
}

struct Filled {
    buf: Box<[u32]>,
    result: Result<Vec<Sample>>,
}

struct State {
    /// Bumped by `seek`: work claimed under an older generation is discarded.
    generation: u64,
    next_fill: u64,
    next_hand: u64,
    end: u64,
    free: Vec<Box<[u32]>>,
    ready: BTreeMap<u64, Filled>,
    in_flight: usize,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Workers wait here for a step to claim and a free buffer.
    work: Condvar,
    /// The consumer waits here for the next step to be ready.
    ready: Condvar,
    schedule: Arc<Schedule>,
    source: Arc<dyn WindowSource>,
    rank: u32,
    world: u32,
    slots: usize,
}

impl Shared {
    /// A poisoned lock means a worker panicked mid-update of plain counters and maps; the
    /// state is still consistent enough to shut down, so keep going rather than panic again.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fill(&self, step: u64, buf: &mut [u32]) -> Result<Vec<Sample>> {
        super::gather::gather_into(
            &self.schedule,
            self.source.as_ref(),
            step,
            self.rank,
            self.world,
            buf,
        )
    }

    fn work(&self) {
        let mut st = self.lock();
        loop {
            if st.shutdown {
                return;
            }
            let claimable = st.next_fill < st.end;
            if let Some(mut buf) = claimable.then(|| st.free.pop()).flatten() {
                let step = st.next_fill;
                st.next_fill += 1;
                let generation = st.generation;
                st.in_flight += 1;
                drop(st);
                let result = self.fill(step, &mut buf);
                st = self.lock();
                st.in_flight -= 1;
                if st.generation == generation {
                    st.ready.insert(step, Filled { buf, result });
                } else {
                    st.free.push(buf);
                    self.work.notify_all();
                }
                self.ready.notify_all();
                continue;
            }
            st = self.work.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Fills a ring of buffers ahead of the consumer; see the module docs.
pub struct Loader {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    capacity: usize,
    regions: Vec<(usize, usize)>,
}

impl Loader {
    pub fn new(
        schedule: Arc<Schedule>,
        source: Arc<dyn WindowSource>,
        config: LoaderConfig,
    ) -> Result<Loader> {
        let LoaderConfig {
            rank,
            world,
            slots,
            threads,
            start_step,
            end_step,
        } = config;
        if slots == 0 || threads == 0 {
            return Err(Error::Spec(format!(
                "loader: slots ({slots}) and threads ({threads}) must be >= 1"
            )));
        }
        let end = end_step.unwrap_or(schedule.num_steps());
        if end > schedule.num_steps() || start_step > end {
            return Err(Error::Usage(format!(
                "loader: steps {start_step}..{end} are outside the schedule (0..{})",
                schedule.num_steps()
            )));
        }
        // Check every stage's batch divides among the ranks now, not hours into a run.
        let mut max_rows = 0usize;
        for i in 0..schedule.stages().len() {
            if let Some(steps) = schedule.stage_steps(i) {
                max_rows = max_rows.max(schedule.rank_slice(steps.start, rank, world)?.len());
            }
        }
        let capacity = max_rows * (schedule.seq_len() as usize + 1);
        let free: Vec<Box<[u32]>> = (0..slots)
            .map(|_| vec![0u32; capacity].into_boxed_slice())
            .collect();
        let regions = free
            .iter()
            .map(|b| (b.as_ptr() as usize, std::mem::size_of_val(&**b)))
            .collect();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                generation: 0,
                next_fill: start_step,
                next_hand: start_step,
                end,
                free,
                ready: BTreeMap::new(),
                in_flight: 0,
                shutdown: false,
            }),
            work: Condvar::new(),
            ready: Condvar::new(),
            schedule,
            source,
            rank,
            world,
            slots,
        });
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads {
            let s = Arc::clone(&shared);
            let handle = std::thread::Builder::new()
                .name(format!("tinyllama-loader-{i}"))
                .spawn(move || s.work())
                .map_err(|e| Error::io("loader thread", e))?;
            workers.push(handle);
        }
        Ok(Loader {
            shared,
            workers,
            capacity,
            regions,
        })
    }

    /// The next step's slot, blocking until it is filled; `None` past the last step.
    /// Errors if the source failed on that step, or if every buffer is held by the consumer
    /// (nothing could ever become ready: drop a `Slot` first).
    pub fn next_slot(&self) -> Result<Option<Slot>> {
        let sh = &self.shared;
        let mut st = sh.lock();
        loop {
            if st.next_hand >= st.end {
                return Ok(None);
            }
            let step = st.next_hand;
            if let Some(filled) = st.ready.remove(&step) {
                st.next_hand += 1;
                let seq_len = sh.schedule.seq_len();
                return match filled.result {
                    Ok(samples) => Ok(Some(Slot {
                        step,
                        seq_len,
                        samples,
                        buf: Some(filled.buf),
                        shared: Arc::clone(sh),
                    })),
                    Err(e) => {
                        st.free.push(filled.buf);
                        drop(st);
                        sh.work.notify_all();
                        Err(e)
                    }
                };
            }
            // Steps are claimed in order, so the next one is ready, in flight, or waits for a
            // free buffer; with none free or coming, waiting would hang forever.
            if st.free.is_empty() && st.in_flight == 0 {
                return Err(Error::Spec(format!(
                    "loader: all {} slots are held by the consumer; release one before \
                     asking for step {step}",
                    sh.slots
                )));
            }
            st = sh.ready.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The step the next `next_slot` returns.
    pub fn position(&self) -> u64 {
        self.shared.lock().next_hand
    }

    /// Restarts delivery at `step` (ready buffers are discarded; held slots stay valid).
    pub fn seek(&self, step: u64) -> Result<()> {
        let sh = &self.shared;
        let mut st = sh.lock();
        if step > st.end {
            return Err(Error::Usage(format!(
                "loader: cannot seek to step {step}, past the last step {}",
                st.end
            )));
        }
        st.generation += 1;
        let ready = std::mem::take(&mut st.ready);
        st.free.extend(ready.into_values().map(|f| f.buf));
        st.next_fill = step;
        st.next_hand = step;
        drop(st);
        sh.work.notify_all();
        Ok(())
    }

    /// Tokens each buffer holds (`max rows * (seq_len + 1)`).
    pub fn slot_capacity(&self) -> usize {
        self.capacity
    }

    /// (address, bytes) of every buffer of the ring, fixed for the loader's life: what a
    /// caller registers as page-locked memory (`cudaHostRegister`).
    pub fn buffer_regions(&self) -> &[(usize, usize)] {
        &self.regions
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.work.notify_all();
        for w in self.workers.drain(..) {
            // A worker that panicked has nothing left to clean up.
            let _ = w.join();
        }
    }
}
