//! Text normalization (SlimPajama's, extended for CJK) and word hashing, in one pass.
//!
//! SlimPajama: `text.lower()`, drop `string.punctuation`, `re.sub(r"\s+", " ")`, `strip()`.
//! Here:
//! * lower-casing is Unicode (`char::to_lowercase`), ASCII on a fast path;
//! * punctuation is ASCII punctuation plus the General Punctuation, CJK Symbols and
//!   Punctuation and full-width punctuation ranges (see [`is_unicode_punct`]): Chinese text
//!   uses `，。「」` where English uses `,."`;
//! * whitespace is Unicode White_Space plus ASCII 0x1C..=0x1F (Python's `\s` counts those);
//! * every CJK ideograph, kana or CJK compatibility ideograph (see [`is_cjk`]) is a word of its
//!   own, as if surrounded by spaces; the normalized text then has single spaces between all
//!   words, including between CJK characters.
//!
//! Punctuation is deleted, not turned into a separator ("don't" -> "dont"), as in SlimPajama.

use xxhash_rust::xxh3::xxh3_64;

/// Normalizes `text` into `out` (cleared first) and appends one xxh3 hash per word to `words`
/// (cleared first). The words of `out` are separated by exactly one ASCII space.
pub fn normalize_into(text: &str, out: &mut String, words: &mut Vec<u64>) {
    out.clear();
    words.clear();
    let mut w = WordSink {
        out,
        words,
        start: 0,
        in_word: false,
    };
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b < 0x80 {
            i += 1;
            if b.is_ascii_whitespace() || b == 0x0b || (0x1c..=0x1f).contains(&b) {
                w.end_word();
            } else if b.is_ascii_punctuation() {
                // deleted, not a separator
            } else {
                w.begin_word();
                w.out.push(b.to_ascii_lowercase() as char);
            }
            continue;
        }
        // `i` is on a char boundary (we only ever advance by whole chars), so this never fails.
        let Some(c) = text[i..].chars().next() else {
            break;
        };
        i += c.len_utf8();
        if c.is_whitespace() {
            w.end_word();
        } else if is_unicode_punct(c) {
        } else if is_cjk(c) {
            w.end_word();
            w.begin_word();
            w.out.push(c);
            w.end_word();
        } else {
            w.begin_word();
            w.out.extend(c.to_lowercase());
        }
    }
    w.end_word();
}

/// Convenience: the normalized text alone.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    normalize_into(text, &mut out, &mut Vec::new());
    out
}

struct WordSink<'a> {
    out: &'a mut String,
    words: &'a mut Vec<u64>,
    start: usize,
    in_word: bool,
}

impl WordSink<'_> {
    #[inline]
    fn begin_word(&mut self) {
        if !self.in_word {
            if !self.out.is_empty() {
                self.out.push(' ');
            }
            self.start = self.out.len();
            self.in_word = true;
        }
    }
    #[inline]
    fn end_word(&mut self) {
        if self.in_word {
            self.words.push(xxh3_64(&self.out.as_bytes()[self.start..]));
            self.in_word = false;
        }
    }
}

/// CJK characters that are words on their own: Han ideographs (URO, extensions A–F,
/// compatibility), Hiragana, Katakana. Hangul is not here: Korean separates words by spaces.
pub fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF      // Hiragana, Katakana
        | 0x31F0..=0x31FF    // Katakana phonetic extensions
        | 0x3400..=0x4DBF    // Extension A
        | 0x4E00..=0x9FFF    // Unified ideographs
        | 0xF900..=0xFAFF    // Compatibility ideographs
        | 0x20000..=0x2FA1F  // Extensions B–F, compatibility supplement
    )
}

/// Non-ASCII punctuation that is deleted like ASCII punctuation.
pub fn is_unicode_punct(c: char) -> bool {
    matches!(c as u32,
        0x00A1 | 0x00A7 | 0x00AB | 0x00B6 | 0x00B7 | 0x00BB | 0x00BF
        | 0x2010..=0x2027    // dashes, quotes, bullets, ellipsis
        | 0x2030..=0x205E    // per mille, primes, guillemets, ...
        | 0x3001..=0x3003    // 、。〃
        | 0x3008..=0x3011    // 〈〉《》「」『』【】
        | 0x3014..=0x301F    // 〔〕〖〗〘〙〚〛〜〝〞〟
        | 0x30FB             // ・
        | 0xFE10..=0xFE19    // vertical forms
        | 0xFE30..=0xFE4F    // CJK compatibility forms
        | 0xFE50..=0xFE6B    // small form variants
        | 0xFF01..=0xFF0F    // ！＂＃＄％＆＇（）＊＋，－．／
        | 0xFF1A..=0xFF20    // ：；＜＝＞？＠
        | 0xFF3B..=0xFF40    // ［＼］＾＿｀
        | 0xFF5B..=0xFF65    // ｛｜｝～ and half-width CJK punctuation
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slimpajama_rules() {
        assert_eq!(
            normalize("  Hello,   World!\n\tIt's  (A) test... "),
            "hello world its a test"
        );
        assert_eq!(normalize("a - b"), "a b");
        assert_eq!(normalize("!!! ..."), "");
        assert_eq!(normalize("ÉCOLE Straße"), "école straße");
    }

    #[test]
    fn cjk_chars_are_words() {
        assert_eq!(normalize("要有礼貌，请接受。"), "要 有 礼 貌 请 接 受");
        assert_eq!(normalize("Debian 项目ab"), "debian 项 目 ab");
        let mut out = String::new();
        let mut words = Vec::new();
        normalize_into("在 Debian 这种", &mut out, &mut words);
        assert_eq!(words.len(), 4);
        assert_eq!(words[0], xxh3_64("在".as_bytes()));
        assert_eq!(words[1], xxh3_64(b"debian"));
    }

    #[test]
    fn word_hashes_match_words() {
        let mut out = String::new();
        let mut words = Vec::new();
        normalize_into("The  quick, brown\u{3000}FOX", &mut out, &mut words);
        let expect: Vec<u64> = out.split(' ').map(|w| xxh3_64(w.as_bytes())).collect();
        assert_eq!(words, expect);
        assert_eq!(out, "the quick brown fox");
    }
}
