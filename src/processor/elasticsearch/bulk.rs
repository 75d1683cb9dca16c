//! Bulk bodies and bulk responses: pure functions, no I/O.
//!
//! [`BulkBody`] encodes every action of a chunk once, into one buffer (NDJSON: an action line,
//! then the source line for `index`). Requests are slices of that buffer split by count and
//! bytes ([`BulkBody::batches`]); a retry gathers only the failed items ([`BulkBody::gather`]).
//! The index is in the request path, so action lines carry only `_id` (and the version).

use std::ops::Range;

use serde::ser::{SerializeMap, Serializer as _};
use serde::Deserialize;
use serde_json::Value;

/// The `filter_path` sent with bulk requests: only what [`parse_response`] reads.
pub const BULK_FILTER_PATH: &str = "errors,items.*._id,items.*.status,items.*.error";

/// A bulk action's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Index,
    /// `index` only when the document is absent (a 409 means it is there: done). The backfill
    /// of a reindex writes this way, so that a copy never overwrites the live pillow's newer
    /// write of the same document.
    Create,
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Index => "index",
            Op::Create => "create",
            Op::Delete => "delete",
        }
    }
}

/// One encoded action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkItem {
    /// The index of the change (in the chunk) this action comes from.
    pub change: usize,
    pub op: Op,
    pub doc_id: String,
    /// Where the action's lines lie in [`BulkBody::bytes`].
    pub span: Range<usize>,
}

/// The encoded actions of one chunk.
#[derive(Debug, Clone, Default)]
pub struct BulkBody {
    buf: Vec<u8>,
    items: Vec<BulkItem>,
    /// Documents are written with [`Op::Create`] rather than [`Op::Index`].
    create_only: bool,
}

impl BulkBody {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(bytes: usize, items: usize) -> Self {
        Self {
            buf: Vec::with_capacity(bytes),
            items: Vec::with_capacity(items),
            create_only: false,
        }
    }

    /// Writes documents with [`Op::Create`] (only when absent) from now on.
    pub fn set_create_only(&mut self, create_only: bool) {
        self.create_only = create_only;
    }

    fn write_op(&self) -> Op {
        if self.create_only {
            Op::Create
        } else {
            Op::Index
        }
    }

    pub fn items(&self) -> &[BulkItem] {
        &self.items
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The whole body.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Appends an `index` action with `source` (a top-level `_id` is left out of the source).
    pub fn push_index(
        &mut self,
        change: usize,
        doc_id: &str,
        version: Option<u64>,
        source: &Value,
    ) -> Result<(), serde_json::Error> {
        let start = self.buf.len();
        let op = self.write_op();
        let r = self
            .action_line(op, doc_id, version)
            .and_then(|()| write_source(&mut self.buf, source));
        if let Err(e) = r {
            self.buf.truncate(start);
            return Err(e);
        }
        self.buf.push(b'\n');
        self.push_item(change, op, doc_id, start);
        Ok(())
    }

    /// Appends an `index` action whose source is `source` (see [`Source`]).
    pub(crate) fn push_source(
        &mut self,
        change: usize,
        doc_id: &str,
        version: Option<u64>,
        source: &Source<'_>,
    ) -> Result<(), serde_json::Error> {
        match source {
            Source::Value(v) => self.push_index(change, doc_id, version, v),
            Source::Raw(raw) => {
                let start = self.buf.len();
                let op = self.write_op();
                let r = self
                    .action_line(op, doc_id, version)
                    .and_then(|()| write_raw_source(&mut self.buf, raw));
                if let Err(e) = r {
                    self.buf.truncate(start);
                    return Err(e);
                }
                self.buf.push(b'\n');
                self.push_item(change, op, doc_id, start);
                Ok(())
            }
        }
    }

    /// Appends a `delete` action.
    pub fn push_delete(&mut self, change: usize, doc_id: &str, version: Option<u64>) {
        let start = self.buf.len();
        if self.action_line(Op::Delete, doc_id, version).is_err() {
            // Writing a string into a Vec cannot fail; keep the buffer consistent anyway.
            self.buf.truncate(start);
            return;
        }
        self.push_item(change, Op::Delete, doc_id, start);
    }

    fn push_item(&mut self, change: usize, op: Op, doc_id: &str, start: usize) {
        self.items.push(BulkItem {
            change,
            op,
            doc_id: doc_id.to_owned(),
            span: start..self.buf.len(),
        });
    }

    fn action_line(
        &mut self,
        op: Op,
        doc_id: &str,
        version: Option<u64>,
    ) -> Result<(), serde_json::Error> {
        self.buf.extend_from_slice(b"{\"");
        self.buf.extend_from_slice(op.as_str().as_bytes());
        self.buf.extend_from_slice(b"\":{\"_id\":");
        serde_json::to_writer(&mut self.buf, doc_id)?;
        if let Some(v) = version {
            self.buf.extend_from_slice(b",\"version\":");
            self.buf.extend_from_slice(v.to_string().as_bytes());
            self.buf
                .extend_from_slice(b",\"version_type\":\"external\"");
        }
        self.buf.extend_from_slice(b"}}\n");
        Ok(())
    }

    /// Splits the items into consecutive ranges of at most `max_actions` items and at most
    /// `max_bytes` bytes (an item larger than `max_bytes` forms a range of its own).
    pub fn batches(&self, max_actions: usize, max_bytes: usize) -> Vec<Range<usize>> {
        let max_actions = max_actions.max(1);
        let mut out = Vec::new();
        let mut start = 0;
        let mut bytes = 0;
        for (i, item) in self.items.iter().enumerate() {
            let len = item.span.len();
            if i > start && (i - start >= max_actions || bytes + len > max_bytes) {
                out.push(start..i);
                start = i;
                bytes = 0;
            }
            bytes += len;
        }
        if start < self.items.len() {
            out.push(start..self.items.len());
        }
        out
    }

    /// Moves every item into one of `n` bodies by `group` (a copy of their lines), keeping
    /// their order within each body.
    pub fn split(&self, n: usize, group: impl Fn(&BulkItem) -> usize) -> Vec<BulkBody> {
        let n = n.max(1);
        let mut out: Vec<BulkBody> = (0..n)
            .map(|_| BulkBody::with_capacity(self.buf.len() / n, self.items.len() / n + 1))
            .collect();
        for item in &self.items {
            let body = &mut out[group(item).min(n - 1)];
            let start = body.buf.len();
            body.buf.extend_from_slice(&self.buf[item.span.clone()]);
            body.items.push(BulkItem {
                change: item.change,
                op: item.op,
                doc_id: item.doc_id.clone(),
                span: start..body.buf.len(),
            });
        }
        out
    }

    /// The body of consecutive items (no copy).
    pub fn slice(&self, items: Range<usize>) -> &[u8] {
        match (
            self.items.get(items.start),
            items.end.checked_sub(1).and_then(|e| self.items.get(e)),
        ) {
            (Some(first), Some(last)) if items.start < items.end => {
                &self.buf[first.span.start..last.span.end]
            }
            _ => &[],
        }
    }

    /// The body of the given items (a retry of some of them).
    pub fn gather(&self, items: &[usize]) -> Vec<u8> {
        let len = items
            .iter()
            .filter_map(|&i| self.items.get(i))
            .map(|it| it.span.len())
            .sum();
        let mut out = Vec::with_capacity(len);
        for it in items.iter().filter_map(|&i| self.items.get(i)) {
            out.extend_from_slice(&self.buf[it.span.clone()]);
        }
        out
    }
}

/// Serialises a document without its top-level `_id` (Elasticsearch refuses metadata fields in
/// the source), without copying it.
fn write_source(buf: &mut Vec<u8>, source: &Value) -> Result<(), serde_json::Error> {
    match source {
        Value::Object(map) if map.contains_key("_id") => {
            let mut ser = serde_json::Serializer::new(buf);
            let mut m = ser.serialize_map(Some(map.len() - 1))?;
            for (k, v) in map.iter().filter(|(k, _)| k.as_str() != "_id") {
                m.serialize_entry(k, v)?;
            }
            m.end()
        }
        other => serde_json::to_writer(buf, other),
    }
}

/// An `index` action's source: a document, or the JSON text of a document embedded in its change
/// message, copied as it is (without its top-level `_id`): no parsing into a `Value` and
/// serialising it again (measured: most of the processor's own CPU per change).
#[derive(Debug)]
pub(crate) enum Source<'a> {
    Value(std::borrow::Cow<'a, Value>),
    Raw(&'a str),
}

impl std::fmt::Display for Source<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Value(v) => write!(f, "{v}"),
            Self::Raw(r) => f.write_str(r),
        }
    }
}

/// The top-level entries of a JSON object, borrowed from its text (keys without escapes).
struct Entries<'a>(Vec<(&'a str, &'a serde_json::value::RawValue)>);

impl<'de> Deserialize<'de> for Entries<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) =
                    m.next_entry::<&'de str, &'de serde_json::value::RawValue>()?
                {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Writes the JSON text of an object without its top-level `_id`, copying the other entries as
/// they are. A text this cannot copy safely (not an object, a key with escapes, a key twice:
/// a parsed document keeps the last one) is parsed and written as [`write_source`] does.
fn write_raw_source(buf: &mut Vec<u8>, raw: &str) -> Result<(), serde_json::Error> {
    let entries = serde_json::from_str::<Entries<'_>>(raw).ok().filter(|e| {
        let mut keys: Vec<&str> = e.0.iter().map(|(k, _)| *k).collect();
        keys.sort_unstable();
        keys.windows(2).all(|w| w[0] != w[1])
    });
    let Some(Entries(entries)) = entries else {
        let v: Value = serde_json::from_str(raw)?;
        return write_source(buf, &v);
    };
    buf.push(b'{');
    let mut first = true;
    for (k, v) in entries.iter().filter(|(k, _)| *k != "_id") {
        if !first {
            buf.push(b',');
        }
        first = false;
        buf.push(b'"');
        buf.extend_from_slice(k.as_bytes());
        buf.extend_from_slice(b"\":");
        buf.extend_from_slice(v.get().as_bytes());
    }
    buf.push(b'}');
    Ok(())
}

/// An item's error, as Elasticsearch reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ItemError {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub caused_by: Option<Box<ItemError>>,
}

impl std::fmt::Display for ItemError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some(r) = &self.reason {
            write!(f, ": {r}")?;
        }
        if let Some(c) = &self.caused_by {
            write!(f, " (caused by {c})")?;
        }
        Ok(())
    }
}

/// One item of a bulk response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemResult {
    pub status: u16,
    pub error: Option<ItemError>,
}

#[derive(Deserialize)]
struct ErrorsOnly {
    errors: bool,
}

#[derive(Deserialize)]
struct RawItem {
    #[serde(default)]
    status: u16,
    #[serde(default)]
    error: Option<ItemError>,
}

#[derive(Deserialize)]
struct FullResponse {
    #[serde(default)]
    items: Vec<std::collections::HashMap<String, RawItem>>,
}

/// Parses a bulk response: `None` when no item failed (`errors: false`, the common case, read
/// without building the items), else one result per item, in request order.
pub fn parse_response(body: &[u8]) -> Result<Option<Vec<ItemResult>>, serde_json::Error> {
    let head: ErrorsOnly = serde_json::from_slice(body)?;
    if !head.errors {
        return Ok(None);
    }
    let full: FullResponse = serde_json::from_slice(body)?;
    Ok(Some(
        full.items
            .into_iter()
            .map(|m| {
                m.into_values().next().map_or(
                    ItemResult {
                        status: 0,
                        error: None,
                    },
                    |r| ItemResult {
                        status: r.status,
                        error: r.error,
                    },
                )
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lines(b: &[u8]) -> Vec<Value> {
        std::str::from_utf8(b)
            .expect("utf-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect()
    }

    #[test]
    fn encodes_index_and_delete_actions_as_ndjson() {
        let mut b = BulkBody::new();
        b.push_index(
            0,
            "a\"1",
            None,
            &json!({"_id": "a\"1", "x": 1, "_rev": "2-b"}),
        )
        .expect("encode");
        b.push_delete(1, "b", None);
        b.push_index(2, "c", Some(7), &json!({"y": [1, 2]}))
            .expect("encode");
        b.push_delete(3, "d", Some(9));
        assert_eq!(
            lines(b.bytes()),
            [
                json!({"index": {"_id": "a\"1"}}),
                json!({"x": 1, "_rev": "2-b"}),
                json!({"delete": {"_id": "b"}}),
                json!({"index": {"_id": "c", "version": 7, "version_type": "external"}}),
                json!({"y": [1, 2]}),
                json!({"delete": {"_id": "d", "version": 9, "version_type": "external"}}),
            ]
        );
        assert!(b.bytes().ends_with(b"\n"));
        assert_eq!(
            b.items()
                .iter()
                .map(|i| (i.change, i.op))
                .collect::<Vec<_>>(),
            [
                (0, Op::Index),
                (1, Op::Delete),
                (2, Op::Index),
                (3, Op::Delete)
            ]
        );
        assert_eq!(b.slice(0..4), b.bytes());
        assert_eq!(lines(b.slice(1..2)), [json!({"delete": {"_id": "b"}})]);
        assert_eq!(
            lines(&b.gather(&[3, 1])),
            [
                json!({"delete": {"_id": "d", "version": 9, "version_type": "external"}}),
                json!({"delete": {"_id": "b"}}),
            ]
        );
        assert!(b.slice(2..2).is_empty());
    }

    #[test]
    fn batches_respect_count_and_bytes() {
        let mut b = BulkBody::new();
        for i in 0..10 {
            b.push_index(i, &format!("d{i}"), None, &json!({"pad": "x".repeat(80)}))
                .expect("encode");
        }
        let item = b.items()[0].span.len();
        assert!(b.items().iter().all(|i| i.span.len() == item));
        // By count.
        assert_eq!(b.batches(4, usize::MAX), [0..4, 4..8, 8..10]);
        assert_eq!(b.batches(100, usize::MAX).first(), Some(&(0..10)));
        // By bytes: three items fit, four do not.
        assert_eq!(
            b.batches(100, item * 3 + item / 2),
            [0..3, 3..6, 6..9, 9..10]
        );
        assert_eq!(b.batches(100, item * 3), [0..3, 3..6, 6..9, 9..10]);
        // Both: the tighter bound wins.
        assert_eq!(b.batches(2, item * 3), [0..2, 2..4, 4..6, 6..8, 8..10]);
        // An item larger than the byte limit goes alone.
        assert_eq!(
            b.batches(100, 1),
            (0..10).map(|i| i..i + 1).collect::<Vec<_>>()
        );
        // Every batch's bytes are within the limit and the batches cover the body exactly.
        let joined: Vec<u8> = b
            .batches(3, item * 2)
            .into_iter()
            .flat_map(|r| b.slice(r).to_vec())
            .collect();
        assert_eq!(joined, b.bytes());
        assert!(BulkBody::new().batches(10, 10).is_empty());
    }

    #[test]
    fn parses_responses() {
        assert_eq!(
            parse_response(br#"{"errors":false,"items":[{"index":{"_id":"a","status":201}}]}"#)
                .expect("parse"),
            None
        );
        let r = parse_response(
            br#"{"took":3,"errors":true,"items":[
                {"index":{"_id":"a","status":201}},
                {"delete":{"_id":"b","status":404}},
                {"index":{"_id":"c","status":400,"error":{"type":"mapper_parsing_exception",
                  "reason":"failed to parse field [count]","caused_by":{"type":"number_format_exception","reason":"For input string: \"abc\""}}}}]}"#,
        )
        .expect("parse")
        .expect("items");
        assert_eq!(r.len(), 3);
        assert_eq!((r[0].status, r[1].status, r[2].status), (201, 404, 400));
        let e = r[2].error.as_ref().expect("error");
        assert_eq!(e.kind, "mapper_parsing_exception");
        assert_eq!(
            e.to_string(),
            "mapper_parsing_exception: failed to parse field [count] (caused by number_format_exception: For input string: \"abc\")"
        );
        assert!(parse_response(b"<html>").is_err());
    }

    #[test]
    fn raw_sources_are_copied_without_their_id_and_odd_texts_are_parsed() {
        let raw = |text: &str| {
            let mut buf = Vec::new();
            write_raw_source(&mut buf, text).expect("writes");
            String::from_utf8(buf).expect("utf-8")
        };
        // Copied as it is (nested whitespace and number forms kept), without `_id`.
        assert_eq!(
            raw(r#"{"_id": "a", "form": {"n": 1.50, "s": "x\ny"}, "list": [1, 2]}"#),
            r#"{"form":{"n": 1.50, "s": "x\ny"},"list":[1, 2]}"#
        );
        assert_eq!(raw(r#"{"_id":"a"}"#), "{}");
        assert_eq!(raw(r#"{"a":null}"#), r#"{"a":null}"#);
        // A key with an escape, or a key twice (a parsed document keeps the last): parsed.
        assert_eq!(raw(r#"{"_id":"a","k\u0041":1}"#), r#"{"kA":1}"#);
        assert_eq!(raw(r#"{"a":1,"_id":"x","a":2}"#), r#"{"a":2}"#);
        // Not an object: written as a parsed document is.
        assert_eq!(raw("[1, 2]"), "[1,2]");
        // The same document either way.
        let text = r#"{"_id":"f","domain":"d","form":{"meta":{"userID":"u"},"age":"31"}}"#;
        let v: Value = serde_json::from_str(text).expect("json");
        let mut parsed = Vec::new();
        write_source(&mut parsed, &v).expect("writes");
        let a: Value = serde_json::from_str(&raw(text)).expect("json");
        let b: Value = serde_json::from_slice(&parsed).expect("json");
        assert_eq!(a, b);
    }
}
