//! The mixture schedule: stages (token budget, global batch, weights, linear ramp) over the
//! corpora of a built mix, and where every step stands in it.
//!
//! Definitions (the locked mix and every tool rely on these):
//! - A corpus of `T` tokens has `windows_in(T, seq_len) = (T - 1) / seq_len` windows per epoch:
//!   window `i` is tokens `[i*seq_len, i*seq_len + seq_len + 1)`.
//! - A stage's global batch is `batch_tokens / seq_len` sequences, rounded half up; it runs
//!   `ceil(tokens / (batch * seq_len))` steps, so it trains `steps * batch * seq_len >= tokens`
//!   tokens and the next stage starts where it ended.
//! - Weights are quantised to integers in units of 1e-9 (`WEIGHT_DENOM`) summing exactly to
//!   1e9, so all later arithmetic is exact integer math (no float drift between machines).
//! - A ramp of `R` tokens at the start of a stage: at a step that starts `t` tokens into the
//!   stage, weights are `prev + (next - prev) * t / R` while `t < R`, then `next`.
//! - At each step the batch is apportioned among corpora by largest remainder (see
//!   `apportion`); a corpus's *cursor* is the number of sequences it has delivered before a
//!   step. Cursors run on across stages; draw `d` of corpus `c` is window
//!   `perm(c, d / windows_c)(d % windows_c)`, so no window repeats or is skipped in an epoch.
//!
//! Locating a step is O(corpora) within constant-weight segments (closed form) and at most
//! `RAMP_BLOCK` apportionments inside a ramp (prefix counts are precomputed every
//! `RAMP_BLOCK` ramp steps when the schedule is built).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::apportion::Split;
use crate::error::{Error, IoContext, Result};

/// Weights are integers in units of 1 / WEIGHT_DENOM.
pub const WEIGHT_DENOM: u64 = 1_000_000_000;
/// How far weights may sum from 1 before the spec is rejected.
const SUM_TOLERANCE: f64 = 1e-6;
/// Ramp prefix counts are stored every RAMP_BLOCK steps: locating a ramp step costs at most
/// this many apportionments.
const RAMP_BLOCK: u64 = 64;
/// A batch is materialised as a list of samples: bound it (7.2M tokens of 2048 is 3516).
const MAX_BATCH_SEQUENCES: u64 = 1 << 24;
/// Ramps are enumerated once when the schedule is built; bound that work.
const MAX_RAMP_STEPS: u64 = 1 << 22;
/// v2: a corpus's epoch permutations are keyed by its name, not its index (v1's streams
/// differ: a v1 schedule is refused, naming the file, and the mix must be rebuilt).
const FORMAT: &str = "tinyllama-schedule-v2";

/// Windows of `seq_len + 1` tokens (overlapping by one token) in a stream of `tokens` tokens.
pub fn windows_in(tokens: u64, seq_len: u32) -> u64 {
    if seq_len == 0 {
        return 0;
    }
    tokens.saturating_sub(1) / seq_len as u64
}

/// A corpus of the built mix: its name and the length of its token stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorpusSize {
    pub name: String,
    pub tokens: u64,
}

/// One stage, as the spec gives it (weights by corpus name; corpora left out weigh 0).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    pub name: String,
    pub tokens: u64,
    pub batch_tokens: u64,
    pub weights: BTreeMap<String, f64>,
    #[serde(default)]
    pub ramp_tokens: u64,
}

/// A stage resolved to steps.
#[derive(Clone, Debug)]
struct StagePlan {
    start_step: u64,
    steps: u64,
    /// Global batch in sequences.
    batch: u64,
    start_tokens: u64,
    /// Quantised weights by corpus index, summing to WEIGHT_DENOM.
    weights: Vec<u128>,
}

#[derive(Clone, Debug)]
enum SegmentKind {
    Constant(Split),
    Ramp {
        stage: usize,
        /// checkpoints[b][c]: draws of corpus c from the segment start to step
        /// `start + b * RAMP_BLOCK`.
        checkpoints: Vec<Vec<u64>>,
    },
}

/// A run of steps with one batch size and either constant weights or one ramp.
#[derive(Clone, Debug)]
struct Segment {
    start: u64,
    /// Draws per corpus before `start`.
    cursor: Vec<u64>,
    kind: SegmentKind,
}

/// A validated, located schedule. Build with `Schedule::new`, store with `to_json`.
#[derive(Clone, Debug)]
pub struct Schedule {
    seq_len: u32,
    seed: u64,
    corpora: Vec<CorpusSize>,
    windows: Vec<u64>,
    /// The stages with their weights as quantised (what `to_json` writes).
    stages: Vec<StageSpec>,
    plans: Vec<StagePlan>,
    segments: Vec<Segment>,
    end_cursor: Vec<u64>,
    num_steps: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Lock {
    format: String,
    seq_len: u32,
    seed: u64,
    corpora: Vec<LockCorpus>,
    stages: Vec<StageSpec>,
    /// Derived, stored for readers and checked on load.
    num_steps: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LockCorpus {
    name: String,
    tokens: u64,
    /// Derived from tokens and seq_len, stored for readers and checked on load.
    windows: u64,
}

fn spec_err(msg: String) -> Error {
    Error::Spec(msg)
}

/// Quantises one stage's weights to integers summing exactly to WEIGHT_DENOM (largest
/// remainder, ties to the lower corpus index). Idempotent on its own output divided by 1e9.
fn quantise(key: &str, weights: &BTreeMap<String, f64>, names: &[String]) -> Result<Vec<u128>> {
    let mut w = vec![0f64; names.len()];
    for (name, &value) in weights {
        let Some(i) = names.iter().position(|n| n == name) else {
            return Err(spec_err(format!(
                "{key}.weights.{name}: unknown corpus (corpora: {})",
                names.join(", ")
            )));
        };
        if !value.is_finite() || value < 0.0 {
            return Err(spec_err(format!(
                "{key}.weights.{name}: {value} is not a weight (must be finite and >= 0)"
            )));
        }
        w[i] = value;
    }
    let sum: f64 = w.iter().sum();
    if (sum - 1.0).abs() > SUM_TOLERANCE {
        return Err(spec_err(format!(
            "{key}.weights: sum to {sum}, must sum to 1"
        )));
    }
    let scaled: Vec<f64> = w.iter().map(|x| x / sum * WEIGHT_DENOM as f64).collect();
    let mut q: Vec<u128> = scaled.iter().map(|x| x.floor() as u128).collect();
    let assigned: u128 = q.iter().sum();
    let mut order: Vec<usize> = (0..w.len()).collect();
    // Stable sort keeps ties in index order.
    order.sort_by(|&a, &b| {
        let ra = scaled[a] - scaled[a].floor();
        let rb = scaled[b] - scaled[b].floor();
        rb.total_cmp(&ra)
    });
    let leftover = (WEIGHT_DENOM as u128).saturating_sub(assigned) as usize;
    for &i in order.iter().cycle().take(leftover) {
        q[i] += 1;
    }
    for (i, (&qi, &wi)) in q.iter().zip(&w).enumerate() {
        if qi == 0 && wi > 0.0 {
            return Err(spec_err(format!(
                "{key}.weights.{}: {wi} is below the resolution of weights (1e-9)",
                names[i]
            )));
        }
    }
    Ok(q)
}

impl Schedule {
    /// Validates and resolves a schedule. Errors are `Error::Spec` naming the key.
    pub fn new(
        seq_len: u32,
        seed: u64,
        corpora: Vec<CorpusSize>,
        stages: Vec<StageSpec>,
    ) -> Result<Schedule> {
        if seq_len == 0 {
            return Err(spec_err("seq_len: must be > 0".into()));
        }
        if corpora.is_empty() {
            return Err(spec_err("corpora: at least one corpus is needed".into()));
        }
        if stages.is_empty() {
            return Err(spec_err("stages: at least one stage is needed".into()));
        }
        let names: Vec<String> = corpora.iter().map(|c| c.name.clone()).collect();
        for (i, n) in names.iter().enumerate() {
            if names[..i].contains(n) {
                return Err(spec_err(format!("corpora.{n}: defined twice")));
            }
        }
        let windows: Vec<u64> = corpora
            .iter()
            .map(|c| windows_in(c.tokens, seq_len))
            .collect();
        let seq = seq_len as u64;

        let mut plans: Vec<StagePlan> = Vec::with_capacity(stages.len());
        let mut locked = Vec::with_capacity(stages.len());
        let (mut step, mut tokens_so_far) = (0u64, 0u64);
        for (si, st) in stages.iter().enumerate() {
            let key = format!("stages[{si}]");
            if st.tokens == 0 {
                return Err(spec_err(format!("{key}.tokens: must be > 0")));
            }
            if st.batch_tokens < seq {
                return Err(spec_err(format!(
                    "{key}.batch_tokens: {} is smaller than one sequence (seq_len = {seq})",
                    st.batch_tokens
                )));
            }
            let weights = quantise(&key, &st.weights, &names)?;
            for (c, &w) in weights.iter().enumerate() {
                if w > 0 && windows[c] == 0 {
                    return Err(spec_err(format!(
                        "{key}.weights.{}: corpus has {} tokens, less than one window of \
                         seq_len + 1 = {} tokens",
                        names[c],
                        corpora[c].tokens,
                        seq + 1
                    )));
                }
            }
            if st.ramp_tokens > 0 && si == 0 {
                return Err(spec_err(format!(
                    "{key}.ramp_tokens: the first stage has no previous weights to ramp from"
                )));
            }
            if st.ramp_tokens > st.tokens {
                return Err(spec_err(format!(
                    "{key}.ramp_tokens: {} exceeds the stage's tokens ({})",
                    st.ramp_tokens, st.tokens
                )));
            }
            let batch = st.batch_tokens / seq + u64::from(2 * (st.batch_tokens % seq) >= seq);
            if batch > MAX_BATCH_SEQUENCES {
                return Err(spec_err(format!(
                    "{key}.batch_tokens: {batch} sequences per batch, at most \
                     {MAX_BATCH_SEQUENCES} are supported"
                )));
            }
            let overflow = || spec_err(format!("{key}: token counts overflow 64 bits"));
            let step_tokens = batch.checked_mul(seq).ok_or_else(overflow)?;
            let steps = st.tokens.div_ceil(step_tokens);
            let stage_tokens = steps.checked_mul(step_tokens).ok_or_else(overflow)?;
            if st.ramp_tokens > 0 {
                // Ramp weights are rationals over WEIGHT_DENOM * ramp_tokens; apportioning
                // `batch` sequences multiplies by batch: keep that inside u128.
                let den = WEIGHT_DENOM as u128 * st.ramp_tokens as u128;
                if den.checked_mul(batch as u128).is_none() {
                    return Err(spec_err(format!(
                        "{key}.ramp_tokens: too large for exact arithmetic"
                    )));
                }
                let ramp_steps = st.ramp_tokens.div_ceil(step_tokens);
                if ramp_steps > MAX_RAMP_STEPS {
                    return Err(spec_err(format!(
                        "{key}.ramp_tokens: the ramp spans {ramp_steps} steps, at most \
                         {MAX_RAMP_STEPS} are supported (shorten it or raise the batch)"
                    )));
                }
            }
            plans.push(StagePlan {
                start_step: step,
                steps,
                batch,
                start_tokens: tokens_so_far,
                weights: weights.clone(),
            });
            locked.push(StageSpec {
                name: st.name.clone(),
                tokens: st.tokens,
                batch_tokens: st.batch_tokens,
                weights: names
                    .iter()
                    .zip(&weights)
                    .filter(|(_, &w)| w > 0)
                    .map(|(n, &w)| (n.clone(), w as f64 / WEIGHT_DENOM as f64))
                    .collect(),
                ramp_tokens: st.ramp_tokens,
            });
            step = step.checked_add(steps).ok_or_else(overflow)?;
            tokens_so_far = tokens_so_far
                .checked_add(stage_tokens)
                .ok_or_else(overflow)?;
        }

        let mut schedule = Schedule {
            seq_len,
            seed,
            corpora,
            windows,
            stages: locked,
            plans,
            segments: Vec::new(),
            end_cursor: Vec::new(),
            num_steps: step,
        };
        schedule.build_segments();
        Ok(schedule)
    }

    /// Cuts stages into constant and ramp segments and precomputes the cursors at each
    /// segment start (and the ramp checkpoints).
    fn build_segments(&mut self) {
        let nc = self.corpora.len();
        let mut cursor = vec![0u64; nc];
        let mut segments = Vec::new();
        for (si, plan) in self.plans.iter().enumerate() {
            let ramp = self.stages[si].ramp_tokens;
            let step_tokens = plan.batch * self.seq_len as u64;
            let ramp_steps = if ramp > 0 {
                ramp.div_ceil(step_tokens).min(plan.steps)
            } else {
                0
            };
            if ramp_steps > 0 {
                let mut seg = Segment {
                    start: plan.start_step,
                    cursor: cursor.clone(),
                    kind: SegmentKind::Ramp {
                        stage: si,
                        checkpoints: Vec::new(),
                    },
                };
                let mut acc = vec![0u64; nc];
                let mut checkpoints = vec![acc.clone()];
                for k in 0..ramp_steps {
                    let counts = self.ramp_counts(si, plan.start_step + k);
                    for (a, c) in acc.iter_mut().zip(counts) {
                        *a += c;
                    }
                    if (k + 1) % RAMP_BLOCK == 0 {
                        checkpoints.push(acc.clone());
                    }
                }
                for (c, a) in cursor.iter_mut().zip(&acc) {
                    *c += a;
                }
                seg.kind = SegmentKind::Ramp {
                    stage: si,
                    checkpoints,
                };
                segments.push(seg);
            }
            if ramp_steps < plan.steps {
                let split = Split::new(plan.batch, &plan.weights, WEIGHT_DENOM as u128);
                let start = plan.start_step + ramp_steps;
                let end = plan.start_step + plan.steps;
                let seg = Segment {
                    start,
                    cursor: cursor.clone(),
                    kind: SegmentKind::Constant(split.clone()),
                };
                for (c, a) in cursor.iter_mut().zip(split.cumulative(start, end)) {
                    *c += a;
                }
                segments.push(seg);
            }
        }
        self.segments = segments;
        self.end_cursor = cursor;
    }

    /// Exact weights (numerators, denominator) at a ramp step of stage `si`.
    fn ramp_weights(&self, si: usize, step: u64) -> (Vec<u128>, u128) {
        let plan = &self.plans[si];
        let prev = &self.plans[si - 1].weights;
        let r = self.stages[si].ramp_tokens as u128;
        let t =
            ((step - plan.start_step) as u128 * plan.batch as u128 * self.seq_len as u128).min(r);
        let num = prev
            .iter()
            .zip(&plan.weights)
            .map(|(&p, &n)| p * (r - t) + n * t)
            .collect();
        (num, WEIGHT_DENOM as u128 * r)
    }

    fn ramp_counts(&self, si: usize, step: u64) -> Vec<u64> {
        let (num, den) = self.ramp_weights(si, step);
        Split::new(self.plans[si].batch, &num, den).at(step)
    }

    fn check_step(&self, step: u64) -> Result<()> {
        if step >= self.num_steps {
            return Err(Error::Usage(format!(
                "step {step} is past the end of the schedule ({} steps)",
                self.num_steps
            )));
        }
        Ok(())
    }

    fn segment_of(&self, step: u64) -> &Segment {
        let i = self.segments.partition_point(|s| s.start <= step);
        &self.segments[i.saturating_sub(1)]
    }

    pub fn seq_len(&self) -> u32 {
        self.seq_len
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn corpora(&self) -> &[CorpusSize] {
        &self.corpora
    }

    /// Windows per epoch of each corpus.
    pub fn windows(&self) -> &[u64] {
        &self.windows
    }

    /// The stages as locked (weights quantised to 1e-9, corpora of weight 0 left out).
    pub fn stages(&self) -> &[StageSpec] {
        &self.stages
    }

    pub fn num_steps(&self) -> u64 {
        self.num_steps
    }

    /// The steps of stage `i`.
    pub fn stage_steps(&self, i: usize) -> Option<std::ops::Range<u64>> {
        self.plans
            .get(i)
            .map(|p| p.start_step..p.start_step + p.steps)
    }

    pub fn stage_of(&self, step: u64) -> Result<usize> {
        self.check_step(step)?;
        Ok(self.plans.partition_point(|p| p.start_step <= step) - 1)
    }

    /// Global batch at `step`, in sequences.
    pub fn batch_sequences(&self, step: u64) -> Result<u64> {
        Ok(self.plans[self.stage_of(step)?].batch)
    }

    /// Tokens trained before `step` (`step == num_steps()` gives the total).
    pub fn tokens_before(&self, step: u64) -> Result<u64> {
        if step == self.num_steps {
            let p = &self.plans[self.plans.len() - 1];
            return Ok(p.start_tokens + p.steps * p.batch * self.seq_len as u64);
        }
        let p = &self.plans[self.stage_of(step)?];
        Ok(p.start_tokens + (step - p.start_step) * p.batch * self.seq_len as u64)
    }

    /// Mixture weights in force at `step` (by corpus index).
    pub fn weights_at(&self, step: u64) -> Result<Vec<f64>> {
        let si = self.stage_of(step)?;
        let (num, den) = match &self.segment_of(step).kind {
            SegmentKind::Ramp { stage, .. } => self.ramp_weights(*stage, step),
            SegmentKind::Constant(_) => (self.plans[si].weights.clone(), WEIGHT_DENOM as u128),
        };
        Ok(num.iter().map(|&n| n as f64 / den as f64).collect())
    }

    /// Sequences each corpus contributes to the batch at `step`.
    pub fn counts_at(&self, step: u64) -> Result<Vec<u64>> {
        self.check_step(step)?;
        Ok(match &self.segment_of(step).kind {
            SegmentKind::Constant(split) => split.at(step),
            SegmentKind::Ramp { stage, .. } => self.ramp_counts(*stage, step),
        })
    }

    /// Sequences each corpus delivered before `step` (`step == num_steps()` gives the totals).
    pub fn cursors_at(&self, step: u64) -> Result<Vec<u64>> {
        if step == self.num_steps {
            return Ok(self.end_cursor.clone());
        }
        self.check_step(step)?;
        let seg = self.segment_of(step);
        let drawn = match &seg.kind {
            SegmentKind::Constant(split) => split.cumulative(seg.start, step),
            SegmentKind::Ramp { stage, checkpoints } => {
                let k = step - seg.start;
                let block = k / RAMP_BLOCK;
                let mut acc = checkpoints[block as usize].clone();
                for s in seg.start + block * RAMP_BLOCK..step {
                    for (a, c) in acc.iter_mut().zip(self.ramp_counts(*stage, s)) {
                        *a += c;
                    }
                }
                acc
            }
        };
        Ok(seg.cursor.iter().zip(drawn).map(|(a, b)| a + b).collect())
    }

    /// Epochs each corpus starts over the whole schedule (0 for a corpus never drawn).
    pub fn epochs(&self) -> Vec<u64> {
        self.end_cursor
            .iter()
            .zip(&self.windows)
            .map(|(&d, &w)| if d == 0 { 0 } else { d.div_ceil(w) })
            .collect()
    }

    /// The locked form stored in the mix dir (deterministic bytes: fixed field order,
    /// weights sorted by name and exactly representable as 9-decimal numbers).
    pub fn to_json(&self) -> String {
        let lock = Lock {
            format: FORMAT.into(),
            seq_len: self.seq_len,
            seed: self.seed,
            corpora: self
                .corpora
                .iter()
                .zip(&self.windows)
                .map(|(c, &w)| LockCorpus {
                    name: c.name.clone(),
                    tokens: c.tokens,
                    windows: w,
                })
                .collect(),
            stages: self.stages.clone(),
            num_steps: self.num_steps,
        };
        // Serialising plain structs of strings and numbers cannot fail.
        serde_json::to_string_pretty(&lock).unwrap_or_default() + "\n"
    }

    /// Reads the locked form back; `to_json` of the result gives the same bytes.
    pub fn from_json(text: &str) -> Result<Schedule> {
        let lock: Lock =
            serde_json::from_str(text).map_err(|e| spec_err(format!("schedule: {e}")))?;
        if lock.format != FORMAT {
            return Err(spec_err(format!(
                "schedule.format: {:?}, expected {FORMAT:?}",
                lock.format
            )));
        }
        let corpora = lock
            .corpora
            .iter()
            .map(|c| CorpusSize {
                name: c.name.clone(),
                tokens: c.tokens,
            })
            .collect();
        let schedule = Schedule::new(lock.seq_len, lock.seed, corpora, lock.stages)?;
        for (c, &w) in lock.corpora.iter().zip(&schedule.windows) {
            if c.windows != w {
                return Err(spec_err(format!(
                    "schedule.corpora.{}.windows: {} disagrees with its tokens ({w})",
                    c.name, c.windows
                )));
            }
        }
        if lock.num_steps != schedule.num_steps {
            return Err(spec_err(format!(
                "schedule.num_steps: {} disagrees with the stages ({})",
                lock.num_steps, schedule.num_steps
            )));
        }
        Ok(schedule)
    }

    /// Loads a locked schedule file; errors name the file.
    pub fn load(path: impl AsRef<Path>) -> Result<Schedule> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).ctx(path)?;
        Schedule::from_json(&text).map_err(|e| match e {
            Error::Spec(msg) => Error::Spec(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// Writes the locked form atomically (temp file, fsync, rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        use std::io::Write;
        let path = path.as_ref();
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp_name);
        let mut f = std::fs::File::create(&tmp).ctx(&tmp)?;
        f.write_all(self.to_json().as_bytes()).ctx(&tmp)?;
        f.sync_all().ctx(&tmp)?;
        std::fs::rename(&tmp, path).ctx(path)
    }
}
