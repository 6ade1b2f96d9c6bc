//! TCP transport on loopback, in real time with short timeouts.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cluster::{
    Channel, Envelope, Membership, MembershipSettings, NodeAddr, NodeId, RefusalReason,
    TcpSettings, TcpTransport, Transport,
};
use futures::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

mod common;

use common::Raw;

const CH: Channel = Channel(5);
const CLUSTER: &str = "test-cluster";

async fn node(i: u64) -> TcpTransport {
    node_in(CLUSTER, i, "127.0.0.1:0").await
}

async fn node_in(cluster: &str, i: u64, listen: &str) -> TcpTransport {
    let mut settings = TcpSettings::new(cluster, NodeId(i), listen.parse().unwrap());
    settings.max_frame_size = 64 * 1024;
    settings.backoff_min = Duration::from_millis(20);
    settings.backoff_max = Duration::from_millis(200);
    TcpTransport::bind(settings).await.unwrap()
}

fn addr_of(t: &TcpTransport) -> NodeAddr {
    NodeAddr::from(t.local_addr())
}

async fn recv(inbox: &mut mpsc::Receiver<Envelope>) -> Envelope {
    timeout(Duration::from_secs(5), inbox.recv())
        .await
        .expect("delivered within 5 s")
        .expect("inbox open")
}

/// Sends until one arrives: the first frames may race the connection setup.
async fn send_until_delivered(
    from: &TcpTransport,
    to: NodeId,
    inbox: &mut mpsc::Receiver<Envelope>,
) -> Envelope {
    for _ in 0..100 {
        from.send(to, CH, Bytes::from_static(b"ping")).unwrap();
        if let Ok(Some(e)) = timeout(Duration::from_millis(100), inbox.recv()).await {
            return e;
        }
    }
    panic!("nothing from {} reached {to}", from.local_node());
}

#[tokio::test]
async fn three_nodes_form_a_cluster_and_exchange_messages() {
    let transports: Vec<Arc<TcpTransport>> = vec![
        Arc::new(node(1).await),
        Arc::new(node(2).await),
        Arc::new(node(3).await),
    ];
    let seed = vec![(NodeId(1), addr_of(&transports[0]))];
    let mut inboxes: Vec<_> = transports.iter().map(|t| t.subscribe(CH)).collect();
    let members: Vec<Membership> = transports
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut settings = MembershipSettings::new(seed.clone());
            settings.heartbeat_interval = Duration::from_millis(200);
            settings.probe_timeout = Duration::from_millis(100);
            settings.down_after = Duration::from_secs(1);
            settings.announce_interval = Duration::from_millis(300);
            settings.rng_seed = i as u64;
            Membership::start(Arc::clone(t) as Arc<dyn Transport>, addr_of(t), settings).unwrap()
        })
        .collect();
    for _ in 0..100 {
        if members.iter().all(|m| m.view().members().len() == 3) {
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    for m in &members {
        assert_eq!(m.view().members(), vec![NodeId(1), NodeId(2), NodeId(3)]);
        assert_eq!(m.view().leader(), Some(NodeId(1)));
    }
    // Membership taught every node every address: application traffic flows.
    transports[2]
        .send(NodeId(2), CH, Bytes::from_static(b"3 to 2"))
        .unwrap();
    let got = recv(&mut inboxes[1]).await;
    assert_eq!(
        (got.from, got.payload),
        (NodeId(3), Bytes::from_static(b"3 to 2"))
    );
    transports[1]
        .send(NodeId(1), CH, Bytes::from_static(b"2 to 1"))
        .unwrap();
    assert_eq!(recv(&mut inboxes[0]).await.from, NodeId(2));
}

#[tokio::test]
async fn a_stranger_from_another_cluster_is_refused() {
    let a = node(1).await;
    let mut inbox = a.subscribe(CH);
    let stranger = node_in("other-cluster", 9, "127.0.0.1:0").await;
    stranger.learn_address(NodeId(1), &addr_of(&a));
    for _ in 0..5 {
        stranger
            .send(NodeId(1), CH, Bytes::from_static(b"let me in"))
            .unwrap();
    }
    sleep(Duration::from_millis(500)).await;
    assert!(
        inbox.try_recv().is_err(),
        "nothing from a stranger is delivered"
    );
    assert!(a.stats().refused_handshakes >= 1);
}

/// Opens a raw connection to `to` and completes a valid handshake as `as_node`.
async fn raw_peer(to: &TcpTransport, as_node: u64) -> Raw {
    common::join(to.local_addr(), CLUSTER, as_node)
        .await
        .expect("accepted")
}

async fn assert_closed(framed: Raw) {
    let mut stream = framed.into_inner();
    let mut buf = [0u8; 16];
    let n = timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("closed within 5 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "connection closed by the node");
}

#[tokio::test]
async fn a_garbage_frame_closes_only_that_connection() {
    let a = node(1).await;
    let b = node(2).await;
    let mut inbox = a.subscribe(CH);
    b.learn_address(NodeId(1), &addr_of(&a));
    send_until_delivered(&b, NodeId(1), &mut inbox).await;

    let mut raw = raw_peer(&a, 7).await;
    raw.send(Bytes::from_static(&[cluster::PROTOCOL_VERSION, 0xff, 0xff]))
        .await
        .unwrap();
    assert_closed(raw).await;
    assert_eq!(a.stats().bad_frames, 1);

    // The node and its other peer carry on.
    b.send(NodeId(1), CH, Bytes::from_static(b"still here"))
        .unwrap();
    assert_eq!(
        recv(&mut inbox).await.payload,
        Bytes::from_static(b"still here")
    );
}

#[tokio::test]
async fn an_oversized_frame_closes_only_that_connection() {
    let a = node(1).await;
    let b = node(2).await;
    let mut inbox = a.subscribe(CH);
    b.learn_address(NodeId(1), &addr_of(&a));
    send_until_delivered(&b, NodeId(1), &mut inbox).await;

    let raw = raw_peer(&a, 7).await;
    let mut stream = raw.into_inner();
    // A length prefix of 1 MiB against a 64 KiB maximum.
    tokio::io::AsyncWriteExt::write_all(&mut stream, &(1u32 << 20).to_be_bytes())
        .await
        .unwrap();
    assert_closed(Framed::new(stream, LengthDelimitedCodec::new())).await;
    assert_eq!(a.stats().bad_frames, 1);

    b.send(NodeId(1), CH, Bytes::from_static(b"still here"))
        .unwrap();
    assert_eq!(
        recv(&mut inbox).await.payload,
        Bytes::from_static(b"still here")
    );
    // Sending one too large is refused at the sender, typed.
    let big = Bytes::from(vec![0u8; 70 * 1024]);
    assert!(matches!(
        b.send(NodeId(1), CH, big),
        Err(cluster::SendError::TooLarge { .. })
    ));
}

#[tokio::test]
async fn a_spoofed_sender_closes_the_connection() {
    let a = node(1).await;
    let mut inbox = a.subscribe(CH);
    let mut raw = raw_peer(&a, 7).await;
    let forged = Envelope {
        from: NodeId(3),
        to: NodeId(1),
        channel: CH,
        payload: Bytes::from_static(b"i am node 3"),
    };
    raw.send(forged.encode()).await.unwrap();
    assert_closed(raw).await;
    assert!(inbox.try_recv().is_err());
}

#[tokio::test]
async fn a_killed_and_restarted_peer_is_reconnected() {
    let a = node(1).await;
    let b = node(2).await;
    let b_addr = b.local_addr();
    let mut inbox = b.subscribe(CH);
    a.learn_address(NodeId(2), &NodeAddr::from(b_addr));
    send_until_delivered(&a, NodeId(2), &mut inbox).await;

    drop(inbox);
    drop(b);
    sleep(Duration::from_millis(100)).await;
    let b = node_in(CLUSTER, 2, &b_addr.to_string()).await;
    let mut inbox = b.subscribe(CH);
    let got = send_until_delivered(&a, NodeId(2), &mut inbox).await;
    assert_eq!(got.from, NodeId(1));
}

#[tokio::test]
async fn a_full_send_queue_is_an_error_and_counted() {
    let mut settings = TcpSettings::new(CLUSTER, NodeId(1), "127.0.0.1:0".parse().unwrap());
    settings.send_queue = 4;
    let a = TcpTransport::bind(settings).await.unwrap();
    // Nobody listens there: frames pile up in the queue.
    a.learn_address(NodeId(2), &NodeAddr::from("127.0.0.1:9"));
    let mut refused = 0;
    for _ in 0..20 {
        if let Err(e) = a.send(NodeId(2), CH, Bytes::from_static(b"x")) {
            assert!(
                matches!(e, cluster::SendError::QueueFull { capacity: 4, .. }),
                "{e}"
            );
            refused += 1;
        }
    }
    assert!(refused >= 15, "{refused}");
    assert_eq!(a.stats().dropped_queue_full, refused);
    assert_eq!(a.stats().sent, 20 - refused, "accepted sends are counted");
    // A re-pointed peer gets a new queue, which takes over the waiting
    // frames (still full); what the old one accepted still counts.
    a.learn_address(NodeId(2), &NodeAddr::from("127.0.0.1:10"));
    assert!(a.send(NodeId(2), CH, Bytes::from_static(b"x")).is_err());
    assert_eq!(a.stats().sent, 20 - refused);
    assert_eq!(
        a.send(NodeId(3), CH, Bytes::new()),
        Err(cluster::SendError::UnknownPeer(NodeId(3)))
    );
}

/// Frames queued for a peer's old address are sent to its new one.
#[tokio::test]
async fn frames_waiting_for_a_re_pointed_peer_go_to_its_new_address() {
    let a = node(1).await;
    let b = node(2).await;
    let mut inbox = b.subscribe(CH);
    // Nobody listens there: the frames wait in the queue.
    a.learn_address(NodeId(2), &NodeAddr::from("127.0.0.1:9"));
    let line = a.peer_line(NodeId(2)).expect("a line to a known peer");
    assert_eq!(line.peer(), NodeId(2));
    let by_line = |payload: &'static [u8]| {
        line.send_with(CH, &mut |buf: &mut bytes::BytesMut| {
            buf.extend_from_slice(payload);
            Ok(())
        })
    };
    a.send(NodeId(2), CH, Bytes::from_static(b"one")).unwrap();
    by_line(b"two").unwrap();
    a.send(NodeId(2), CH, Bytes::from_static(b"three")).unwrap();
    a.learn_address(NodeId(2), &addr_of(&b));
    // The old queue is retired: its line refuses, the transport goes on.
    assert_eq!(
        by_line(b"lost?"),
        Err(cluster::SendError::Closed(NodeId(2)))
    );
    a.send(NodeId(2), CH, Bytes::from_static(b"four")).unwrap();
    for payload in [&b"one"[..], b"two", b"three", b"four"] {
        assert_eq!(&recv(&mut inbox).await.payload[..], payload);
    }
    assert_eq!(a.stats().sent, 4, "each counted once, the refused one not");
}

#[tokio::test]
async fn a_wildcard_listener_is_reached_through_its_advertised_address() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut settings = TcpSettings::new(
        CLUSTER,
        NodeId(1),
        format!("0.0.0.0:{port}").parse().unwrap(),
    );
    settings.advertise = Some(NodeAddr(format!("127.0.0.1:{port}")));
    settings.backoff_min = Duration::from_millis(20);
    let a = TcpTransport::bind(settings).await.unwrap();
    let b = node(2).await;
    let mut a_inbox = a.subscribe(CH);
    let mut b_inbox = b.subscribe(CH);
    b.learn_address(NodeId(1), &NodeAddr(format!("127.0.0.1:{port}")));
    send_until_delivered(&b, NodeId(1), &mut a_inbox).await;
    // A never heard of B's address but from B's handshake: it can answer.
    let got = send_until_delivered(&a, NodeId(2), &mut b_inbox).await;
    assert_eq!(got.from, NodeId(1));
}

#[tokio::test]
async fn a_stranger_is_refused_without_learning_the_cluster_name() {
    let a = node(1).await;
    let stream = TcpStream::connect(a.local_addr()).await.unwrap();
    let mut framed = Framed::new(stream, LengthDelimitedCodec::new());
    let hello =
        postcard::to_stdvec(&(cluster::PROTOCOL_VERSION, "guessing", 9u64, "127.0.0.1:1")).unwrap();
    framed.send(Bytes::from(hello)).await.unwrap();
    let reply = futures::StreamExt::next(&mut framed)
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&reply);
    assert_eq!(reply[0], 1, "Refused");
    assert!(
        !text.contains(CLUSTER),
        "the refusal names the cluster: {text}"
    );
    assert!(a.stats().refused_handshakes >= 1);
}

#[tokio::test]
async fn before_the_handshake_a_large_frame_is_refused_at_its_length_prefix() {
    let a = node(1).await;
    let b = node(2).await;
    let mut inbox = a.subscribe(CH);
    let mut stream = TcpStream::connect(a.local_addr()).await.unwrap();
    // The start of a 1 MiB "hello": refused on its prefix, nothing buffered.
    stream.write_all(&(1u32 << 20).to_be_bytes()).await.unwrap();
    stream.write_all(&[0u8; 64]).await.unwrap();
    assert_closed(Framed::new(stream, LengthDelimitedCodec::new())).await;
    // The full limit still holds once a peer has shaken hands.
    b.learn_address(NodeId(1), &addr_of(&a));
    send_until_delivered(&b, NodeId(1), &mut inbox).await;
    let big = Bytes::from(vec![7u8; 32 * 1024]);
    b.send(NodeId(1), CH, big.clone()).unwrap();
    let got = timeout(Duration::from_secs(5), inbox.recv())
        .await
        .expect("the large frame arrives")
        .unwrap();
    assert_eq!(got.payload.len(), big.len());
}

fn limited(i: u64) -> TcpSettings {
    let mut settings = TcpSettings::new(CLUSTER, NodeId(i), "127.0.0.1:0".parse().unwrap());
    settings.backoff_min = Duration::from_millis(20);
    settings.backoff_max = Duration::from_millis(200);
    settings
}

/// Node 1 with peer 2 already talking to it.
async fn served(settings: TcpSettings) -> (TcpTransport, TcpTransport, mpsc::Receiver<Envelope>) {
    let a = TcpTransport::bind(settings).await.unwrap();
    let b = node(2).await;
    let mut inbox = a.subscribe(CH);
    b.learn_address(NodeId(1), &addr_of(&a));
    send_until_delivered(&b, NodeId(1), &mut inbox).await;
    (a, b, inbox)
}

#[tokio::test]
async fn connections_that_never_finish_the_handshake_are_capped_then_timed_out() {
    let mut settings = limited(1);
    settings.max_pending_handshakes = 8;
    settings.handshake_timeout = Duration::from_millis(500);
    let (a, b, mut inbox) = served(settings).await;
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(a.local_addr()).await.unwrap());
    }
    sleep(Duration::from_millis(200)).await;
    assert_eq!(a.refused(RefusalReason::TooManyPending), 12);
    // Meanwhile the established peer is served.
    send_until_delivered(&b, NodeId(1), &mut inbox).await;
    sleep(Duration::from_millis(600)).await;
    assert_eq!(a.refused(RefusalReason::Timeout), 8);
    for stream in silent {
        assert_closed(Framed::new(stream, LengthDelimitedCodec::new())).await;
    }
    // Places are free again: a new peer shakes hands.
    assert!(common::join(a.local_addr(), CLUSTER, 7).await.is_some());
}

#[tokio::test]
async fn a_peer_is_held_to_its_connection_cap() {
    let mut settings = limited(1);
    settings.max_connections_per_peer = 2;
    let (a, _b, _inbox) = served(settings).await;
    let _first = raw_peer(&a, 7).await;
    let second = raw_peer(&a, 7).await;
    assert!(common::join(a.local_addr(), CLUSTER, 7).await.is_none());
    assert_eq!(a.refused(RefusalReason::TooManyForPeer), 1);
    drop(second);
    sleep(Duration::from_millis(100)).await;
    assert!(common::join(a.local_addr(), CLUSTER, 7).await.is_some());
}

#[tokio::test]
async fn two_thousand_idle_connections_are_capped_and_closed_when_idle() {
    let mut settings = limited(1);
    settings.max_inbound_connections = 300;
    settings.idle_timeout = Duration::from_secs(2);
    let (a, b, mut inbox) = served(settings).await;
    let mut held = Vec::new();
    let mut refused = 0;
    for i in 0..2000 {
        match common::join(a.local_addr(), CLUSTER, 100 + i).await {
            Some(raw) => held.push(raw),
            None => refused += 1,
        }
    }
    // Peer 2 holds one place.
    assert_eq!(held.len(), 299);
    assert_eq!(refused, 1701);
    assert_eq!(a.refused(RefusalReason::TooManyConnections), 1701);
    // They say nothing: the idle timeout closes every one.
    sleep(Duration::from_millis(2500)).await;
    for raw in held {
        assert_closed(raw).await;
    }
    send_until_delivered(&b, NodeId(1), &mut inbox).await;
    assert!(a.inbound_connections() <= 1, "{}", a.inbound_connections());
}

#[tokio::test]
async fn an_idle_outbound_connection_is_closed_and_the_next_frame_reopens_it() {
    let mut settings = limited(1);
    settings.idle_timeout = Duration::from_millis(400);
    let a = TcpTransport::bind(settings).await.unwrap();
    let b = node(2).await;
    let mut inbox = b.subscribe(CH);
    a.learn_address(NodeId(2), &addr_of(&b));
    send_until_delivered(&a, NodeId(2), &mut inbox).await;
    assert_eq!(b.inbound_connections(), 1);
    // Quiet for longer than half the idle timeout: node 1 hangs up itself.
    sleep(Duration::from_millis(500)).await;
    assert_eq!(b.inbound_connections(), 0);
    // The next frame opens a new connection and is not lost.
    a.send(NodeId(2), CH, Bytes::from_static(b"after a pause"))
        .unwrap();
    assert_eq!(
        recv(&mut inbox).await.payload,
        Bytes::from_static(b"after a pause")
    );
}

#[tokio::test]
async fn a_bad_setting_is_refused_by_name() {
    for (field, change) in [
        (
            "unacked_timeout",
            (|s: &mut TcpSettings| s.unacked_timeout = Duration::ZERO) as fn(&mut TcpSettings),
        ),
        ("idle_timeout", |s| s.idle_timeout = Duration::ZERO),
        ("send_queue", |s| s.send_queue = 0),
    ] {
        let mut settings = TcpSettings::new(CLUSTER, NodeId(1), "127.0.0.1:0".parse().unwrap());
        change(&mut settings);
        match TcpTransport::bind(settings).await {
            Err(cluster::BindError::Setting { field: named, .. }) => assert_eq!(named, field),
            Err(other) => panic!("{field}: {other}"),
            Ok(_) => panic!("{field}: accepted"),
        }
    }
}

/// Frames encoded in place reach a handler subscriber in the order sent,
/// whole, through one connection; a payload that fails to encode queues nothing.
#[tokio::test]
async fn payloads_written_in_place_reach_a_handler_in_order() {
    let a = node(1).await;
    let b = node(2).await;
    a.learn_address(NodeId(2), &addr_of(&b));
    let (tx, mut rx) = mpsc::unbounded_channel();
    b.subscribe_handler(
        CH,
        Arc::new(move |batch: &mut Vec<Envelope>| {
            assert!(batch.len() <= cluster::HANDLER_BATCH);
            for e in batch.drain(..) {
                let _ = tx.send(e);
            }
        }),
    );
    for i in 0u32..1000 {
        a.send_with(NodeId(2), CH, &mut |buf: &mut bytes::BytesMut| {
            buf.extend_from_slice(&i.to_be_bytes());
            Ok(())
        })
        .unwrap();
    }
    let refused = a.send_with(NodeId(2), CH, &mut |buf: &mut bytes::BytesMut| {
        buf.extend_from_slice(b"half a payload");
        Err(postcard::Error::SerializeBufferFull)
    });
    assert_eq!(
        refused,
        Err(cluster::SendError::Encode(
            postcard::Error::SerializeBufferFull
        ))
    );
    for i in 0u32..1000 {
        let e = timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("delivered within 5 s")
            .expect("open");
        assert_eq!((e.from, e.channel), (NodeId(1), CH));
        assert_eq!(&e.payload[..], &i.to_be_bytes(), "frame {i}");
    }
    sleep(Duration::from_millis(100)).await;
    assert!(rx.try_recv().is_err(), "the refused payload was sent");
    assert_eq!(b.stats().bad_frames, 0);
    assert_eq!(a.stats().sent, 1000, "the refused payload is not counted");
}

/// Frames in a write that fails (the peer died under the connection) are
/// counted as lost, not dropped silently, and the sender keeps working.
#[tokio::test]
async fn frames_lost_in_a_failed_write_are_counted() {
    let a = node(1).await;
    let b = node(2).await;
    a.learn_address(NodeId(2), &addr_of(&b));
    let mut inbox = b.subscribe(CH);
    send_until_delivered(&a, NodeId(2), &mut inbox).await;
    drop(inbox);
    drop(b);
    let mut sent = 0;
    while a.stats().lost_in_failed_writes == 0 {
        assert!(sent < 500, "no failed write counted after {sent} sends");
        a.send(NodeId(2), CH, Bytes::from_static(b"into the void"))
            .unwrap();
        sent += 1;
        sleep(Duration::from_millis(10)).await;
    }
    assert!(a.stats().lost_in_failed_writes <= sent);
}

/// A live connection keeps its handler lookups between batches; a new
/// subscription to the channel takes over from the next envelope on.
#[tokio::test]
async fn a_replaced_handler_takes_over_on_a_live_connection() {
    let a = node(1).await;
    let b = node(2).await;
    a.learn_address(NodeId(2), &addr_of(&b));
    let handler = |tx: mpsc::UnboundedSender<Envelope>| -> cluster::EnvelopeHandler {
        Arc::new(move |batch: &mut Vec<Envelope>| {
            for e in batch.drain(..) {
                let _ = tx.send(e);
            }
        })
    };
    let (first_tx, mut first) = mpsc::unbounded_channel();
    b.subscribe_handler(CH, handler(first_tx));
    let mut delivered = false;
    for _ in 0..100 {
        a.send(NodeId(2), CH, Bytes::from_static(b"one")).unwrap();
        if timeout(Duration::from_millis(100), first.recv())
            .await
            .is_ok()
        {
            delivered = true;
            break;
        }
    }
    assert!(delivered, "the first handler got nothing");
    let (second_tx, mut second) = mpsc::unbounded_channel();
    b.subscribe_handler(CH, handler(second_tx));
    while first.try_recv().is_ok() {}
    a.send(NodeId(2), CH, Bytes::from_static(b"two")).unwrap();
    let e = timeout(Duration::from_secs(5), second.recv())
        .await
        .expect("the second handler gets it")
        .expect("open");
    assert_eq!(&e.payload[..], b"two");
    assert!(
        first.try_recv().is_err(),
        "the replaced handler still receives"
    );
}
