//! Opening a connection: TLS when configured, then a hello naming the
//! protocol version, the cluster and the node, and the checks that decide
//! whether the peer is one of ours.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use super::{ConnectionError, Inner};
use crate::envelope::PROTOCOL_VERSION;
use crate::transport::admission::{PeerSlot, RefusalReason};
use crate::transport::frame_codec::FrameCodec;
use crate::{NodeAddr, NodeId};

/// A byte stream to a peer: plain TCP or TLS over it.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// A framed connection, whatever carries it.
pub(crate) type Conn = Framed<Box<dyn Stream>, FrameCodec>;

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub(crate) protocol_version: u8,
    pub(crate) cluster_name: String,
    pub(crate) node: NodeId,
    pub(crate) listen: NodeAddr,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum HelloReply {
    Accepted,
    Refused(String),
}

fn refused(reason: RefusalReason, detail: impl Into<String>) -> ConnectionError {
    ConnectionError::Refused {
        reason,
        detail: detail.into(),
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Bytes, ConnectionError> {
    postcard::to_stdvec(value)
        .map(Bytes::from)
        .map_err(|e| ConnectionError::Handshake(e.to_string()))
}

/// Decodes a hello as it arrived from the network.
pub(crate) fn hello_from(bytes: &[u8]) -> Result<Hello, String> {
    postcard::from_bytes(bytes).map_err(|e| format!("undecodable hello: {e}"))
}

/// Decodes the answer to our hello as it arrived from the network.
pub(crate) fn reply_from(bytes: &[u8]) -> Result<HelloReply, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// No Nagle delay; and (Linux) the kernel drops a connection whose sent
/// data stays unacknowledged for `unacked_timeout`, and probes an idle one
/// as often. Without the first, a connection that lost its packets for a
/// while (a one-way cut, loss) keeps its data queued behind TCP's
/// retransmission backoff for seconds to minutes after the network heals,
/// while writes still "succeed". Without the probes, the receiving end of a
/// connection its dialer dropped during a fault stays open until the idle
/// timeout, and a few of those fill the peer's connection cap: the dialer
/// is then refused until they idle out (both found by `cargo xtask nemesis`).
fn tune(stream: &TcpStream, settings: &super::TcpSettings) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let t = settings.unacked_timeout;
        let socket = socket2::SockRef::from(stream);
        socket.set_tcp_user_timeout(Some(t))?;
        // Keepalive counts whole seconds.
        let second = std::time::Duration::from_secs(1);
        socket.set_tcp_keepalive(
            &socket2::TcpKeepalive::new()
                .with_time((t / 2).max(second))
                .with_interval((t / 4).max(second))
                .with_retries(3),
        )?;
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = settings;
    Ok(())
}

/// An accepted peer, ready to carry envelopes.
pub(crate) struct Accepted {
    pub(crate) conn: Conn,
    pub(crate) peer: NodeId,
    pub(crate) listen: NodeAddr,
    pub(crate) slot: PeerSlot,
}

/// The listening side of a handshake. Bounded by the handshake timeout by
/// the caller.
pub(crate) async fn accept(inner: &Inner, stream: TcpStream) -> Result<Accepted, ConnectionError> {
    tune(&stream, &inner.settings)?;
    let tls = inner.tls.as_ref();
    let (stream, certificate): (Box<dyn Stream>, _) = match tls {
        Some(tls) => {
            let (acceptor, _) = tls.current();
            let stream = acceptor
                .accept(stream)
                .await
                .map_err(|e| refused(RefusalReason::Tls, e.to_string()))?;
            // The leaf: the verifier already checked that it chains to the CA.
            let leaf = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|c| c.clone().into_owned());
            (Box::new(stream), leaf)
        }
        None => (Box::new(stream), None),
    };
    let mut conn = Framed::new(stream, inner.handshake_codec());
    let first = match conn.next().await {
        None => return Err(ConnectionError::Closed),
        Some(Err(e)) => return Err(refused(RefusalReason::BadHello, e.to_string())),
        Some(Ok(frame)) => frame,
    };
    let hello = hello_from(&first).map_err(|detail| refused(RefusalReason::BadHello, detail))?;
    let check = if hello.protocol_version != PROTOCOL_VERSION {
        Err(refused(
            RefusalReason::ProtocolVersion,
            format!(
                "protocol version {} (this node speaks {PROTOCOL_VERSION})",
                hello.protocol_version
            ),
        ))
    } else if hello.cluster_name != inner.settings.cluster_name {
        Err(refused(
            RefusalReason::ClusterName,
            format!(
                "cluster `{}` (this node is in `{}`)",
                hello.cluster_name, inner.settings.cluster_name
            ),
        ))
    } else if !inner.settings.allows(hello.node) {
        Err(refused(
            RefusalReason::NotAllowed,
            format!("{} is not in allowed_nodes", hello.node),
        ))
    } else {
        Ok(())
    };
    let check = check.and_then(|()| {
        // With TLS, the claimed node id must be the certificate's (no node
        // can speak as another).
        let Some(tls) = tls else { return Ok(()) };
        let cert = certificate
            .as_ref()
            .ok_or_else(|| refused(RefusalReason::Identity, "no client certificate"))?;
        tls.check_identity(cert, hello.node)
            .map_err(|detail| refused(RefusalReason::Identity, detail))
    });
    let slot = check.and_then(|()| {
        inner
            .admission
            .establish(hello.node)
            .map_err(|reason| refused(reason, format!("{} connections in use", reason.as_str())))
    });
    match slot {
        Ok(slot) => {
            conn.send(encode(&HelloReply::Accepted)?).await?;
            conn.codec_mut().set_max(inner.settings.max_frame_size);
            Ok(Accepted {
                conn,
                peer: hello.node,
                listen: hello.listen,
                slot,
            })
        }
        Err(error) => {
            // The reason stays in our log: a stranger learns nothing about
            // the cluster.
            let _ = conn
                .send(encode(&HelloReply::Refused("handshake refused".into()))?)
                .await;
            Err(match error {
                ConnectionError::Refused { reason, detail } => ConnectionError::Refused {
                    reason,
                    detail: format!("{}: {detail}", hello.node),
                },
                other => other,
            })
        }
    }
}

/// The dialing side: connects to `peer` at `addr` and shakes hands.
pub(crate) async fn connect(
    inner: &Inner,
    peer: NodeId,
    addr: &NodeAddr,
) -> Result<Conn, ConnectionError> {
    let handshake = async {
        let stream = TcpStream::connect(addr.as_str()).await?;
        tune(&stream, &inner.settings)?;
        let stream: Box<dyn Stream> = match &inner.tls {
            Some(tls) => {
                let (_, connector) = tls.current();
                Box::new(
                    connector
                        .connect(tls.server_name(peer), stream)
                        .await
                        .map_err(|e| ConnectionError::Handshake(format!("TLS: {e}")))?,
                )
            }
            None => Box::new(stream),
        };
        let mut conn = Framed::new(stream, inner.handshake_codec());
        conn.send(encode(&inner.hello())?).await?;
        let reply = conn.next().await.ok_or(ConnectionError::Closed)??;
        match reply_from(&reply) {
            Ok(HelloReply::Accepted) => {
                conn.codec_mut().set_max(inner.settings.max_frame_size);
                Ok(conn)
            }
            Ok(HelloReply::Refused(reason)) => {
                tracing::warn!(node = %inner.settings.node, %peer, %addr, %reason, "peer refused our handshake");
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    #[cfg(any(target_os = "linux", target_os = "android"))]
    async fn connections_are_dropped_when_unacknowledged_and_probed_when_idle() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let mut settings =
            super::super::TcpSettings::new("c", crate::NodeId(1), "127.0.0.1:0".parse().unwrap());
        settings.unacked_timeout = Duration::from_millis(4500);
        tune(&stream, &settings).unwrap();
        let socket = socket2::SockRef::from(&stream);
        assert_eq!(
            socket.tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(4500))
        );
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), Duration::from_secs(2));
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(1)
        );
        assert!(stream.nodelay().unwrap());
    }
}
