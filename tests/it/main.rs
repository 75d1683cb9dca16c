//! Integration tests against the real services of `tests/services/` (Kafka, PostgreSQL and the
//! search engine). One binary: `cargo test --features integration-tests --test it`.

// Tests report what they measured on stderr, and end-to-end scenarios read best as one function.
#![allow(
    clippy::print_stderr,
    clippy::too_many_lines,
    clippy::items_after_statements,
    unreachable_pub
)]

mod commands;
mod demo;
mod deploy;
mod doctor;
mod elasticsearch;
mod es_processor;
mod fault_proxy;
mod kafka;
mod lanes;
mod lanes_retry;
mod lanes_split_kill;
mod merge_online;
mod ops;
mod outage;
mod pg_processor;
mod pillow;
mod postgres;
mod reindex;
mod reindex_table;
mod runner;
mod split_online_shared;
mod stall;
mod stop;
mod support;
mod tcp_proxy;
