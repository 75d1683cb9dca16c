//! A TCP proxy in front of a real service that a test can cut and restore: an outage of the
//! service as the pillow sees it (connections reset, new ones refused at once), without
//! stopping the shared service other tests use.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct TcpProxy {
    /// `127.0.0.1:port` of the proxy.
    pub addr: String,
    up: Arc<AtomicBool>,
    /// Bumped on every cut: live connections end when it changes.
    cuts: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TcpProxy {
    pub async fn start(upstream: &str) -> Self {
        let upstream = upstream.to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let up = Arc::new(AtomicBool::new(true));
        let (cuts, _) = watch::channel(0u64);
        let (is_up, cut_rx) = (up.clone(), cuts.subscribe());
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !is_up.load(Ordering::SeqCst) {
                    drop(client); // refused: the service is "down"
                    continue;
                }
                let upstream = upstream.clone();
                let mut cut = cut_rx.clone();
                // Only cuts from now on end this connection.
                cut.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {} // dropping both ends resets the connection
                    }
                });
            }
        });
        Self {
            addr,
            up,
            cuts,
            task,
        }
    }

    /// A proxy in front of the database of `url`, and `url` through the proxy.
    pub async fn for_url(url: &str) -> (Self, String) {
        let upstream = url::Url::parse(url).expect("url");
        let proxy = Self::start(&format!(
            "{}:{}",
            upstream.host_str().expect("host"),
            upstream.port().unwrap_or(5432)
        ))
        .await;
        let mut proxied = upstream;
        let (host, port) = proxy.addr.split_once(':').expect("addr");
        proxied.set_host(Some(host)).expect("host");
        proxied
            .set_port(Some(port.parse().expect("port")))
            .expect("port");
        (proxy, proxied.to_string())
    }

    /// The outage begins: live connections are closed, new ones are closed on accept.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    /// The service is back.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}
