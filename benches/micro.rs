//! Micro benchmarks without services: `ChangeMeta` parse and serialise, the partition layout,
//! chunk de-duplication, Elasticsearch bulk-body building, and the pillow loop over a memory
//! feed by chunk size.
//!
//! ```text
//! cargo bench --features testing --bench micro            # about a minute
//! cargo bench --features testing --bench micro -- --quick
//! ```

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use pillowtop::change::{Change, ChangeMeta};
use pillowtop::feed::assignment::Layout;
use pillowtop::feed::memory::MemoryFeed;
use pillowtop::feed::{ChangeFeed, FeedItem, TopicPartition};
use pillowtop::pillow::chunk::deduplicate;
use pillowtop::pillow::{Pillow, PillowConfig};
use pillowtop::processor::elasticsearch::bulk::BulkBody;
use pillowtop::processor::memory::NoopProcessor;
use pillowtop::store::checkpoints::memory::MemoryCheckpointStore;
use pillowtop::store::errors::memory::MemoryErrorStore;

const TOPIC: &str = "form-sql";

/// A change as CommCare publishes a SQL form.
fn typical_meta(i: u64) -> ChangeMeta {
    let mut meta = ChangeMeta::new(format!("{:016x}{i:016x}", 0x5eed_u64), "sql", TOPIC);
    meta.document_type = Some("XFormInstance".into());
    meta.document_subtype = Some("http://openrosa.org/formdesigner/5A4B1D5C-BENCH".into());
    meta.domain = Some("bench-domain".into());
    meta
}

fn change_meta(c: &mut Criterion) {
    let meta = typical_meta(1);
    let body = meta.to_json();
    let mut g = c.benchmark_group("change_meta");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("parse", |b| {
        b.iter(|| ChangeMeta::parse(black_box(body.as_bytes())).expect("a valid change"));
    });
    g.bench_function("to_json", |b| b.iter(|| black_box(&meta).to_json()));
    g.finish();
}

fn layout(c: &mut Criterion) {
    let all: Vec<TopicPartition> = (0..128).map(|p| TopicPartition::new(TOPIC, p)).collect();
    let mut g = c.benchmark_group("layout_assign_128");
    for (name, dedicated) in [("normal", false), ("dedicated", true)] {
        let layout = Layout {
            num_processes: 4,
            process_num: 1,
            dedicated_migration_process: dedicated,
        };
        g.bench_function(name, |b| {
            b.iter(|| {
                black_box(&layout)
                    .assign(black_box(&all))
                    .expect("a valid layout")
            });
        });
    }
    g.finish();
}

fn dedup(c: &mut Criterion) {
    // 1000 changes over 900 documents: every 10th change repeats an earlier document.
    let chunk: Vec<Change> = (0..1000_u64)
        .map(|i| {
            let doc = if i % 10 == 9 { i - 5 } else { i };
            let body = typical_meta(doc).to_json();
            Change::from_message(TOPIC, 0, i64::try_from(i).expect("small"), body.as_bytes())
                .expect("a valid change")
        })
        .collect();
    let mut g = c.benchmark_group("deduplicate");
    g.throughput(Throughput::Elements(chunk.len() as u64));
    g.bench_function("1000_changes_10pct_dup", |b| {
        b.iter_batched(|| chunk.clone(), deduplicate, BatchSize::SmallInput);
    });
    g.finish();
}

/// A CommCare-like form document of about 1.5 KB.
fn typical_form(i: u64) -> serde_json::Value {
    let id = format!("{:016x}{i:016x}", 0x5eed_u64);
    serde_json::json!({
        "_id": id, "_rev": "1-abc", "doc_type": "XFormInstance", "domain": "bench-domain",
        "xmlns": "http://openrosa.org/formdesigner/5A4B1D5C-BENCH", "received_on": "2024-01-02T03:04:05.678901Z",
        "version": i,
        "form": {
            "@name": "Household visit", "case": {"@case_id": format!("case-{i}"), "update": {"visits": i % 17, "status": "open"}},
            "meta": {"instanceID": id, "userID": "u-1234567890abcdef", "username": "chw.one", "timeStart": "2024-01-02T03:00:00Z",
                     "timeEnd": "2024-01-02T03:04:00Z", "deviceID": "device-42", "appVersion": "CommCare Android v2.53"},
            "questions": (0..20).map(|q| (format!("q{q}"), serde_json::json!(format!("answer {q} to the question")))).collect::<serde_json::Map<_, _>>(),
        },
    })
}

fn es_bulk_body(c: &mut Criterion) {
    let docs: Vec<(String, serde_json::Value)> = (0..1000_u64)
        .map(|i| (format!("{:016x}{i:016x}", 0x5eed_u64), typical_form(i)))
        .collect();
    let build = |docs: &[(String, serde_json::Value)], version: bool| {
        let mut body = BulkBody::with_capacity(docs.len() * 1600, docs.len());
        for (i, (id, doc)) in docs.iter().enumerate() {
            let v = version.then(|| doc["version"].as_u64().unwrap_or(0));
            body.push_index(i, id, v, doc).expect("a valid document");
        }
        body
    };
    let bytes = build(&docs, false).bytes().len() as u64;
    let mut g = c.benchmark_group("es_bulk_body");
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("build_1000_forms", |b| {
        b.iter(|| build(black_box(&docs), false));
    });
    g.bench_function("build_1000_forms_external_version", |b| {
        b.iter(|| build(black_box(&docs), true));
    });
    let body = build(&docs, false);
    g.bench_function("split_1000_by_100_actions_256k", |b| {
        b.iter(|| black_box(&body).batches(100, 256 * 1024));
    });
    g.bench_function("gather_every_other_of_1000", |b| {
        let every_other: Vec<usize> = (0..1000).step_by(2).collect();
        b.iter(|| black_box(&body).gather(&every_other));
    });
    g.finish();
}

fn pillow_loop(c: &mut Criterion) {
    const CHANGES: u64 = 100_000;
    const PARTITIONS: i32 = 8;
    let mut feed = MemoryFeed::new(&[TOPIC], PARTITIONS);
    for i in 0..CHANGES {
        let meta = typical_meta(i);
        let partition = i32::try_from(i).expect("small") % PARTITIONS;
        feed.push(TOPIC, partition, Some(&meta.document_id), meta.to_json());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut g = c.benchmark_group("pillow_loop");
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Elements(CHANGES));
    // The feed alone (copy and parse each message), to tell the loop's own cost from it.
    g.bench_function("feed_only", |b| {
        b.iter_batched(
            || feed.clone(),
            |mut feed| {
                rt.block_on(async {
                    let positions: Vec<_> = (0..PARTITIONS)
                        .map(|p| (TopicPartition::new(TOPIC, p), 0))
                        .collect();
                    feed.assign(&positions).await.expect("assign");
                    let mut n = 0_u64;
                    while let Some(item) = feed.next().await.expect("next") {
                        n += u64::from(matches!(item, FeedItem::Change(_)));
                    }
                    assert_eq!(n, CHANGES, "every change is read");
                });
                feed
            },
            BatchSize::PerIteration,
        );
    });
    for chunk in [10, 100] {
        g.bench_with_input(BenchmarkId::new("chunk", chunk), &chunk, |b, &chunk| {
            b.iter_batched(
                || {
                    let mut config = PillowConfig::new("bench", "bench");
                    config.chunk_size = chunk;
                    config.checkpoint_frequency = 1000;
                    Pillow::new(
                        config,
                        Box::new(feed.clone()),
                        vec![Box::new(NoopProcessor { batch: true })],
                        Arc::new(MemoryCheckpointStore::new()),
                        Arc::new(MemoryErrorStore::new()),
                    )
                },
                |mut pillow| {
                    let shutdown = tokio_util::sync::CancellationToken::new();
                    let summary = rt.block_on(pillow.run(&shutdown)).expect("the loop runs");
                    assert_eq!(summary.changes, CHANGES, "every change is handled");
                    pillow
                },
                BatchSize::PerIteration,
            );
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = change_meta, layout, dedup, es_bulk_body, pillow_loop
}
criterion_main!(benches);
