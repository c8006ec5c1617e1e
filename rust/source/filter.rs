//! Dotted field paths (`text`, `meta.redpajama_set_name`) and the exclude rule, plus a
//! serde seed that pulls exactly those fields out of one JSON object.
//!
//! Why not `serde_json::Value`: a JSONL line of SlimPajama is a big `text` string next to a
//! few metadata strings; building a `Value` tree allocates every key and string of the
//! record. The seed below walks the object once, borrows every string that has no escapes
//! straight from the line buffer, and skips (without allocating) every field nobody asked
//! for.

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// Slot of the text field in [`Fields::values`]; exclude fields follow from slot 1.
pub(crate) const TEXT_SLOT: usize = 0;

/// The fields one reader needs, as a tree of object keys.
#[derive(Debug, Default)]
pub(crate) struct FieldTree {
    root: Node,
    /// Number of slots (1 for the text field + one per exclude field).
    slots: usize,
}

#[derive(Debug, Default)]
struct Node {
    /// Which captured value this key's value fills, if it is the end of a requested path.
    slots: Vec<usize>,
    children: Vec<(Box<str>, Node)>,
}

impl Node {
    fn child(&self, key: &str) -> Option<&Node> {
        // A handful of keys at most: a linear scan beats hashing.
        self.children
            .iter()
            .find(|(k, _)| &**k == key)
            .map(|(_, n)| n)
    }

    fn insert(&mut self, path: &str, slot: usize) {
        let mut node = self;
        for part in path.split('.') {
            let at = match node.children.iter().position(|(k, _)| &**k == part) {
                Some(i) => i,
                None => {
                    node.children.push((part.into(), Node::default()));
                    node.children.len() - 1
                }
            };
            node = &mut node.children[at].1;
        }
        node.slots.push(slot);
    }
}

impl FieldTree {
    /// `text` goes to slot 0, `excludes[i]` to slot `i + 1`.
    pub(crate) fn new<'a>(text: &str, excludes: impl IntoIterator<Item = &'a str>) -> Self {
        let mut tree = FieldTree::default();
        tree.root.insert(text, TEXT_SLOT);
        tree.slots = 1;
        for path in excludes {
            tree.root.insert(path, tree.slots);
            tree.slots += 1;
        }
        tree
    }

    /// Parse one JSON document (a whole line) and capture the requested fields.
    pub(crate) fn parse<'de>(&self, line: &'de str) -> serde_json::Result<Fields<'de>> {
        let mut values = vec![Value::Missing; self.slots];
        let mut de = serde_json::Deserializer::from_str(line);
        let kind = NodeSeed {
            node: &self.root,
            out: &mut values,
        }
        .deserialize(&mut de)?;
        de.end()?;
        Ok(Fields { kind, values })
    }
}

/// One captured field value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value<'de> {
    Missing,
    Str(Cow<'de, str>),
    /// Present but not a string: the JSON type's name, for the error message.
    Other(&'static str),
}

/// What [`FieldTree::parse`] found in one record.
#[derive(Debug)]
pub(crate) struct Fields<'de> {
    /// JSON type of the whole record ("object" for a well-formed record).
    pub kind: &'static str,
    pub values: Vec<Value<'de>>,
}

/// Exclude rules: (dotted field / column, the values that drop a record).
#[derive(Debug, Clone, Default)]
pub(crate) struct Exclude {
    rules: Vec<(String, Vec<String>)>,
}

impl Exclude {
    pub(crate) fn new(rules: &[(String, Vec<String>)]) -> Self {
        Exclude {
            rules: rules.to_vec(),
        }
    }

    pub(crate) fn fields(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|(f, _)| f.as_str())
    }

    /// True when rule `i`'s field holds one of its values. A missing or non-string field
    /// never matches: the rule says "drop rows whose field equals X", nothing more.
    pub(crate) fn matches(&self, i: usize, value: Option<&str>) -> bool {
        match (self.rules.get(i), value) {
            (Some((_, values)), Some(v)) => values.iter().any(|x| x == v),
            _ => false,
        }
    }
}

/// The error message for a text field that is missing or not a string; `None` if it is fine.
pub(crate) fn text_problem(path: &str, value: &Value<'_>) -> Option<String> {
    match value {
        Value::Str(_) => None,
        Value::Missing => Some(format!("missing text field '{path}'")),
        Value::Other(kind) => Some(format!("text field '{path}' is {kind}, expected a string")),
    }
}

/// Visits one JSON value at `node`: fills the node's slots and descends into objects.
/// Returns the JSON type seen.
struct NodeSeed<'a, 'de> {
    node: &'a Node,
    out: &'a mut Vec<Value<'de>>,
}

impl NodeSeed<'_, '_> {
    fn set_other(&mut self, kind: &'static str) -> &'static str {
        for &s in &self.node.slots {
            self.out[s] = Value::Other(kind);
        }
        kind
    }
}

impl<'de> NodeSeed<'_, 'de> {
    fn set_str(&mut self, v: Cow<'de, str>) -> &'static str {
        if let Some((&last, rest)) = self.node.slots.split_last() {
            for &s in rest {
                self.out[s] = Value::Str(v.clone());
            }
            self.out[last] = Value::Str(v);
        }
        "a string"
    }
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_, 'de> {
    type Value = &'static str;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NodeSeed<'_, 'de> {
    type Value = &'static str;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E>(mut self, v: &'de str) -> Result<Self::Value, E> {
        Ok(self.set_str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(mut self, v: &str) -> Result<Self::Value, E> {
        if self.node.slots.is_empty() {
            return Ok("a string");
        }
        Ok(self.set_str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(mut self, v: String) -> Result<Self::Value, E> {
        Ok(self.set_str(Cow::Owned(v)))
    }
    fn visit_bool<E>(mut self, _: bool) -> Result<Self::Value, E> {
        Ok(self.set_other("a boolean"))
    }
    fn visit_i64<E>(mut self, _: i64) -> Result<Self::Value, E> {
        Ok(self.set_other("a number"))
    }
    fn visit_u64<E>(mut self, _: u64) -> Result<Self::Value, E> {
        Ok(self.set_other("a number"))
    }
    fn visit_f64<E>(mut self, _: f64) -> Result<Self::Value, E> {
        Ok(self.set_other("a number"))
    }
    fn visit_unit<E>(mut self) -> Result<Self::Value, E> {
        Ok(self.set_other("null"))
    }
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(self.set_other("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Self::Value, A::Error> {
        let kind = self.set_other("an object");
        let node = self.node;
        while let Some(child) = map.next_key_seed(KeySeed(node))? {
            match child {
                Some(child) => {
                    map.next_value_seed(NodeSeed {
                        node: child,
                        out: &mut *self.out,
                    })?;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(kind)
    }
}

/// Looks an object key up among the node's children without allocating it.
struct KeySeed<'a>(&'a Node);

impl<'de, 'a> DeserializeSeed<'de> for KeySeed<'a> {
    type Value = Option<&'a Node>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, 'a> Visitor<'de> for KeySeed<'a> {
    type Value = Option<&'a Node>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.child(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> FieldTree {
        FieldTree::new("text", ["meta.redpajama_set_name", "meta.source"])
    }

    #[test]
    fn captures_nested_fields_and_skips_the_rest() {
        let line = r#"{"x":[1,{"text":"no"}],"text":"a\nb","meta":{"redpajama_set_name":"RedPajamaGithub","n":3,"source":7}}"#;
        let f = tree().parse(line).unwrap();
        assert_eq!(f.kind, "an object");
        assert_eq!(f.values[0], Value::Str(Cow::Borrowed("a\nb")));
        assert_eq!(f.values[1], Value::Str(Cow::Borrowed("RedPajamaGithub")));
        assert_eq!(f.values[2], Value::Other("a number"));
    }

    #[test]
    fn unescaped_strings_are_borrowed() {
        let f = tree().parse(r#"{"text":"plain"}"#).unwrap();
        assert!(matches!(f.values[0], Value::Str(Cow::Borrowed("plain"))));
        assert_eq!(f.values[1], Value::Missing);
    }

    #[test]
    fn non_object_records_and_non_object_parents() {
        let f = tree().parse("[1,2]").unwrap();
        assert_eq!(f.kind, "an array");
        assert_eq!(f.values[0], Value::Missing);
        let f = tree().parse(r#"{"text":null,"meta":"flat"}"#).unwrap();
        assert_eq!(
            text_problem("text", &f.values[0]).unwrap(),
            "text field 'text' is null, expected a string"
        );
        assert_eq!(f.values[1], Value::Missing);
    }

    #[test]
    fn trailing_garbage_is_an_error() {
        assert!(tree().parse(r#"{"text":"a"} x"#).is_err());
        assert!(tree().parse(r#"{"text":"a""#).is_err());
    }

    #[test]
    fn exclude_matches_only_listed_strings() {
        let ex = Exclude::new(&[("a".into(), vec!["x".into(), "y".into()])]);
        assert!(ex.matches(0, Some("y")));
        assert!(!ex.matches(0, Some("z")));
        assert!(!ex.matches(0, None));
        assert!(!ex.matches(1, Some("x")));
    }
}
