//! A minimal HTTP/1.1 server for the operator endpoints (`/metrics`, the status page and its
//! JSON): one request per connection, `GET` only, routed by path. Meant for a private port
//! (an operator's browser, a scraper), not for the internet.

use std::future::Future;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What a route answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn ok(content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status: 200,
            content_type,
            body: body.into(),
        }
    }

    pub fn error(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: message.into().into_bytes(),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// The path of a `GET` request head (without the query string), or `None` for another method.
fn get_path(head: &str) -> Option<&str> {
    let line = head.lines().next()?;
    let mut parts = line.split_whitespace();
    if parts.next()? != "GET" {
        return None;
    }
    let target = parts.next()?;
    Some(target.split('?').next().unwrap_or(target))
}

/// Serves `handler(path)` on `listener` until `shutdown` is cancelled.
pub async fn serve<H, F>(listener: TcpListener, handler: H, shutdown: CancellationToken)
where
    H: Fn(String) -> F + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    let handler = Arc::new(handler);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((mut stream, _)) = accepted else {
            continue;
        };
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut len = 0;
            // Read the request head (any body is ignored).
            while len < buf.len() {
                match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    stream.read(&mut buf[len..]),
                )
                .await
                {
                    Ok(Ok(0) | Err(_)) | Err(_) => break,
                    Ok(Ok(n)) => {
                        len += n;
                        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                }
            }
            let head = String::from_utf8_lossy(&buf[..len]).into_owned();
            let response = match get_path(&head) {
                Some(path) => handler(path.to_owned()).await,
                None => Response::error(405, "only GET is served"),
            };
            let head = format!(
                "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
                response.status,
                reason(response.status),
                response.content_type,
                response.body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&response.body).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_paths_are_routed_without_their_query() {
        assert_eq!(
            get_path("GET /api/pillows?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some("/api/pillows")
        );
        assert_eq!(get_path("GET / HTTP/1.1\r\n\r\n"), Some("/"));
        assert_eq!(get_path("POST / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(get_path(""), None);
    }

    #[tokio::test]
    async fn serves_each_path_with_its_content_type() {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        tokio::spawn(serve(
            listener,
            |path: String| async move {
                match path.as_str() {
                    "/a" => Response::ok("application/json", "{\"a\":1}"),
                    _ => Response::error(404, "no such page"),
                }
            },
            stop.clone(),
        ));
        for (path, want) in [("/a", "HTTP/1.1 200 OK"), ("/b", "HTTP/1.1 404 Not Found")] {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes())
                .await
                .expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            assert!(out.starts_with(want), "{out}");
            if path == "/a" {
                assert!(out.contains("Content-Type: application/json"), "{out}");
                assert!(out.ends_with("{\"a\":1}"), "{out}");
            }
        }
        stop.cancel();
    }
}
