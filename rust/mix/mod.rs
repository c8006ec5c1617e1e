//! Mix: schedule math, the step -> global batch sampler, and the loader ring buffer.
//!
//! - `schedule`: stages, weights, ramps, batch sizes; where each step stands (cursors) in
//!   closed form; the locked JSON form.
//! - `apportion`: exact largest-remainder split of a batch among corpora.
//! - `permute`: keyed Feistel permutations (one per corpus epoch) and the in-batch shuffle.
//! - `sampler`: `Schedule::batch(step)` and rank slices.
//! - `gather`: rank's slice of a step's batch as token rows (the loader's and `batch`'s).
//! - `loader`: a ring of preallocated token buffers filled ahead of the trainer.
//! - `shard_source`: a built mix's corpora as token streams (what the loader reads).
//! - `shard_cache`: a mix in a bucket: its shards fetched on first read, verified, shared by
//!   the ranks of a node, evicted past a byte budget.

mod apportion;
pub mod gather;
pub mod loader;
pub mod permute;
pub mod sampler;
pub mod schedule;
pub mod shard_cache;
pub mod shard_source;

#[cfg(test)]
mod loader_tests;
#[cfg(test)]
mod tests;

pub use gather::{gather, gather_into};
pub use loader::{Loader, LoaderConfig, Slot, WindowSource};
pub use sampler::Sample;
pub use schedule::{windows_in, CorpusSize, Schedule, StageSpec, WEIGHT_DENOM};
pub use shard_cache::{CachedStream, ShardCache};
pub use shard_source::{branch_names, open_mix, open_mix_cached, ShardSource};
