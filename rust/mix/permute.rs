//! Seeded bijections and randomness that are pure functions of their inputs.
//!
//! A corpus epoch visits its windows in the order of a keyed permutation of `[0, n)`. The
//! permutation is evaluated point-wise (`Permutation::apply`), so nothing the size of a
//! corpus or of the run is ever materialised: a balanced Feistel network over the smallest
//! even bit width that covers `n`, made to stay inside `[0, n)` by cycle walking (re-encrypt
//! until the value lands in range; the width is < 4n, so fewer than 4 rounds trips on average).
//! Everything here is integer arithmetic on fixed-width types: the same bytes on every
//! platform and thread count.

/// SplitMix64's finaliser: a strong 64-bit mixer (a bijection) used as the round function
/// and to derive keys.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Derives an independent key from a parent key and a tag (e.g. the corpus index, the epoch).
#[inline]
pub fn derive(key: u64, tag: u64) -> u64 {
    mix64(key ^ mix64(tag.wrapping_add(0x9e37_79b9_7f4a_7c15)))
}

/// Six rounds: four is the Luby-Rackoff minimum for a pseudo-random permutation; two more
/// buy margin against visible structure in small domains at negligible cost.
const ROUNDS: usize = 6;

/// A 64-bit key for a name (a corpus's): FNV-1a over its UTF-8 bytes, then `mix64`. Fixed
/// forever: changing it changes every mix's sample stream.
pub fn name_key(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in name.as_bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

/// A keyed bijection of `[0, n)`.
#[derive(Clone, Debug)]
pub struct Permutation {
    n: u64,
    half_bits: u32,
    keys: [u64; ROUNDS],
}

impl Permutation {
    pub fn new(n: u64, key: u64) -> Self {
        // Width: the smallest even number of bits (>= 2) whose range holds n - 1.
        let bits = 64 - n.saturating_sub(1).leading_zeros();
        let half_bits = bits.div_ceil(2).max(1);
        let mut keys = [0u64; ROUNDS];
        for (r, k) in keys.iter_mut().enumerate() {
            *k = derive(key, r as u64);
        }
        Permutation { n, half_bits, keys }
    }

    pub fn len(&self) -> u64 {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    #[inline]
    fn encrypt(&self, x: u64) -> u64 {
        let mask = (1u64 << self.half_bits) - 1;
        let mut left = x >> self.half_bits;
        let mut right = x & mask;
        for &k in &self.keys {
            let f = mix64(right ^ k) & mask;
            let next = left ^ f;
            left = right;
            right = next;
        }
        (left << self.half_bits) | right
    }

    /// The image of `i` (which must be `< n`). Cycle walking terminates because the
    /// Feistel network is a bijection of the wider domain: following the cycle from `i`
    /// must come back to `i < n` at the latest.
    #[inline]
    pub fn apply(&self, i: u64) -> u64 {
        debug_assert!(i < self.n, "permutation index {i} out of [0, {})", self.n);
        if self.n <= 1 {
            return 0;
        }
        let mut x = self.encrypt(i);
        while x >= self.n {
            x = self.encrypt(x);
        }
        x
    }
}

/// A tiny deterministic generator (SplitMix64) for in-batch shuffles.
#[derive(Clone, Debug)]
pub struct SplitMix {
    state: u64,
}

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        SplitMix { state: seed }
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.state)
    }

    /// A value in `[0, bound)` by the widening multiply (bias < bound / 2^64: irrelevant
    /// here, and what matters, determinism, holds exactly).
    #[inline]
    pub fn below(&mut self, bound: u64) -> u64 {
        ((self.next_u64() as u128 * bound as u128) >> 64) as u64
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn is_bijection(n: u64, key: u64) -> bool {
        let p = Permutation::new(n, key);
        let mut seen = vec![false; n as usize];
        for i in 0..n {
            let j = p.apply(i);
            if j >= n || seen[j as usize] {
                return false;
            }
            seen[j as usize] = true;
        }
        true
    }

    #[test]
    fn name_keys_are_fixed_and_distinct() {
        // FNV-1a of "" is its offset basis: pins the function (a change reorders every mix).
        assert_eq!(name_key(""), mix64(0xcbf2_9ce4_8422_2325));
        let names = [
            "slimpajama",
            "skypile",
            "starcoderdata",
            "proof-pile",
            "a",
            "b",
        ];
        for (i, a) in names.iter().enumerate() {
            for b in &names[..i] {
                assert_ne!(name_key(a), name_key(b), "{a} / {b}");
            }
        }
    }

    #[test]
    fn small_domains_are_bijections() {
        for n in 1..300 {
            assert!(is_bijection(n, n * 7 + 1), "n = {n}");
        }
    }

    proptest! {
        #[test]
        fn random_domains_are_bijections(n in 1u64..5000, key: u64) {
            prop_assert!(is_bijection(n, key));
        }
    }

    #[test]
    fn keys_change_the_order_and_it_looks_shuffled() {
        let n = 10_000;
        let a: Vec<u64> = (0..n).map(|i| Permutation::new(n, 1).apply(i)).collect();
        let b: Vec<u64> = (0..n).map(|i| Permutation::new(n, 2).apply(i)).collect();
        let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
        assert!(same < 20, "{same} fixed agreements between two keys");
        // Not close to the identity: few elements stay near their place.
        let near = a
            .iter()
            .enumerate()
            .filter(|(i, &v)| (*i as i64 - v as i64).abs() < 10)
            .count();
        assert!(near < 50, "{near} elements within 10 of their index");
    }

    #[test]
    fn huge_domain_stays_in_range() {
        let n = u64::MAX - 3;
        let p = Permutation::new(n, 42);
        for i in [0, 1, n / 2, n - 1] {
            assert!(p.apply(i) < n);
        }
    }

    #[test]
    fn shuffle_is_a_permutation_and_seeded() {
        let mut v: Vec<u32> = (0..1000).collect();
        SplitMix::new(5).shuffle(&mut v);
        let mut w: Vec<u32> = (0..1000).collect();
        SplitMix::new(5).shuffle(&mut w);
        assert_eq!(v, w);
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_ne!(v, (0..1000).collect::<Vec<_>>());
    }
}
