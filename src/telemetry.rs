//! Logging: one global `tracing` subscriber with two outputs.
//!
//! - **stderr**, filtered by `PILLOWTOP_LOG` (default `info`; ANSI colour only when stderr is a
//!   terminal and `NO_COLOR` is unset): the CLI's output, on by default ([`init`]).
//! - **the forward queue** ([`LOG_QUEUE`]): a bounded, non-blocking queue of [`LogRecord`]s that
//!   an embedding front drains on its own thread. The Python front (`src/python/logging.rs`)
//!   drains it on the thread that called `Pillow.run()` and emits each record into Python
//!   `logging`, so tokio's workers never take the GIL. Off until a front asks for it
//!   ([`EmbeddedRun::begin`]), with the most verbose level the front will emit: the filter is
//!   decided here, at the event, so a disabled level costs nothing more than tracing's own check.
//!   Our targets (`pillowtop…`, `librdkafka`) are forwarded at any level; other crates' events
//!   only from `WARN` up (their debug output is for `PILLOWTOP_LOG`).
//!
//! A full queue drops the new record and counts it ([`LogQueue::take_dropped`]); the front reports
//! the count.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Filter, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// Whether the stderr output is on (the CLI; a Python run turns it off unless asked).
static STDERR: AtomicBool = AtomicBool::new(true);
/// The most verbose level forwarded to the queue: 0 off, 1 error … 5 trace.
static FORWARD: AtomicU8 = AtomicU8::new(0);

/// How many records the queue holds before it drops new ones.
pub const LOG_QUEUE_CAPACITY: usize = 10_000;

/// The records waiting for the front (see the module docs).
pub static LOG_QUEUE: LogQueue = LogQueue::new(LOG_QUEUE_CAPACITY);

/// Installs the global subscriber once (later calls, and calls after another subscriber was
/// installed, do nothing). Output goes to stderr; the forward queue is off.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PILLOWTOP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(colour(std::io::IsTerminal::is_terminal(&std::io::stderr())))
        .with_filter(tracing_subscriber::filter::FilterExt::and(
            filter,
            StderrSwitch,
        ));
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(ForwardLayer.with_filter(ForwardFilter))
        .try_init();
}

/// A level as the queue's number (1 error … 5 trace).
fn rank(level: Level) -> u8 {
    match level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

/// Whether `target` is ours (forwarded at any level).
fn ours(target: &str) -> bool {
    target.starts_with("pillowtop") || target == "librdkafka"
}

/// The stderr layer's switch (dynamic: never cached per callsite).
struct StderrSwitch;

impl<S> Filter<S> for StderrSwitch {
    fn enabled(&self, _: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        STDERR.load(Ordering::Relaxed)
    }

    fn callsite_enabled(&self, _: &'static Metadata<'static>) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::sometimes()
    }
}

/// The forward layer's filter: the level the front asked for (dynamic), other crates from WARN.
struct ForwardFilter;

impl ForwardFilter {
    fn wanted(meta: &Metadata<'_>) -> bool {
        let r = rank(*meta.level());
        r <= FORWARD.load(Ordering::Relaxed) && (r <= 2 || ours(meta.target()))
    }
}

impl<S> Filter<S> for ForwardFilter {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        Self::wanted(meta)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> tracing::subscriber::Interest {
        if rank(*meta.level()) > 2 && !ours(meta.target()) {
            // Other crates' debug output is never forwarded: no per-event check for it.
            tracing::subscriber::Interest::never()
        } else {
            tracing::subscriber::Interest::sometimes()
        }
    }
}

/// A structured field's value.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Str(String),
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
}

impl std::fmt::Display for FieldValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Str(s) => f.write_str(s),
            Self::I64(v) => write!(f, "{v}"),
            Self::U64(v) => write!(f, "{v}"),
            Self::F64(v) => write!(f, "{v}"),
            Self::Bool(v) => write!(f, "{v}"),
        }
    }
}

/// One log event, copied out of `tracing` for the front.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    pub level: Level,
    /// The event's target (a module path such as `pillowtop::pillow::run`, or `librdkafka`).
    pub target: &'static str,
    /// The message alone.
    pub message: String,
    /// The message followed by ` name=value` for each field: what a plain formatter shows.
    pub text: String,
    pub fields: Vec<(&'static str, FieldValue)>,
    pub file: Option<&'static str>,
    pub line: Option<u32>,
    /// When the event happened (the front emits it later).
    pub time: SystemTime,
}

#[derive(Default)]
struct Fields {
    message: String,
    fields: Vec<(&'static str, FieldValue)>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.fields
                .push((field.name(), FieldValue::Str(format!("{value:?}"))));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            value.clone_into(&mut self.message);
        } else {
            self.fields
                .push((field.name(), FieldValue::Str(value.to_owned())));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.push((field.name(), FieldValue::I64(value)));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.push((field.name(), FieldValue::U64(value)));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields.push((field.name(), FieldValue::F64(value)));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.push((field.name(), FieldValue::Bool(value)));
    }
}

impl LogRecord {
    /// The record of `event`.
    pub fn from_event(event: &tracing::Event<'_>) -> Self {
        let mut f = Fields::default();
        event.record(&mut f);
        let meta = event.metadata();
        let mut text = f.message.clone();
        for (k, v) in &f.fields {
            use std::fmt::Write as _;
            let _ = write!(text, " {k}={v}");
        }
        Self {
            level: *meta.level(),
            target: meta.target(),
            message: f.message,
            text,
            fields: f.fields,
            file: meta.file(),
            line: meta.line(),
            time: SystemTime::now(),
        }
    }
}

/// Pushes forwarded events into [`LOG_QUEUE`].
struct ForwardLayer;

impl<S: Subscriber> Layer<S> for ForwardLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        LOG_QUEUE.push(LogRecord::from_event(event));
    }
}

/// A bounded queue of records: `push` never waits for the consumer (the lock is held only to
/// move a record in, or to swap the whole queue out) and drops what does not fit, counting it.
pub struct LogQueue {
    records: Mutex<VecDeque<LogRecord>>,
    capacity: usize,
    dropped: AtomicU64,
}

impl LogQueue {
    pub const fn new(capacity: usize) -> Self {
        Self {
            records: Mutex::new(VecDeque::new()),
            capacity,
            dropped: AtomicU64::new(0),
        }
    }

    /// Queues `record`; false (and one more drop counted) when the queue is full.
    pub fn push(&self, record: LogRecord) -> bool {
        if let Ok(mut q) = self.records.lock() {
            if q.len() < self.capacity {
                q.push_back(record);
                return true;
            }
        }
        self.dropped.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Every queued record, oldest first; the queue is empty afterwards.
    pub fn drain(&self) -> Vec<LogRecord> {
        self.records
            .lock()
            .map(|mut q| Vec::from(std::mem::take(&mut *q)))
            .unwrap_or_default()
    }

    /// Records dropped since the last call.
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.records.lock().map_or(0, |q| q.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where an embedded run's log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOutput {
    /// Only to the front (Python `logging`): the default from Python.
    Forward,
    /// Only to stderr, as the CLI writes them.
    Stderr,
    /// Both.
    Both,
}

/// Active embedded runs, and the stderr switch to restore when the last one ends.
static RUNS: Mutex<(usize, bool)> = Mutex::new((0, true));

/// While alive, events go where an embedded run (a Python pillow) asked: see [`LogOutput`].
/// Dropping the last one restores the stderr output and turns forwarding off, so that later
/// operations from the same process log to stderr again.
#[must_use]
pub struct EmbeddedRun(());

impl EmbeddedRun {
    /// `level`: the most verbose level the front emits (`None` forwards nothing).
    pub fn begin(output: LogOutput, level: Option<Level>) -> Self {
        init();
        if let Ok(mut runs) = RUNS.lock() {
            if runs.0 == 0 {
                runs.1 = STDERR.load(Ordering::Relaxed);
            }
            runs.0 += 1;
        }
        let forward = matches!(output, LogOutput::Forward | LogOutput::Both);
        STDERR.store(
            matches!(output, LogOutput::Stderr | LogOutput::Both),
            Ordering::Relaxed,
        );
        FORWARD.store(
            if forward { level.map_or(0, rank) } else { 0 },
            Ordering::Relaxed,
        );
        Self(())
    }
}

impl Drop for EmbeddedRun {
    fn drop(&mut self) {
        if let Ok(mut runs) = RUNS.lock() {
            runs.0 = runs.0.saturating_sub(1);
            if runs.0 == 0 {
                STDERR.store(runs.1, Ordering::Relaxed);
                FORWARD.store(0, Ordering::Relaxed);
            }
        }
    }
}

/// Colour codes only on a terminal, and never with `NO_COLOR` set to anything
/// (<https://no-color.org>).
fn colour(stderr_is_terminal: bool) -> bool {
    stderr_is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(message: &str) -> LogRecord {
        LogRecord {
            level: Level::INFO,
            target: "pillowtop::test",
            message: message.to_owned(),
            text: message.to_owned(),
            fields: Vec::new(),
            file: None,
            line: None,
            time: SystemTime::now(),
        }
    }

    #[test]
    fn the_queue_is_bounded_and_counts_what_it_drops() {
        let q = LogQueue::new(3);
        for i in 0..5 {
            let kept = q.push(record(&format!("m{i}")));
            assert_eq!(kept, i < 3, "record {i}");
        }
        assert_eq!(q.len(), 3);
        assert_eq!(q.take_dropped(), 2);
        assert_eq!(q.take_dropped(), 0, "the count restarts once taken");
        let drained: Vec<String> = q.drain().into_iter().map(|r| r.message).collect();
        assert_eq!(
            drained,
            ["m0", "m1", "m2"],
            "oldest first, the overflow dropped"
        );
        assert!(q.is_empty());
        assert!(q.push(record("again")), "room again after a drain");
    }

    #[test]
    fn pushing_never_waits_for_a_slow_consumer() {
        // Many producer threads at once while the consumer drains: every record is either
        // delivered or counted as dropped, none is lost silently.
        let q = std::sync::Arc::new(LogQueue::new(100));
        let producers: Vec<_> = (0..4)
            .map(|t| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        q.push(record(&format!("{t}-{i}")));
                    }
                })
            })
            .collect();
        let mut delivered = 0;
        while producers.iter().any(|p| !p.is_finished()) {
            delivered += q.drain().len();
        }
        for p in producers {
            p.join().expect("producer");
        }
        delivered += q.drain().len();
        let dropped = q.take_dropped();
        assert_eq!(delivered as u64 + dropped, 4000, "{delivered} + {dropped}");
    }

    #[test]
    fn events_become_records_with_their_fields() {
        // A local subscriber with only the forward layer, at every level.
        let subscriber = tracing_subscriber::registry().with(ForwardLayer);
        let queue_before = LOG_QUEUE.drain().len();
        let _ = queue_before;
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "pillowtop::test_fields", pillow = "p1", partition = 3_i32, lag = 1.5, ok = true, "checkpoint {}", "written");
        });
        let mine: Vec<LogRecord> = LOG_QUEUE
            .drain()
            .into_iter()
            .filter(|r| r.target == "pillowtop::test_fields")
            .collect();
        assert_eq!(mine.len(), 1, "{mine:?}");
        let r = &mine[0];
        assert_eq!(r.level, Level::INFO);
        assert_eq!(r.message, "checkpoint written");
        assert_eq!(
            r.fields,
            vec![
                ("pillow", FieldValue::Str("p1".into())),
                ("partition", FieldValue::I64(3)),
                ("lag", FieldValue::F64(1.5)),
                ("ok", FieldValue::Bool(true)),
            ]
        );
        assert_eq!(
            r.text,
            "checkpoint written pillow=p1 partition=3 lag=1.5 ok=true"
        );
        assert!(r.line.is_some() && r.file.is_some());
    }

    #[test]
    fn the_forward_filter_takes_our_targets_at_the_asked_level_and_others_from_warn() {
        use tracing::callsite::Identifier;
        use tracing::metadata::Kind;
        struct Cs;
        impl tracing::Callsite for Cs {
            fn set_interest(&self, _: tracing::subscriber::Interest) {}
            fn metadata(&self) -> &Metadata<'_> {
                unreachable!()
            }
        }
        static CS: Cs = Cs;
        let meta = |target: &'static str, level: Level| {
            Metadata::new(
                "e",
                target,
                level,
                None,
                None,
                None,
                tracing::field::FieldSet::new(&[], Identifier(&CS)),
                Kind::EVENT,
            )
        };
        let saved = FORWARD.swap(rank(Level::DEBUG), Ordering::Relaxed);
        assert!(ForwardFilter::wanted(&meta(
            "pillowtop::pillow::run",
            Level::DEBUG
        )));
        assert!(!ForwardFilter::wanted(&meta(
            "pillowtop::pillow::run",
            Level::TRACE
        )));
        assert!(ForwardFilter::wanted(&meta("librdkafka", Level::DEBUG)));
        assert!(!ForwardFilter::wanted(&meta(
            "tokio_postgres::query",
            Level::DEBUG
        )));
        assert!(ForwardFilter::wanted(&meta(
            "tokio_postgres::query",
            Level::WARN
        )));
        FORWARD.store(0, Ordering::Relaxed);
        assert!(
            !ForwardFilter::wanted(&meta("pillowtop::pillow::run", Level::ERROR)),
            "off"
        );
        FORWARD.store(saved, Ordering::Relaxed);
    }
}
