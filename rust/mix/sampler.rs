//! Step -> global batch: the ordered list of windows trained at a step, a pure function of
//! (schedule, seed, step).
//!
//! Corpus `c` contributes `counts_at(step)[c]` consecutive draws starting at its cursor;
//! draw `d` is window `perm(seed, name_c, epoch)(d % windows_c)` of epoch `d / windows_c`,
//! each epoch with its own keyed permutation. The key is the corpus's *name*, never its
//! position in the spec: the same corpus gives the same windows in any mix, whatever the
//! other corpora or their order, so a family's branch (trunk stages + its own, one schedule)
//! continues exactly where the trunk's cursor stopped. The batch is then shuffled with a generator keyed
//! by (seed, step), so any contiguous rank slice holds the corpora in about their batch
//! proportions, and rank `r` of `W` takes `[r*n/W, (r+1)*n/W)`: the global stream does not
//! depend on the world size.

use std::ops::Range;

use super::permute::{derive, name_key, Permutation, SplitMix};
use super::schedule::Schedule;
use crate::error::{Error, Result};

/// Domain-separation tags for the keys derived from the seed.
const TAG_EPOCH: u64 = 0x6570_6f63_6800_0000;
const TAG_SHUFFLE: u64 = 0x7368_7566_6600_0000;

/// One sequence of a batch: window `window` (in `[0, windows_c)`) of corpus `corpus`, drawn
/// in epoch `epoch` (0-based) of that corpus.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sample {
    pub corpus: u32,
    pub epoch: u64,
    pub window: u64,
}

impl Schedule {
    /// The permutation corpus `corpus` (an index into `corpora()`) follows in epoch `epoch`:
    /// keyed by (seed, the corpus's name, epoch).
    pub fn epoch_permutation(&self, corpus: u32, epoch: u64) -> Permutation {
        let name = &self.corpora()[corpus as usize].name;
        let key = derive(
            derive(derive(self.seed(), TAG_EPOCH), name_key(name)),
            epoch,
        );
        Permutation::new(self.windows()[corpus as usize], key)
    }

    /// The global batch at `step`, in training order.
    pub fn batch(&self, step: u64) -> Result<Vec<Sample>> {
        let cursors = self.cursors_at(step)?;
        let counts = self.counts_at(step)?;
        let total: u64 = counts.iter().sum();
        let mut samples = Vec::with_capacity(total as usize);
        for (c, (&start, &count)) in cursors.iter().zip(&counts).enumerate() {
            if count == 0 {
                continue;
            }
            let windows = self.windows()[c];
            let mut epoch = start / windows;
            let mut perm = self.epoch_permutation(c as u32, epoch);
            for d in start..start + count {
                if d / windows != epoch {
                    epoch = d / windows;
                    perm = self.epoch_permutation(c as u32, epoch);
                }
                samples.push(Sample {
                    corpus: c as u32,
                    epoch,
                    window: perm.apply(d % windows),
                });
            }
        }
        SplitMix::new(derive(derive(self.seed(), TAG_SHUFFLE), step)).shuffle(&mut samples);
        Ok(samples)
    }

    /// The positions of rank `rank`'s contiguous slice of the batch at `step`.
    pub fn rank_slice(&self, step: u64, rank: u32, world: u32) -> Result<Range<usize>> {
        if world == 0 || rank >= world {
            return Err(Error::Usage(format!(
                "rank {rank} of world size {world}: need 0 <= rank < world"
            )));
        }
        let n = self.batch_sequences(step)?;
        let w = world as u64;
        if n % w != 0 {
            let stage = self.stage_of(step)?;
            let unit = self.seq_len() as u64 * w;
            return Err(Error::Spec(format!(
                "stages[{stage}].batch_tokens: the batch of {n} sequences at step {step} does \
                 not divide among {world} ranks; use a multiple of seq_len * world = {unit} \
                 tokens (e.g. {})",
                n.div_ceil(w) * unit
            )));
        }
        let per = (n / w) as usize;
        let r = rank as usize;
        Ok(r * per..(r + 1) * per)
    }

    /// Rank `rank`'s samples at `step`.
    pub fn rank_batch(&self, step: u64, rank: u32, world: u32) -> Result<Vec<Sample>> {
        let range = self.rank_slice(step, rank, world)?;
        let mut batch = self.batch(step)?;
        batch.truncate(range.end);
        Ok(batch.split_off(range.start))
    }
}
