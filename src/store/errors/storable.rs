//! Error rows as PostgreSQL can store them, whatever the failed change carried.
//!
//! An error row must never be the reason a pillow stops: the change it describes may hold bytes
//! PostgreSQL refuses (a NUL character in a `text` or `varchar` column, `\u0000` in `jsonb`), an
//! id longer than CommCare's `varchar(255)` columns, or a traceback of megabytes. Every row the
//! PostgreSQL store writes goes through [`storable`]; a row that still fails for a reason tied to
//! its content goes in as [`minimal`] (the id, the error type, a note with PostgreSQL's own
//! message and the start of the traceback).
//!
//! A NUL character is written as the four characters `\x00` (so an operator sees where it was);
//! an id longer than the column is cut and given a hash of the whole id, so distinct ids stay
//! distinct rows.

use std::borrow::Cow;

use serde_json::Value;

use super::ErrorRecord;

/// CommCare's `varchar(255)` columns: `doc_id`, `pillow`, `error_type` (characters, not bytes).
pub const MAX_COLUMN_CHARS: usize = 255;
/// Longest traceback stored; the rest is replaced by a note of how much was cut.
pub const MAX_TRACEBACK_BYTES: usize = 256 * 1024;
/// Traceback kept in a [`minimal`] row.
const MINIMAL_TRACEBACK_BYTES: usize = 8 * 1024;

/// What a NUL character becomes.
const NUL_TEXT: &str = "\\x00";

/// `s` without NUL characters.
pub fn without_nul(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', NUL_TEXT))
    } else {
        Cow::Borrowed(s)
    }
}

/// `s` cleaned and at most [`MAX_COLUMN_CHARS`] characters; a longer one is cut and ends with
/// `~` and 16 hex digits of a hash of the whole value.
pub fn column_text(s: &str) -> Cow<'_, str> {
    let clean = without_nul(s);
    if clean.chars().count() <= MAX_COLUMN_CHARS {
        return clean;
    }
    let hash = crate::hash::fnv1a(s.as_bytes());
    let keep: String = clean.chars().take(MAX_COLUMN_CHARS - 17).collect();
    Cow::Owned(format!("{keep}~{hash:016x}"))
}

/// `s` cleaned and cut to at most `max` bytes (at a character boundary), with a note of the cut.
pub fn truncated(s: &str, max: usize) -> Cow<'_, str> {
    let clean = without_nul(s);
    if clean.len() <= max {
        return clean;
    }
    let mut end = max;
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!(
        "{}\n… ({} more bytes not stored)",
        &clean[..end],
        clean.len() - end
    ))
}

/// `v` with NUL characters replaced in every string and key, or `None` when it has none.
pub fn json_without_nul(v: &Value) -> Option<Value> {
    fn has_nul(v: &Value) -> bool {
        match v {
            Value::String(s) => s.contains('\0'),
            Value::Array(a) => a.iter().any(has_nul),
            Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
            _ => false,
        }
    }
    fn clean(v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(without_nul(s).into_owned()),
            Value::Array(a) => Value::Array(a.iter().map(clean).collect()),
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| (without_nul(k).into_owned(), clean(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
    has_nul(v).then(|| clean(v))
}

/// JSON text without `\u0000` escapes (which `jsonb` refuses), re-serialised only when needed.
pub fn json_text_without_nul(text: String) -> String {
    if !text.contains("\\u0000") {
        return text;
    }
    match serde_json::from_str::<Value>(&text) {
        Ok(v) => json_without_nul(&v).map_or(text, |v| v.to_string()),
        Err(_) => text.replace("\\u0000", NUL_TEXT),
    }
}

/// The record as PostgreSQL can store it (borrowed when nothing needed changing). The metadata
/// is cleaned where it is serialised, once ([`metadata_json`]).
pub fn storable(r: &ErrorRecord) -> Cow<'_, ErrorRecord> {
    let doc_id = column_text(&r.doc_id);
    let pillow = column_text(&r.pillow);
    let error_type = column_text(&r.error_type);
    let traceback = truncated(&r.traceback, MAX_TRACEBACK_BYTES);
    let change = json_without_nul(&r.change);
    let processor_unchanged = r
        .processor
        .as_deref()
        .is_none_or(|p| matches!(column_text(p), Cow::Borrowed(_)));
    let unchanged = processor_unchanged
        && matches!(
            (&doc_id, &pillow, &error_type, &traceback),
            (
                Cow::Borrowed(_),
                Cow::Borrowed(_),
                Cow::Borrowed(_),
                Cow::Borrowed(_)
            )
        )
        && change.is_none();
    if unchanged {
        return Cow::Borrowed(r);
    }
    Cow::Owned(ErrorRecord {
        doc_id: doc_id.into_owned(),
        pillow: pillow.into_owned(),
        error_type: error_type.into_owned(),
        traceback: traceback.into_owned(),
        change: change.unwrap_or_else(|| r.change.clone()),
        metadata: r.metadata.clone(),
        attempts: r.attempts,
        processor: r.processor.as_deref().map(|p| column_text(p).into_owned()),
    })
}

/// The metadata column's text for `r`, without `\u0000`.
pub fn metadata_json(r: &ErrorRecord) -> Option<String> {
    r.metadata
        .as_ref()
        .map(|m| json_text_without_nul(m.to_json()))
}

/// The smallest row that still says what failed, for a record PostgreSQL refused as it was:
/// the (cleaned) id and error type, a note with PostgreSQL's message, the start of the
/// traceback, the change's scalar fields, no metadata.
pub fn minimal(r: &ErrorRecord, refused_because: &str) -> ErrorRecord {
    let change = match &r.change {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| matches!(v, Value::Bool(_) | Value::Number(_) | Value::String(_)))
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => Value::String(column_text(s).into_owned()),
                        other => other.clone(),
                    };
                    (column_text(k).into_owned(), v)
                })
                .collect(),
        ),
        _ => serde_json::json!({"id": column_text(&r.doc_id)}),
    };
    ErrorRecord {
        doc_id: column_text(&r.doc_id).into_owned(),
        pillow: column_text(&r.pillow).into_owned(),
        error_type: column_text(&r.error_type).into_owned(),
        traceback: format!(
            "pillowtop_rs stored this error row shortened: PostgreSQL refused it as it was ({}).\n{}",
            truncated(refused_because, 1024),
            truncated(&r.traceback, MINIMAL_TRACEBACK_BYTES)
        ),
        change,
        metadata: None,
        attempts: r.attempts,
        processor: r.processor.as_deref().map(|p| column_text(p).into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(doc_id: &str, traceback: &str, change: Value) -> ErrorRecord {
        ErrorRecord {
            doc_id: doc_id.into(),
            pillow: "p".into(),
            error_type: "builtins.ValueError".into(),
            traceback: traceback.into(),
            change,
            metadata: None,
            attempts: 1,
            processor: None,
        }
    }

    #[test]
    fn a_clean_record_is_borrowed() {
        let r = record("doc-1", "boom", serde_json::json!({"id": "doc-1"}));
        assert!(matches!(storable(&r), Cow::Borrowed(_)));
    }

    #[test]
    fn nul_characters_become_visible_text_everywhere() {
        let r = record(
            "doc\0-1",
            "bad \0 value",
            serde_json::json!({"id": "doc\0-1", "k\0": ["x\0"]}),
        );
        let s = storable(&r);
        assert_eq!(s.doc_id, "doc\\x00-1");
        assert_eq!(s.traceback, "bad \\x00 value");
        assert_eq!(
            s.change,
            serde_json::json!({"id": "doc\\x00-1", "k\\x00": ["x\\x00"]})
        );
        assert!(!s.change.to_string().contains("\\u0000"));
    }

    #[test]
    fn long_ids_are_cut_and_stay_distinct() {
        let a = "a".repeat(300);
        let b = format!("{}b", "a".repeat(299));
        let (ca, cb) = (column_text(&a), column_text(&b));
        assert_eq!(ca.chars().count(), MAX_COLUMN_CHARS);
        assert_eq!(cb.chars().count(), MAX_COLUMN_CHARS);
        assert_ne!(ca, cb);
        // Characters, not bytes: 255 two-byte characters fit.
        let wide = "é".repeat(255);
        assert_eq!(column_text(&wide), wide);
    }

    #[test]
    fn huge_tracebacks_are_truncated_at_a_char_boundary() {
        let tb = "é".repeat(MAX_TRACEBACK_BYTES);
        let t = truncated(&tb, MAX_TRACEBACK_BYTES);
        assert!(t.len() < MAX_TRACEBACK_BYTES + 100);
        assert!(t.ends_with("more bytes not stored)"));
    }

    #[test]
    fn metadata_text_loses_nul_escapes() {
        let text = r#"{"document_id":"a\u0000b","domain":"d"}"#.to_owned();
        let clean = json_text_without_nul(text);
        assert_eq!(clean, r#"{"document_id":"a\\x00b","domain":"d"}"#);
        let untouched = r#"{"domain":"d"}"#.to_owned();
        assert_eq!(json_text_without_nul(untouched.clone()), untouched);
    }

    #[test]
    fn minimal_keeps_scalars_and_names_the_refusal() {
        let r = record(
            "doc-1",
            &"x".repeat(100_000),
            serde_json::json!({"id": "doc-1", "seq": 7, "doc": {"big": true}}),
        );
        let m = minimal(&r, "value too long for type character varying(255)");
        assert_eq!(m.change, serde_json::json!({"id": "doc-1", "seq": 7}));
        assert!(m.traceback.contains("value too long"));
        assert!(m.traceback.len() < 10_000);
        assert!(m.metadata.is_none());
    }
}
