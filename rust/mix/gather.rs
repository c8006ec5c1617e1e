//! The batch gather: rank's slice of the global batch at a step, as token rows. One function
//! for both readers of batches: the loader's worker threads (into a ring buffer) and the
//! sampler's `batch` (into a fresh array). A row is `seq_len + 1` tokens: the window and the
//! first token of the next one (the last target).

use super::loader::WindowSource;
use super::sampler::Sample;
use super::schedule::Schedule;
use crate::error::{Error, Result};

/// Fill `out` with rank `rank` of `world`'s rows at `step` (row `i` = sample `i`'s window) and
/// return the samples. `out` must hold at least `rows * (seq_len + 1)` tokens; what is past
/// the last row is left as it was.
pub fn gather_into(
    schedule: &Schedule,
    source: &dyn WindowSource,
    step: u64,
    rank: u32,
    world: u32,
    out: &mut [u32],
) -> Result<Vec<Sample>> {
    let samples = schedule.rank_batch(step, rank, world)?;
    let width = schedule.seq_len() as usize + 1;
    if out.len() < samples.len() * width {
        return Err(Error::Usage(format!(
            "gather: a buffer of {} tokens for {} rows of {width}",
            out.len(),
            samples.len()
        )));
    }
    for (s, row) in samples.iter().zip(out.chunks_exact_mut(width)) {
        source.read_window(s.corpus, s.window, row)?;
    }
    Ok(samples)
}

/// [`gather_into`] a new buffer: (tokens, row-major `[rows, seq_len + 1]`, and the samples).
pub fn gather(
    schedule: &Schedule,
    source: &dyn WindowSource,
    step: u64,
    rank: u32,
    world: u32,
) -> Result<(Vec<u32>, Vec<Sample>)> {
    let width = schedule.seq_len() as usize + 1;
    let rows = schedule.rank_slice(step, rank, world)?.len();
    let mut tokens = vec![0u32; rows * width];
    let samples = gather_into(schedule, source, step, rank, world, &mut tokens)?;
    Ok((tokens, samples))
}
