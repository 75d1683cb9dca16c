//! The operator command line as a library module (feature `cli`): the `pillowtop` binary and
//! the Python front (`src/python/ops.rs`, `run_cli`) both run it, so they share one
//! implementation of every command, prompts and exit statuses included.
//!
//! One file per command, each an `Args` struct and an `exec` function; the changing commands
//! (split, merge, reset, history restore, add-partitions) also have an `apply` that returns a
//! typed [`ui::Report`], and share [`ui::confirm_and_apply`]. Output and questions go through
//! [`ui::Ui`]. Connections come from flags or the `PILLOWTOP_*` environment ([`conn`]).
//!
//! Exit codes (CommCare's for the checkpoint commands): 0 success; 1 an operator declined a
//! prompt; 2 invalid usage, or merge sources whose partitions disagree; 3 the merge's
//! reprocessing was declined; 4 any other failure (a service failed, a refusal such as a running
//! pillow without `--force`, a source without rows); 5 `validate` found invalid checkpoints;
//! 6 `doctor` found a pillow that falls behind, catches up or is stalled.

pub mod add_partitions;
pub mod assignments;
pub mod conn;
pub mod doctor;
pub mod fix;
pub mod history;
pub mod kafka;
pub mod lag;
pub mod merge;
pub mod reindex;
pub mod reset;
pub mod run;
pub mod schema;
pub mod serve;
pub mod split;
pub mod topics;
pub mod ui;
pub mod validate;

use std::future::Future;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::ops::OpsError;
use ui::Ui;

/// A token cancelled by Ctrl-C (the terminal's commands that wait or read until stopped).
pub(crate) fn ctrl_c_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            t.cancel();
        }
    });
    token
}

/// Exit status of a declined prompt.
pub const DECLINED: u8 = 1;
/// Exit status of inconsistent merge sources (and of invalid usage).
pub const INCONSISTENT: u8 = 2;
/// Exit status of a declined reprocessing question.
pub const REPROCESSING_DECLINED: u8 = 3;
/// Exit status of any other failure.
pub const FAILED: u8 = 4;
/// Exit status of `validate` when a checkpoint is invalid.
pub const INVALID: u8 = 5;
/// Exit status of `doctor` when a pillow falls behind, catches up or is stalled.
pub const FINDING: u8 = 6;

/// The text after `--help` of the program.
pub const EXIT_STATUS_HELP: &str = "Exit status: 0 success; 1 a question was declined; 2 invalid usage, or merge sources whose partitions disagree; 3 the merge's reprocessing was declined; 4 any other failure; 5 validate found invalid checkpoints; 6 doctor found a pillow behind; 7 reindex found differences (the old index still serves)";

/// The command line without the binary-only `demo` (what `run_cli` parses).
#[derive(Parser, Debug)]
#[command(
    name = "pillowtop",
    version,
    about = "Operate CommCare-compatible pillows: Kafka change feeds with PostgreSQL checkpoints",
    after_help = EXIT_STATUS_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Every command, one variant each.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create the pillowtop tables (checkpoints, errors, liveness) if they are missing.
    Schema(schema::Args),
    /// Run a pure-Rust pillow described by a TOML config file (see examples/xform-pillow.toml)
    /// until SIGTERM or Ctrl-C (a graceful stop: the current chunk finishes and the checkpoint
    /// is written), or --until-idle / --max-changes. Exit 0 on a graceful stop, 2 for an invalid
    /// config, 4 for any other failure.
    Run(run::Args),
    /// Copy every checkpoint row of a source pillow to one or more target pillows
    /// (CommCare's split_pillow_checkpoints).
    ///
    /// Prints the plan (rows per topic and partition; target rows that will be deleted or
    /// overwritten, with their last update; topics only the source or only a target has),
    /// asks CommCare's two questions when a target exists, and writes everything in one
    /// transaction. Refuses while the source or a target has a live process unless --force.
    #[command(
        after_help = "Exit status: 0 done or dry run; 1 a question was declined; 4 refused (running pillow, source without rows) or failed"
    )]
    Split(split::Args),
    /// Merge the checkpoints of several source pillows into one target: the minimum offset
    /// of each partition (CommCare's merge_pillow_checkpoints). The last id is the target.
    ///
    /// Sources that read a topic must have the same partitions of it (restricted to the
    /// target's --topics when given); the plan shows the reprocessing of each partition.
    /// Answering `y` to "Is this amount of reprocessing acceptable y/N?" proceeds (CommCare's
    /// inverted answer is fixed); anything else exits 3.
    #[command(
        after_help = "Exit status: 0 done or dry run; 1 a question was declined; 2 the sources' partitions disagree; 3 the reprocessing was declined; 4 refused (no sources, no rows, running pillow) or failed"
    )]
    Merge(merge::Args),
    /// Move a checkpoint (or one partition of it) to the earliest retained offset, the
    /// high-water mark, an explicit offset, or the first message at or after a time.
    #[command(
        after_help = "Exit status: 0 done or dry run; 1 the question was declined; 4 refused or failed"
    )]
    Reset(reset::Args),
    /// Daily checkpoint history: snapshot, list, restore.
    #[command(subcommand)]
    History(history::Command),
    /// Create offset-0 rows for new partitions of a topic, for every checkpoint that has
    /// rows on the topic (CommCare's add_kafka_partition). Aborts unless both questions are
    /// answered y or yes.
    #[command(
        after_help = "Exit status: 0 done or dry run; 1 a question was declined; 4 refused or failed"
    )]
    AddPartitions(add_partitions::Args),
    /// Check that Kafka can still serve every checkpoint (CommCare's
    /// validate_kafka_pillow_checkpoints): fails naming the checkpoint, the partition, the
    /// offset needed and the first available one.
    #[command(
        after_help = "Exit status: 0 every checkpoint is valid (or --print-only); 5 some checkpoint is invalid; 4 failed"
    )]
    Validate(validate::Args),
    /// Per checkpoint and partition: offset, high-water mark, lag, seconds since the last
    /// checkpoint, time lag (age of the oldest unprocessed change), and the live process
    /// that owns it. With --metrics-port, serves CommCare's
    /// lag gauges in Prometheus format and refreshes them every --interval seconds.
    #[command(visible_alias = "status")]
    Lag(lag::Args),
    /// Which processor holds a pillow back: samples it twice (--interval seconds apart) and
    /// prints its input and processing rates, backlog and catch-up time, each processor's time
    /// per change and share (or own backlog and rate with independent processors), the processor
    /// that holds it back, the catch-up times with it split out, and the split's commands.
    #[command(
        after_help = "Exit status: 0 every pillow keeps up (or never ran); 6 a pillow falls behind, catches up or is stalled; 4 failed"
    )]
    Doctor(doctor::Args),
    /// Which process (and virtual worker) reads which partitions (CommCare's
    /// pillow_topic_assignments, with the dedicated migration process).
    Assignments(assignments::Args),
    /// The status page of every pillow at / (processes, per-partition lag in offsets and
    /// seconds, error rows by type, changes/s over the last hour) and its JSON at
    /// /api/pillows, until Ctrl-C or SIGTERM.
    Serve(serve::Args),
    /// Set a checkpoint to its historical maximum: the history snapshot with the largest sum of
    /// offsets, or with --by-partition the maximum of each partition over the newest 10
    /// (CommCare's fix_checkpoint_after_rewind; two questions).
    #[command(
        after_help = "Exit status: 0 done, dry run or nothing to do; 1 a question was declined; 4 refused (running pillow, no history) or failed"
    )]
    FixCheckpointAfterRewind(fix::AfterRewindArgs),
    /// Set checkpoints to their newest history snapshot before a date; without ids, every
    /// checkpoint with a snapshot before the date, after an extra question (CommCare's
    /// fix_checkpoints_from_date).
    #[command(
        after_help = "Exit status: 0 done, dry run or nothing to do; 1 a question was declined; 4 refused (running pillow, no snapshot before the date) or failed"
    )]
    FixCheckpointsFromDate(fix::FromDateArgs),
    /// Set checkpoints to the offsets of a JSON file {checkpoint_id: {"topic,partition": offset}}
    /// (CommCare's fix_checkpoints_from_file).
    #[command(
        after_help = "Exit status: 0 done, dry run or nothing to do; 1 the question was declined; 4 an invalid file, refused (running pillow) or failed"
    )]
    FixCheckpointsFromFile(fix::FromFileArgs),
    /// Follow topics from their ends and print each change's metadata, partition and offset as
    /// a JSON line until Ctrl-C or --limit (CommCare's tail_kafka).
    #[command(after_help = "Exit status: 0 stopped by Ctrl-C or --limit; 4 failed")]
    TailKafka(kafka::TailArgs),
    /// Scan topics (from --start-date, by Kafka's offsets for times, or the first retained
    /// offset, up to the ends at the start) and print the matching changes as JSON lines
    /// (CommCare's search_kafka_changes).
    #[command(
        after_help = "Exit status: 0 done or --limit reached; 130 interrupted by Ctrl-C; 4 failed"
    )]
    SearchKafkaChanges(kafka::SearchArgs),
    /// Write the changes a checkpoint has not processed yet (from its offsets to the ends) as
    /// gzipped JSON lines: id, seq, deleted, metadata (CommCare's ptop_dump_remaining_changes).
    #[command(
        after_help = "Exit status: 0 done or --limit reached; 130 interrupted by Ctrl-C; 4 refused (no checkpoint rows) or failed"
    )]
    DumpRemainingChanges(kafka::DumpArgs),
    /// Rebuild an Elasticsearch processor's index without stopping its pillow: a new index
    /// filled from the source table while the live pillow writes to both, verified, then the
    /// alias moved; the old index is kept for a rollback (ours; CommCare's 12-step
    /// REINDEX_PROCESS.md and ptop_reindexer_v2 in one command).
    #[command(
        subcommand,
        after_help = "Exit status: 0 done, dry run, or waiting for the keep window; 1 a question was declined; 4 refused or failed (the run keeps its step: resume it); 7 verification found differences (the old index still serves)"
    )]
    Reindex(reindex::Command),
    /// Create the given topics that are missing (CommCare's create_kafka_topics).
    #[command(
        after_help = "Exit status: 0 done, dry run or nothing to do; 1 the question was declined; 4 invalid arguments or failed"
    )]
    CreateKafkaTopics(topics::CreateArgs),
    /// List the given topics (default: every topic of the cluster) with their partition counts
    /// (CommCare's list_kafka_topics).
    ListKafkaTopics(topics::ListArgs),
}

impl Command {
    /// Runs the command; returns its exit status.
    pub async fn exec(self, ui: &dyn Ui) -> anyhow::Result<u8> {
        match self {
            Self::Schema(a) => schema::exec(a, ui).await,
            Self::Run(a) => run::exec(a, ui).await,
            Self::Split(a) => split::exec(a, ui).await,
            Self::Merge(a) => merge::exec(a, ui).await,
            Self::Reset(a) => reset::exec(a, ui).await,
            Self::History(c) => history::exec(c, ui).await,
            Self::AddPartitions(a) => add_partitions::exec(a, ui).await,
            Self::Validate(a) => validate::exec(a, ui).await,
            Self::Lag(a) => lag::exec(a, ui).await,
            Self::Doctor(a) => doctor::exec(a, ui).await,
            Self::Assignments(a) => assignments::exec(a, ui).await,
            Self::Serve(a) => serve::exec(a, ui).await,
            Self::FixCheckpointAfterRewind(a) => fix::exec_after_rewind(a, ui).await,
            Self::FixCheckpointsFromDate(a) => fix::exec_from_date(a, ui).await,
            Self::FixCheckpointsFromFile(a) => fix::exec_from_file(a, ui).await,
            Self::TailKafka(a) => kafka::exec_tail(a, ui).await,
            Self::SearchKafkaChanges(a) => kafka::exec_search(a, ui).await,
            Self::DumpRemainingChanges(a) => kafka::exec_dump(a, ui).await,
            Self::Reindex(c) => reindex::exec(c, ui).await,
            Self::CreateKafkaTopics(a) => topics::exec_create(a, ui).await,
            Self::ListKafkaTopics(a) => topics::exec_list(a, ui).await,
        }
    }
}

/// Runs the command line `args` (the first is the program name) and returns the exit status.
pub fn run<I, T>(args: I, ui: &dyn Ui) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    match Cli::try_parse_from(args) {
        Ok(cli) => block_on(ui, cli.command.exec(ui)),
        Err(e) => usage_error(&e),
    }
}

/// Prints a command-line parse error (or `--help`) and returns its exit status.
pub fn usage_error(e: &clap::Error) -> u8 {
    let _ = e.print();
    u8::try_from(e.exit_code()).unwrap_or(INCONSISTENT)
}

/// Starts logging and a tokio runtime, runs `command` to its end, and returns its exit status;
/// an error is printed (`error: ...`) and becomes its exit status.
pub fn block_on<F>(ui: &dyn Ui, command: F) -> u8
where
    F: Future<Output = anyhow::Result<u8>>,
{
    crate::telemetry::init();
    let result = runtime().and_then(|rt| {
        let result = rt.block_on(command);
        // A blocking librdkafka call that a stop abandoned (metadata of an unreachable
        // broker, up to 30 s) must not hold the exit.
        rt.shutdown_timeout(std::time::Duration::from_secs(1));
        result
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            ui.err(&format!("error: {e:#}"));
            exit_code(&e)
        }
    }
}

/// The multi-threaded runtime the commands run on.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))
}

/// The exit status for an error that ended a command.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<OpsError>() {
        Some(OpsError::Inconsistent(_)) => INCONSISTENT,
        _ => FAILED,
    }
}
