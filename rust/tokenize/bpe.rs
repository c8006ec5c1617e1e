//! The BPE merge loop of Hugging Face `tokenizers` (`Word::merge_all`), over token ids.
//!
//! HF applies, over and over, the adjacent pair with the lowest merge rank, the leftmost one on
//! ties (a heap ordered by (rank, position)). Short pieces (almost every word) use a linear
//! scan with the same order, which is faster than a heap for a handful of symbols; long pieces
//! (CJK lines, base64 blobs) use the heap so the cost stays O(n log n).

use ahash::AHashMap;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Above this many symbols the heap beats the quadratic scan.
const SCAN_MAX: usize = 48;

/// The merge table: pair of ids -> (rank, merged id).
pub(super) struct Merges {
    map: AHashMap<u64, u64>,
}

const NONE: u32 = u32::MAX;

impl Merges {
    /// `pairs` in rank order: (left id, right id, merged id). A later duplicate pair replaces an
    /// earlier one, as in HF's `collect` into its map.
    pub(super) fn new(pairs: impl IntoIterator<Item = (u32, u32, u32)>) -> Self {
        let mut map = AHashMap::new();
        for (rank, (a, b, new)) in pairs.into_iter().enumerate() {
            map.insert(key(a, b), ((rank as u64) << 32) | u64::from(new));
        }
        Merges { map }
    }

    /// (rank, merged id) of the pair, or (NONE, NONE).
    #[inline]
    fn get(&self, a: u32, b: u32) -> (u32, u32) {
        match self.map.get(&key(a, b)) {
            Some(&v) => ((v >> 32) as u32, v as u32),
            None => (NONE, NONE),
        }
    }

    /// Merge `syms` in place to the final token ids. `ranks` is scratch space.
    pub(super) fn merge(&self, syms: &mut Vec<u32>, ranks: &mut Vec<(u32, u32)>) {
        if syms.len() < 2 {
            return;
        }
        if syms.len() > SCAN_MAX {
            self.merge_heap(syms);
            return;
        }
        ranks.clear();
        ranks.extend(syms.windows(2).map(|w| self.get(w[0], w[1])));
        loop {
            // Lowest rank, leftmost on ties (strict `<`).
            let mut best = NONE;
            let mut at = 0;
            for (i, &(r, _)) in ranks.iter().enumerate() {
                if r < best {
                    best = r;
                    at = i;
                }
            }
            if best == NONE {
                return;
            }
            syms[at] = ranks[at].1;
            syms.remove(at + 1);
            ranks.remove(at);
            if at > 0 {
                ranks[at - 1] = self.get(syms[at - 1], syms[at]);
            }
            if at + 1 < syms.len() {
                ranks[at] = self.get(syms[at], syms[at + 1]);
            }
        }
    }

    /// HF's heap algorithm over a doubly linked list of symbols, for long pieces.
    fn merge_heap(&self, syms: &mut Vec<u32>) {
        let n = syms.len();
        if n < 2 {
            return;
        }
        // prev/next as indices; usize::MAX = none. `alive` marks symbols not merged away.
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut next: Vec<usize> = (1..=n)
            .map(|i| if i < n { i } else { usize::MAX })
            .collect();
        let mut alive = vec![true; n];
        let mut heap: BinaryHeap<Reverse<(u32, usize, u32)>> = BinaryHeap::with_capacity(n);
        for i in 0..n - 1 {
            let (r, new) = self.get(syms[i], syms[i + 1]);
            if r != NONE {
                heap.push(Reverse((r, i, new)));
            }
        }
        while let Some(Reverse((_, pos, new))) = heap.pop() {
            if !alive[pos] || next[pos] == usize::MAX {
                continue;
            }
            let right = next[pos];
            // An entry is stale when the pair at `pos` changed since it was pushed.
            if self.get(syms[pos], syms[right]).1 != new {
                continue;
            }
            syms[pos] = new;
            alive[right] = false;
            next[pos] = next[right];
            if next[pos] != usize::MAX {
                prev[next[pos]] = pos;
            }
            if prev[pos] != usize::MAX {
                let p = prev[pos];
                let (r, nid) = self.get(syms[p], syms[pos]);
                if r != NONE {
                    heap.push(Reverse((r, p, nid)));
                }
            }
            if next[pos] != usize::MAX {
                let (r, nid) = self.get(syms[pos], syms[next[pos]]);
                if r != NONE {
                    heap.push(Reverse((r, pos, nid)));
                }
            }
        }
        let mut w = 0;
        for i in 0..n {
            if alive[i] {
                syms[w] = syms[i];
                w += 1;
            }
        }
        syms.truncate(w);
    }
}

#[inline]
fn key(a: u32, b: u32) -> u64 {
    (u64::from(a) << 32) | u64::from(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scan and the heap agree on every input (they implement the same order).
    #[test]
    fn scan_and_heap_agree() {
        // ids 0..4 are characters; merges build 5="ab", 6="bb", 7="abb", 8="aa", 9="aab".
        let merges = Merges::new([(0, 1, 5), (1, 1, 6), (5, 1, 7), (0, 0, 8), (8, 1, 9)]);
        let mut rng = 12345u64;
        for len in 0..40 {
            for _ in 0..50 {
                let syms: Vec<u32> = (0..len)
                    .map(|_| {
                        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1);
                        ((rng >> 33) % 3) as u32
                    })
                    .collect();
                let mut a = syms.clone();
                merges.merge(&mut a, &mut Vec::new());
                let mut b = syms.clone();
                merges.merge_heap(&mut b);
                assert_eq!(a, b, "input {syms:?}");
            }
        }
    }
}
