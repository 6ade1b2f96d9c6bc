//! The in-process network's controls, in paused time.

use std::time::Duration;

use bytes::Bytes;
use cluster::{Channel, InProcessNetwork, LinkFaults, NodeId, SendError, Transport};
use tokio::time::{Instant, sleep};

const CH: Channel = Channel(7);

fn payload(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

#[tokio::test(start_paused = true)]
async fn delivers_through_the_codec_and_counts() {
    let net = InProcessNetwork::new(1);
    let a = net.join(NodeId(1));
    let b = net.join(NodeId(2));
    let mut inbox = b.subscribe(CH);
    a.send(NodeId(2), CH, payload("hi")).unwrap();
    let got = inbox.recv().await.unwrap();
    assert_eq!((got.from, got.to, got.channel), (NodeId(1), NodeId(2), CH));
    assert_eq!(got.payload, payload("hi"));
    assert_eq!(a.stats().sent, 1);
    assert_eq!(b.stats().delivered, 1);

    // A channel without a subscriber: counted, not silently lost.
    a.send(NodeId(2), Channel(99), payload("x")).unwrap();
    assert_eq!(b.stats().dropped_no_subscriber, 1);
}

#[tokio::test(start_paused = true)]
async fn partition_one_way_isolate_and_heal() {
    let net = InProcessNetwork::new(1);
    let nodes: Vec<_> = (1..=4).map(|i| net.join(NodeId(i))).collect();
    let mut inboxes: Vec<_> = nodes.iter().map(|n| n.subscribe(CH)).collect();
    let reach = |from: usize, to: usize| net.can_reach(NodeId(from as u64), NodeId(to as u64));

    net.partition(&[&[NodeId(1), NodeId(2)], &[NodeId(3), NodeId(4)]]);
    assert!(reach(1, 2) && reach(3, 4));
    assert!(!reach(1, 3) && !reach(4, 2));
    nodes[0].send(NodeId(3), CH, payload("lost")).unwrap();
    nodes[0].send(NodeId(2), CH, payload("kept")).unwrap();
    assert!(inboxes[2].try_recv().is_err());
    assert_eq!(inboxes[1].try_recv().unwrap().payload, payload("kept"));
    assert_eq!(net.dropped_by_network(), 1);

    net.heal();
    net.cut_one_way(NodeId(1), NodeId(2));
    assert!(!reach(1, 2) && reach(2, 1));

    net.heal();
    net.isolate(NodeId(4));
    assert!(!reach(1, 4) && !reach(4, 1) && reach(1, 2));
    // Isolation covers nodes that join later.
    let late = net.join(NodeId(5));
    assert!(!net.can_reach(NodeId(5), NodeId(4)));
    drop(late);

    net.partition(&[&[NodeId(1)], &[NodeId(2), NodeId(3)]]);
    net.reconnect(NodeId(4));
    assert!(reach(1, 4) && reach(4, 2), "isolation of 4 lifted");
    assert!(!reach(1, 2), "other cuts stay");

    net.heal();
    assert!((1..=4).all(|a| (1..=4).all(|b| reach(a, b))));
}

#[tokio::test(start_paused = true)]
async fn latency_delays_and_a_partition_drops_in_flight() {
    let net = InProcessNetwork::new(1);
    let a = net.join(NodeId(1));
    let b = net.join(NodeId(2));
    let mut inbox = b.subscribe(CH);
    net.set_link(
        NodeId(1),
        NodeId(2),
        LinkFaults {
            latency: Duration::from_millis(300),
            ..LinkFaults::default()
        },
    );
    let start = Instant::now();
    a.send(NodeId(2), CH, payload("slow")).unwrap();
    inbox.recv().await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(300));

    a.send(NodeId(2), CH, payload("in flight")).unwrap();
    net.partition(&[&[NodeId(1)], &[NodeId(2)]]);
    sleep(Duration::from_secs(1)).await;
    assert!(
        inbox.try_recv().is_err(),
        "a partition cuts what is in flight"
    );
}

#[tokio::test(start_paused = true)]
async fn seeded_loss_is_reproducible() {
    async fn losses(seed: u64) -> Vec<bool> {
        let net = InProcessNetwork::new(seed);
        net.set_default_link(LinkFaults {
            drop_probability: 0.3,
            ..LinkFaults::default()
        });
        let a = net.join(NodeId(1));
        let b = net.join(NodeId(2));
        let mut inbox = b.subscribe(CH);
        (0..200)
            .map(|_| {
                a.send(NodeId(2), CH, payload("m")).unwrap();
                inbox.try_recv().is_ok()
            })
            .collect()
    }
    let first = losses(9).await;
    assert_eq!(first, losses(9).await);
    assert_ne!(first, losses(10).await);
    let delivered = first.iter().filter(|d| **d).count();
    assert!(
        (100..180).contains(&delivered),
        "{delivered} of 200 delivered at 30% loss"
    );
}

#[tokio::test(start_paused = true)]
async fn killed_node_is_closed_and_restart_replaces_it() {
    let net = InProcessNetwork::new(1);
    let a = net.join(NodeId(1));
    let old_b = net.join(NodeId(2));
    net.kill(NodeId(2));
    assert_eq!(
        old_b.send(NodeId(1), CH, payload("x")),
        Err(SendError::Closed(NodeId(2)))
    );
    a.send(NodeId(2), CH, payload("to the dead")).unwrap();
    assert_eq!(net.dropped_by_network(), 1);

    let new_b = net.join(NodeId(2));
    let mut inbox = new_b.subscribe(CH);
    a.send(NodeId(2), CH, payload("welcome back")).unwrap();
    assert_eq!(inbox.recv().await.unwrap().payload, payload("welcome back"));
}

#[tokio::test(start_paused = true)]
async fn an_isolated_node_still_reaches_itself() {
    let net = InProcessNetwork::new(1);
    let a = net.join(NodeId(1));
    let mut inbox = a.subscribe(CH);
    net.isolate(NodeId(1));
    a.send(NodeId(1), CH, payload("loopback")).unwrap();
    assert_eq!(inbox.recv().await.unwrap().payload, payload("loopback"));
    assert!(net.can_reach(NodeId(1), NodeId(1)));
}

/// Jitter lets messages overtake one another and duplication delivers some
/// twice; a copy is still a copy of what was sent.
#[tokio::test(start_paused = true)]
async fn jitter_reorders_and_duplication_repeats() {
    let net = InProcessNetwork::new(3);
    let a = net.join(NodeId(1));
    let b = net.join(NodeId(2));
    let mut inbox = b.subscribe(CH);
    net.set_link(
        NodeId(1),
        NodeId(2),
        LinkFaults {
            jitter: Duration::from_millis(500),
            duplicate_probability: 0.3,
            ..LinkFaults::default()
        },
    );
    for i in 0..100u32 {
        a.send(NodeId(2), CH, Bytes::from(i.to_string())).unwrap();
    }
    sleep(Duration::from_secs(1)).await;
    let mut seen = Vec::new();
    while let Ok(e) = inbox.try_recv() {
        seen.push(
            String::from_utf8(e.payload.to_vec())
                .unwrap()
                .parse::<u32>()
                .unwrap(),
        );
    }
    assert!(seen.len() > 110, "duplicated: {}", seen.len());
    assert!(seen.windows(2).any(|w| w[0] > w[1]), "never reordered");
    let mut distinct = seen.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct, (0..100).collect::<Vec<_>>());
}
