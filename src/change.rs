//! Changes: CommCare's `ChangeMeta` wire format and the in-memory [`Change`] handed to processors.
//!
//! The whole body of a Kafka message is a UTF-8 JSON `ChangeMeta`; the message key is the
//! document id. Unknown fields are accepted and preserved (newer CommCare behaviour); an embedded
//! `document` field, when present, becomes the change's document and is not kept in the metadata.
//! This module does no I/O.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// CommCare's `ChangeMeta` (`pillowtop/feed/interface.py`), field for field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeMeta {
    /// Id of the changed document; also the Kafka message key. Numbers are accepted and kept as
    /// their decimal text.
    #[serde(deserialize_with = "de_document_id")]
    pub document_id: String,
    #[serde(default)]
    pub document_rev: Option<String>,
    pub data_source_type: String,
    pub data_source_name: String,
    #[serde(default)]
    pub document_type: Option<String>,
    #[serde(default)]
    pub document_subtype: Option<String>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default, deserialize_with = "de_bool_or_null")]
    pub is_deletion: bool,
    #[serde(default, with = "commcare_datetime")]
    pub publish_timestamp: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "de_u32_or_null")]
    pub attempts: u32,
    #[serde(
        default,
        with = "commcare_datetime",
        skip_serializing_if = "Option::is_none"
    )]
    pub original_publication_datetime: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub associated_document_id: Option<String>,
    /// Properties this version does not know, kept so that a re-published message keeps them.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChangeMeta {
    /// A new change for `document_id`, stamped now, as CommCare's producer makes them.
    pub fn new(
        document_id: impl Into<String>,
        data_source_type: impl Into<String>,
        data_source_name: impl Into<String>,
    ) -> Self {
        let now = Utc::now();
        Self {
            document_id: document_id.into(),
            document_rev: None,
            data_source_type: data_source_type.into(),
            data_source_name: data_source_name.into(),
            document_type: None,
            document_subtype: None,
            domain: None,
            is_deletion: false,
            publish_timestamp: Some(now),
            attempts: 0,
            original_publication_datetime: Some(now),
            associated_document_id: None,
            extra: Map::new(),
        }
    }

    /// Parses a message body. Returns the metadata and the embedded document, if any.
    pub fn parse(payload: &[u8]) -> Result<(Self, Option<Value>), ChangeParseError> {
        let mut meta: ChangeMeta =
            serde_json::from_slice(payload).map_err(|e| ChangeParseError(e.to_string()))?;
        let document = meta.extra.remove("document").filter(|d| !d.is_null());
        Ok((meta, document))
    }

    /// The message body, as CommCare's producer writes it.
    pub fn to_json(&self) -> String {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Why a message body is not a valid `ChangeMeta`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid change message: {0}")]
pub struct ChangeParseError(pub String);

fn de_document_id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) if !s.is_empty() => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!(
            "document_id must be a non-empty string or a number, not {other}"
        ))),
    }
}

fn de_bool_or_null<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

fn de_u32_or_null<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    Ok(Option::<u32>::deserialize(d)?.unwrap_or(0))
}

/// CommCare's datetime format: ISO 8601 in UTC with microseconds and a `Z` suffix. Parsing also
/// accepts other offsets (converted to UTC), no fraction, and naive values (taken as UTC).
pub mod commcare_datetime {
    use super::{
        DateTime, Deserialize, Deserializer, NaiveDateTime, SecondsFormat, Serializer, Utc,
    };

    pub fn format(dt: &DateTime<Utc>) -> String {
        dt.to_rfc3339_opts(SecondsFormat::Micros, true)
    }

    pub fn parse(s: &str) -> Option<DateTime<Utc>> {
        if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
            return Some(dt.with_timezone(&Utc));
        }
        [
            "%Y-%m-%dT%H:%M:%S%.f",
            "%Y-%m-%d %H:%M:%S%.f",
            "%Y-%m-%dT%H:%M:%S",
        ]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
        .map(|n| n.and_utc())
    }

    #[allow(clippy::ref_option)] // serde's `with` hands us `&Option<T>`
    pub fn serialize<S: Serializer>(v: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(dt) => s.serialize_str(&format(dt)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => parse(&s)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom(format!("invalid datetime {s:?}"))),
        }
    }
}

/// Where a change's document stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Document {
    /// Not fetched yet: a document store will be asked, once.
    Unfetched,
    /// Fetched (or embedded, or set by a processor). `None`: the store has no such document; this
    /// is remembered and never fetched again.
    Known(Option<Value>),
}

/// One change, as processors see it (CommCare's `Change`).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The document id (`metadata.document_id`).
    pub id: String,
    pub topic: String,
    pub partition: i32,
    /// The Kafka offset (CommCare's `sequence_id` / `seq`).
    pub offset: i64,
    /// `metadata.is_deletion`.
    pub deleted: bool,
    pub metadata: ChangeMeta,
    pub document: Document,
    /// Size of the message body in bytes.
    pub size: usize,
}

impl Change {
    /// Builds a change from a message body read at `topic`/`partition`/`offset`.
    pub fn from_message(
        topic: &str,
        partition: i32,
        offset: i64,
        payload: &[u8],
    ) -> Result<Self, ChangeParseError> {
        let (metadata, document) = ChangeMeta::parse(payload)?;
        Ok(Self {
            id: metadata.document_id.clone(),
            topic: topic.to_owned(),
            partition,
            offset,
            deleted: metadata.is_deletion,
            document: document.map_or(Document::Unfetched, |d| Document::Known(Some(d))),
            metadata,
            size: payload.len(),
        })
    }

    /// The document if it is known (fetched, embedded or set).
    pub fn document(&self) -> Option<&Value> {
        match &self.document {
            Document::Known(Some(d)) => Some(d),
            _ => None,
        }
    }

    /// CommCare's `set_document`: attach a document so later processors do not fetch it again.
    pub fn set_document(&mut self, doc: Option<Value>) {
        self.document = Document::Known(doc);
    }

    /// CommCare's `increment_attempt_count`.
    pub fn increment_attempt_count(&mut self) {
        self.metadata.attempts += 1;
    }

    /// CommCare's `Change.to_dict()` without the document, as stored in `PillowError.change`.
    pub fn to_dict(&self) -> Value {
        serde_json::json!({
            "id": self.id,
            "seq": self.offset,
            "deleted": self.deleted,
            "topic": self.topic,
            "partition": self.partition,
        })
    }
}

/// Serialises a timestamp as CommCare does (helper for other modules).
pub fn format_datetime(dt: &DateTime<Utc>) -> String {
    commcare_datetime::format(dt)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC_EXAMPLE: &str = r#"{"document_id": "abc", "data_source_type": "sql", "data_source_name": "form-sql",
 "document_type": "XFormInstance", "document_subtype": "http://commcarehq.org/case",
 "domain": "dimagi", "is_deletion": false, "document_rev": null,
 "publish_timestamp": "2019-09-18T14:31:01.930921Z", "attempts": 0}"#;

    #[test]
    fn parses_the_documented_message() {
        let (m, doc) = ChangeMeta::parse(DOC_EXAMPLE.as_bytes()).expect("valid");
        assert_eq!(m.document_id, "abc");
        assert_eq!(m.data_source_name, "form-sql");
        assert_eq!(m.document_type.as_deref(), Some("XFormInstance"));
        assert_eq!(m.domain.as_deref(), Some("dimagi"));
        assert!(!m.is_deletion);
        assert_eq!(m.document_rev, None);
        assert_eq!(
            m.publish_timestamp.map(|t| format_datetime(&t)).as_deref(),
            Some("2019-09-18T14:31:01.930921Z")
        );
        assert!(doc.is_none());
        assert!(m.extra.is_empty());
    }

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let body = r#"{"document_id": 12, "data_source_type": "couch", "data_source_name": "commcarehq",
            "future_field": {"a": [1, 2]}, "attempts": 2}"#;
        let (m, _) = ChangeMeta::parse(body.as_bytes()).expect("valid");
        assert_eq!(m.document_id, "12");
        assert_eq!(m.attempts, 2);
        let again: Value = serde_json::from_str(&m.to_json()).expect("json");
        assert_eq!(again["future_field"], serde_json::json!({"a": [1, 2]}));
        assert_eq!(again["attempts"], 2);
        let (m2, _) = ChangeMeta::parse(m.to_json().as_bytes()).expect("valid");
        assert_eq!(m, m2);
    }

    #[test]
    fn embedded_document_becomes_the_changes_document() {
        let body = r#"{"document_id": "d1", "data_source_type": "sql", "data_source_name": "form-sql",
            "document": {"_id": "d1", "form": {"x": 1}}}"#;
        let c = Change::from_message("form-sql", 3, 42, body.as_bytes()).expect("valid");
        assert_eq!(c.document().expect("doc")["form"]["x"], 1);
        assert!(!c.metadata.extra.contains_key("document"));
        assert_eq!(
            (c.topic.as_str(), c.partition, c.offset),
            ("form-sql", 3, 42)
        );
    }

    #[test]
    fn bad_messages_are_rejected_with_a_reason() {
        for (body, needle) in [
            ("not json", "expected"),
            (
                r#"{"data_source_type": "sql", "data_source_name": "x"}"#,
                "document_id",
            ),
            (
                r#"{"document_id": "a", "data_source_type": "sql"}"#,
                "data_source_name",
            ),
            (
                r#"{"document_id": ["a"], "data_source_type": "sql", "data_source_name": "x"}"#,
                "document_id",
            ),
            (
                r#"{"document_id": "a", "data_source_type": "sql", "data_source_name": "x", "is_deletion": "yes"}"#,
                "invalid type",
            ),
            (
                r#"{"document_id": "a", "data_source_type": "sql", "data_source_name": "x", "publish_timestamp": "yesterday"}"#,
                "datetime",
            ),
        ] {
            let err = ChangeMeta::parse(body.as_bytes()).expect_err(body);
            assert!(err.0.contains(needle), "{body}: {err}");
        }
    }

    #[test]
    fn datetimes_accept_commcare_variants() {
        for s in [
            "2019-09-18T14:31:01.930921Z",
            "2019-09-18T14:31:01.930921",
            "2019-09-18T16:31:01.930921+02:00",
        ] {
            assert_eq!(
                format_datetime(&commcare_datetime::parse(s).expect(s)),
                "2019-09-18T14:31:01.930921Z"
            );
        }
        assert_eq!(
            format_datetime(&commcare_datetime::parse("2019-09-18T14:31:01Z").expect("z")),
            "2019-09-18T14:31:01.000000Z"
        );
    }
}
