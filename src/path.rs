//! The one JSON-path dialect of the crate, and projections over it.
//!
//! A path is dotted segments into a document, with an optional `$.` (or `$`) root prefix:
//! `form.meta.userID`, `$.domain`, `form.case.0.@case_id` (a segment indexes an array when the
//! value there is one). The whole path is first tried as one key of the top-level object, for
//! documents with dotted keys (`{"form.meta": …}`), then segment by segment. Both processors
//! (reporting-table columns and filters, Elasticsearch ids and versions) and
//! [`EmbeddedDocument::project`](crate::change::EmbeddedDocument::project) read paths through
//! this module, so a path means the same everywhere.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The path without its `$.` / `$` root prefix.
fn strip_root(path: &str) -> &str {
    let p = path.strip_prefix("$.").unwrap_or(path);
    p.strip_prefix('$').unwrap_or(p)
}

/// The value at `path` (`None` when any segment is missing); the empty path (`$`) is the whole
/// document.
pub fn lookup<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    let p = strip_root(path);
    if p.contains('.') {
        if let Some(v) = doc.get(p) {
            return Some(v);
        }
    }
    let mut v = doc;
    for seg in p.split('.').filter(|s| !s.is_empty()) {
        v = match v {
            Value::Object(m) => m.get(seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

/// A path split once, for lookups in a hot loop: [`lookup`] without parsing the path each
/// time (measured: the split and the whole-key attempt were a tenth of a table's encoding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledPath {
    raw: String,
    /// The path as one top-level key, when it has dots (see [`lookup`]).
    dotted: Option<String>,
    segments: Vec<String>,
}

impl CompiledPath {
    pub fn new(path: &str) -> Self {
        let p = strip_root(path);
        Self {
            raw: path.to_owned(),
            dotted: p.contains('.').then(|| p.to_owned()),
            segments: p
                .split('.')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        }
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// What [`lookup`] finds at this path.
    pub fn lookup<'a>(&self, doc: &'a Value) -> Option<&'a Value> {
        if let Some(d) = &self.dotted {
            if let Some(v) = doc.get(d.as_str()) {
                return Some(v);
            }
        }
        let mut v = doc;
        for seg in &self.segments {
            v = match v {
                Value::Object(m) => m.get(seg.as_str())?,
                Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(v)
    }
}

/// A set of dotted paths (`form.meta.userID`, `$.domain`, `form.case.0.id`), as a tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Projection {
    /// Keep this whole value (a path ends here).
    whole: bool,
    children: BTreeMap<String, Projection>,
}

impl Projection {
    /// The projection of these paths; the empty path (`$`) keeps the whole document.
    pub fn new<'a>(paths: impl IntoIterator<Item = &'a str>) -> Self {
        let mut root = Self::default();
        for path in paths {
            let p = strip_root(path);
            // The whole path as one top-level key too (see `lookup`).
            if p.contains('.') {
                root.children.entry(p.to_owned()).or_default().whole = true;
            }
            let mut node = &mut root;
            for seg in p.split('.').filter(|s| !s.is_empty()) {
                node = node.children.entry(seg.to_owned()).or_default();
            }
            node.whole = true;
        }
        root
    }
}

pub(crate) struct Seed<'p>(pub(crate) &'p Projection);

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.0.whole {
            Value::deserialize(d)
        } else {
            d.deserialize_any(self)
        }
    }
}

/// A key of an object: the child projection it selects, if any (no allocation).
struct Key<'p>(&'p Projection);

impl<'de, 'p> DeserializeSeed<'de> for Key<'p> {
    type Value = Option<(&'p str, &'p Projection)>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'p> Visitor<'_> for Key<'p> {
    type Value = Option<(&'p str, &'p Projection)>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self
            .0
            .children
            .get_key_value(v)
            .map(|(k, p)| (k.as_str(), p)))
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(Key(self.0))? {
            match key {
                Some((name, child)) => {
                    let v = map.next_value_seed(Seed(child))?;
                    out.insert(name.to_owned(), v);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        if !self.0.children.keys().any(|k| k.parse::<usize>().is_ok()) {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(Value::Array(out));
        }
        let mut i = 0usize;
        loop {
            let child = self.0.children.get(&i.to_string());
            let item = match child {
                Some(c) => seq.next_element_seed(Seed(c))?,
                None => seq.next_element::<IgnoredAny>()?.map(|_| Value::Null),
            };
            match item {
                Some(v) => out.push(v),
                None => break,
            }
            i += 1;
        }
        Ok(Value::Array(out))
    }
    // A path that goes on into a scalar finds nothing there.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_dialect_roots_segments_indices_and_dotted_keys() {
        let doc = serde_json::json!({
            "domain": "a",
            "form": {"meta": {"userID": "u"}, "case": [{"@case_id": "c0"}, {"@case_id": "c1"}]},
            "flat.key": 7
        });
        assert_eq!(lookup(&doc, "$.domain"), Some(&serde_json::json!("a")));
        assert_eq!(lookup(&doc, "domain"), Some(&serde_json::json!("a")));
        assert_eq!(
            lookup(&doc, "form.meta.userID"),
            Some(&serde_json::json!("u"))
        );
        assert_eq!(
            lookup(&doc, "form.case.1.@case_id"),
            Some(&serde_json::json!("c1"))
        );
        assert_eq!(lookup(&doc, "form.case.9.@case_id"), None);
        assert_eq!(lookup(&doc, "flat.key"), Some(&serde_json::json!(7)));
        assert_eq!(lookup(&doc, "domain.deeper"), None);
        assert_eq!(lookup(&doc, "$"), Some(&doc));
        // A compiled path finds the same, for every form above.
        for p in [
            "$.domain",
            "domain",
            "form.meta.userID",
            "form.case.1.@case_id",
            "form.case.9.@case_id",
            "flat.key",
            "domain.deeper",
            "$",
            "",
            "form.case.x",
        ] {
            assert_eq!(CompiledPath::new(p).lookup(&doc), lookup(&doc, p), "{p}");
            assert_eq!(CompiledPath::new(p).as_str(), p);
        }
    }
}
