//! From changes to typed rows: what each change does to the table (upsert a row, delete a row,
//! or nothing until its document is found), with every value converted to its column's type in
//! Rust, so that one bad value fails one change, never a whole statement.
//!
//! No I/O here. [`SqlValue`] implements `ToSql`, so the same values serve typed parameters,
//! `unnest` arrays and binary `COPY`.

use std::collections::HashMap;
use std::error::Error as StdError;

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde_json::Value;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use super::config::{ChangeField, ColumnType, TableDefinition};
use crate::change::{format_datetime, Change, Document, Projection};
use crate::path::CompiledPath;
use crate::processor::ProcessorFailure;

/// The `error_type` of a conversion or write failure.
pub const POSTGRES_ERROR: &str = "pillowtop_rs.exceptions.PostgresError";

/// One typed SQL value.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Text(String),
    Integer(i32),
    Bigint(i64),
    Numeric(PgNumeric),
    Boolean(bool),
    Date(NaiveDate),
    Timestamptz(DateTime<Utc>),
    /// A `jsonb` value as its JSON text, serialised once from the document (no copy of the
    /// parsed value, which would be built, then freed, for every row).
    Jsonb(Box<str>),
}

impl SqlValue {
    /// Appends an unambiguous text form (for primary-key de-duplication).
    fn push_key(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = match self {
            Self::Null => write!(out, "N;"),
            Self::Text(s) => write!(out, "T{}:{s};", s.len()),
            Self::Integer(i) => write!(out, "I{i};"),
            Self::Bigint(i) => write!(out, "B{i};"),
            Self::Numeric(n) => write!(out, "D{n:?};"),
            Self::Boolean(b) => write!(out, "b{b};"),
            Self::Date(d) => write!(out, "d{d};"),
            Self::Timestamptz(t) => write!(out, "t{};", t.timestamp_micros()),
            Self::Jsonb(v) => write!(out, "J{v};"),
        };
    }
}

impl ToSql for SqlValue {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match self {
            Self::Null => Ok(IsNull::Yes),
            Self::Text(s) => s.to_sql(ty, out),
            Self::Integer(i) => i.to_sql(ty, out),
            Self::Bigint(i) => i.to_sql(ty, out),
            Self::Numeric(n) => {
                n.write(out);
                Ok(IsNull::No)
            }
            Self::Boolean(b) => b.to_sql(ty, out),
            Self::Date(d) => d.to_sql(ty, out),
            Self::Timestamptz(t) => t.to_sql(ty, out),
            Self::Jsonb(text) => {
                // jsonb's binary form: a version byte, then the text; json's: the text.
                if *ty == Type::JSONB {
                    out.put_u8(1);
                }
                out.put_slice(text.as_bytes());
                Ok(IsNull::No)
            }
        }
    }

    // The statements cast every parameter to its column's type, and values are converted for
    // that type, so the declared type always fits.
    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// A decimal in PostgreSQL's binary `numeric` form: base-10000 digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgNumeric {
    weight: i16,
    negative: bool,
    dscale: u16,
    digits: Vec<i16>,
}

/// The largest decimal exponent we accept (PostgreSQL's own limits are far larger; documents
/// with more are almost certainly not numbers).
const MAX_EXPONENT: i64 = 1000;

impl PgNumeric {
    /// Parses `[+-]digits[.digits][e[+-]digits]`; `None` for anything else (including NaN and
    /// infinities, which a reporting column should not receive).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let (negative, s) = match s.as_bytes().first()? {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        let (mantissa, exp) = match s.find(['e', 'E']) {
            Some(i) => (&s[..i], s[i + 1..].parse::<i64>().ok()?),
            None => (s, 0),
        };
        if exp.abs() > MAX_EXPONENT {
            return None;
        }
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if (int.is_empty() && frac.is_empty())
            || !int.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        // Shift the decimal point by the exponent.
        let all: String = format!("{int}{frac}");
        let point = i64::try_from(int.len()).ok()? + exp;
        let (int_digits, frac_digits): (String, String) = if point <= 0 {
            let zeros = usize::try_from(-point).ok()?;
            (String::new(), format!("{}{all}", "0".repeat(zeros)))
        } else {
            let p = usize::try_from(point).ok()?;
            if p >= all.len() {
                (format!("{all}{}", "0".repeat(p - all.len())), String::new())
            } else {
                (all[..p].to_owned(), all[p..].to_owned())
            }
        };
        let dscale = u16::try_from(frac_digits.len()).ok()?;
        let int_digits = int_digits.trim_start_matches('0');
        let int_pad = (4 - int_digits.len() % 4) % 4;
        let int_padded = format!("{}{int_digits}", "0".repeat(int_pad));
        let frac_pad = (4 - frac_digits.len() % 4) % 4;
        let frac_padded = format!("{frac_digits}{}", "0".repeat(frac_pad));
        let group = |s: &str| -> Vec<i16> {
            s.as_bytes()
                .chunks(4)
                .map(|c| c.iter().fold(0i16, |acc, b| acc * 10 + i16::from(b - b'0')))
                .collect()
        };
        let mut digits = group(&int_padded);
        let mut weight = i64::try_from(digits.len()).ok()? - 1;
        digits.extend(group(&frac_padded));
        // Strip leading and trailing zero groups.
        let lead = digits.iter().take_while(|d| **d == 0).count();
        digits.drain(..lead);
        weight -= i64::try_from(lead).ok()?;
        while digits.last() == Some(&0) {
            digits.pop();
        }
        if digits.is_empty() {
            weight = 0;
        }
        Some(Self {
            weight: i16::try_from(weight).ok()?,
            negative: negative && !digits.is_empty(),
            dscale,
            digits,
        })
    }

    fn write(&self, out: &mut BytesMut) {
        // At most ~500 groups (MAX_EXPONENT and the u16 scale bound it).
        out.put_i16(i16::try_from(self.digits.len()).unwrap_or(i16::MAX));
        out.put_i16(self.weight);
        out.put_u16(if self.negative { 0x4000 } else { 0 });
        out.put_u16(self.dscale);
        for d in &self.digits {
            out.put_i16(*d);
        }
    }
}

/// What one change does to the table.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Insert or update this row (values in column order).
    Upsert(Vec<SqlValue>),
    /// Delete the row with these primary-key values (in primary-key order).
    Delete(Vec<SqlValue>),
    /// The document is missing: retry the change serially (CommCare's semantics), where it
    /// becomes a `DocumentMissingError`.
    Missing,
}

/// Where a column's value comes from, resolved once.
#[derive(Debug, Clone)]
enum Source {
    Path(CompiledPath),
    Change(ChangeField),
}

/// The rows of one chunk, de-duplicated by primary key (the last change of a key wins).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct EncodedChunk {
    pub upserts: Vec<Vec<SqlValue>>,
    pub deletes: Vec<Vec<SqlValue>>,
    /// Indices of changes whose document is missing.
    pub missing: Vec<usize>,
    pub errors: Vec<(usize, ProcessorFailure)>,
}

/// Converts changes into [`Action`]s for one table.
#[derive(Debug, Clone)]
pub struct Encoder {
    label: String,
    sources: Vec<(String, ColumnType, Source)>,
    /// Indices into `sources` of the primary-key columns, in primary-key order.
    pk: Vec<usize>,
    /// Every document path the columns and the filter read.
    projection: Projection,
    /// The filter's paths, compiled: `equals` and `one_of`.
    equals: Vec<(CompiledPath, Value)>,
    one_of: Vec<(CompiledPath, Vec<Value>)>,
}

impl Encoder {
    /// An encoder for a validated definition.
    pub fn new(def: &TableDefinition) -> Self {
        let sources: Vec<(String, ColumnType, Source)> = def
            .columns
            .iter()
            .map(|c| {
                let src = match (&c.path, c.change) {
                    (_, Some(f)) => Source::Change(f),
                    (Some(p), None) => Source::Path(CompiledPath::new(p)),
                    (None, None) => Source::Path(CompiledPath::new("")), // rejected by validate()
                };
                (c.name.clone(), c.column_type, src)
            })
            .collect();
        let pk = def
            .primary_key
            .iter()
            .filter_map(|k| sources.iter().position(|(n, _, _)| n == k))
            .collect();
        let projection = Projection::new(
            sources
                .iter()
                .filter_map(|(_, _, src)| match src {
                    Source::Path(p) => Some(p.as_str()),
                    Source::Change(_) => None,
                })
                .chain(def.filter.equals.keys().map(String::as_str))
                .chain(def.filter.one_of.keys().map(String::as_str)),
        );
        Self {
            label: def.label(),
            sources,
            pk,
            projection,
            equals: def
                .filter
                .equals
                .iter()
                .map(|(p, v)| (CompiledPath::new(p), v.clone()))
                .collect(),
            one_of: def
                .filter
                .one_of
                .iter()
                .map(|(p, vs)| (CompiledPath::new(p), vs.clone()))
                .collect(),
        }
    }

    /// Whether the definition's filter keeps `doc` ([`TableDefinition::matches`]).
    fn matches(&self, doc: &Value) -> bool {
        self.equals
            .iter()
            .all(|(p, v)| p.lookup(doc).is_some_and(|d| d == v))
            && self
                .one_of
                .iter()
                .all(|(p, vs)| p.lookup(doc).is_some_and(|d| vs.contains(d)))
    }

    /// The primary-key column indices (into the column list), in primary-key order.
    pub fn primary_key(&self) -> &[usize] {
        &self.pk
    }

    fn failure(
        &self,
        change: &Change,
        column: &str,
        ty: ColumnType,
        why: &str,
    ) -> ProcessorFailure {
        ProcessorFailure::new(
            POSTGRES_ERROR,
            format!(
                "table {}, column {column}, document {}: {why} (column type {})",
                self.label,
                change.id,
                ty.sql()
            ),
        )
    }

    fn value(
        &self,
        change: &Change,
        doc: Option<&Value>,
        i: usize,
    ) -> Result<SqlValue, ProcessorFailure> {
        let (name, ty, src) = &self.sources[i];
        let owned;
        let v: Option<&Value> = match src {
            Source::Path(p) => doc.and_then(|d| p.lookup(d)),
            Source::Change(f) => {
                owned = change_value(change, *f);
                Some(&owned)
            }
        };
        match v {
            None | Some(Value::Null) => Ok(SqlValue::Null),
            Some(v) => convert(v, *ty).map_err(|why| self.failure(change, name, *ty, &why)),
        }
    }

    /// What `change` does to the table.
    pub fn encode(&self, change: &Change) -> Result<Action, ProcessorFailure> {
        let projected;
        let doc = match &change.document {
            _ if change.deleted => None,
            Document::Known(Some(d)) => Some(d),
            // Only the columns' and the filter's paths are read (measured: parsing whole
            // documents was most of the encoding time).
            Document::Embedded(e) => {
                projected = e.project(&self.projection);
                Some(&*projected)
            }
            Document::Known(None) | Document::Unfetched => return Ok(Action::Missing),
        };
        match doc {
            Some(d) if self.matches(d) => {
                let row = (0..self.sources.len())
                    .map(|i| self.value(change, Some(d), i))
                    .collect::<Result<Vec<_>, _>>()?;
                self.check_pk(change, self.pk.iter().map(|&i| &row[i]))?;
                Ok(Action::Upsert(row))
            }
            _ => {
                let key = self
                    .pk
                    .iter()
                    .map(|&i| self.value(change, None, i))
                    .collect::<Result<Vec<_>, _>>()?;
                self.check_pk(change, key.iter())?;
                Ok(Action::Delete(key))
            }
        }
    }

    fn check_pk<'a>(
        &self,
        change: &Change,
        mut key: impl Iterator<Item = &'a SqlValue>,
    ) -> Result<(), ProcessorFailure> {
        if let Some(pos) = key.position(|v| *v == SqlValue::Null) {
            let (name, ty, _) = &self.sources[self.pk[pos]];
            return Err(self.failure(change, name, *ty, "the primary key value is missing"));
        }
        Ok(())
    }

    /// The primary key of a row action in an unambiguous text form (for de-duplication across
    /// changes); `None` for [`Action::Missing`].
    pub fn key(&self, action: &Action) -> Option<String> {
        let mut key = String::new();
        match action {
            Action::Missing => return None,
            Action::Upsert(row) => self.pk.iter().for_each(|&k| row[k].push_key(&mut key)),
            Action::Delete(values) => values.iter().for_each(|v| v.push_key(&mut key)),
        }
        Some(key)
    }

    /// Encodes a de-duplicated chunk: one row action per primary key (the last change wins).
    pub fn encode_chunk(&self, changes: &[Change]) -> EncodedChunk {
        let mut out = EncodedChunk::default();
        // key → (is_upsert, index into upserts/deletes)
        let mut seen: HashMap<String, (bool, usize)> = HashMap::with_capacity(changes.len());
        let mut dropped_upserts = Vec::new();
        let mut dropped_deletes = Vec::new();
        for (i, change) in changes.iter().enumerate() {
            let action = match self.encode(change) {
                Ok(a) => a,
                Err(f) => {
                    out.errors.push((i, f));
                    continue;
                }
            };
            let Some(key) = self.key(&action) else {
                out.missing.push(i);
                continue;
            };
            let is_upsert = matches!(action, Action::Upsert(_));
            let slot = if is_upsert {
                out.upserts.len()
            } else {
                out.deletes.len()
            };
            if let Some((was_upsert, at)) = seen.insert(key, (is_upsert, slot)) {
                if was_upsert {
                    dropped_upserts.push(at);
                } else {
                    dropped_deletes.push(at);
                }
            }
            match action {
                Action::Upsert(row) => out.upserts.push(row),
                Action::Delete(key) => out.deletes.push(key),
                Action::Missing => {}
            }
        }
        remove_indices(&mut out.upserts, dropped_upserts);
        remove_indices(&mut out.deletes, dropped_deletes);
        out
    }
}

fn remove_indices<T>(v: &mut Vec<T>, mut drop: Vec<usize>) {
    if drop.is_empty() {
        return;
    }
    drop.sort_unstable();
    let mut k = 0;
    let mut i = 0;
    v.retain(|_| {
        let keep = drop.get(k) != Some(&i);
        if !keep {
            k += 1;
        }
        i += 1;
        keep
    });
}

fn change_value(change: &Change, f: ChangeField) -> Value {
    match f {
        ChangeField::Id => Value::String(change.id.clone()),
        ChangeField::Topic => Value::String(change.topic.clone()),
        ChangeField::Partition => Value::from(change.partition),
        ChangeField::Offset => Value::from(change.offset),
        ChangeField::Domain => change
            .metadata
            .domain
            .clone()
            .map_or(Value::Null, Value::String),
        ChangeField::DocumentType => change
            .metadata
            .document_type
            .clone()
            .map_or(Value::Null, Value::String),
        ChangeField::PublishTimestamp => change
            .metadata
            .publish_timestamp
            .map_or(Value::Null, |t| Value::String(format_datetime(&t))),
    }
}

/// At most this many characters of a bad value go into an error message.
const SHOWN_VALUE_CHARS: usize = 120;

fn shown(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > SHOWN_VALUE_CHARS {
        format!("{}…", s.chars().take(SHOWN_VALUE_CHARS).collect::<String>())
    } else {
        s
    }
}

fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// PostgreSQL's `date` and `timestamptz` ranges (years), within chrono's.
const MIN_YEAR: i32 = -4712;
const MAX_YEAR: i32 = 294_275;

/// Converts one JSON value (not null) to a column type. Empty strings are NULL for every type
/// but text (CommCare forms send "" for unanswered questions).
pub fn convert(v: &Value, ty: ColumnType) -> Result<SqlValue, String> {
    let bad = || format!("cannot convert {} to {}", shown(v), ty.sql());
    if let Value::String(s) = v {
        if s.is_empty() && ty != ColumnType::Text {
            return Ok(SqlValue::Null);
        }
    }
    Ok(match ty {
        ColumnType::Text => match v {
            Value::String(s) if s.contains('\0') => {
                return Err(format!("{} contains a NUL character", shown(v)))
            }
            Value::String(s) => SqlValue::Text(s.clone()),
            Value::Number(n) => SqlValue::Text(n.to_string()),
            Value::Bool(b) => SqlValue::Text(b.to_string()),
            _ => return Err(bad()),
        },
        ColumnType::Integer => SqlValue::Integer(
            integer(v)
                .and_then(|i| i32::try_from(i).ok())
                .ok_or_else(bad)?,
        ),
        ColumnType::Bigint => SqlValue::Bigint(integer(v).ok_or_else(bad)?),
        ColumnType::Numeric => SqlValue::Numeric(
            match v {
                Value::Number(n) => PgNumeric::parse(&n.to_string()),
                Value::String(s) => PgNumeric::parse(s),
                _ => None,
            }
            .ok_or_else(bad)?,
        ),
        ColumnType::Boolean => SqlValue::Boolean(match v {
            Value::Bool(b) => *b,
            Value::Number(n) if n.as_i64() == Some(0) => false,
            Value::Number(n) if n.as_i64() == Some(1) => true,
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "t" | "yes" | "y" | "1" => true,
                "false" | "f" | "no" | "n" | "0" => false,
                _ => return Err(bad()),
            },
            _ => return Err(bad()),
        }),
        ColumnType::Date => {
            let s = v.as_str().ok_or_else(bad)?.trim();
            let d = NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .or_else(|| crate::change::commcare_datetime::parse(s).map(|t| t.date_naive()))
                .ok_or_else(bad)?;
            if !(MIN_YEAR..=MAX_YEAR).contains(&d.year()) {
                return Err(format!("{} is out of the date range", shown(v)));
            }
            SqlValue::Date(d)
        }
        ColumnType::Timestamptz => {
            let s = v.as_str().ok_or_else(bad)?.trim();
            let t = crate::change::commcare_datetime::parse(s)
                .or_else(|| {
                    NaiveDate::parse_from_str(s, "%Y-%m-%d")
                        .ok()
                        .and_then(|d| d.and_hms_opt(0, 0, 0))
                        .map(|n| n.and_utc())
                })
                .ok_or_else(bad)?;
            if !(MIN_YEAR..=MAX_YEAR).contains(&t.year()) {
                return Err(format!("{} is out of the timestamp range", shown(v)));
            }
            SqlValue::Timestamptz(t)
        }
        ColumnType::Jsonb => {
            if has_nul(v) {
                return Err(format!(
                    "{} contains a NUL character, which jsonb cannot store",
                    shown(v)
                ));
            }
            SqlValue::Jsonb(
                serde_json::to_string(v)
                    .unwrap_or_default()
                    .into_boxed_str(),
            )
        }
    })
}

fn integer(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            let f = n.as_f64()?;
            // 3.0 is an integer; 3.5 is not.
            #[allow(clippy::cast_possible_truncation)]
            (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::ChangeMeta;
    use crate::processor::postgres::config::ColumnDefinition;
    use serde_json::json;

    fn numeric_bytes(s: &str) -> Vec<u8> {
        let mut b = BytesMut::new();
        PgNumeric::parse(s).expect("parses").write(&mut b);
        b.to_vec()
    }

    #[test]
    fn numeric_binary_form() {
        let n = PgNumeric::parse("12345.6").expect("parses");
        assert_eq!(n.digits, vec![1, 2345, 6000]);
        assert_eq!((n.weight, n.dscale, n.negative), (1, 1, false));
        let n = PgNumeric::parse("-0.0001").expect("parses");
        assert_eq!(
            (n.digits.clone(), n.weight, n.dscale, n.negative),
            (vec![1], -1, 4, true)
        );
        let n = PgNumeric::parse("1.5e3").expect("parses");
        assert_eq!((n.digits.clone(), n.weight, n.dscale), (vec![1500], 0, 0));
        let n = PgNumeric::parse("15e-3").expect("parses");
        assert_eq!((n.digits.clone(), n.weight, n.dscale), (vec![150], -1, 3));
        let n = PgNumeric::parse("-0.00").expect("parses");
        assert_eq!(
            (n.digits.len(), n.weight, n.dscale, n.negative),
            (0, 0, 2, false)
        );
        let n = PgNumeric::parse("100000000").expect("parses");
        assert_eq!((n.digits.clone(), n.weight), (vec![1], 2));
        assert_eq!(
            numeric_bytes("10.5"),
            vec![0, 2, 0, 0, 0, 0, 0, 1, 0, 10, 0x13, 0x88]
        );
        for bad in [
            "", "-", ".", "1.2.3", "abc", "1e", "NaN", "inf", "1e5000", "0x10",
        ] {
            assert!(PgNumeric::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn conversions() {
        assert_eq!(
            convert(&json!("42"), ColumnType::Integer),
            Ok(SqlValue::Integer(42))
        );
        assert_eq!(
            convert(&json!(3.0), ColumnType::Bigint),
            Ok(SqlValue::Bigint(3))
        );
        assert!(convert(&json!(3.5), ColumnType::Integer).is_err());
        assert!(convert(&json!(3_000_000_000_i64), ColumnType::Integer).is_err());
        assert_eq!(convert(&json!(""), ColumnType::Integer), Ok(SqlValue::Null));
        assert_eq!(
            convert(&json!(""), ColumnType::Text),
            Ok(SqlValue::Text(String::new()))
        );
        assert_eq!(
            convert(&json!(7), ColumnType::Text),
            Ok(SqlValue::Text("7".into()))
        );
        assert!(convert(&json!({"a": 1}), ColumnType::Text).is_err());
        assert!(convert(&json!("a\u{0}b"), ColumnType::Text).is_err());
        assert!(convert(&json!({"a": "\u{0}"}), ColumnType::Jsonb).is_err());
        // jsonb: its compact text, written in jsonb's binary form (version 1, then the text).
        let v =
            convert(&json!({"b": [1, "x"], "a": {"c": null}}), ColumnType::Jsonb).expect("jsonb");
        let text = serde_json::to_string(&json!({"b": [1, "x"], "a": {"c": null}})).expect("text");
        assert_eq!(v, SqlValue::Jsonb(text.clone().into_boxed_str()));
        let mut out = BytesMut::new();
        v.to_sql(&Type::JSONB, &mut out).expect("to_sql");
        assert_eq!(out[0], 1);
        assert_eq!(&out[1..], text.as_bytes());
        assert_eq!(
            convert(&json!("Yes"), ColumnType::Boolean),
            Ok(SqlValue::Boolean(true))
        );
        assert!(convert(&json!("maybe"), ColumnType::Boolean).is_err());
        assert_eq!(
            convert(&json!("2024-02-29"), ColumnType::Date),
            Ok(SqlValue::Date(
                NaiveDate::from_ymd_opt(2024, 2, 29).expect("date")
            ))
        );
        assert_eq!(
            convert(&json!("2024-02-29T23:30:00-02:00"), ColumnType::Date),
            Ok(SqlValue::Date(
                NaiveDate::from_ymd_opt(2024, 3, 1).expect("date")
            ))
        );
        assert!(convert(&json!("2024-02-30"), ColumnType::Date).is_err());
        let t = convert(
            &json!("2024-01-02T03:04:05.123456Z"),
            ColumnType::Timestamptz,
        )
        .expect("ts");
        assert!(matches!(t, SqlValue::Timestamptz(t) if t.timestamp_subsec_micros() == 123_456));
        let e = convert(&json!("not a date"), ColumnType::Timestamptz).expect_err("bad");
        assert!(e.contains("\"not a date\""), "{e}");
    }

    fn table() -> TableDefinition {
        TableDefinition {
            table: "t".into(),
            schema: None,
            columns: vec![
                ColumnDefinition::change("doc_id", ColumnType::Text, ChangeField::Id),
                ColumnDefinition::path("n", ColumnType::Integer, "form.n"),
            ],
            primary_key: vec!["doc_id".into()],
            filter: toml::from_str("equals = { doc_type = \"XFormInstance\" }").expect("filter"),
            write_method: super::super::config::WriteMethod::default(),
            apply_count_column: None,
            exactly_once: false,
            flush_max_rows: 0,
            flush_max_bytes: 1,
            flush_max_delay_ms: 1,
            connections: 1,
        }
    }

    fn change(id: &str, doc: Option<Value>, deleted: bool) -> Change {
        let mut m = ChangeMeta::new(id, "sql", "form-sql");
        m.is_deletion = deleted;
        let mut c = Change::from_message("t", 0, 0, m.to_json().as_bytes()).expect("valid");
        if let Some(d) = doc {
            c.set_document(Some(d));
        }
        c
    }

    #[test]
    fn actions_and_chunk_dedup() {
        let e = Encoder::new(&table());
        let ok = json!({"doc_type": "XFormInstance", "form": {"n": "5"}});
        assert_eq!(
            e.encode(&change("a", Some(ok.clone()), false)),
            Ok(Action::Upsert(vec![
                SqlValue::Text("a".into()),
                SqlValue::Integer(5)
            ]))
        );
        assert_eq!(
            e.encode(&change("a", Some(json!({"doc_type": "Other"})), false)),
            Ok(Action::Delete(vec![SqlValue::Text("a".into())]))
        );
        assert_eq!(
            e.encode(&change("a", None, true)),
            Ok(Action::Delete(vec![SqlValue::Text("a".into())]))
        );
        assert_eq!(e.encode(&change("a", None, false)), Ok(Action::Missing));
        let f = e
            .encode(&change(
                "bad",
                Some(json!({"doc_type": "XFormInstance", "form": {"n": "x"}})),
                false,
            ))
            .expect_err("bad value");
        assert_eq!(f.error_type, POSTGRES_ERROR);
        assert!(
            f.message.contains("table t, column n, document bad"),
            "{}",
            f.message
        );
        assert!(f.message.contains("\"x\""), "{}", f.message);

        let chunk = e.encode_chunk(&[
            change("a", Some(ok.clone()), false),
            change("b", Some(ok.clone()), false),
            change("a", None, true),
            change("m", None, false),
            change(
                "bad",
                Some(json!({"doc_type": "XFormInstance", "form": {"n": []}})),
                false,
            ),
            change("b", Some(ok), false),
        ]);
        assert_eq!(chunk.upserts.len(), 1, "b once");
        assert_eq!(chunk.deletes, vec![vec![SqlValue::Text("a".into())]]);
        assert_eq!(chunk.missing, vec![3]);
        assert_eq!(chunk.errors.len(), 1);
        assert_eq!(chunk.errors[0].0, 4);
    }
}
