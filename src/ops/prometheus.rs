//! Metrics in Prometheus text format (version 0.0.4) on a plain HTTP endpoint. CommCare's dotted
//! names become Prometheus names with `_` (`commcare.change_feed.need_processing` →
//! `commcare_change_feed_need_processing`); tags become labels.
//!
//! The server answers every `GET` with the current rendering; it is meant for a scraper on a
//! private port, not for the internet.

use std::fmt::Write as _;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Tags;

/// A metric name in Prometheus form.
pub fn metric_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders `(name, tags, value)` samples, grouped by name.
pub fn render(samples: &[(&str, Tags, f64)]) -> String {
    let mut sorted: Vec<&(&str, Tags, f64)> = samples.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0).then_with(|| a.1.cmp(&b.1)));
    let mut out = String::new();
    let mut last = "";
    for (name, tags, value) in sorted {
        let prom = metric_name(name);
        if *name != last {
            let _ = writeln!(out, "# HELP {prom} {name}");
            last = name;
        }
        out.push_str(&prom);
        if !tags.is_empty() {
            out.push('{');
            for (i, (k, v)) in tags.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{}=\"{}\"", metric_name(k), escape(v));
            }
            out.push('}');
        }
        let _ = writeln!(out, " {value}");
    }
    out
}

/// Renders histograms as Prometheus histograms: `_bucket{le=…}` (cumulative), `_sum`, `_count`.
pub fn render_histograms(histograms: &[(&str, Tags, crate::metrics::Histogram)]) -> String {
    let mut out = String::new();
    let mut last = "";
    for (name, tags, h) in histograms {
        let prom = metric_name(name);
        if *name != last {
            let _ = writeln!(out, "# HELP {prom} {name}\n# TYPE {prom} histogram");
            last = name;
        }
        let labels: Vec<String> = tags
            .iter()
            .map(|(k, v)| format!("{}=\"{}\"", metric_name(k), escape(v)))
            .collect();
        for (bound, n) in h.cumulative() {
            let le = if bound.is_infinite() {
                "+Inf".to_owned()
            } else {
                bound.to_string()
            };
            let mut l = labels.clone();
            l.push(format!("le=\"{le}\""));
            let _ = writeln!(out, "{prom}_bucket{{{}}} {n}", l.join(","));
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", labels.join(","))
        };
        let _ = writeln!(out, "{prom}_sum{braces} {}", h.sum);
        let _ = writeln!(out, "{prom}_count{braces} {}", h.count);
    }
    out
}

/// Everything `memory` holds, counters and gauges then histograms: what `--metrics-port` serves
/// (`pillowtop run`, `Pillow.run(metrics_port=…)`).
pub fn render_recorder(memory: &crate::metrics::MemoryRecorder) -> String {
    let mut out = render(&memory.snapshot());
    out.push_str(&render_histograms(&memory.histograms()));
    out
}

/// Serves `render()` on `listener` (every `GET` path) until `shutdown` is cancelled.
pub async fn serve<F>(listener: TcpListener, render: F, shutdown: CancellationToken)
where
    F: Fn() -> String + Send + Sync + 'static,
{
    let render = Arc::new(render);
    super::http::serve(
        listener,
        move |_path: String| {
            let render = Arc::clone(&render);
            async move { super::http::Response::ok("text/plain; version=0.0.4", render()) }
        },
        shutdown,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn renders_commcare_names_with_labels() {
        let s = render(&[
            (
                "commcare.change_feed.need_processing",
                vec![
                    ("pillow_name", "case-pillow".into()),
                    ("topic", "case-sql-0".into()),
                ],
                12.0,
            ),
            ("commcare.change_feed.changes.count", vec![], 3.0),
        ]);
        assert_eq!(
            s,
            "# HELP commcare_change_feed_changes_count commcare.change_feed.changes.count\n\
             commcare_change_feed_changes_count 3\n\
             # HELP commcare_change_feed_need_processing commcare.change_feed.need_processing\n\
             commcare_change_feed_need_processing{pillow_name=\"case-pillow\",topic=\"case-sql-0\"} 12\n"
        );
        assert_eq!(escape("a\"b\\"), "a\\\"b\\\\");
    }

    #[test]
    fn renders_histograms_with_cumulative_buckets() {
        use crate::metrics::Recorder as _;
        let m = crate::metrics::MemoryRecorder::new();
        let tags = vec![("processor", "es".to_owned())];
        m.histogram(crate::metrics::PROCESSOR_TIMING, tags.clone(), 0.05);
        m.histogram(crate::metrics::PROCESSOR_TIMING, tags, 20.0);
        m.counter(crate::metrics::CHANGES_COUNT, vec![], 2.0);
        let s = render_recorder(&m);
        assert!(s.contains("commcare_change_feed_changes_count 2\n"), "{s}");
        assert!(
            s.contains("# TYPE commcare_change_feed_processor_timing histogram\n"),
            "{s}"
        );
        assert!(
            s.contains(
                "commcare_change_feed_processor_timing_bucket{processor=\"es\",le=\"0.03\"} 0\n"
            ),
            "{s}"
        );
        assert!(
            s.contains(
                "commcare_change_feed_processor_timing_bucket{processor=\"es\",le=\"0.1\"} 1\n"
            ),
            "{s}"
        );
        assert!(
            s.contains(
                "commcare_change_feed_processor_timing_bucket{processor=\"es\",le=\"+Inf\"} 2\n"
            ),
            "{s}"
        );
        assert!(
            s.contains("commcare_change_feed_processor_timing_sum{processor=\"es\"} 20.05\n"),
            "{s}"
        );
        assert!(
            s.contains("commcare_change_feed_processor_timing_count{processor=\"es\"} 2\n"),
            "{s}"
        );
    }

    #[tokio::test]
    async fn serves_the_rendering_over_http() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let token = CancellationToken::new();
        let server = tokio::spawn(serve(listener, || "x 1\n".to_owned(), token.clone()));
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut body = String::new();
        s.read_to_string(&mut body).await.expect("read");
        assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
        assert!(body.ends_with("\r\n\r\nx 1\n"), "{body}");
        token.cancel();
        server.await.expect("server stops");
    }
}
