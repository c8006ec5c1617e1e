//! Per-document fingerprints: the exact hash and the MinHash signature.
//!
//! Shingle keys: each word is hashed once ([`super::normalize`]); the key of the shingle of
//! words `s..s+g` is the polynomial `sum w[s+i] * K^(g-1-i) mod 2^64` (rolled in O(1) per
//! step), finalised with murmur3's fmix64 and cut to its high 32 bits. 32-bit keys make the
//! permutation a single 64-bit multiply-add: `h_i(x) = (a_i * x + b_i) >> 32` is the
//! multiply-add-shift family (Dietzfelbinger), 2-independent for 32-bit keys. Two different
//! shingles collide on a key with probability 2^-32, far below the signature's own noise.

use super::normalize::normalize_into;
use super::DedupParams;
use xxhash_rust::xxh3::{xxh3_128, xxh3_64_with_seed};

/// Multiplier of the rolling shingle polynomial (odd, so multiplication is invertible).
const K: u64 = 0x9E37_79B9_7F4A_7C15;
/// Permutations are computed in lanes of this many values (one AVX2 register of u64 x 2).
const LANES: usize = 8;

/// A document's fingerprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    /// 128-bit xxh3 of the normalized text (or of the raw bytes, see
    /// [`DedupParams::exact_normalize`]).
    pub exact: u128,
    /// Number of shingles (0: no words, the document takes part in exact dedup only).
    pub shingles: u32,
    /// `permutations` minimum hash values (all `u32::MAX` when `shingles == 0`).
    pub minhash: Vec<u32>,
}

/// Fingerprints documents with reusable buffers; build one per worker thread.
#[derive(Clone, Debug)]
pub struct Fingerprinter {
    ngram: usize,
    exact_normalize: bool,
    /// Permutation coefficients, padded to a multiple of `LANES` (padding lanes are dropped).
    a: Vec<u64>,
    b: Vec<u64>,
    permutations: usize,
    norm: String,
    words: Vec<u64>,
    keys: Vec<u32>,
}

/// SplitMix64: a fixed, well-mixed sequence from a seed (the permutation coefficients must be
/// identical on every machine, so no library RNG whose stream may change between versions).
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[inline]
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

impl Fingerprinter {
    /// `params` should be validated ([`DedupParams::validate`]); zero sizes are clamped to 1.
    pub fn new(params: &DedupParams) -> Self {
        let permutations = params.permutations.max(1);
        let padded = permutations.div_ceil(LANES) * LANES;
        let mut state = params.seed;
        let mut a = Vec::with_capacity(padded);
        let mut b = Vec::with_capacity(padded);
        for _ in 0..padded {
            a.push(splitmix64(&mut state) | 1);
            b.push(splitmix64(&mut state));
        }
        Fingerprinter {
            ngram: params.ngram.max(1),
            exact_normalize: params.exact_normalize,
            a,
            b,
            permutations,
            norm: String::new(),
            words: Vec::new(),
            keys: Vec::new(),
        }
    }

    /// The fingerprint of one document.
    pub fn fingerprint(&mut self, text: &str) -> Fingerprint {
        let mut minhash = vec![u32::MAX; self.permutations];
        let (exact, shingles) = self.fingerprint_into(text, &mut minhash);
        Fingerprint {
            exact,
            shingles,
            minhash,
        }
    }

    /// As [`Self::fingerprint`], writing the signature into `minhash` (length
    /// `permutations`); returns `(exact, shingles)`. No allocation once the buffers are warm.
    pub fn fingerprint_into(&mut self, text: &str, minhash: &mut [u32]) -> (u128, u32) {
        normalize_into(text, &mut self.norm, &mut self.words);
        let exact = if self.exact_normalize {
            xxh3_128(self.norm.as_bytes())
        } else {
            xxh3_128(text.as_bytes())
        };
        shingle_keys(&self.words, self.ngram, &mut self.keys);
        self.signature(minhash);
        (exact, self.keys.len().min(u32::MAX as usize) as u32)
    }

    fn signature(&self, out: &mut [u32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2 (checked just above); the function body is
                // plain safe Rust compiled with AVX2 enabled, same results bit for bit.
                unsafe { signature_avx2(&self.a, &self.b, &self.keys, out) };
                return;
            }
        }
        signature_generic(&self.a, &self.b, &self.keys, out);
    }
}

/// The 32-bit keys of the document's shingles (in order, duplicates kept: min is idempotent).
fn shingle_keys(words: &[u64], ngram: usize, keys: &mut Vec<u32>) {
    keys.clear();
    if words.is_empty() {
        return;
    }
    let g = ngram.min(words.len());
    // K^g, to take the outgoing word out of the rolling polynomial.
    let mut k_pow_g: u64 = 1;
    let mut h: u64 = 0;
    for &w in &words[..g] {
        h = h.wrapping_mul(K).wrapping_add(w);
        k_pow_g = k_pow_g.wrapping_mul(K);
    }
    let key = |h: u64| (fmix64(h ^ g as u64) >> 32) as u32;
    keys.reserve(words.len() - g + 1);
    keys.push(key(h));
    for s in g..words.len() {
        h = h
            .wrapping_mul(K)
            .wrapping_add(words[s])
            .wrapping_sub(words[s - g].wrapping_mul(k_pow_g));
        keys.push(key(h));
    }
}

#[inline(always)]
fn signature_body(a: &[u64], b: &[u64], keys: &[u32], out: &mut [u32]) {
    for (lane, o) in out.chunks_mut(LANES).enumerate() {
        let (Some(a), Some(b)) = (
            a.get(lane * LANES..(lane + 1) * LANES),
            b.get(lane * LANES..(lane + 1) * LANES),
        ) else {
            return;
        };
        let a: [u64; LANES] = a.try_into().unwrap_or([1; LANES]);
        let b: [u64; LANES] = b.try_into().unwrap_or([0; LANES]);
        let mut m = [u32::MAX; LANES];
        for &x in keys {
            let x = x as u64;
            for l in 0..LANES {
                let v = (a[l].wrapping_mul(x).wrapping_add(b[l]) >> 32) as u32;
                m[l] = m[l].min(v);
            }
        }
        o.copy_from_slice(&m[..o.len()]);
    }
}

fn signature_generic(a: &[u64], b: &[u64], keys: &[u32], out: &mut [u32]) {
    signature_body(a, b, keys, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn signature_avx2(a: &[u64], b: &[u64], keys: &[u32], out: &mut [u32]) {
    signature_body(a, b, keys, out)
}

/// The fingerprint of one document (convenience; builds a [`Fingerprinter`] per call, so use
/// one `Fingerprinter` per thread in loops).
pub fn fingerprint(text: &str, params: &DedupParams) -> Fingerprint {
    Fingerprinter::new(params).fingerprint(text)
}

/// The LSH band key of band `band` from the little-endian signature bytes `sig_le`
/// (`rows` values from `band * rows`).
#[inline]
pub fn band_key(sig_le: &[u8], band: usize, rows: usize) -> u64 {
    xxh3_64_with_seed(&sig_le[band * rows * 4..(band + 1) * rows * 4], band as u64)
}

/// Estimated Jaccard: the fraction of equal values of two little-endian signatures.
#[inline]
pub fn estimate_jaccard(x_le: &[u8], y_le: &[u8]) -> f32 {
    let n = x_le.len() / 4;
    if n == 0 {
        return 0.0;
    }
    let equal = x_le
        .chunks_exact(4)
        .zip(y_le.chunks_exact(4))
        .filter(|(x, y)| x == y)
        .count();
    equal as f32 / n as f32
}

/// Little-endian bytes of a signature (the store's layout).
pub fn signature_le(sig: &[u32]) -> Vec<u8> {
    sig.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_equals_direct() {
        let words: Vec<u64> = (0..40u64)
            .map(|i| i.wrapping_mul(0x1234_5678_9abc))
            .collect();
        let mut keys = Vec::new();
        shingle_keys(&words, 13, &mut keys);
        assert_eq!(keys.len(), 28);
        for (s, &k) in keys.iter().enumerate() {
            let mut h: u64 = 0;
            for &w in &words[s..s + 13] {
                h = h.wrapping_mul(K).wrapping_add(w);
            }
            assert_eq!(k, (fmix64(h ^ 13) >> 32) as u32, "shingle {s}");
        }
        shingle_keys(&words[..5], 13, &mut keys);
        assert_eq!(keys.len(), 1, "short document: one shingle");
        shingle_keys(&[], 13, &mut keys);
        assert!(keys.is_empty());
    }

    #[test]
    fn avx2_and_generic_agree() {
        let p = DedupParams::default();
        let mut f = Fingerprinter::new(&p);
        normalize_into(
            "the quick brown fox jumps over the lazy dog again and again and again today",
            &mut f.norm,
            &mut f.words,
        );
        shingle_keys(&f.words, 3, &mut f.keys);
        let mut g = vec![0; p.permutations];
        signature_generic(&f.a, &f.b, &f.keys, &mut g);
        let mut s = vec![0; p.permutations];
        f.signature(&mut s);
        assert_eq!(g, s);
        assert!(g.iter().all(|&v| v != u32::MAX));
    }

    #[test]
    fn identical_normalized_texts_share_fingerprints() {
        let p = DedupParams::default();
        let a = fingerprint("Hello, World! This is  a test.", &p);
        let b = fingerprint("hello world this is a test", &p);
        assert_eq!(a, b);
        let raw = DedupParams {
            exact_normalize: false,
            ..p.clone()
        };
        let (ra, rb) = (
            fingerprint("Hello, World!", &raw),
            fingerprint("hello world", &raw),
        );
        assert_ne!(ra.exact, rb.exact);
        assert_eq!(ra.minhash, rb.minhash);
        assert_eq!(fingerprint("", &p).shingles, 0);
        // A signature length that is not a multiple of the lane width: same leading values.
        let short = DedupParams {
            permutations: 13,
            bands: 1,
            ..p.clone()
        };
        let text = "one two three four five six seven eight nine ten eleven twelve thirteen x";
        assert_eq!(
            fingerprint(text, &short).minhash[..],
            fingerprint(text, &p).minhash[..13]
        );
        assert_ne!(
            fingerprint("a b c", &p).minhash,
            fingerprint("a b d", &p).minhash
        );
    }
}
