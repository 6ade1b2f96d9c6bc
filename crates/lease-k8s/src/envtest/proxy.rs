//! A TCP proxy in front of the test API server: the faults a real server
//! cannot inject on one client (cut off, slow), applied below TLS.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Faults {
    cut: bool,
    latency: Duration,
}

/// Forwards loopback TCP connections to one target, with faults; stops
/// (and drops every connection) on drop.
pub struct TcpProxy {
    url: String,
    faults: watch::Sender<Faults>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards to `target` (`host:port`).
    /// Call from within a tokio runtime: the proxy's tasks run on it.
    pub fn start(target: String) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let url = format!("https://{}", listener.local_addr()?);
        let (faults, _) = watch::channel(Faults::default());
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let accept = tokio::spawn(accept_loop(
            listener,
            target,
            faults.clone(),
            Arc::clone(&tasks),
        ));
        lock(&tasks).push(accept);
        Ok(Self { url, faults, tasks })
    }

    /// `https://127.0.0.1:<port>`: give it to [`super::EnvTest::client_via`].
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Cuts (`true`) or restores the link: a cut drops every open connection
    /// and refuses new ones, as a partition from the API server would.
    pub fn cut(&self, cut: bool) {
        self.faults.send_modify(|f| f.cut = cut);
    }

    /// Delays every chunk forwarded in either direction by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        self.faults.send_modify(|f| f.latency = latency);
    }

    /// Restores a healthy link.
    pub fn heal(&self) {
        self.faults.send_replace(Faults::default());
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: String,
    faults: watch::Sender<Faults>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        if faults.borrow().cut {
            drop(inbound);
            continue;
        }
        let rx = faults.subscribe();
        let target = target.clone();
        let task = tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(&target).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            let mut cut = rx.clone();
            tokio::select! {
                () = pipe(ri, wo, rx.clone()) => {}
                () = pipe(ro, wi, rx) => {}
                _ = cut.wait_for(|f| f.cut) => {}
            }
        });
        let mut tasks = lock(&tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    faults: watch::Receiver<Faults>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let latency = faults.borrow().latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
