//! Hand-made peers for the TCP tests: what a script on the network can send.

#![allow(dead_code, clippy::unwrap_used)] // each test binary uses some of it

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// A raw plaintext connection.
pub type Raw = Framed<TcpStream, LengthDelimitedCodec>;

/// A hello in postcard: (protocol version, cluster name, node id, listen address).
pub fn hello(cluster: &str, as_node: u64) -> Bytes {
    Bytes::from(
        postcard::to_stdvec(&(cluster::PROTOCOL_VERSION, cluster, as_node, "127.0.0.1:1")).unwrap(),
    )
}

/// Connects to `to` and shakes hands as `as_node` of `cluster`: the
/// connection if the node accepted, `None` if it refused or closed.
pub async fn join(to: SocketAddr, cluster: &str, as_node: u64) -> Option<Raw> {
    let stream = TcpStream::connect(to).await.ok()?;
    let mut framed = Framed::new(stream, LengthDelimitedCodec::new());
    framed.send(hello(cluster, as_node)).await.ok()?;
    let reply = tokio::time::timeout(Duration::from_secs(5), framed.next())
        .await
        .ok()??
        .ok()?;
    (reply[..] == [0]).then_some(framed)
}

/// The resident set size of this process, in bytes.
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}
