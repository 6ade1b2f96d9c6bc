//! TCP between nodes: length-delimited frames, a handshake, one outbound
//! connection per peer with reconnect and backoff.
//!
//! Each direction uses its own connection: a node writes to a peer over the
//! connection it opened and reads what the peer opened to it. Anything bad a
//! peer sends (a wrong cluster name, an oversized or undecodable frame) closes
//! that one connection with a typed, logged error; the node and its other peers
//! carry on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::codec::Framed;

use super::frame_codec::FrameCodec;

use super::{Inboxes, SendError, Transport, TransportStats};
use crate::envelope::PROTOCOL_VERSION;
use crate::{Channel, Envelope, FrameError, NodeAddr, NodeId};

/// The largest frame before the handshake has finished (a hello is some
/// tens of bytes): a connection that has not proven itself cannot make the
/// node buffer a full-size frame.
const HANDSHAKE_FRAME_MAX: usize = 4096;

/// Settings of a [`TcpTransport`].
#[derive(Debug, Clone)]
pub struct TcpSettings {
    /// Only peers presenting the same cluster name are accepted.
    pub cluster_name: String,
    /// This node.
    pub node: NodeId,
    /// Where to listen (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Largest frame sent or accepted, in bytes (default 4 MiB).
    pub max_frame_size: usize,
    /// Frames queued per peer while it is slow or unreachable (default 10 000).
    pub send_queue: usize,
    /// Envelopes buffered per channel before received ones are dropped (default 65 536).
    pub inbox_capacity: usize,
    /// Limit on connecting plus handshaking (default 5 s).
    pub handshake_timeout: Duration,
    /// First reconnect delay, doubled after each failure (default 100 ms).
    pub backoff_min: Duration,
    /// Largest reconnect delay (default 5 s).
    pub backoff_max: Duration,
    /// The address peers should dial to reach this node, sent in the
    /// handshake. Required when `listen` is a wildcard such as `0.0.0.0`;
    /// defaults to the bound address.
    pub advertise: Option<NodeAddr>,
}

impl TcpSettings {
    /// Defaults for `node` of `cluster_name` listening on `listen`.
    pub fn new(cluster_name: impl Into<String>, node: NodeId, listen: SocketAddr) -> Self {
        Self {
            cluster_name: cluster_name.into(),
            node,
            listen,
            max_frame_size: 4 * 1024 * 1024,
            send_queue: 10_000,
            inbox_capacity: 65_536,
            handshake_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            advertise: None,
        }
    }
}

/// Why a connection was refused or closed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The socket failed, or the peer sent a frame above the maximum size.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A frame was not a valid envelope.
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    /// The handshake failed or was refused.
    #[error("handshake: {0}")]
    Handshake(String),
    /// The peer sent an envelope claiming another sender than it shook hands as.
    #[error("envelope from {claimed} on the connection of {peer}")]
    Spoofed {
        /// Who the connection belongs to.
        peer: NodeId,
        /// Who the envelope claimed to be from.
        claimed: NodeId,
    },
    /// The peer closed the connection.
    #[error("closed by peer")]
    Closed,
}

#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    protocol_version: u8,
    cluster_name: String,
    node: NodeId,
    listen: NodeAddr,
}

#[derive(Debug, Serialize, Deserialize)]
enum HelloReply {
    Accepted,
    Refused(String),
}

/// A node's TCP endpoint. Dropping it closes every connection (a crash, as
/// far as peers can tell).
pub struct TcpTransport {
    inner: Arc<Inner>,
    local_addr: SocketAddr,
}

struct Inner {
    settings: TcpSettings,
    advertised: NodeAddr,
    inboxes: Inboxes,
    peers: Mutex<HashMap<NodeId, Peer>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

struct Peer {
    addr: NodeAddr,
    queue: mpsc::Sender<Bytes>,
    task: JoinHandle<()>,
}

impl TcpTransport {
    /// Binds the listener and starts accepting peers.
    pub async fn bind(settings: TcpSettings) -> std::io::Result<Self> {
        let listener = TcpListener::bind(settings.listen).await?;
        let local_addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            inboxes: Inboxes::new(settings.node, settings.inbox_capacity),
            advertised: settings
                .advertise
                .clone()
                .unwrap_or_else(|| NodeAddr::from(local_addr)),
            settings,
            peers: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
        });
        let accept = tokio::spawn(accept_loop(Arc::clone(&inner), listener));
        lock(&inner.tasks).push(accept);
        tracing::info!(node = %inner.settings.node, %local_addr, "tcp transport listening");
        Ok(Self { inner, local_addr })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        for task in lock(&self.inner.tasks).drain(..) {
            task.abort();
        }
        for (_, peer) in lock(&self.inner.peers).drain() {
            peer.task.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Transport for TcpTransport {
    fn local_node(&self) -> NodeId {
        self.inner.settings.node
    }

    fn send(&self, to: NodeId, channel: Channel, payload: Bytes) -> Result<(), SendError> {
        let frame = Envelope {
            from: self.inner.settings.node,
            to,
            channel,
            payload,
        }
        .encode();
        let max = self.inner.settings.max_frame_size;
        if frame.len() > max {
            return Err(SendError::TooLarge {
                size: frame.len(),
                max,
            });
        }
        if to == self.inner.settings.node {
            // Loopback: same codec, no socket.
            self.inner.inboxes.sent.fetch_add(1, Ordering::Relaxed);
            match Envelope::decode(frame) {
                Ok(envelope) => self.inner.inboxes.deliver(envelope),
                Err(error) => tracing::error!(%error, "own frame undecodable"),
            }
            return Ok(());
        }
        let peers = lock(&self.inner.peers);
        let peer = peers.get(&to).ok_or(SendError::UnknownPeer(to))?;
        match peer.queue.try_send(frame) {
            Ok(()) => {
                self.inner.inboxes.sent.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.inner
                    .inboxes
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(node = %self.inner.settings.node, peer = %to, "send queue full, message dropped");
                Err(SendError::QueueFull {
                    peer: to,
                    capacity: self.inner.settings.send_queue,
                })
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::Closed(to)),
        }
    }

    fn subscribe(&self, channel: Channel) -> mpsc::Receiver<Envelope> {
        self.inner.inboxes.subscribe(channel)
    }

    fn learn_address(&self, node: NodeId, addr: &NodeAddr) {
        self.inner.learn(node, addr);
    }

    fn stats(&self) -> TransportStats {
        self.inner.inboxes.stats()
    }
}

impl Inner {
    /// Starts (or re-points) the outbound connection to `node`.
    fn learn(self: &Arc<Self>, node: NodeId, addr: &NodeAddr) {
        if node == self.settings.node {
            return;
        }
        let mut peers = lock(&self.peers);
        if peers.get(&node).is_some_and(|p| &p.addr == addr) {
            return;
        }
        let (queue, rx) = mpsc::channel(self.settings.send_queue.max(1));
        let task = tokio::spawn(outbound(Arc::clone(self), node, addr.clone(), rx));
        if let Some(old) = peers.insert(
            node,
            Peer {
                addr: addr.clone(),
                queue,
                task,
            },
        ) {
            old.task.abort();
        }
        tracing::debug!(node = %self.settings.node, peer = %node, %addr, "peer address learned");
    }

    fn learn_if_unknown(self: &Arc<Self>, node: NodeId, addr: &NodeAddr) {
        if !lock(&self.peers).contains_key(&node) {
            self.learn(node, addr);
        }
    }

    fn hello(&self) -> Hello {
        Hello {
            protocol_version: PROTOCOL_VERSION,
            cluster_name: self.settings.cluster_name.clone(),
            node: self.settings.node,
            listen: self.advertised.clone(),
        }
    }

    /// The codec of a connection whose handshake has not finished: a
    /// stranger gets [`HANDSHAKE_FRAME_MAX`] bytes, not the full limit.
    fn handshake_codec(&self) -> FrameCodec {
        FrameCodec::new(HANDSHAKE_FRAME_MAX.min(self.settings.max_frame_size))
    }
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    // Connection tasks live in the set, so aborting this task closes them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    let inner = Arc::clone(&inner);
                    connections.spawn(async move {
                        if let Err(error) = inbound(&inner, stream).await {
                            tracing::warn!(node = %inner.settings.node, %remote, %error, "inbound connection closed");
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(node = %inner.settings.node, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn inbound(inner: &Arc<Inner>, stream: TcpStream) -> Result<(), ConnectionError> {
    stream.set_nodelay(true)?;
    let mut framed = Framed::new(stream, inner.handshake_codec());
    let first = tokio::time::timeout(inner.settings.handshake_timeout, framed.next())
        .await
        .map_err(|_| ConnectionError::Handshake("no hello within the handshake timeout".into()))?
        .ok_or(ConnectionError::Closed)??;
    let hello: Hello = postcard::from_bytes(&first)
        .map_err(|e| ConnectionError::Handshake(format!("bad hello: {e}")))?;
    let refusal = if hello.protocol_version != PROTOCOL_VERSION {
        Some(format!(
            "protocol version {} (this node speaks {PROTOCOL_VERSION})",
            hello.protocol_version
        ))
    } else if hello.cluster_name != inner.settings.cluster_name {
        Some(format!(
            "cluster `{}` (this node is in `{}`)",
            hello.cluster_name, inner.settings.cluster_name
        ))
    } else {
        None
    };
    if let Some(reason) = refusal {
        inner
            .inboxes
            .refused_handshakes
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(node = %inner.settings.node, peer = %hello.node, %reason, "handshake refused");
        // The reason stays in our log: a stranger learns nothing about the cluster.
        let reply = postcard::to_stdvec(&HelloReply::Refused("handshake refused".into()))
            .map_err(|e| ConnectionError::Handshake(e.to_string()))?;
        framed.send(Bytes::from(reply)).await?;
        return Err(ConnectionError::Handshake(format!(
            "refused {}: {reason}",
            hello.node
        )));
    }
    let reply = postcard::to_stdvec(&HelloReply::Accepted)
        .map_err(|e| ConnectionError::Handshake(e.to_string()))?;
    framed.send(Bytes::from(reply)).await?;
    framed.codec_mut().set_max(inner.settings.max_frame_size);
    let peer = hello.node;
    tracing::debug!(node = %inner.settings.node, %peer, "inbound peer connected");
    // Only for a peer we know nothing about: membership's address wins.
    inner.learn_if_unknown(peer, &hello.listen);
    while let Some(frame) = framed.next().await {
        let frame = frame.inspect_err(|_| {
            inner.inboxes.bad_frames.fetch_add(1, Ordering::Relaxed);
        })?;
        let envelope = Envelope::decode(frame.freeze()).inspect_err(|_| {
            inner.inboxes.bad_frames.fetch_add(1, Ordering::Relaxed);
        })?;
        if envelope.from != peer {
            inner.inboxes.bad_frames.fetch_add(1, Ordering::Relaxed);
            return Err(ConnectionError::Spoofed {
                peer,
                claimed: envelope.from,
            });
        }
        inner.inboxes.deliver(envelope);
    }
    Ok(())
}

/// Keeps one connection to `peer` open and writes queued frames to it.
async fn outbound(
    inner: Arc<Inner>,
    peer: NodeId,
    addr: NodeAddr,
    mut queue: mpsc::Receiver<Bytes>,
) {
    let settings = &inner.settings;
    let mut backoff = settings.backoff_min;
    loop {
        match connect(&inner, &addr).await {
            Ok(mut framed) => {
                tracing::info!(node = %settings.node, %peer, %addr, "connected to peer");
                backoff = settings.backoff_min;
                while let Some(frame) = queue.recv().await {
                    // Batch what is already queued into one flush (one syscall
                    // for a burst instead of one per frame).
                    let mut written = framed.feed(frame).await;
                    while written.is_ok() {
                        match queue.try_recv() {
                            Ok(next) => written = framed.feed(next).await,
                            Err(_) => break,
                        }
                    }
                    if let Err(error) = written.and(SinkExt::<Bytes>::flush(&mut framed).await) {
                        tracing::warn!(node = %settings.node, %peer, %error, "write failed, reconnecting");
                        break;
                    }
                }
                if queue.is_closed() {
                    return;
                }
            }
            Err(error) => {
                tracing::debug!(node = %settings.node, %peer, %addr, %error, ?backoff, "connect failed, backing off");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(settings.backoff_max);
    }
}

async fn connect(
    inner: &Inner,
    addr: &NodeAddr,
) -> Result<Framed<TcpStream, FrameCodec>, ConnectionError> {
    let handshake = async {
        let stream = TcpStream::connect(addr.as_str()).await?;
        stream.set_nodelay(true)?;
        let mut framed = Framed::new(stream, inner.handshake_codec());
        let hello = postcard::to_stdvec(&inner.hello())
            .map_err(|e| ConnectionError::Handshake(e.to_string()))?;
        framed.send(Bytes::from(hello)).await?;
        let reply = framed.next().await.ok_or(ConnectionError::Closed)??;
        match postcard::from_bytes::<HelloReply>(&reply) {
            Ok(HelloReply::Accepted) => {
                framed.codec_mut().set_max(inner.settings.max_frame_size);
                Ok(framed)
            }
            Ok(HelloReply::Refused(reason)) => {
                tracing::warn!(node = %inner.settings.node, %addr, %reason, "peer refused our handshake");
                Err(ConnectionError::Handshake(format!(
                    "refused by peer: {reason}"
                )))
            }
            Err(e) => Err(ConnectionError::Handshake(format!("bad hello reply: {e}"))),
        }
    };
    tokio::time::timeout(inner.settings.handshake_timeout, handshake)
        .await
        .map_err(|_| ConnectionError::Handshake("timed out".into()))?
}
