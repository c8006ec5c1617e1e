//! Fast path for SentencePiece-style BPE tokenizers (the Llama 2 `tokenizer.json` shape).
//!
//! Hugging Face runs such a tokenizer (normalizer `Prepend("▁") + Replace(" " -> "▁")`, no
//! pre-tokenizer) as BPE over each whole document: one "word", no word-cache hits, and heavy
//! offset bookkeeping in `NormalizedString`. The output is the same if the normalized text is
//! cut at every *hard boundary* — a position no merge can cross — and the pieces are encoded
//! independently, which lets us memoise pieces (words recur) and parallelise long documents:
//!
//! * before a run of `▁` that follows a non-`▁` char, when no merge `(a, b)` has `a` ending in
//!   a char other than `▁` and `b` starting with `▁` (checked at load time from the merges);
//! * around an ASCII char that is not in the vocabulary (`\n`, `\t`: byte fallback), when no
//!   merge involves a byte-fallback token `<0xNN>`.
//!
//! Why that is exact: a symbol spanning a position p must have been made by a merge whose left
//! part ends at p and whose right part starts at p; by the checks above no such merge exists.
//! BPE applies merges in (rank, position) order, and with no pair ever crossing p, the order of
//! merges *within* a piece is the same whether its neighbours are present or not.
//!
//! Added tokens are split off first (leftmost-longest match on the raw text, like HF's
//! `AddedVocabulary` with `normalized=false`), and the post-processor's single-sequence template
//! gives the ids added around the text. Every other shape returns `Err(reason)` at load time
//! and the caller uses the `tokenizers` crate instead.

use super::bpe::Merges;
use ahash::AHashMap;
use rayon::prelude::*;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

const NONE: u32 = u32::MAX;
/// The `▁` (U+2581) the normalizer puts in place of spaces, as UTF-8.
const SPACE_MARK: &str = "\u{2581}";

/// Char classes for the boundary scan.
const NORMAL: u8 = 0;
/// `' '` or `▁`: both are `▁` once normalized.
const SPACE: u8 = 1;
/// A byte-fallback char that no merge touches: a hard boundary on both sides.
const ISOLATED: u8 = 2;

/// Pieces up to this many bytes are memoised (words; longer pieces rarely repeat).
const CACHE_MAX_BYTES: usize = 48;
/// Entries per thread before the cache is cleared (bounds memory at ~10 MB per thread).
const CACHE_CAP: usize = 1 << 17;
/// Documents at least this long are cut into chunks encoded in parallel.
const PAR_MIN_BYTES: usize = 1 << 20;
const CHUNK_BYTES: usize = 1 << 18;

static NEXT_UID: AtomicU64 = AtomicU64::new(1);

pub(super) struct FastEncoder {
    /// Identifies this encoder's per-thread piece caches.
    uid: u64,
    merges: Merges,
    /// Token id of each ASCII char (NONE: not in vocab); `' '` maps to the id of `▁`.
    ascii: [u32; 128],
    class: [u8; 128],
    chars: AHashMap<char, u32>,
    bytes: [u32; 256],
    added: AddedSplitter,
    prefix: Vec<u32>,
    suffix: Vec<u32>,
}

enum Seg<'a> {
    Text(&'a str),
    Added(u32),
}

/// A unit of parallel work of a long document.
enum Unit<'a> {
    Added(u32),
    /// Raw text; `true` when it starts a text segment (gets the prepended `▁`).
    Text(&'a str, bool),
}

impl FastEncoder {
    /// Build the fast path from the crate's canonical serialization of the tokenizer, or say
    /// why this tokenizer does not have the supported shape.
    pub(super) fn new(
        tok: &Value,
        token_to_id: impl Fn(&str) -> Option<u32>,
    ) -> Result<Self, String> {
        for key in ["truncation", "padding", "pre_tokenizer"] {
            if !tok[key].is_null() {
                return Err(format!("{key} is set"));
            }
        }
        let expected = json!({"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": SPACE_MARK},
            {"type": "Replace", "pattern": {"String": " "}, "content": SPACE_MARK},
        ]});
        if tok["normalizer"] != expected {
            return Err("normalizer is not Prepend(▁) + Replace(' ' -> ▁)".into());
        }
        let (prefix, suffix) = template(&tok["post_processor"])?;
        let added = AddedSplitter::new(&tok["added_tokens"], &token_to_id)?;

        let m = &tok["model"];
        if m["type"] != "BPE" {
            return Err("model is not BPE".into());
        }
        let dropout_off = m["dropout"].is_null() || m["dropout"].as_f64() == Some(0.0);
        if !dropout_off
            || !m["continuing_subword_prefix"].is_null()
            || !m["end_of_word_suffix"].is_null()
            || m["ignore_merges"] != false
            || m["byte_fallback"] != true
        {
            return Err("unsupported BPE options".into());
        }
        let vocab = m["vocab"]
            .as_object()
            .ok_or("model.vocab is not an object")?;
        let id_of = |s: &str| vocab.get(s).and_then(Value::as_u64).map(|v| v as u32);

        // Byte fallback must cover every byte, so the unknown-token path never runs.
        let mut bytes = [NONE; 256];
        for (b, slot) in bytes.iter_mut().enumerate() {
            *slot = id_of(&format!("<0x{b:02X}>")).ok_or("incomplete byte fallback tokens")?;
        }
        let is_byte_token = |s: &str| s.len() == 6 && s.starts_with("<0x") && s.ends_with('>');

        let mut ascii = [NONE; 128];
        let mut chars = AHashMap::new();
        for (s, id) in vocab {
            let id = id.as_u64().ok_or("model.vocab id is not an integer")? as u32;
            let mut it = s.chars();
            if let (Some(c), None) = (it.next(), it.next()) {
                if (c as u32) < 128 {
                    ascii[c as usize] = id;
                } else {
                    chars.insert(c, id);
                }
            }
        }
        let space_id = *chars.get(&'▁').ok_or("▁ is not in the vocabulary")?;
        ascii[b' ' as usize] = space_id;

        let merges_json = m["merges"].as_array().ok_or("model.merges is not a list")?;
        let mut pairs = Vec::with_capacity(merges_json.len());
        let mut touches_bytes = false;
        for entry in merges_json {
            let (a, b) = merge_pair(entry).ok_or("a merge is neither [a, b] nor \"a b\"")?;
            let (Some(ia), Some(ib), Some(inew)) = (id_of(&a), id_of(&b), id_of(&(a.clone() + &b)))
            else {
                return Err(format!(
                    "merge {a:?} {b:?} names a token not in the vocabulary"
                ));
            };
            if !a.ends_with('▁') && b.starts_with('▁') {
                return Err(format!("merge {a:?} {b:?} crosses a ▁ boundary"));
            }
            touches_bytes |= is_byte_token(&a) || is_byte_token(&b);
            pairs.push((ia, ib, inew));
        }

        let mut class = [NORMAL; 128];
        class[b' ' as usize] = SPACE;
        if !touches_bytes {
            for c in 0..128 {
                if ascii[c] == NONE {
                    class[c] = ISOLATED;
                }
            }
        }
        Ok(FastEncoder {
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            merges: Merges::new(pairs),
            ascii,
            class,
            chars,
            bytes,
            added,
            prefix,
            suffix,
        })
    }

    pub(super) fn encode(&self, text: &str, add_special_tokens: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 4);
        if add_special_tokens {
            out.extend_from_slice(&self.prefix);
        }
        if text.len() < PAR_MIN_BYTES {
            self.with_state(|st| {
                self.added.split(text, |seg| match seg {
                    Seg::Added(id) => out.push(id),
                    Seg::Text(s) => self.encode_text(s, true, st, &mut out),
                })
            });
        } else {
            let mut units = Vec::new();
            self.added.split(text, |seg| match seg {
                Seg::Added(id) => units.push(Unit::Added(id)),
                Seg::Text(s) => self.chunk(s, &mut units),
            });
            let parts: Vec<Vec<u32>> = units
                .par_iter()
                .map(|u| match *u {
                    Unit::Added(id) => vec![id],
                    Unit::Text(s, at_start) => {
                        let mut v = Vec::with_capacity(s.len() / 3 + 1);
                        self.with_state(|st| self.encode_text(s, at_start, st, &mut v));
                        v
                    }
                })
                .collect();
            for p in parts {
                out.extend_from_slice(&p);
            }
        }
        if add_special_tokens {
            out.extend_from_slice(&self.suffix);
        }
        out
    }

    /// Class of the char starting at byte `i` and its length in bytes; continuation and other
    /// non-ASCII bytes are NORMAL, which never creates a boundary inside a char.
    #[inline]
    fn class_at(&self, b: &[u8], i: usize) -> (u8, usize) {
        let c = b[i];
        if c < 0x80 {
            (self.class[c as usize], 1)
        } else if c == 0xE2 && b.get(i + 1) == Some(&0x96) && b.get(i + 2) == Some(&0x81) {
            (SPACE, 3)
        } else {
            (NORMAL, 1)
        }
    }

    /// Cut a long text segment at hard boundaries about every CHUNK_BYTES.
    fn chunk<'a>(&self, s: &'a str, units: &mut Vec<Unit<'a>>) {
        let b = s.as_bytes();
        let mut start = 0;
        while b.len() - start > CHUNK_BYTES {
            let mut i = start + CHUNK_BYTES;
            let mut prev = NORMAL;
            let mut cut = None;
            // Start on a char boundary, with the class of the char before it.
            while i > start && !s.is_char_boundary(i) {
                i -= 1;
            }
            if i > start {
                let mut j = i - 1;
                while !s.is_char_boundary(j) {
                    j -= 1;
                }
                prev = self.class_at(b, j).0;
            }
            while i < b.len() {
                let (cls, w) = self.class_at(b, i);
                if (cls == SPACE && prev != SPACE) || cls == ISOLATED || prev == ISOLATED {
                    cut = Some(i);
                    break;
                }
                prev = cls;
                i += w;
            }
            match cut {
                Some(i) => {
                    units.push(Unit::Text(&s[start..i], start == 0));
                    start = i;
                }
                None => break,
            }
        }
        units.push(Unit::Text(&s[start..], start == 0));
    }

    /// Encode raw text (no added tokens in it) into `out`. `at_start`: the text begins an
    /// added-token split, so the normalizer prepends `▁`.
    fn encode_text(&self, raw: &str, at_start: bool, st: &mut State, out: &mut Vec<u32>) {
        let b = raw.as_bytes();
        if b.is_empty() {
            return; // HF drops empty splits; Prepend leaves them empty.
        }
        let mut start = 0;
        let mut first = at_start;
        let mut prev = if at_start { SPACE } else { NORMAL };
        let mut i = 0;
        while i < b.len() {
            let (cls, w) = self.class_at(b, i);
            if (cls == SPACE && prev != SPACE) || cls == ISOLATED || prev == ISOLATED {
                self.emit(&raw[start..i], first, st, out);
                first = false;
                start = i;
            }
            prev = cls;
            i += w;
        }
        self.emit(&raw[start..], first, st, out);
    }

    /// Encode one piece (raw text whose normalized form no merge crosses).
    fn emit(&self, piece: &str, prepend: bool, st: &mut State, out: &mut Vec<u32>) {
        if prepend {
            // Normalizing is idempotent (' ' and '▁' both become '▁'), so "▁" + raw is a raw
            // key whose normalized form is the prepended piece.
            let mut key = std::mem::take(&mut st.key);
            key.clear();
            key.push_str(SPACE_MARK);
            key.push_str(piece);
            self.emit_key(&key, st, out);
            st.key = key;
        } else if !piece.is_empty() {
            self.emit_key(piece, st, out);
        }
    }

    fn emit_key(&self, key: &str, st: &mut State, out: &mut Vec<u32>) {
        let cacheable = key.len() <= CACHE_MAX_BYTES;
        if cacheable {
            if let Some(ids) = st.cache.get(key) {
                out.extend_from_slice(ids);
                return;
            }
        }
        self.bpe(key, &mut st.syms, &mut st.ranks);
        out.extend_from_slice(&st.syms);
        if cacheable {
            if st.cache.len() >= CACHE_CAP {
                st.cache.clear();
            }
            st.cache.insert(key.into(), st.syms.as_slice().into());
        }
    }

    /// HF's `merge_word` + `merge_all` on the normalized form of `key`.
    fn bpe(&self, key: &str, syms: &mut Vec<u32>, ranks: &mut Vec<(u32, u32)>) {
        syms.clear();
        for ch in key.chars() {
            let id = if (ch as u32) < 128 {
                self.ascii[ch as usize]
            } else {
                self.chars.get(&ch).copied().unwrap_or(NONE)
            };
            if id != NONE {
                syms.push(id);
            } else {
                let mut buf = [0u8; 4];
                for &byte in ch.encode_utf8(&mut buf).as_bytes() {
                    syms.push(self.bytes[byte as usize]);
                }
            }
        }
        self.merges.merge(syms, ranks);
    }

    /// Run `f` with this thread's cache for this encoder.
    fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        STATES.with(|cell| match cell.try_borrow_mut() {
            Ok(mut states) => {
                let idx = match states.iter().position(|(uid, _)| *uid == self.uid) {
                    Some(i) => i,
                    None => {
                        // A few tokenizers per thread at most; drop the oldest cache.
                        if states.len() >= 4 {
                            states.remove(0);
                        }
                        states.push((self.uid, State::default()));
                        states.len() - 1
                    }
                };
                f(&mut states[idx].1)
            }
            // Re-entered on this thread (cannot happen today: `f` never yields to rayon);
            // a throwaway state keeps it correct rather than panicking.
            Err(_) => f(&mut State::default()),
        })
    }
}

#[derive(Default)]
struct State {
    cache: AHashMap<Box<str>, Box<[u32]>>,
    syms: Vec<u32>,
    ranks: Vec<(u32, u32)>,
    key: String,
}

thread_local! {
    static STATES: RefCell<Vec<(u64, State)>> = const { RefCell::new(Vec::new()) };
}

fn merge_pair(v: &Value) -> Option<(String, String)> {
    match v {
        Value::Array(a) if a.len() == 2 => Some((a[0].as_str()?.into(), a[1].as_str()?.into())),
        Value::String(s) => {
            let (a, b) = s.split_once(' ')?;
            Some((a.into(), b.into()))
        }
        _ => None,
    }
}

/// Ids the post-processor puts before and after a single sequence.
fn template(pp: &Value) -> Result<(Vec<u32>, Vec<u32>), String> {
    if pp.is_null() {
        return Ok((Vec::new(), Vec::new()));
    }
    if pp["type"] != "TemplateProcessing" {
        return Err("post_processor is not TemplateProcessing".into());
    }
    let single = pp["single"].as_array().ok_or("template has no single")?;
    let (mut prefix, mut suffix, mut seen_a) = (Vec::new(), Vec::new(), false);
    for piece in single {
        if piece.get("Sequence").is_some() {
            if seen_a {
                return Err("template repeats the sequence".into());
            }
            seen_a = true;
        } else if let Some(name) = piece["SpecialToken"]["id"].as_str() {
            let ids = pp["special_tokens"][name]["ids"]
                .as_array()
                .ok_or_else(|| format!("template special token {name:?} has no ids"))?;
            let side = if seen_a { &mut suffix } else { &mut prefix };
            for id in ids {
                side.push(id.as_u64().ok_or("special token id is not an integer")? as u32);
            }
        } else {
            return Err("unknown template piece".into());
        }
    }
    if !seen_a {
        return Err("template has no sequence".into());
    }
    Ok((prefix, suffix))
}

/// Splits raw text on added tokens like HF's `AddedVocabulary` for tokens with
/// `normalized=false` and no strip / single-word rules: leftmost-longest, non-overlapping.
struct AddedSplitter {
    tokens: Vec<(Box<[u8]>, u32)>,
    first: [bool; 256],
}

impl AddedSplitter {
    fn new(list: &Value, token_to_id: &impl Fn(&str) -> Option<u32>) -> Result<Self, String> {
        let list = list.as_array().ok_or("added_tokens is not a list")?;
        let mut tokens = Vec::with_capacity(list.len());
        let mut first = [false; 256];
        for t in list {
            let content = t["content"].as_str().ok_or("added token without content")?;
            for flag in ["single_word", "lstrip", "rstrip", "normalized"] {
                if t[flag] != false {
                    return Err(format!("added token {content:?} has {flag}"));
                }
            }
            if content.is_empty() {
                continue; // HF ignores empty added tokens.
            }
            let id = token_to_id(content).ok_or("added token without id")?;
            first[content.as_bytes()[0] as usize] = true;
            tokens.push((content.as_bytes().into(), id));
        }
        Ok(AddedSplitter { tokens, first })
    }

    fn split<'a>(&self, text: &'a str, mut f: impl FnMut(Seg<'a>)) {
        let b = text.as_bytes();
        let (mut start, mut i) = (0, 0);
        while i < b.len() {
            if self.first[b[i] as usize] {
                let rest = &b[i..];
                let best = self
                    .tokens
                    .iter()
                    .filter(|(t, _)| rest.starts_with(t))
                    .max_by_key(|(t, _)| t.len());
                if let Some((t, id)) = best {
                    // A match starts at a UTF-8 lead byte, so both slices are on boundaries.
                    if start < i {
                        f(Seg::Text(&text[start..i]));
                    }
                    f(Seg::Added(*id));
                    i += t.len();
                    start = i;
                    continue;
                }
            }
            i += 1;
        }
        if start < b.len() {
            f(Seg::Text(&text[start..]));
        }
    }
}
