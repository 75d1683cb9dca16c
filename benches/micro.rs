//! Micro benchmarks without services: `ChangeMeta` parse and serialise, the partition layout,
//! chunk de-duplication, and the pillow loop over a memory feed by chunk size.
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
use pillowtop::checkpoint::memory::MemoryCheckpointStore;
use pillowtop::feed::assignment::Layout;
use pillowtop::feed::memory::MemoryFeed;
use pillowtop::feed::{ChangeFeed, FeedItem, TopicPartition};
use pillowtop::pillow::chunk::deduplicate;
use pillowtop::pillow::{Pillow, PillowConfig};
use pillowtop::processor::memory::NoopProcessor;
use pillowtop::retry::memory::MemoryErrorStore;

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
    targets = change_meta, layout, dedup, pillow_loop
}
criterion_main!(benches);
