//! A small HTTP/1.1 fault proxy in front of the real search node.
//!
//! It forwards every request upstream (one upstream connection per request, `Connection:
//! close`, `Accept-Encoding` dropped so bodies stay readable) and answers with
//! `Content-Length` on a kept-alive client connection. Faults, each for the first N matching
//! requests:
//! * `drop_before`: close the client socket without forwarding or answering;
//! * `drop_after`: forward (the node applies the request), then close without answering;
//! * `rewrite_bulk`: for `_bulk` requests, turn every `every`-th item of the node's answer
//!   into a 429 `es_rejected_execution_exception` and set `errors: true`;
//! * `delay_bulk`: forward, then wait `delay` before answering a `_bulk` request.
//!
//! It records the number of actions of every `_bulk` request it receives. Dropping it closes its
//! port and every connection it serves (an outage: connection refused); [`FaultProxy::start_at`]
//! opens the same port again.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Default)]
pub struct Faults {
    pub drop_before: AtomicUsize,
    pub drop_after: AtomicUsize,
    pub rewrite_bulk: AtomicUsize,
    pub rewrite_every: AtomicUsize,
    pub delay_bulk: AtomicUsize,
    pub delay_ms: AtomicUsize,
}

/// Takes one from `counter` if it is positive.
fn take(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

#[derive(Debug, Default)]
pub struct Seen {
    /// Actions per `_bulk` request, in arrival order (including dropped ones).
    pub bulk_actions: Mutex<Vec<usize>>,
    pub requests: AtomicUsize,
    pub dropped: AtomicUsize,
    pub rewritten_items: AtomicUsize,
    pub delayed: AtomicUsize,
}

pub struct FaultProxy {
    pub url: String,
    pub faults: Arc<Faults>,
    pub seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    pub async fn start(upstream: &str) -> Self {
        Self::start_at(upstream, "127.0.0.1:0").await
    }

    /// A proxy on `addr` (a port closed before, to end an outage).
    pub async fn start_at(upstream: &str, addr: &str) -> Self {
        let upstream = url::Url::parse(upstream).expect("upstream url");
        let upstream_addr = format!(
            "{}:{}",
            upstream.host_str().expect("host"),
            upstream.port_or_known_default().expect("port")
        );
        let listener = TcpListener::bind(addr).await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let faults = Arc::new(Faults::default());
        let seen = Arc::new(Seen::default());
        let (f, s) = (faults.clone(), seen.clone());
        let task = tokio::spawn(async move {
            // The connections die with this task (a closed port drops its clients too).
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let (f, s, up) = (f.clone(), s.clone(), upstream_addr.clone());
                connections.spawn(async move {
                    let _ = serve(sock, &up, &f, &s).await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Self {
            url,
            faults,
            seen,
            task,
        }
    }

    pub fn bulk_actions(&self) -> Vec<usize> {
        self.seen.bulk_actions.lock().expect("lock").clone()
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

async fn read_head<R: AsyncBufReadExt + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<(String, Vec<(String, String)>)>> {
    let mut first = String::new();
    if r.read_line(&mut first).await? == 0 {
        return Ok(None);
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    Ok(Some((first.trim_end().to_owned(), headers)))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

async fn read_body<R: AsyncBufReadExt + Unpin>(
    r: &mut R,
    headers: &[(String, String)],
    to_eof: bool,
) -> std::io::Result<Vec<u8>> {
    if header(headers, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let mut body = Vec::new();
        loop {
            let mut size = String::new();
            r.read_line(&mut size).await?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).await?;
            if n == 0 {
                return Ok(body);
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    if let Some(n) = header(headers, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        let mut body = vec![0; n];
        r.read_exact(&mut body).await?;
        return Ok(body);
    }
    let mut body = Vec::new();
    if to_eof {
        r.read_to_end(&mut body).await?;
    }
    Ok(body)
}

async fn serve(sock: TcpStream, upstream: &str, f: &Faults, s: &Seen) -> std::io::Result<()> {
    let (rd, mut wr) = sock.into_split();
    let mut rd = BufReader::new(rd);
    loop {
        let Some((line, headers)) = read_head(&mut rd).await? else {
            return Ok(());
        };
        let mut parts = line.split(' ');
        let method = parts.next().unwrap_or_default().to_owned();
        let path = parts.next().unwrap_or_default().to_owned();
        let body = read_body(&mut rd, &headers, false).await?;
        let req = Request {
            method,
            path,
            headers,
            body,
        };
        s.requests.fetch_add(1, Ordering::SeqCst);
        let is_bulk = req.path.contains("/_bulk");
        if is_bulk {
            let actions = req
                .body
                .split(|b| *b == b'\n')
                .filter(|l| l.starts_with(b"{\"index\":") || l.starts_with(b"{\"delete\":"))
                .count();
            s.bulk_actions.lock().expect("lock").push(actions);
        }
        if take(&f.drop_before) {
            s.dropped.fetch_add(1, Ordering::SeqCst);
            return Ok(()); // closes the socket, unanswered
        }
        let (status_line, resp_headers, mut resp_body) = forward(upstream, &req).await?;
        if take(&f.drop_after) {
            s.dropped.fetch_add(1, Ordering::SeqCst);
            return Ok(());
        }
        if is_bulk && take(&f.rewrite_bulk) {
            let every = f.rewrite_every.load(Ordering::SeqCst).max(1);
            if let Ok(mut v) = serde_json::from_slice::<Value>(&resp_body) {
                if let Some(items) = v["items"].as_array_mut() {
                    for (i, item) in items.iter_mut().enumerate() {
                        if i % every != 0 {
                            continue;
                        }
                        if let Some(obj) = item.as_object_mut() {
                            for (_, r) in obj.iter_mut() {
                                r["status"] = 429.into();
                                r["error"] = serde_json::json!({"type": "es_rejected_execution_exception",
                                    "reason": "rejected execution (injected by the fault proxy)"});
                            }
                            s.rewritten_items.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
                v["errors"] = true.into();
                resp_body = serde_json::to_vec(&v).expect("json");
            }
        }
        if is_bulk && take(&f.delay_bulk) {
            s.delayed.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(
                f.delay_ms.load(Ordering::SeqCst) as u64
            ))
            .await;
        }
        let mut out = format!("{status_line}\r\n");
        for (k, v) in &resp_headers {
            if !["content-length", "transfer-encoding", "connection"]
                .iter()
                .any(|h| k.eq_ignore_ascii_case(h))
            {
                let _ = write!(out, "{k}: {v}\r\n");
            }
        }
        let len = if req.method == "HEAD" {
            header(&resp_headers, "content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        } else {
            resp_body.len()
        };
        let _ = write!(
            out,
            "content-length: {len}\r\nconnection: keep-alive\r\n\r\n"
        );
        wr.write_all(out.as_bytes()).await?;
        if req.method != "HEAD" {
            wr.write_all(&resp_body).await?;
        }
        wr.flush().await?;
    }
}

async fn forward(
    upstream: &str,
    req: &Request,
) -> std::io::Result<(String, Vec<(String, String)>, Vec<u8>)> {
    let mut up = TcpStream::connect(upstream).await?;
    let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.path);
    for (k, v) in &req.headers {
        if ![
            "connection",
            "accept-encoding",
            "content-length",
            "transfer-encoding",
        ]
        .iter()
        .any(|h| k.eq_ignore_ascii_case(h))
        {
            let _ = write!(head, "{k}: {v}\r\n");
        }
    }
    let _ = write!(
        head,
        "content-length: {}\r\nconnection: close\r\n\r\n",
        req.body.len()
    );
    up.write_all(head.as_bytes()).await?;
    up.write_all(&req.body).await?;
    up.flush().await?;
    let mut rd = BufReader::new(up);
    let (status, headers) = read_head(&mut rd)
        .await?
        .ok_or_else(|| std::io::Error::other("upstream closed without answering"))?;
    let body = if req.method == "HEAD" {
        Vec::new()
    } else {
        read_body(&mut rd, &headers, true).await?
    };
    Ok((status, headers, body))
}
