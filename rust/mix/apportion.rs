//! Exact apportionment of a batch of `n` sequences among corpora.
//!
//! Weights are exact rationals `num[i] / den` (integers, `sum(num) == den`), so every
//! decision is integer arithmetic and identical on every machine. Each corpus gets the floor
//! of its quota `n * num[i] / den`; the `n - sum(floors)` leftover sequences go to the largest
//! remainders (Hamilton / largest remainder), so every count is the floor or the ceiling of
//! its quota and the batch matches its weights to the sequence.
//!
//! Ties on the boundary remainder (weights 0.5 / 0.5 with an odd batch, say) are broken by
//! rotating through the tied corpora with the global step, not by a fixed order: a fixed
//! order would hand the same corpus the extra sequence at every step and skew a long stage.
//! At step `s`, with `j` extras for the `t` tied corpora, the extras go to tied positions
//! `(s*j + m) mod t` for `m` in `0..j`. Under constant weights this is a pure counting rule,
//! so cumulative counts over any step range have a closed form (`Split::cumulative`).

/// The step-independent part of an apportionment: floors, the corpora that always get an
/// extra sequence, and the tied group that shares the remaining extras by rotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    /// Per corpus: floor of the quota, plus one if its remainder beats the boundary.
    pub base: Vec<u64>,
    /// Corpora (ascending index) whose remainder equals the boundary remainder.
    pub tied: Vec<u32>,
    /// Extras per step handed to `tied` (`0 <= extra <= tied.len()`).
    pub extra: u64,
}

impl Split {
    /// `n` sequences by weights `num / den`. Requires `sum(num) == den > 0`, and `n * den`
    /// must fit in u128 (the schedule checks this when it is built).
    pub fn new(n: u64, num: &[u128], den: u128) -> Split {
        debug_assert_eq!(num.iter().sum::<u128>(), den);
        let n128 = n as u128;
        let mut base = Vec::with_capacity(num.len());
        let mut rems = Vec::with_capacity(num.len());
        let mut assigned = 0u64;
        for &w in num {
            let q = n128 * w;
            let f = (q / den) as u64;
            base.push(f);
            rems.push(q % den);
            assigned += f;
        }
        let mut extras = n - assigned;
        if extras == 0 {
            return Split {
                base,
                tied: Vec::new(),
                extra: 0,
            };
        }
        // The boundary: the `extras`-th largest remainder. Remainders sum to `extras * den`
        // and each is < den, so it is positive: weight-0 corpora never get an extra.
        let mut sorted = rems.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        let boundary = sorted[extras as usize - 1];
        let mut tied = Vec::new();
        for (i, &r) in rems.iter().enumerate() {
            if r > boundary {
                base[i] += 1;
                extras -= 1;
            } else if r == boundary {
                tied.push(i as u32);
            }
        }
        Split {
            base,
            tied,
            extra: extras,
        }
    }

    /// The counts at global step `step`.
    pub fn at(&self, step: u64) -> Vec<u64> {
        let mut counts = self.base.clone();
        let t = self.tied.len() as u128;
        for m in 0..self.extra as u128 {
            let pos = ((step as u128 * self.extra as u128 + m) % t) as usize;
            counts[self.tied[pos] as usize] += 1;
        }
        counts
    }

    /// Sum of `at(s)` over `s` in `[from, to)`, in O(corpora).
    pub fn cumulative(&self, from: u64, to: u64) -> Vec<u64> {
        debug_assert!(from <= to);
        let steps = to - from;
        let mut sums: Vec<u64> = self.base.iter().map(|&b| b * steps).collect();
        if self.extra > 0 {
            let t = self.tied.len() as u128;
            let j = self.extra as u128;
            // How many x in [0, end) have x mod t == p.
            let below = |end: u128, p: u128| end / t + u128::from(end % t > p);
            for (p, &c) in self.tied.iter().enumerate() {
                let p = p as u128;
                let hits = below(to as u128 * j, p) - below(from as u128 * j, p);
                sums[c as usize] += hits as u64;
            }
        }
        sums
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Normalised random weights as integers summing to `den`.
    fn weights() -> impl Strategy<Value = (Vec<u128>, u128)> {
        prop::collection::vec(0u128..50, 1..6).prop_filter_map("all zero", |v| {
            let den: u128 = v.iter().sum();
            (den > 0).then_some((v, den))
        })
    }

    proptest! {
        #[test]
        fn counts_are_floor_or_ceil_and_sum_to_n(n in 1u64..5000, (num, den) in weights(), step: u64) {
            let counts = Split::new(n, &num, den).at(step);
            prop_assert_eq!(counts.iter().sum::<u64>(), n);
            for (c, &w) in counts.iter().zip(&num) {
                let q = n as u128 * w;
                let floor = (q / den) as u64;
                let ceil = floor + u64::from(!q.is_multiple_of(den));
                prop_assert!(*c == floor || *c == ceil, "count {} quota {}/{}", c, q, den);
            }
        }

        #[test]
        fn larger_remainders_never_lose_to_smaller(n in 1u64..5000, (num, den) in weights(), step: u64) {
            let counts = Split::new(n, &num, den).at(step);
            let rem = |i: usize| (n as u128 * num[i]) % den;
            let got_extra = |i: usize| counts[i] as u128 * den > n as u128 * num[i];
            for a in 0..num.len() {
                for b in 0..num.len() {
                    if got_extra(b) && !got_extra(a) {
                        prop_assert!(rem(a) <= rem(b));
                    }
                }
            }
        }

        #[test]
        fn cumulative_matches_brute_force(n in 1u64..3000, (num, den) in weights(),
                                          from in 0u64..1_000_000, len in 0u64..200) {
            let split = Split::new(n, &num, den);
            let mut brute = vec![0u64; num.len()];
            for s in from..from + len {
                for (b, c) in brute.iter_mut().zip(split.at(s)) {
                    *b += c;
                }
            }
            prop_assert_eq!(split.cumulative(from, from + len), brute);
        }
    }

    #[test]
    fn ties_rotate_instead_of_favouring_one_corpus() {
        // 0.5 / 0.5 of 879 sequences: 439.5 each, the extra alternates.
        let split = Split::new(879, &[1, 1], 2);
        assert_eq!(split.at(0), vec![440, 439]);
        assert_eq!(split.at(1), vec![439, 440]);
        assert_eq!(split.cumulative(0, 1000), vec![439_500, 439_500]);
        // Three-way tie with one extra: each gets it every third step.
        let split = Split::new(10, &[1, 1, 1], 3);
        assert_eq!(split.cumulative(7, 7 + 300), vec![1000, 1000, 1000]);
        let firsts: Vec<Vec<u64>> = (0..3).map(|s| split.at(s)).collect();
        assert_eq!(firsts, vec![vec![4, 3, 3], vec![3, 4, 3], vec![3, 3, 4]]);
    }
}
