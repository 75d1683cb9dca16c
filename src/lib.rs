//! # pillowtop
//!
//! A CommCare-compatible pillowtop: Kafka change feeds run through processors into
//! Elasticsearch and PostgreSQL, with per-partition checkpoints in PostgreSQL.
//!
//! ```text
//!  Kafka topics ──▶ feed (manual assignment, reader task, bounded channel)
//!                     │ FeedItem: Change | Invalid | Tick | OffsetOutOfRange
//!                     ▼
//!                  pillow loop: buffer → chunk (dedup, batch then serial processors)
//!                     │ failures → pillow_retry_pillowerror   (crash if that fails)
//!                     ▼
//!                  offset tracker + checkpoint policy → pillowtop_kafkacheckpoint
//! ```
//!
//! * **Checkpoint rule.** The stored value is the next offset to read: `last handled + 1`, or
//!   the untouched start offset for a partition that handled nothing. It is written only after
//!   every processor finished the chunk and its failures were recorded. Delivery is
//!   at-least-once; processors must be idempotent.
//! * **Threading.** Kafka, PostgreSQL and search-engine I/O run on tokio. The pillow loop is a
//!   future; the Python front drives it with `block_on` on the thread that called `run()`, so
//!   Python processors run on that thread, once per chunk, and tokio workers never take the GIL.
//! * **Shutdown order.** Cancel the token → the current chunk finishes → the buffer is flushed →
//!   the checkpoint is written → the liveness row is removed → `run` returns.
//! * **Known issues.** See `ARCHITECTURE.md` and the issue tracker.
//!
//! The core never mentions Python: `pyo3` appears only in `src/python/`, behind the `python`
//! feature.

/// The global allocator of every program built with this crate (the `pillowtop` binary, the
/// Python extension module, tests and benches), behind the default `mimalloc` feature. Measured
/// on the engine bench: glibc's malloc and free took ~20% of the CPU, because changes are
/// allocated on the feed's reader threads and freed on the pillow's thread.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod assembly;
pub mod backoff;
pub mod change;
#[cfg(feature = "cli")]
pub mod cli;
pub mod config;
pub mod docstore;
pub mod error;
pub mod feed;
pub mod hash;
pub mod metrics;
pub mod ops;
pub mod partition;
pub mod path;
pub mod pg;
pub mod pillow;
pub mod processor;
pub mod retry;
pub mod store;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(feature = "python")]
mod python;

pub use error::{Error, Result};

/// The crate version (also the Python package's `__version__`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
