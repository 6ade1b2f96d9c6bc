//! TCP between nodes: length-delimited frames, optionally inside mutual TLS,
//! a handshake, one outbound connection per peer with reconnect and backoff.
//!
//! Each direction uses its own connection: a node writes to a peer over the
//! connection it opened and reads what the peer opened to it. Anything bad a
//! peer sends (a wrong cluster name, a certificate that is not its own, an
//! oversized or undecodable frame) closes that one connection with a typed,
//! logged error; the node and its other peers carry on. Connections still
//! shaking hands, connections per peer and in all are capped (see
//! [`TcpSettings`]), and every refusal is counted by reason.

mod handshake;
mod settings;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

pub use self::settings::{BindError, TcpSettings};
use super::admission::{Admission, RefusalReason};
use super::frame_codec::FrameCodec;
use super::tls::TlsContext;
use super::{
    EnvelopeHandler, Gathered, Inboxes, Outbox, PayloadWriter, PeerLine, SendError, Transport,
    TransportStats,
};
use crate::envelope::PROTOCOL_VERSION;
use crate::{Channel, Envelope, FrameError, NodeAddr, NodeId};
use handshake::{Accepted, Conn, Hello};

#[cfg(feature = "fuzzing")]
pub(crate) use handshake::{hello_from as handshake_hello, reply_from as handshake_reply};

/// The largest frame before the handshake has finished (a hello is some
/// tens of bytes): a connection that has not proven itself cannot make the
/// node buffer a full-size frame.
const HANDSHAKE_FRAME_MAX: usize = 4096;

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
    /// Our handshake with a peer failed or was refused by it.
    #[error("handshake: {0}")]
    Handshake(String),
    /// We refused a peer's handshake.
    #[error("refused ({reason}): {detail}")]
    Refused {
        /// The counted reason.
        reason: RefusalReason,
        /// What exactly (for our log only, never sent to the peer).
        detail: String,
    },
    /// The peer sent an envelope claiming another sender than it shook hands as.
    #[error("envelope from {claimed} on the connection of {peer}")]
    Spoofed {
        /// Who the connection belongs to.
        peer: NodeId,
        /// Who the envelope claimed to be from.
        claimed: NodeId,
    },
    /// The peer sent nothing for the idle timeout.
    #[error("idle for {0:?}")]
    Idle(Duration),
    /// The peer closed the connection.
    #[error("closed by peer")]
    Closed,
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
    tls: Option<TlsContext>,
    admission: Admission,
    inboxes: Inboxes,
    /// Read on every send; written when an address is learned.
    /// foldhash (seeded per process): looked up on every send.
    peers: RwLock<Peers>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

type Peers = HashMap<NodeId, Peer, foldhash::fast::RandomState>;

struct Peer {
    addr: NodeAddr,
    outbox: Arc<Outbox>,
    task: JoinHandle<()>,
}

impl TcpTransport {
    /// Checks the settings, loads the TLS files if any, binds the listener
    /// and starts accepting peers.
    pub async fn bind(settings: TcpSettings) -> Result<Self, BindError> {
        settings.validate()?;
        let tls = match &settings.tls {
            Some(tls) => Some(TlsContext::load(tls.clone(), &settings.cluster_name)?),
            None => None,
        };
        let io = |source| BindError::Io {
            addr: settings.listen,
            source,
        };
        let listener = TcpListener::bind(settings.listen).await.map_err(io)?;
        let local_addr = listener.local_addr().map_err(io)?;
        let inner = Arc::new(Inner {
            inboxes: Inboxes::new(settings.node, settings.inbox_capacity),
            advertised: settings
                .advertise
                .clone()
                .unwrap_or_else(|| NodeAddr::from(local_addr)),
            tls,
            admission: Admission::new(
                settings.max_pending_handshakes,
                settings.max_connections_per_peer,
                settings.max_inbound_connections,
            ),
            settings,
            peers: RwLock::new(Peers::default()),
            tasks: Mutex::new(Vec::new()),
        });
        let accept = tokio::spawn(accept_loop(Arc::clone(&inner), listener));
        lock(&inner.tasks).push(accept);
        tracing::info!(
            node = %inner.settings.node,
            %local_addr,
            tls = inner.tls.is_some(),
            "tcp transport listening"
        );
        Ok(Self { inner, local_addr })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Inbound connections refused for `reason` since the start.
    pub fn refused(&self, reason: RefusalReason) -> u64 {
        self.inner.admission.refused(reason)
    }

    /// Established inbound connections right now.
    pub fn inbound_connections(&self) -> usize {
        self.inner.admission.established()
    }

    /// A frame to this node itself: same encoding, no socket.
    fn loopback(&self, channel: Channel, payload: &mut PayloadWriter<'_>) -> Result<(), SendError> {
        let node = self.inner.settings.node;
        let mut frame = BytesMut::new();
        crate::envelope::put_header(&mut frame, node, node, channel);
        payload(&mut frame).map_err(SendError::Encode)?;
        let max = self.inner.settings.max_frame_size;
        if frame.len() > max {
            return Err(SendError::TooLarge {
                size: frame.len(),
                max,
            });
        }
        self.inner.inboxes.sent.fetch_add(1, Ordering::Relaxed);
        match Envelope::decode(frame.freeze()) {
            Ok(envelope) => self.inner.inboxes.deliver(envelope),
            Err(error) => tracing::error!(%error, "own frame undecodable"),
        }
        Ok(())
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        for task in lock(&self.inner.tasks).drain(..) {
            task.abort();
        }
        for (_, peer) in self.inner.peers_mut().drain() {
            peer.outbox.retire();
            peer.task.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn queue_full(inner: &Inner, to: NodeId, error: SendError) -> SendError {
    if matches!(error, SendError::QueueFull { .. }) {
        inner
            .inboxes
            .dropped_queue_full
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(node = %inner.settings.node, peer = %to, "send queue full, message dropped");
    }
    error
}

impl Transport for TcpTransport {
    fn local_node(&self) -> NodeId {
        self.inner.settings.node
    }

    fn send_with(
        &self,
        to: NodeId,
        channel: Channel,
        payload: &mut PayloadWriter<'_>,
    ) -> Result<(), SendError> {
        let inner = &*self.inner;
        let node = inner.settings.node;
        if to == node {
            return self.loopback(channel, payload);
        }
        let peers = inner.peers();
        let peer = peers.get(&to).ok_or(SendError::UnknownPeer(to))?;
        peer.outbox
            .push(node, to, channel, payload)
            .map_err(|error| queue_full(inner, to, error))?;
        Ok(())
    }

    fn subscribe(&self, channel: Channel) -> mpsc::Receiver<Envelope> {
        self.inner.inboxes.subscribe(channel)
    }

    fn subscribe_handler(&self, channel: Channel, handler: EnvelopeHandler) {
        self.inner.inboxes.subscribe_handler(channel, handler);
    }

    fn learn_address(&self, node: NodeId, addr: &NodeAddr) {
        if !self.inner.settings.allows(node) {
            // Never dialled: gossip about a node outside the allow-list is
            // not a reason to connect to it.
            tracing::debug!(%node, %addr, "address of a node outside allowed_nodes ignored");
            return;
        }
        self.inner.learn(node, addr);
    }

    fn peer_line(&self, to: NodeId) -> Option<PeerLine> {
        let peers = self.inner.peers();
        let peer = peers.get(&to)?;
        Some(PeerLine::new(
            Arc::clone(&peer.outbox),
            self.inner.settings.node,
            to,
        ))
    }

    fn stats(&self) -> TransportStats {
        let mut stats = self.inner.inboxes.stats();
        // Each outbox counts what it accepted; retired ones were added to
        // the transport's counter when they were replaced.
        let peers = self.inner.peers();
        stats.sent += peers.values().map(|p| p.outbox.accepted()).sum::<u64>();
        stats
    }
}

impl Inner {
    fn peers(&self) -> std::sync::RwLockReadGuard<'_, Peers> {
        self.peers.read().unwrap_or_else(|e| e.into_inner())
    }

    fn peers_mut(&self) -> std::sync::RwLockWriteGuard<'_, Peers> {
        self.peers.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts (or re-points) the outbound connection to `node`.
    fn learn(self: &Arc<Self>, node: NodeId, addr: &NodeAddr) {
        if node == self.settings.node {
            return;
        }
        let mut peers = self.peers_mut();
        if peers.get(&node).is_some_and(|p| &p.addr == addr) {
            return;
        }
        let outbox = Arc::new(Outbox::new(
            self.settings.send_queue,
            self.settings.max_frame_size,
        ));
        let new_outbox = Arc::clone(&outbox);
        let task = tokio::spawn(outbound(
            Arc::clone(self),
            node,
            addr.clone(),
            Arc::clone(&outbox),
        ));
        if let Some(old) = peers.insert(
            node,
            Peer {
                addr: addr.clone(),
                outbox,
                task,
            },
        ) {
            old.task.abort();
            // Retired before its frames are taken: a peer line's push now
            // fails and goes through the table, to the new queue, after them.
            old.outbox.retire();
            (self.inboxes.sent).fetch_add(old.outbox.accepted(), Ordering::Relaxed);
            // Frames the old address never took go to the new one. (Nothing
            // was pushed to the new outbox yet: senders need the peers lock.)
            if let Some(waiting) = old.outbox.take() {
                new_outbox.adopt(waiting);
            }
        }
        tracing::debug!(node = %self.settings.node, peer = %node, %addr, "peer address learned");
    }

    fn learn_if_unknown(self: &Arc<Self>, node: NodeId, addr: &NodeAddr) {
        if !self.peers().contains_key(&node) {
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

    fn refuse(&self, reason: RefusalReason, remote: SocketAddr, detail: &str) {
        self.admission.count(reason);
        self.inboxes
            .refused_handshakes
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(node = %self.settings.node, %remote, %reason, %detail, "connection refused");
    }
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    // Connection tasks live in the set, so aborting this task closes them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    let Some(permit) = inner.admission.pending() else {
                        inner.refuse(RefusalReason::TooManyPending, remote, "closed at once");
                        drop(stream);
                        continue;
                    };
                    let inner = Arc::clone(&inner);
                    connections.spawn(async move {
                        let accepted = tokio::time::timeout(
                            inner.settings.handshake_timeout,
                            handshake::accept(&inner, stream),
                        )
                        .await
                        .unwrap_or_else(|_| {
                            Err(ConnectionError::Refused {
                                reason: RefusalReason::Timeout,
                                detail: "no handshake within the timeout".into(),
                            })
                        });
                        drop(permit);
                        let result = match accepted {
                            Ok(accepted) => inbound(&inner, accepted).await,
                            Err(ConnectionError::Refused { reason, detail }) => {
                                inner.refuse(reason, remote, &detail);
                                return;
                            }
                            Err(error) => Err(error),
                        };
                        match result {
                            Ok(()) => {}
                            // A peer that died or hung up without a goodbye: routine.
                            Err(ConnectionError::Io(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                                tracing::debug!(node = %inner.settings.node, %remote, %error, "inbound connection ended");
                            }
                            Err(error) => {
                                tracing::warn!(node = %inner.settings.node, %remote, %error, "inbound connection closed");
                            }
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

/// Reads an accepted peer's envelopes until it closes, misbehaves or idles.
async fn inbound(inner: &Arc<Inner>, accepted: Accepted) -> Result<(), ConnectionError> {
    let Accepted {
        mut conn,
        peer,
        listen,
        slot: _slot,
    } = accepted;
    tracing::debug!(node = %inner.settings.node, %peer, "inbound peer connected");
    // Only for a peer we know nothing about: membership's address wins.
    inner.learn_if_unknown(peer, &listen);
    let idle = inner.settings.idle_timeout;
    let mut gathered = Gathered::default();
    loop {
        let frame = match tokio::time::timeout(idle, conn.next()).await {
            Err(_) => return Err(ConnectionError::Idle(idle)),
            Ok(None) => return Ok(()),
            Ok(Some(frame)) => frame,
        };
        // Frames already read need no timer (a clock read each): take them
        // as they are, and wait with the timeout only when none is left.
        // Handlers get them in one call per channel, before any await.
        let mut closed = false;
        let mut result = receive(inner, peer, frame, &mut gathered);
        while result.is_ok() {
            match conn.next().now_or_never() {
                None => break, // nothing more read yet
                Some(None) => {
                    closed = true; // what was read is still handed over
                    break;
                }
                Some(Some(frame)) => result = receive(inner, peer, frame, &mut gathered),
            }
        }
        inner.inboxes.flush(&mut gathered);
        result?;
        if closed {
            return Ok(());
        }
    }
}

/// One frame off an inbound connection: decoded, checked, gathered for
/// its subscriber.
fn receive(
    inner: &Inner,
    peer: NodeId,
    frame: Result<BytesMut, std::io::Error>,
    gathered: &mut Gathered,
) -> Result<(), ConnectionError> {
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
    inner.inboxes.gather(envelope, gathered);
    Ok(())
}

/// Keeps a connection to `peer` while there is something to write, and
/// writes what its outbox holds, everything waiting in one write. A
/// connection with nothing to write for half the idle timeout is closed by
/// us (before the peer's idle timeout could close it under a frame) and
/// opened again by the next frame.
async fn outbound(inner: Arc<Inner>, peer: NodeId, addr: NodeAddr, outbox: Arc<Outbox>) {
    let settings = &inner.settings;
    let quiet = settings.idle_timeout / 2;
    let mut backoff = settings.backoff_min;
    // Connect only once there is something to send.
    let mut held = Some(outbox.wait().await);
    loop {
        match handshake::connect(&inner, peer, &addr).await {
            Ok(mut conn) => {
                tracing::info!(node = %settings.node, %peer, %addr, "connected to peer");
                backoff = settings.backoff_min;
                match write_until_quiet(&mut conn, &outbox, &mut held, quiet).await {
                    Ok(()) => {
                        let _ = SinkExt::<Bytes>::close(&mut conn).await;
                        drop(conn);
                        tracing::debug!(node = %settings.node, %peer, "outbound connection idle, closed");
                        held = Some(outbox.wait().await);
                        continue;
                    }
                    Err((error, lost)) => {
                        // At most once: what may have been written in part is not sent again.
                        inner
                            .inboxes
                            .lost_in_failed_writes
                            .fetch_add(lost as u64, Ordering::Relaxed);
                        tracing::warn!(node = %settings.node, %peer, %error, lost, "write failed, frames lost, reconnecting");
                    }
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

/// Writes batches until none comes for `quiet`; on a failed write, the
/// error and the number of frames in the batch that failed.
async fn write_until_quiet(
    conn: &mut Conn,
    outbox: &Outbox,
    held: &mut Option<super::outbox::Batch>,
    quiet: Duration,
) -> Result<(), (std::io::Error, usize)> {
    // The handshake went through the codec; from here on frames go to the
    // socket as the outbox laid them out.
    SinkExt::<Bytes>::flush(conn).await.map_err(|e| (e, 0))?;
    loop {
        let batch = match held.take() {
            Some(batch) => batch,
            None => match outbox.next(quiet).await {
                Some(batch) => batch,
                None => return Ok(()),
            },
        };
        let stream = conn.get_mut();
        let written = async {
            stream.write_all(&batch.bytes).await?;
            stream.flush().await
        };
        written.await.map_err(|e| (e, batch.frames))?;
    }
}
