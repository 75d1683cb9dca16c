//! `pillowtop reindex start|status|resume|rollback|abort`: rebuild an Elasticsearch processor's
//! index without stopping its pillow ([`crate::ops::reindex`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use tokio_util::sync::CancellationToken;

use super::conn::Confirm;
use super::ui::{print_table, Say, Ui};
use crate::config::{PillowFile, ProcessorConfig};
use crate::error::{Error, ReindexError};
use crate::ops::kafka::KafkaInfo;
use crate::ops::reindex::{Progress, ReindexOptions, ReindexSink, Reindexer, SqlSource};
use crate::pg::Pg;
use crate::store::reindex::{self as store, ReindexRun};

/// Exit status of a verification that found differences (the old index still serves).
pub const DIFFERENCES: u8 = 7;

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Preflight, create the new index, dual-write, backfill from the source table, verify,
    /// swap the alias; keeps the old index for --keep-old (then `resume` deletes it).
    Start(Box<StartArgs>),
    /// CommCare's ptop_preindex: for each Elasticsearch processor of the pillow (or --processor)
    /// whose index does not exist yet, create it and fill it from the source before the pillow
    /// starts (a reindex run from nothing, recorded and resumable like the others).
    Preindex(Box<StartArgs>),
    /// The runs of a pillow: step, indices, backfill progress, verification, what each step did.
    Status(StatusArgs),
    /// Carry the processor's unfinished run on from its step (after a crash, a Ctrl-C, a
    /// failed verification once dealt with, or to delete the old index once its window passed).
    Resume(RunArgs),
    /// Move the alias back to the old index and delete the new one (while the old is kept).
    Rollback(RunArgs),
    /// Abandon the run before its swap: the new index is no longer written, then deleted.
    Abort(RunArgs),
}

/// The pillow and its processor.
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// The pillow's TOML config file (its name, PostgreSQL, Kafka, processors, document stores).
    #[arg(long)]
    pub config: PathBuf,
    /// The Elasticsearch processor: its name (`ElasticsearchProcessor(INDEX)`), index or alias;
    /// may be left out when the pillow has one.
    #[arg(long)]
    pub processor: Option<String>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct StartArgs {
    #[command(flatten)]
    pub target: Target,
    /// The source table (default: the pillow's document store, when it has one).
    #[arg(long, requires_all = ["id_column", "doc_column"])]
    pub source_table: Option<String>,
    #[arg(long)]
    pub id_column: Option<String>,
    #[arg(long)]
    pub doc_column: Option<String>,
    /// Documents per backfill chunk.
    #[arg(long, default_value_t = 1000)]
    pub chunk_size: usize,
    /// Concurrent backfill slices (ranges of the id, by its quantiles).
    #[arg(long, default_value_t = 1)]
    pub slices: usize,
    /// Only documents of this domain.
    #[arg(long)]
    pub domain: Option<String>,
    /// A (dotted) document field for --start-date / --end-date.
    #[arg(long)]
    pub date_field: Option<String>,
    #[arg(long, requires = "date_field")]
    pub start_date: Option<String>,
    #[arg(long, requires = "date_field")]
    pub end_date: Option<String>,
    /// How long the old index is kept (and written) after the swap: `48h`, `30m`, `90s`, `2d`,
    /// `0` (delete at once).
    #[arg(long, default_value = "48h", value_parser = parse_duration)]
    pub keep_old: Duration,
    /// Seconds every live process of the pillow is waited for to acknowledge a step.
    #[arg(long, default_value_t = 120)]
    pub ack_timeout: u64,
    /// The new index's name (default `ALIAS_YYYYMMDDHHMMSS`).
    #[arg(long)]
    pub new_index: Option<String>,
    /// Documents compared in full by the verification.
    #[arg(long, default_value_t = 200)]
    pub sample_size: usize,
    /// Copy from the pillow's topics (changes that embed their documents) instead of a table:
    /// the newest change of each document before the run's Kafka position.
    #[arg(long, conflicts_with_all = ["source_table", "domain", "date_field"])]
    pub from_kafka: bool,
    /// With --from-kafka: from the first message at or after this time (a date or RFC 3339);
    /// default the earliest retained.
    #[arg(long, requires = "from_kafka")]
    pub since: Option<String>,
    #[command(flatten)]
    pub confirm: Confirm,
}

#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    /// The pillow's TOML config file.
    #[arg(long)]
    pub config: PathBuf,
    /// Print the runs as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub target: Target,
    /// Do not ask.
    #[arg(long)]
    pub noinput: bool,
    /// Print the run as JSON at the end.
    #[arg(long)]
    pub json: bool,
}

/// `48h`, `30m`, `90s`, `2d` or a number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 48h, 30m, 90s or 2d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (s, m, h or d)")),
    };
    Ok(Duration::from_secs(secs))
}

pub async fn exec(command: Command, ui: &dyn Ui) -> anyhow::Result<u8> {
    let stop = super::ctrl_c_token();
    match command {
        Command::Start(a) => start(*a, ui, stop).await,
        Command::Preindex(a) => preindex(*a, ui, stop).await,
        Command::Status(a) => status(&a, ui).await,
        Command::Resume(a) => on_run(a, ui, stop, Action::Resume).await,
        Command::Rollback(a) => on_run(a, ui, stop, Action::Rollback).await,
        Command::Abort(a) => on_run(a, ui, stop, Action::Abort).await,
    }
}

/// The pillow file's Elasticsearch or `postgres_table` processor named `wanted` (by name,
/// index, alias or table), with its name.
fn find_processor(
    file: &PillowFile,
    wanted: Option<&str>,
) -> anyhow::Result<(String, ReindexSink)> {
    let all: Vec<(String, Vec<String>, ReindexSink)> = file
        .processors
        .iter()
        .map(|p| match p {
            ProcessorConfig::Elasticsearch(c) => (
                format!("ElasticsearchProcessor({})", c.index),
                std::iter::once(c.index.clone())
                    .chain(c.alias.clone())
                    .collect(),
                ReindexSink::Elasticsearch {
                    config: c.clone(),
                    transform: None,
                },
            ),
            ProcessorConfig::PostgresTable(d) => (
                format!("postgres-table:{}", d.label()),
                vec![d.table.clone(), d.label()],
                ReindexSink::Table(d.clone()),
            ),
        })
        .collect();
    let names = || {
        if all.is_empty() {
            "none".to_owned()
        } else {
            all.iter()
                .map(|(n, _, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let found: Vec<&(String, Vec<String>, ReindexSink)> = all
        .iter()
        .filter(|(n, other, _)| wanted.is_none_or(|w| w == n || other.iter().any(|o| o == w)))
        .collect();
    match found.as_slice() {
        [one] => Ok((one.0.clone(), one.2.clone())),
        [] => bail!(
            "pillow {} has no elasticsearch or postgres_table processor{} (its processors that can be rebuilt: {})",
            file.name,
            wanted.map(|w| format!(" {w}")).unwrap_or_default(),
            names()
        ),
        _ => bail!(
            "pillow {} has several processors that can be rebuilt: choose one with --processor ({})",
            file.name,
            names()
        ),
    }
}

fn reindexer(target: &Target, stop: CancellationToken) -> anyhow::Result<(PillowFile, Reindexer)> {
    let file = PillowFile::load(&target.config)
        .with_context(|| format!("reading {}", target.config.display()))?;
    let r = reindexer_of(&file, target.processor.as_deref(), stop)?;
    Ok((file, r))
}

/// The reindexer of the pillow file's Elasticsearch processor `wanted`.
fn reindexer_of(
    file: &PillowFile,
    wanted: Option<&str>,
    stop: CancellationToken,
) -> anyhow::Result<Reindexer> {
    let (processor, sink) = find_processor(file, wanted)?;
    let settings: Vec<String> = file
        .kafka
        .settings
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let kafka_config = crate::feed::kafka::KafkaClientConfig::from_args(&settings)?;
    let kafka = KafkaInfo::with_config(&file.kafka.bootstrap, &kafka_config).ok();
    let r = Reindexer {
        pg: Arc::new(Pg::new(file.postgres.url.clone()).with_stop(stop.clone())),
        pillow: file.name.clone(),
        processor,
        sink,
        topics: file.topics.clone(),
        kafka,
        stop,
    };
    Ok(r)
}

async fn start(a: StartArgs, ui: &dyn Ui, stop: CancellationToken) -> anyhow::Result<u8> {
    let (file, r) = reindexer(&a.target, stop)?;
    let options = options_of(&a, &file)?;
    start_run(&r, &options, &a.confirm, ui).await
}

/// Creates and fills the index of each Elasticsearch processor (or `--processor`) whose index
/// does not exist; the others are left alone. The highest exit status of the runs.
async fn preindex(a: StartArgs, ui: &dyn Ui, stop: CancellationToken) -> anyhow::Result<u8> {
    let say = Say::new(ui, a.confirm.json);
    let file = PillowFile::load(&a.target.config)
        .with_context(|| format!("reading {}", a.target.config.display()))?;
    let wanted: Vec<Option<String>> = match &a.target.processor {
        Some(p) => vec![Some(p.clone())],
        None => file
            .processors
            .iter()
            .filter_map(|p| match p {
                ProcessorConfig::Elasticsearch(c) => Some(Some(c.index.clone())),
                _ => None,
            })
            .collect(),
    };
    if wanted.is_empty() {
        bail!("pillow {} has no elasticsearch processor", file.name);
    }
    let mut options = options_of(&a, &file)?;
    options.keep_old_secs = 0; // there is no old index to keep
    let mut status = 0;
    for w in wanted {
        let r = reindexer_of(&file, w.as_deref(), stop.clone())?;
        crate::store::schema::ensure_schema(&r.pg).await?;
        let active = r.active().await?;
        if active.is_none() && r.serving_index_exists().await? {
            say.say(&format!(
                "processor {}: its index exists: nothing to do",
                r.processor
            ));
            continue;
        }
        status = status.max(match active {
            Some(_) => act(&r, Action::Resume, true, a.confirm.json, ui).await?,
            None => start_run(&r, &options, &a.confirm, ui).await?,
        });
    }
    Ok(status)
}

/// The run's options from the command line (the source defaults to the pillow's one document
/// store).
fn options_of(a: &StartArgs, file: &PillowFile) -> anyhow::Result<ReindexOptions> {
    let mut options = if a.from_kafka {
        let since_ms = a.since.as_deref().map(parse_time).transpose()?;
        ReindexOptions::from_kafka(since_ms)
    } else {
        ReindexOptions::new(table_source(a, file)?)
    };
    options = finish_options(a, options);
    Ok(options)
}

/// The source table of a start: the flags, else the pillow's one document store.
fn table_source(a: &StartArgs, file: &PillowFile) -> anyhow::Result<SqlSource> {
    let source = match (&a.source_table, &a.id_column, &a.doc_column) {
        (Some(table), Some(id_column), Some(doc_column)) => SqlSource {
            table: table.clone(),
            id_column: id_column.clone(),
            doc_column: doc_column.clone(),
        },
        _ => match file.document_stores.as_slice() {
            [one] => SqlSource {
                table: one.table.clone(),
                id_column: one.id_column.clone(),
                doc_column: one.doc_column.clone(),
            },
            _ => bail!(
                "pillow {} has {} document stores: give the source with --source-table, --id-column and --doc-column (or --from-kafka)",
                file.name,
                file.document_stores.len()
            ),
        },
    };
    Ok(source)
}

/// `2026-11-30` or `2026-11-30T08:00:00Z`, as milliseconds since the epoch.
fn parse_time(s: &str) -> anyhow::Result<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    let d = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .with_context(|| format!("--since {s:?}: a date (2026-11-30) or an RFC 3339 time"))?;
    Ok(d.and_hms_opt(0, 0, 0)
        .map_or(0, |t| t.and_utc().timestamp_millis()))
}

/// The run's options from the command line, after the source.
fn finish_options(a: &StartArgs, mut options: ReindexOptions) -> ReindexOptions {
    options.chunk_size = a.chunk_size.max(1);
    options.slices = a.slices.max(1);
    options.domain.clone_from(&a.domain);
    options.date_field.clone_from(&a.date_field);
    options.start_date.clone_from(&a.start_date);
    options.end_date.clone_from(&a.end_date);
    options.keep_old_secs = a.keep_old.as_secs();
    options.ack_timeout_secs = a.ack_timeout;
    options.new_index.clone_from(&a.new_index);
    options.sample_size = a.sample_size;
    options
}

/// Starts a run of `r` with `options`: refused while one has not ended; prints the plan, asks
/// (unless `--noinput`), stops at a dry run, then carries the run out with a progress line on
/// standard error. Returns the exit status.
pub async fn start_run(
    r: &Reindexer,
    options: &ReindexOptions,
    confirm: &Confirm,
    ui: &dyn Ui,
) -> anyhow::Result<u8> {
    let say = Say::new(ui, confirm.json);
    crate::store::schema::ensure_schema(&r.pg).await?;
    if let Some(run) = r.active().await? {
        bail!(
            "processor {} of pillow {} has an unfinished reindex (run {}, step {}): `pillowtop reindex resume`, `rollback` or `abort` it",
            r.processor,
            r.pillow,
            run.id,
            run.step.as_str()
        );
    }
    let pre = r.preflight(options).await?;
    if confirm.json {
        ui.out(&serde_json::to_string_pretty(&serde_json::json!({
            "pillow": r.pillow, "processor": r.processor, "preflight": pre, "options": options,
        }))?);
    }
    print_plan(&say, r, options, &pre, confirm.force);
    if confirm.dry_run {
        say.say("Dry run: nothing written.");
        return Ok(0);
    }
    if !pre.problems.is_empty() && !confirm.force {
        say.say("Refused: deal with the problems above, or add --force.");
        return Ok(super::FAILED);
    }
    if !confirm.noinput {
        let answer = say.ask("Go on? [y/N]");
        if !matches!(answer.to_lowercase().as_str(), "y" | "yes") {
            say.say("Aborted: nothing written.");
            return Ok(super::DECLINED);
        }
    }
    let progress = progress_printer(ui);
    let result = r.start(options, confirm.force, &progress).await;
    finish(r, result, ui, confirm.json).await
}

/// Prints what a start would do.
fn print_plan(
    say: &Say<'_>,
    r: &Reindexer,
    options: &ReindexOptions,
    pre: &crate::ops::reindex::Preflight,
    force: bool,
) {
    let table = matches!(r.sink, ReindexSink::Table(_));
    say.say(&format!(
        "Rebuild the {} of processor {} of pillow {}:",
        if table { "table" } else { "index" },
        r.processor,
        r.pillow
    ));
    let source = if options.from_kafka.is_some() {
        format!(
            "topics {} ({} messages retained; the newest change of each document is copied)",
            r.topics.join(", "),
            pre.source_rows
        )
    } else {
        format!(
            "{} ({} rows, {} bytes{})",
            options.source.table,
            pre.source_rows,
            pre.source_bytes,
            options
                .domain
                .as_ref()
                .map(|d| format!(", domain {d}"))
                .unwrap_or_default()
        )
    };
    say.say(&format!("  source: {source}"));
    let size = |n: Option<i64>| n.map_or("?".into(), |n| n.to_string());
    if table {
        say.say(&format!(
            "  serving: table {} ({} rows, {} bytes); the database's filesystem has {} bytes free",
            pre.alias,
            size(pre.old_docs),
            size(pre.old_bytes),
            pre.free_bytes.map_or_else(
                || "? (not on this host, or its data directory is not shown to this role)".into(),
                |n| n.to_string()
            ),
        ));
        say.say(&format!(
            "  steps: create table {} (the definition's columns and key); the live pillow writes both; copy in chunks of {}{}; verify; rename {} to {} and {} to {} in one transaction; keep {} (written) for {} s, then drop it",
            pre.new_index,
            options.chunk_size,
            if options.from_kafka.is_some() { String::new() } else { format!(" in {} slices", options.slices) },
            pre.alias,
            pre.old_index,
            pre.new_index,
            pre.alias,
            pre.old_index,
            options.keep_old_secs
        ));
    } else {
        say.say(&format!(
            "  serving: {} behind alias {} ({} documents, {} bytes); the node has {} bytes free",
            pre.old_index,
            pre.alias,
            size(pre.old_docs),
            size(pre.old_bytes),
            size(pre.free_bytes),
        ));
        say.say(&format!(
            "  steps: create {} (refresh off, no replicas); the live pillow writes to both; copy in chunks of {}{}; verify; move the alias; keep {} for {} s, then delete it",
            pre.new_index,
            options.chunk_size,
            if options.from_kafka.is_some() { String::new() } else { format!(" in {} slices", options.slices) },
            pre.old_index,
            options.keep_old_secs
        ));
    }
    for p in &pre.problems {
        say.say(&format!(
            "  problem: {p}{}",
            if force { " (--force: going on)" } else { "" }
        ));
    }
}

/// Prints backfill progress on standard error.
fn progress_printer(ui: &dyn Ui) -> impl Fn(Progress) + '_ {
    move |p: Progress| {
        let pct = (p.done * 100).checked_div(p.total).unwrap_or(100);
        let eta = p
            .eta_secs
            .map_or_else(|| "?".to_owned(), |s| format!("{:.0}s", s.ceil()));
        ui.err(&format!(
            "backfill {}/{} ({pct}%) {:.0} documents/s, ETA {eta}",
            p.done, p.total, p.per_second
        ));
    }
}

/// Prints how a run stands after a command, and its exit status.
async fn finish(
    r: &Reindexer,
    result: crate::error::Result<ReindexRun>,
    ui: &dyn Ui,
    json: bool,
) -> anyhow::Result<u8> {
    match result {
        Ok(run) => {
            print_run(&run, ui, json);
            Ok(0)
        }
        Err(Error::Reindex(e @ ReindexError::Differences { .. })) => {
            ui.err(&format!("error: {e}"));
            if let Some(run) = r.active().await? {
                print_run(&run, ui, json);
            }
            Ok(DIFFERENCES)
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether the run rebuilt a `postgres_table` processor's table (the name the pillow reports).
fn is_table(run: &ReindexRun) -> bool {
    run.processor.starts_with("postgres-table:")
}

fn print_run(run: &ReindexRun, ui: &dyn Ui, json: bool) {
    if json {
        ui.out(&serde_json::to_string_pretty(run).unwrap_or_default());
        return;
    }
    let say = Say::new(ui, false);
    say.say(&format!(
        "run {}: processor {} of pillow {}: step {}{}",
        run.id,
        run.processor,
        run.pillow,
        run.step.as_str(),
        match (run.step, run.keep_old_until) {
            (store::Step::Swapped, Some(t)) if is_table(run) => format!(
                " (table {} is the rebuilt version; the old one, {}, kept until {}: `pillowtop reindex resume` drops it then, `rollback` undoes the swap)",
                run.alias, run.old_index, super::ui::time(&t)
            ),
            (store::Step::Swapped, Some(t)) => format!(
                " (alias {} → {}; {} kept until {}: `pillowtop reindex resume` deletes it then, `rollback` undoes the swap)",
                run.alias, run.new_index, run.old_index, super::ui::time(&t)
            ),
            _ => String::new(),
        }
    ));
    if let Some(e) = &run.error {
        say.say(&format!("  error: {e}"));
    }
    for l in run.log.as_array().into_iter().flatten() {
        say.say(&format!(
            "  {} {}: {}",
            l.get("at").and_then(|v| v.as_str()).unwrap_or(""),
            l.get("step").and_then(|v| v.as_str()).unwrap_or(""),
            l.get("message").and_then(|v| v.as_str()).unwrap_or("")
        ));
    }
    if run.step == store::Step::Done && !is_table(run) {
        say.say(&format!(
            "  the processor writes to {}: set `index = \"{}\"` in its configuration when convenient (it follows this run until then)",
            run.new_index, run.new_index
        ));
    }
}

async fn status(a: &StatusArgs, ui: &dyn Ui) -> anyhow::Result<u8> {
    let file =
        PillowFile::load(&a.config).with_context(|| format!("reading {}", a.config.display()))?;
    let pg = Pg::new(file.postgres.url.clone());
    print_status(&pg, &file.name, a.json, ui).await
}

/// Prints the runs of `pillow`, newest first (a table, or JSON).
pub async fn print_status(pg: &Pg, pillow: &str, json: bool, ui: &dyn Ui) -> anyhow::Result<u8> {
    crate::store::schema::ensure_schema(pg).await?;
    let runs = store::list(pg, Some(pillow)).await?;
    if json {
        ui.out(&serde_json::to_string_pretty(&runs)?);
        return Ok(0);
    }
    if runs.is_empty() {
        ui.out(&format!("pillow {pillow} has no reindex runs"));
        return Ok(0);
    }
    let rows = runs
        .iter()
        .map(|r| {
            let done: u64 = r
                .progress
                .as_object()
                .into_iter()
                .flat_map(|m| m.values())
                .filter_map(|p| p.get("done")?.as_u64())
                .sum();
            vec![
                r.id.to_string(),
                r.processor.clone(),
                r.step.as_str().to_owned(),
                r.old_index.clone(),
                r.new_index.clone(),
                done.to_string(),
                super::ui::time(&r.updated_at),
                r.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(
        ui,
        &[
            "run",
            "processor",
            "step",
            "old",
            "new",
            "copied",
            "updated",
            "error",
        ],
        rows,
    );
    Ok(0)
}

/// What to do with a processor's unfinished run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Resume,
    Rollback,
    Abort,
}

async fn on_run(
    a: RunArgs,
    ui: &dyn Ui,
    stop: CancellationToken,
    action: Action,
) -> anyhow::Result<u8> {
    let (_, r) = reindexer(&a.target, stop)?;
    act(&r, action, a.noinput, a.json, ui).await
}

/// Resumes, rolls back or aborts the processor's unfinished run (asking first, for the last
/// two, unless `noinput`). Returns the exit status.
pub async fn act(
    r: &Reindexer,
    action: Action,
    noinput: bool,
    json: bool,
    ui: &dyn Ui,
) -> anyhow::Result<u8> {
    crate::store::schema::ensure_schema(&r.pg).await?;
    let Some(run) = r.active().await? else {
        bail!(
            "processor {} of pillow {} has no unfinished reindex",
            r.processor,
            r.pillow
        );
    };
    let say = Say::new(ui, json);
    if action != Action::Resume && !noinput {
        let what = match action {
            Action::Rollback => format!(
                "Move alias {} back to {} and delete {}?",
                run.alias, run.old_index, run.new_index
            ),
            _ => format!("Abandon run {} and delete {}?", run.id, run.new_index),
        };
        let answer = say.ask(&format!("{what} [y/N]"));
        if !matches!(answer.to_lowercase().as_str(), "y" | "yes") {
            say.say("Aborted: nothing changed.");
            return Ok(super::DECLINED);
        }
    }
    say.say(&format!(
        "run {}: {} from step {}",
        run.id,
        match action {
            Action::Resume => "resuming",
            Action::Rollback => "rolling back",
            Action::Abort => "aborting",
        },
        run.step.as_str()
    ));
    let progress = progress_printer(ui);
    let result = match action {
        Action::Resume => r.resume(run.id, &progress).await,
        Action::Rollback => r.rollback(run.id).await,
        Action::Abort => r.abort(run.id).await,
    };
    finish(r, result, ui, json).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_an_operator_writes_them() {
        assert_eq!(parse_duration("48h"), Ok(Duration::from_secs(48 * 3600)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
    }
}
