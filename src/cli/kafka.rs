//! CommCare's read-only Kafka commands over [`crate::ops::inspect`]: `tail-kafka`,
//! `search-kafka-changes` and `dump-remaining-changes` (`ptop_dump_remaining_changes`). Each
//! change is one JSON line (`topic`, `partition`, `offset`, `seq`, `timestamp`, `id`, `deleted`,
//! `metadata`); the summary goes to standard error. Ctrl-C stops cleanly (the summary is still
//! printed); `--limit` bounds the output.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use tokio_util::sync::CancellationToken;

use super::conn::{Conn, KafkaConn};
use super::ui::Ui;
use crate::ops::inspect::{self as core, ChangeFilter, FoundChange, InspectSummary};

/// Exit status of a search or dump cut short by Ctrl-C (128 + SIGINT, as `run_ptop`).
pub const INTERRUPTED: u8 = 130;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct FilterArgs {
    /// Only changes of this document_type.
    #[arg(long)]
    pub doc_type: Option<String>,
    /// Only changes of this document_subtype.
    #[arg(long)]
    pub doc_subtype: Option<String>,
    /// Stop after this many changes.
    #[arg(long)]
    pub limit: Option<u64>,
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct TailArgs {
    /// The topics to follow (comma-separated or repeated).
    #[arg(long, required = true, value_delimiter = ',', num_args = 1..)]
    pub topics: Vec<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub kafka: KafkaConn,
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct SearchArgs {
    /// The topics to scan (comma-separated or repeated).
    #[arg(long = "topic", alias = "topics", required = true, value_delimiter = ',', num_args = 1..)]
    pub topics: Vec<String>,
    /// Only these document ids (comma-separated).
    #[arg(long, value_delimiter = ',', conflicts_with = "doc_id_file")]
    pub doc_ids: Option<Vec<String>>,
    /// Only the document ids in this file (one per line).
    #[arg(long)]
    pub doc_id_file: Option<PathBuf>,
    /// Only changes published on or after this date (YYYY-MM-DD, UTC) or time (RFC 3339):
    /// the scan starts there (Kafka's offsets for times).
    #[arg(long)]
    pub start_date: Option<String>,
    /// Only changes published before this date or time.
    #[arg(long)]
    pub end_date: Option<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub kafka: KafkaConn,
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct DumpArgs {
    /// The checkpoint id.
    pub checkpoint_id: String,
    /// Where to write (gzipped when the name ends in .gz; `-` for standard output). Default:
    /// CommCare's `pillow_changes_<checkpoint>_<time>.gz` in the current folder.
    #[arg(long, short = 'o')]
    pub output: Option<String>,
    /// Stop after this many changes.
    #[arg(long)]
    pub limit: Option<u64>,
    #[command(flatten)]
    pub conn: Conn,
    #[command(flatten)]
    pub kafka: KafkaConn,
}

fn print_change(ui: &dyn Ui, c: &FoundChange) {
    match serde_json::to_string(c) {
        Ok(line) => ui.out(&line),
        Err(e) => ui.err(&format!(
            "error: cannot print the change at {}: {e}",
            c.offset
        )),
    }
}

fn say_summary(ui: &dyn Ui, what: &str, s: &InspectSummary) {
    let end = if s.interrupted {
        "interrupted"
    } else if s.limit_reached {
        "limit reached"
    } else {
        "done"
    };
    ui.err(&format!(
        "{what}: {end}: {} messages read, {} changes printed, {} invalid messages skipped",
        s.read, s.matched, s.invalid
    ));
}

pub async fn exec_tail(a: TailArgs, ui: &dyn Ui) -> anyhow::Result<u8> {
    tail(&a, ui, &super::ctrl_c_token()).await?;
    Ok(0)
}

pub async fn exec_search(a: SearchArgs, ui: &dyn Ui) -> anyhow::Result<u8> {
    let s = search(&a, ui, &super::ctrl_c_token()).await?;
    Ok(if s.interrupted { INTERRUPTED } else { 0 })
}

pub async fn exec_dump(a: DumpArgs, ui: &dyn Ui) -> anyhow::Result<u8> {
    let s = dump(&a, ui, &super::ctrl_c_token()).await?;
    Ok(if s.interrupted { INTERRUPTED } else { 0 })
}

fn filter(f: &FilterArgs) -> ChangeFilter {
    ChangeFilter {
        doc_type: f.doc_type.clone(),
        doc_subtype: f.doc_subtype.clone(),
        ..ChangeFilter::default()
    }
}

/// `tail-kafka`: follows the topics from their ends until `stop` (or `--limit`).
pub async fn tail(
    a: &TailArgs,
    ui: &dyn Ui,
    stop: &CancellationToken,
) -> anyhow::Result<InspectSummary> {
    let kafka = a.kafka.info()?;
    ui.err(&format!(
        "following {} from their ends (Ctrl-C to stop)",
        super::ui::py_list(&a.topics)
    ));
    let s = core::tail(
        &kafka,
        &a.topics,
        &filter(&a.filter),
        a.filter.limit,
        stop,
        |c| {
            print_change(ui, c);
        },
    )
    .await?;
    say_summary(ui, "tail-kafka", &s);
    Ok(s)
}

/// A date (`YYYY-MM-DD`, midnight UTC) or an RFC 3339 time, as milliseconds.
fn parse_when(s: &str) -> anyhow::Result<i64> {
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d
            .and_hms_opt(0, 0, 0)
            .context("midnight")?
            .and_utc()
            .timestamp_millis());
    }
    Ok(DateTime::parse_from_rfc3339(s)
        .with_context(|| format!("{s:?} is neither YYYY-MM-DD nor an RFC 3339 time"))?
        .with_timezone(&Utc)
        .timestamp_millis())
}

/// `search-kafka-changes`: the matching changes between the dates, up to the ends at the start.
pub async fn search(
    a: &SearchArgs,
    ui: &dyn Ui,
    stop: &CancellationToken,
) -> anyhow::Result<InspectSummary> {
    let kafka = a.kafka.info()?;
    let mut f = filter(&a.filter);
    f.start_ms = a.start_date.as_deref().map(parse_when).transpose()?;
    f.end_ms = a.end_date.as_deref().map(parse_when).transpose()?;
    let ids = match (&a.doc_ids, &a.doc_id_file) {
        (Some(ids), _) => Some(ids.clone()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the document id file {}", path.display()))?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
        ),
        (None, None) => None,
    };
    f.doc_ids = ids.map(|v: Vec<String>| v.into_iter().collect());
    let s = core::search(&kafka, &a.topics, &f, a.filter.limit, stop, |c| {
        print_change(ui, c);
    })
    .await?;
    say_summary(ui, "search-kafka-changes", &s);
    Ok(s)
}

/// `dump-remaining-changes`: what the checkpoint has not processed, as JSON lines (gzipped into
/// a file by default).
pub async fn dump(
    a: &DumpArgs,
    ui: &dyn Ui,
    stop: &CancellationToken,
) -> anyhow::Result<InspectSummary> {
    let pg = a.conn.pg()?;
    let kafka = a.kafka.info()?;
    let plan = core::plan_remaining(&pg, &kafka, &a.checkpoint_id).await?;
    let total: i64 = plan.partitions.iter().map(|p| (p.to - p.from).max(0)).sum();
    let path = a.output.clone().unwrap_or_else(|| {
        format!(
            "pillow_changes_{}_{}.gz",
            a.checkpoint_id,
            Utc::now().format("%Y-%m-%dT%H%M%S")
        )
    });
    ui.err(&format!(
        "checkpoint {}: {total} remaining changes on {} partitions, written to {}",
        a.checkpoint_id,
        plan.partitions.len(),
        if path == "-" {
            "standard output"
        } else {
            &path
        }
    ));
    let mut sink = if path == "-" {
        Sink::Ui(UiWriter {
            ui,
            line: Vec::new(),
        })
    } else {
        let f = std::fs::File::create(&path).with_context(|| format!("creating {path}"))?;
        let f = std::io::BufWriter::new(f);
        let gz = std::path::Path::new(&path)
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gz"));
        if gz {
            Sink::Gz(flate2::write::GzEncoder::new(
                f,
                flate2::Compression::default(),
            ))
        } else {
            Sink::Plain(f)
        }
    };
    let mut failed: Option<std::io::Error> = None;
    let s = core::dump_remaining(&kafka, &plan, a.limit, stop, |c| {
        if failed.is_some() {
            return;
        }
        let line = serde_json::json!({"id": c.id, "seq": c.seq, "deleted": c.deleted, "metadata": c.metadata, "topic": c.topic, "partition": c.partition});
        if let Err(e) = writeln!(sink.writer(), "{line}") {
            failed = Some(e);
        }
    })
    .await?;
    if let Some(e) = failed {
        return Err(e).with_context(|| format!("writing {path}"));
    }
    sink.finish().with_context(|| format!("writing {path}"))?;
    say_summary(ui, "dump-remaining-changes", &s);
    Ok(s)
}

/// Where a dump goes.
enum Sink<'a> {
    Ui(UiWriter<'a>),
    Plain(std::io::BufWriter<std::fs::File>),
    Gz(flate2::write::GzEncoder<std::io::BufWriter<std::fs::File>>),
}

impl Sink<'_> {
    fn writer(&mut self) -> &mut dyn std::io::Write {
        match self {
            Self::Ui(w) => w,
            Self::Plain(w) => w,
            Self::Gz(w) => w,
        }
    }

    /// Flushes everything (the gzip trailer included).
    fn finish(self) -> std::io::Result<()> {
        match self {
            Self::Ui(mut w) => w.flush(),
            Self::Plain(mut w) => w.flush(),
            Self::Gz(w) => w.finish()?.flush(),
        }
    }
}

/// Lines written to the Ui's standard output.
struct UiWriter<'a> {
    ui: &'a dyn Ui,
    line: Vec<u8>,
}

impl std::io::Write for UiWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for b in buf {
            if *b == b'\n' {
                self.ui.out(&String::from_utf8_lossy(&self.line));
                self.line.clear();
            } else {
                self.line.push(*b);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.line.is_empty() {
            self.ui.out(&String::from_utf8_lossy(&self.line));
            self.line.clear();
        }
        Ok(())
    }
}
