//! Changes: CommCare's `ChangeMeta` wire format and the in-memory [`Change`] handed to processors.
//!
//! The whole body of a Kafka message is a UTF-8 JSON `ChangeMeta`; the message key is the
//! document id. Unknown fields are accepted and preserved (newer CommCare behaviour); an embedded
//! `document` field, when present, becomes the change's document and is not kept in the metadata.
//! This module does no I/O.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
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

    /// Every field empty: what the readers fill in.
    fn blank() -> Self {
        Self {
            document_id: String::new(),
            document_rev: None,
            data_source_type: String::new(),
            data_source_name: String::new(),
            document_type: None,
            document_subtype: None,
            domain: None,
            is_deletion: false,
            publish_timestamp: None,
            attempts: 0,
            original_publication_datetime: None,
            associated_document_id: None,
            extra: Map::new(),
        }
    }

    /// Parses a message body. Returns the metadata and the embedded document, if any.
    pub fn parse(payload: &[u8]) -> Result<(Self, Option<Value>), ChangeParseError> {
        let (meta, raw) = Self::parse_raw(payload)?;
        let document = match raw {
            Some(raw) => Some(
                serde_json::from_str::<Value>(raw.get())
                    .map_err(|e| ChangeParseError(e.to_string()))?,
            ),
            None => None,
        };
        Ok((meta, document))
    }

    /// Parses a message body, keeping the embedded document as raw JSON (validated, not
    /// parsed): the feed's hot path. The document is parsed later, only if a processor asks.
    pub fn parse_raw(payload: &[u8]) -> Result<(Self, Option<Box<RawValue>>), ChangeParseError> {
        // One UTF-8 check of the whole body (word-at-a-time over ASCII); then neither reader
        // checks a string again (measured: a quarter of serde_json's byte-slice reader, and
        // a tenth of the fast reader when it checked each value).
        let text = std::str::from_utf8(payload)
            .map_err(|e| ChangeParseError(format!("the message body is not UTF-8: {e}")))?;
        // CommCare's producers write one flat shape: read it with a single scan, and leave
        // anything else (escapes, unknown fields, an embedded document, errors) to serde_json.
        if let Some(parsed) = fast::parse(text) {
            return Ok(parsed);
        }
        let wire: wire::Wire =
            serde_json::from_str(text).map_err(|e| ChangeParseError(e.to_string()))?;
        Ok((wire.meta, wire.document))
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
    use super::{DateTime, Deserializer, NaiveDateTime, SecondsFormat, Serializer, Utc};

    pub fn format(dt: &DateTime<Utc>) -> String {
        dt.to_rfc3339_opts(SecondsFormat::Micros, true)
    }

    pub fn parse(s: &str) -> Option<DateTime<Utc>> {
        if let Some(dt) = parse_canonical(s) {
            return Some(dt);
        }
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

    /// The exact form CommCare writes (`2019-09-18T14:31:01.930921Z`), read without the
    /// general parser: every message carries two of these.
    fn parse_canonical(s: &str) -> Option<DateTime<Utc>> {
        let b = s.as_bytes();
        if b.len() != 27
            || b[4] != b'-'
            || b[7] != b'-'
            || b[10] != b'T'
            || b[13] != b':'
            || b[16] != b':'
            || b[19] != b'.'
            || b[26] != b'Z'
        {
            return None;
        }
        let num = |from: usize, to: usize| -> Option<u32> {
            b[from..to].iter().try_fold(0u32, |acc, &c| {
                c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
            })
        };
        let year = i32::try_from(num(0, 4)?).ok()?;
        let date = chrono::NaiveDate::from_ymd_opt(year, num(5, 7)?, num(8, 10)?)?;
        let time =
            date.and_hms_micro_opt(num(11, 13)?, num(14, 16)?, num(17, 19)?, num(20, 26)?)?;
        Some(time.and_utc())
    }

    #[allow(clippy::ref_option)] // serde's `with` hands us `&Option<T>`
    pub fn serialize<S: Serializer>(v: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(dt) => s.serialize_str(&format(dt)),
            None => s.serialize_none(),
        }
    }

    /// A string (read in place, not copied) or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Option<DateTime<Utc>>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a datetime string or null")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
                parse(s)
                    .map(Some)
                    .ok_or_else(|| E::custom(format!("invalid datetime {s:?}")))
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
                d.deserialize_str(self)
            }
        }
        d.deserialize_option(V)
    }
}

/// Where a change's document stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Document {
    /// Not fetched yet: a document store will be asked, once.
    Unfetched,
    /// Embedded in the message: kept as raw JSON, parsed on first use.
    Embedded(EmbeddedDocument),
    /// Fetched (or set by a processor). `None`: the store has no such document; this is
    /// remembered and never fetched again.
    Known(Option<Value>),
}

/// A document embedded in a change message: the raw JSON text, and its parsed form once a
/// processor needed it. Processors that only read metadata, or that pass the document on as
/// text (a Python processor gets it through `json.loads`), never pay for a `Value`.
#[derive(Debug, Clone)]
pub struct EmbeddedDocument {
    raw: Box<RawValue>,
    parsed: std::sync::OnceLock<Value>,
}

impl EmbeddedDocument {
    pub fn new(raw: Box<RawValue>) -> Self {
        Self {
            raw,
            parsed: std::sync::OnceLock::new(),
        }
    }

    /// The JSON text as it came in the message.
    pub fn raw(&self) -> &str {
        self.raw.get()
    }

    /// Whether the document has been parsed into a `Value` already.
    pub fn is_parsed(&self) -> bool {
        self.parsed.get().is_some()
    }

    /// The parsed document (parsed once, on the first call).
    pub fn value(&self) -> &Value {
        // `RawValue` holds validated JSON, so parsing it again cannot fail.
        self.parsed
            .get_or_init(|| serde_json::from_str(self.raw.get()).unwrap_or(Value::Null))
    }
}

impl EmbeddedDocument {
    /// The parts of the document that `projection` names, as a `Value` with the same shape
    /// (objects keep only the named keys, arrays only the named indices, a named path keeps its
    /// whole value), read in one pass without allocating the rest. A processor that needs a
    /// few fields of a large document (a reporting table's columns) reads them at a fraction of
    /// the cost of [`value`](Self::value). When the document was already parsed, that value is
    /// returned as is.
    pub fn project(&self, projection: &Projection) -> std::borrow::Cow<'_, Value> {
        if let Some(v) = self.parsed.get() {
            return std::borrow::Cow::Borrowed(v);
        }
        let mut de = serde_json::Deserializer::from_str(self.raw.get());
        // `RawValue` holds validated JSON: projecting it cannot fail.
        let v = serde::de::DeserializeSeed::deserialize(crate::path::Seed(projection), &mut de)
            .unwrap_or(Value::Null);
        std::borrow::Cow::Owned(v)
    }
}

pub use crate::path::Projection;

impl PartialEq for EmbeddedDocument {
    fn eq(&self, other: &Self) -> bool {
        self.raw.get() == other.raw.get()
    }
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
    /// A copy without its document (`Known(None)`): what a sink keeps of a change it holds, for
    /// the error row should its write fail later.
    #[must_use]
    pub fn without_document(&self) -> Self {
        Self {
            id: self.id.clone(),
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
            deleted: self.deleted,
            metadata: self.metadata.clone(),
            document: Document::Known(None),
            size: self.size,
        }
    }

    /// Builds a change from a message body read at `topic`/`partition`/`offset`.
    pub fn from_message(
        topic: &str,
        partition: i32,
        offset: i64,
        payload: &[u8],
    ) -> Result<Self, ChangeParseError> {
        let (metadata, document) = ChangeMeta::parse_raw(payload)?;
        Ok(Self {
            id: metadata.document_id.clone(),
            topic: topic.to_owned(),
            partition,
            offset,
            deleted: metadata.is_deletion,
            document: document.map_or(Document::Unfetched, |d| {
                Document::Embedded(EmbeddedDocument::new(d))
            }),
            metadata,
            size: payload.len(),
        })
    }

    /// The document if it is known (fetched, embedded or set).
    pub fn document(&self) -> Option<&Value> {
        match &self.document {
            Document::Known(Some(d)) => Some(d),
            Document::Embedded(e) => Some(e.value()).filter(|v| !v.is_null()),
            Document::Known(None) | Document::Unfetched => None,
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

/// The hot-path deserializer of a message body: one pass, no buffering of the whole message
/// (serde's `flatten` buffers every field before it can route the unknown ones), unknown
/// fields kept, the embedded document kept raw.
/// A single-pass reader for the shape CommCare's producers write: a flat JSON object whose keys
/// are all known fields, with plain strings (no escape sequences), `null`, booleans and small
/// integers. It either returns exactly what the general reader ([`wire`]) returns for the same
/// text, or `None` — for anything else, including every invalid message — so that the general
/// reader decides (and words the error). The differential tests in this module hold it to that.
mod fast {
    use serde_json::value::RawValue;

    use super::{commcare_datetime, ChangeMeta};

    struct Scanner<'a> {
        text: &'a str,
        bytes: &'a [u8],
        pos: usize,
    }

    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;

    /// Non-zero when `word` has a quote, a backslash or a control character (it may also be
    /// for a byte above 0x7F next to one: the caller then looks byte by byte).
    fn specials(word: u64) -> u64 {
        let zero_of = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
        zero_of(word ^ (ONES * u64::from(b'"')))
            | zero_of(word ^ (ONES * u64::from(b'\\')))
            | (word.wrapping_sub(ONES * 0x20) & !word & HIGHS)
    }

    // In the readers below, the outer `None` means "not the fast shape" (the general reader
    // decides) and the inner one a JSON `null`.
    #[allow(clippy::option_option)]
    impl<'a> Scanner<'a> {
        fn peek(&self) -> Option<u8> {
            self.bytes.get(self.pos).copied()
        }

        fn skip_ws(&mut self) {
            while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
                self.pos += 1;
            }
        }

        fn eat(&mut self, byte: u8) -> Option<()> {
            (self.peek()? == byte).then(|| self.pos += 1)
        }

        fn eat_word(&mut self, word: &str) -> bool {
            let found = self.bytes[self.pos..].starts_with(word.as_bytes());
            if found {
                self.pos += word.len();
            }
            found
        }

        /// A string without escapes or control characters (anything else: `None`).
        fn string(&mut self) -> Option<&'a str> {
            self.eat(b'"')?;
            let start = self.pos;
            let bytes = self.bytes;
            // Eight bytes at a time up to the first quote, backslash or control character.
            let mut at = start;
            while let Some(chunk) = bytes.get(at..at + 8) {
                let word = u64::from_le_bytes(chunk.try_into().ok()?);
                if specials(word) != 0 {
                    break;
                }
                at += 8;
            }
            loop {
                match *bytes.get(at)? {
                    b'"' => break,
                    b'\\' | 0..=0x1f => return None,
                    _ => at += 1,
                }
            }
            // Both ends are ASCII quotes, so character boundaries of valid UTF-8.
            let s = self.text.get(start..at)?;
            self.pos = at + 1;
            Some(s)
        }

        /// `null` → `Some(None)`, a plain string → `Some(Some(s))`.
        fn nullable_string(&mut self) -> Option<Option<&'a str>> {
            if self.eat_word("null") {
                return Some(None);
            }
            self.string().map(Some)
        }

        fn nullable_bool(&mut self) -> Option<bool> {
            if self.eat_word("true") {
                Some(true)
            } else if self.eat_word("false") || self.eat_word("null") {
                Some(false)
            } else {
                None
            }
        }

        /// `null` → 0, or a plain decimal integer that fits in a u32 (no sign, fraction,
        /// exponent or leading zero).
        fn nullable_u32(&mut self) -> Option<u32> {
            if self.eat_word("null") {
                return Some(0);
            }
            let start = self.pos;
            while self.peek().is_some_and(|b| b.is_ascii_digit()) {
                self.pos += 1;
            }
            let digits = self.text.get(start..self.pos)?;
            if digits.is_empty()
                || (digits.len() > 1 && digits.starts_with('0'))
                || matches!(self.peek(), Some(b'.' | b'e' | b'E'))
            {
                return None;
            }
            digits.parse().ok()
        }

        fn nullable_datetime(&mut self) -> Option<Option<chrono::DateTime<chrono::Utc>>> {
            match self.nullable_string()? {
                None => Some(None),
                Some(s) => commcare_datetime::parse(s).map(Some),
            }
        }
    }

    pub(super) fn parse(text: &str) -> Option<(ChangeMeta, Option<Box<RawValue>>)> {
        let mut sc = Scanner {
            text,
            bytes: text.as_bytes(),
            pos: 0,
        };
        let mut meta = ChangeMeta::blank();
        let (mut id, mut source_type, mut source_name) = (None, None, None);
        let mut document = None;
        let owned = |s: Option<&str>| s.map(str::to_owned);
        sc.skip_ws();
        sc.eat(b'{')?;
        sc.skip_ws();
        if sc.peek()? != b'}' {
            loop {
                sc.skip_ws();
                let key = sc.string()?;
                sc.skip_ws();
                sc.eat(b':')?;
                sc.skip_ws();
                // A repeated key overwrites, as in the general reader.
                match key {
                    "document_id" => id = Some(sc.string().filter(|s| !s.is_empty())?),
                    "data_source_type" => source_type = Some(sc.string()?),
                    "data_source_name" => source_name = Some(sc.string()?),
                    "document_rev" => meta.document_rev = owned(sc.nullable_string()?),
                    "document_type" => meta.document_type = owned(sc.nullable_string()?),
                    "document_subtype" => meta.document_subtype = owned(sc.nullable_string()?),
                    "domain" => meta.domain = owned(sc.nullable_string()?),
                    "associated_document_id" => {
                        meta.associated_document_id = owned(sc.nullable_string()?);
                    }
                    "is_deletion" => meta.is_deletion = sc.nullable_bool()?,
                    "attempts" => meta.attempts = sc.nullable_u32()?,
                    "publish_timestamp" => meta.publish_timestamp = sc.nullable_datetime()?,
                    "original_publication_datetime" => {
                        meta.original_publication_datetime = sc.nullable_datetime()?;
                    }
                    "document" => {
                        // Validated and kept raw, as the general reader keeps it.
                        let mut values = serde_json::Deserializer::from_str(&text[sc.pos..])
                            .into_iter::<&RawValue>();
                        let raw = values.next()?.ok()?;
                        sc.pos += values.byte_offset();
                        document = (raw.get() != "null").then(|| raw.to_owned());
                    }
                    // Unknown fields: the general reader.
                    _ => return None,
                }
                sc.skip_ws();
                match sc.peek()? {
                    b',' => sc.pos += 1,
                    b'}' => break,
                    _ => return None,
                }
            }
        }
        sc.eat(b'}')?;
        sc.skip_ws();
        if sc.pos != text.len() {
            return None;
        }
        let meta = ChangeMeta {
            document_id: id?.to_owned(),
            data_source_type: source_type?.to_owned(),
            data_source_name: source_name?.to_owned(),
            ..meta
        };
        Some((meta, document))
    }
}

mod wire {
    use std::fmt;

    use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
    use serde_json::value::RawValue;
    use serde_json::Value;

    use super::{commcare_datetime, ChangeMeta, DateTime, Utc};

    pub(super) struct Wire {
        pub(super) meta: ChangeMeta,
        pub(super) document: Option<Box<RawValue>>,
    }

    enum Field {
        DocumentId,
        DocumentRev,
        DataSourceType,
        DataSourceName,
        DocumentType,
        DocumentSubtype,
        Domain,
        IsDeletion,
        PublishTimestamp,
        Attempts,
        OriginalPublicationDatetime,
        AssociatedDocumentId,
        Document,
        Other(String),
    }

    impl<'de> Deserialize<'de> for Field {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = Field;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a field name")
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Field, E> {
                    Ok(match v {
                        "document_id" => Field::DocumentId,
                        "document_rev" => Field::DocumentRev,
                        "data_source_type" => Field::DataSourceType,
                        "data_source_name" => Field::DataSourceName,
                        "document_type" => Field::DocumentType,
                        "document_subtype" => Field::DocumentSubtype,
                        "domain" => Field::Domain,
                        "is_deletion" => Field::IsDeletion,
                        "publish_timestamp" => Field::PublishTimestamp,
                        "attempts" => Field::Attempts,
                        "original_publication_datetime" => Field::OriginalPublicationDatetime,
                        "associated_document_id" => Field::AssociatedDocumentId,
                        "document" => Field::Document,
                        other => Field::Other(other.to_owned()),
                    })
                }
            }
            d.deserialize_identifier(V)
        }
    }

    struct DocId(String);
    impl<'de> Deserialize<'de> for DocId {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            super::de_document_id(d).map(DocId)
        }
    }
    struct BoolOrNull(bool);
    impl<'de> Deserialize<'de> for BoolOrNull {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            super::de_bool_or_null(d).map(BoolOrNull)
        }
    }
    struct U32OrNull(u32);
    impl<'de> Deserialize<'de> for U32OrNull {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            super::de_u32_or_null(d).map(U32OrNull)
        }
    }
    struct When(Option<DateTime<Utc>>);
    impl<'de> Deserialize<'de> for When {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            commcare_datetime::deserialize(d).map(When)
        }
    }

    impl<'de> Deserialize<'de> for Wire {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_map(WireVisitor)
        }
    }

    struct WireVisitor;

    impl<'de> Visitor<'de> for WireVisitor {
        type Value = Wire;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a ChangeMeta JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Wire, A::Error> {
            let mut document_id = None;
            let mut data_source_type = None;
            let mut data_source_name = None;
            let mut meta = ChangeMeta::blank();
            let mut document = None;
            while let Some(field) = map.next_key::<Field>()? {
                match field {
                    Field::DocumentId => document_id = Some(map.next_value::<DocId>()?.0),
                    Field::DocumentRev => meta.document_rev = map.next_value()?,
                    Field::DataSourceType => data_source_type = Some(map.next_value()?),
                    Field::DataSourceName => data_source_name = Some(map.next_value()?),
                    Field::DocumentType => meta.document_type = map.next_value()?,
                    Field::DocumentSubtype => meta.document_subtype = map.next_value()?,
                    Field::Domain => meta.domain = map.next_value()?,
                    Field::IsDeletion => meta.is_deletion = map.next_value::<BoolOrNull>()?.0,
                    Field::PublishTimestamp => {
                        meta.publish_timestamp = map.next_value::<When>()?.0;
                    }
                    Field::Attempts => meta.attempts = map.next_value::<U32OrNull>()?.0,
                    Field::OriginalPublicationDatetime => {
                        meta.original_publication_datetime = map.next_value::<When>()?.0;
                    }
                    Field::AssociatedDocumentId => {
                        meta.associated_document_id = map.next_value()?;
                    }
                    Field::Document => {
                        let raw: Box<RawValue> = map.next_value()?;
                        document = (raw.get() != "null").then_some(raw);
                    }
                    Field::Other(name) => {
                        let value: Value = map.next_value()?;
                        meta.extra.insert(name, value);
                    }
                }
            }
            meta.document_id =
                document_id.ok_or_else(|| de::Error::missing_field("document_id"))?;
            meta.data_source_type =
                data_source_type.ok_or_else(|| de::Error::missing_field("data_source_type"))?;
            meta.data_source_name =
                data_source_name.ok_or_else(|| de::Error::missing_field("data_source_name"))?;
            Ok(Wire { meta, document })
        }
    }
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
    fn a_projection_finds_what_the_whole_document_has() {
        let raw = r#"{"domain": "d", "form": {"meta": {"userID": "u1", "timeEnd": "2020-01-01"},
            "case": [{"@case_id": "c0"}, {"@case_id": "c1", "update": {"x": 1}}], "n": 3.5,
            "esc\"aped": "yes"}, "tags": ["a", "b"], "flag": true, "nothing": null,
            "big": {"skipped": [1, 2, {"deep": [true, null]}]}, "flat.key": 5}"#;
        let full: Value = serde_json::from_str(raw).expect("json");
        let paths = [
            "$.domain",
            "flat.key",
            "form.meta.userID",
            "form.meta",
            "form.case.1.update.x",
            "form.case.0.@case_id",
            "form.case.5.@case_id",
            "form.n",
            "form.n.deeper",
            "form.esc\"aped",
            "tags.1",
            "flag",
            "nothing",
            "missing.path",
            "domain.into_a_string",
        ];
        let projection = Projection::new(paths);
        let doc = EmbeddedDocument::new(RawValue::from_string(raw.to_owned()).expect("raw"));
        let projected = doc.project(&projection);
        for p in paths {
            assert_eq!(
                crate::path::lookup(&projected, p),
                crate::path::lookup(&full, p),
                "{p}"
            );
        }
        assert!(projected.get("big").is_none(), "unnamed parts are not kept");
        // The empty path keeps everything; an already parsed document is returned as is.
        assert_eq!(*doc.project(&Projection::new(["$"])), full);
        let _ = doc.value();
        assert_eq!(*doc.project(&projection), full);
    }

    #[test]
    fn canonical_datetimes_read_fast_as_the_general_parser_reads_them() {
        for s in [
            "2019-09-18T14:31:01.930921Z",
            "2024-02-29T00:00:00.000000Z",
            "1999-12-31T23:59:59.999999Z",
        ] {
            let general = DateTime::parse_from_rfc3339(s).map(|d| d.with_timezone(&Utc));
            assert_eq!(commcare_datetime::parse(s), general.ok(), "{s}");
        }
        // Same length and shape, impossible values: refused by both paths.
        for s in [
            "2019-02-30T14:31:01.930921Z",
            "2019-09-18T24:31:01.930921Z",
            "2019-09-18T14:31:01.9309x1Z",
        ] {
            assert_eq!(commcare_datetime::parse(s), None, "{s}");
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

    /// The one-pass parser agrees with serde's derived (flatten) deserializer on every shape.
    #[test]
    fn hot_path_parser_matches_the_derived_deserializer() {
        let bodies = [
            DOC_EXAMPLE.to_owned(),
            r#"{"document_id": 7, "data_source_type": "couch", "data_source_name": "x", "attempts": null,
                "is_deletion": null, "publish_timestamp": null, "z\u00e9": [1, {"a": null}], "domain": "d"}"#
                .to_owned(),
            r#"{"data_source_name": "n", "document": {"_id": "d", "k": "v\"q"}, "data_source_type": "sql",
                "document_id": "d", "original_publication_datetime": "2020-01-02T03:04:05.123456Z",
                "associated_document_id": "p", "document_rev": "3-x"}"#
                .to_owned(),
            r#"{"document_id": "n", "data_source_type": "t", "data_source_name": "n", "document": null}"#
                .to_owned(),
        ];
        for body in bodies {
            let mut derived: ChangeMeta = serde_json::from_str(&body).expect("derived");
            let derived_doc = derived.extra.remove("document").filter(|d| !d.is_null());
            let (meta, doc) = ChangeMeta::parse(body.as_bytes()).expect("hot path");
            assert_eq!(meta, derived, "{body}");
            assert_eq!(doc, derived_doc, "{body}");
        }
    }

    #[test]
    fn hot_path_parser_rejects_what_the_derived_one_rejects() {
        for body in [
            r#"{"data_source_type": "t", "data_source_name": "n"}"#,
            r#"{"document_id": "", "data_source_type": "t", "data_source_name": "n"}"#,
            r#"{"document_id": "a", "data_source_name": "n"}"#,
            r#"{"document_id": "a", "data_source_type": "t", "data_source_name": "n", "is_deletion": "yes"}"#,
            r#"{"document_id": "a", "data_source_type": "t", "data_source_name": "n", "publish_timestamp": "soon"}"#,
            r#"{"document_id": "a", "data_source_type": "t", "data_source_name": "n", "document": {"x": }"#,
            "[1, 2]",
            r#"{"document_id": "a", "data_source_type": "t", "data_source_name": "n"} trailing"#,
        ] {
            assert!(
                serde_json::from_str::<ChangeMeta>(body).is_err(),
                "derived accepts {body}"
            );
            assert!(
                ChangeMeta::parse(body.as_bytes()).is_err(),
                "hot path accepts {body}"
            );
        }
    }

    #[test]
    fn embedded_document_stays_raw_until_used() {
        let body = r#"{"document_id": "d1", "data_source_type": "sql", "data_source_name": "form-sql",
            "document": {"_id": "d1", "n": 1.5}}"#;
        let c = Change::from_message("t", 0, 1, body.as_bytes()).expect("valid");
        let Document::Embedded(e) = &c.document else {
            panic!("expected an embedded document, got {:?}", c.document)
        };
        assert_eq!(e.raw(), r#"{"_id": "d1", "n": 1.5}"#);
        assert_eq!(c.document().expect("doc")["n"], 1.5);
    }

    /// Bodies the fast reader must take itself (CommCare's producer output and spacing).
    fn fast_path_corpus() -> Vec<String> {
        let mut m = ChangeMeta::new("6f1c0a2e9b8d4c7aa1b2c3d4e5f60718", "sql", "form-sql");
        m.document_type = Some("XFormInstance".into());
        m.document_subtype = Some("http://openrosa.org/formdesigner/5A4B1D5C".into());
        m.domain = Some("dimagi-é".into());
        m.document_rev = Some("3-abc".into());
        m.associated_document_id = Some("case-1".into());
        m.attempts = 3;
        m.is_deletion = true;
        let minimal = ChangeMeta {
            publish_timestamp: None,
            original_publication_datetime: None,
            ..ChangeMeta::new("d", "couch", "commcarehq")
        };
        vec![
            m.to_json(),
            serde_json::to_string_pretty(&m).expect("json"),
            minimal.to_json(),
            DOC_EXAMPLE.to_owned(),
            r#" { "document_id" : "a" , "data_source_type":"t","data_source_name":"n",
               "is_deletion": null, "attempts": null, "publish_timestamp": null,
               "document_rev": null, "domain": "d", "domain": "again" } "#
                .to_owned(),
            r#"{"document_id": "a", "data_source_type": "t", "data_source_name": "n",
               "publish_timestamp": "2019-09-18T14:31:01Z", "attempts": 4294967295}"#
                .to_owned(),
            // Embedded documents, anywhere in the object; `null` means none.
            r#"{"document_id": "d1", "document": {"_id": "d1", "n": [1.5, "x\"y", {}], "e": ""},
               "data_source_type": "sql", "data_source_name": "form-sql", "domain": "d"}"#
                .to_owned(),
            r#"{"document_id":"d1","data_source_type":"sql","data_source_name":"form-sql","document":null}"#
                .to_owned(),
            r#"{"document_id":"d1","data_source_type":"sql","data_source_name":"form-sql","document" : "text" }"#
                .to_owned(),
        ]
    }

    /// The fast reader agrees with the general one wherever it answers.
    fn assert_agrees(body: &str) -> bool {
        let Some((fast, fast_doc)) = fast::parse(body) else {
            return false;
        };
        let general: wire::Wire = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("the fast reader accepted {body:?}, which is invalid: {e}"));
        assert_eq!(fast, general.meta, "the readers disagree on {body:?}");
        assert_eq!(
            fast_doc.as_deref().map(RawValue::get),
            general.document.as_deref().map(RawValue::get),
            "the readers disagree on the document of {body:?}"
        );
        true
    }

    #[test]
    fn the_fast_reader_takes_commcare_messages_and_agrees_with_the_general_one() {
        for body in fast_path_corpus() {
            assert!(assert_agrees(&body), "the fast reader declined {body}");
            let (meta, doc) = ChangeMeta::parse(body.as_bytes()).expect("valid");
            let general = serde_json::from_str::<wire::Wire>(&body).expect("valid");
            assert_eq!(meta, general.meta);
            let general_doc = general
                .document
                .map(|d| serde_json::from_str::<Value>(d.get()));
            assert_eq!(doc, general_doc.transpose().expect("a document"));
        }
    }

    #[test]
    fn the_fast_reader_leaves_every_other_shape_to_the_general_one() {
        for body in [
            // Valid, but not the fast shape.
            r#"{"document_id": 12, "data_source_type": "t", "data_source_name": "n"}"#,
            r#"{"document_id": "a\"b", "data_source_type": "t", "data_source_name": "n"}"#,
            r#"{"document_id": "a", "data_source_type": "t", "data_source_name": "n", "x": 1}"#,
            r#"{"document_id": "a", "data_source_type": "t", "data_source_name": "n", "attempts": 1.0}"#,
            // Invalid.
            r#"{"document_id": "", "data_source_type": "t", "data_source_name": "n"}"#,
            r#"{"document_id": "a", "data_source_type": "t"}"#,
            r#"{"document_id": "a", "data_source_type": null, "data_source_name": "n"}"#,
            r#"{"document_id": "a", "data_source_type": "t", "data_source_name": "n",}"#,
            r#"{"document_id": "a", "data_source_type": "t", "data_source_name": "n", "attempts": 01}"#,
            r#"{"document_id": "a", "data_source_type": "t", "data_source_name": "n", "attempts": 4294967296}"#,
            r#"{"document_id": "a", "data_source_type": "t", "data_source_name": "n"} x"#,
            r#"{"document_id": "a	b", "data_source_type": "t", "data_source_name": "n"}"#,
            r#"{"document_id": "a", "data_source_type": "t", "data_source_name": "n", "is_deletion": nul}"#,
            r#"{"document_id": "a", "data_source_type": "t", "data_source_name": "n", "publish_timestamp": "2019-02-30T14:31:01.930921Z"}"#,
        ] {
            assert!(fast::parse(body).is_none(), "the fast reader took {body}");
        }
    }

    #[test]
    fn the_fast_reader_never_accepts_what_the_general_one_rejects_or_reads_otherwise() {
        // Mutations of every fast-path body: bytes deleted, replaced and inserted, from a
        // JSON-heavy alphabet with control characters and multi-byte ones. Whatever the fast
        // reader accepts must be valid JSON, and read the same.
        use rand::{Rng, SeedableRng};
        let alphabet = b"{}[]\":, \n\t\\0123456789.eE-+tfnulrsaZT_\x00\x1f\x7f\xc3\xa9";
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let (mut tried, mut taken) = (0, 0);
        for body in fast_path_corpus() {
            for _ in 0..4000 {
                let mut bytes = body.clone().into_bytes();
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..bytes.len());
                    let c = alphabet[rng.random_range(0..alphabet.len())];
                    match rng.random_range(0..3) {
                        0 => {
                            bytes.remove(at);
                        }
                        1 => bytes[at] = c,
                        _ => bytes.insert(at, c),
                    }
                }
                // Not UTF-8: rejected before either reader runs (`parse_raw`).
                let Ok(text) = String::from_utf8(bytes) else {
                    continue;
                };
                tried += 1;
                if assert_agrees(&text) {
                    taken += 1;
                }
            }
        }
        // Both outcomes were exercised (most mutations leave a value's text intact).
        assert!(
            tried > 20_000 && taken > 1_000 && taken < tried,
            "{taken} of {tried}"
        );
    }
}
