//! Remote `tell` between two nodes over TCP on loopback, plaintext and on
//! mutual TLS, against raw `LengthDelimitedCodec` + postcard frames over the
//! same kind of socket pair.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cluster::transport::dev_certs::DevCa;
use cluster::{Membership, MembershipSettings, NodeAddr, NodeId, TcpSettings, TcpTransport};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::{SinkExt, StreamExt};
use sharding_coordinator::{ClusterSharding, ShardingSettings};
use sharding_core::{EntityId, ShardRegion};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

const MESSAGES: u32 = 20_000;

mod common;

use common::{Msg, PROCESSED, Sink};

async fn wait_processed(target: u64) {
    while PROCESSED.load(Ordering::Relaxed) < target {
        tokio::time::sleep(Duration::from_micros(50)).await;
    }
}

struct Pair {
    from: ShardRegion<Sink>,
    remote_ids: Vec<u32>,
    _keep: Vec<(Membership, ClusterSharding, Arc<TcpTransport>)>,
}

/// Two nodes; on mutual TLS when `certs` holds a directory for their files.
async fn two_nodes(certs: Option<&std::path::Path>) -> Pair {
    let ca = certs.map(|_| DevCa::new("bench").expect("dev CA"));
    let mut transports = Vec::new();
    for i in 1..=2 {
        let mut settings =
            TcpSettings::new("bench", NodeId(i), "127.0.0.1:0".parse().expect("addr"));
        settings.send_queue = 1_000_000;
        if let (Some(ca), Some(dir)) = (&ca, certs) {
            let files = ca.write_node(NodeId(i), &dir.join(i.to_string()));
            settings.tls = Some(files.expect("certificates written"));
        }
        transports.push(Arc::new(TcpTransport::bind(settings).await.expect("bind")));
    }
    let seed = vec![(NodeId(1), NodeAddr::from(transports[0].local_addr()))];
    let mut keep = Vec::new();
    let mut regions = Vec::new();
    for t in &transports {
        let mut ms = MembershipSettings::new(seed.clone());
        ms.heartbeat_interval = Duration::from_millis(200);
        ms.probe_timeout = Duration::from_millis(100);
        ms.announce_interval = Duration::from_millis(200);
        let membership =
            Membership::start(t.clone(), NodeAddr::from(t.local_addr()), ms).expect("membership");
        let sharding = ClusterSharding::new(t.clone(), membership.view());
        let mut settings =
            ShardingSettings::new("bench", |m: &Msg| EntityId::from(m.id), |_: &EntityId| Sink);
        settings.coordinator.recovery_timeout = Duration::from_millis(200);
        settings.region.retry_interval = Duration::from_millis(100);
        regions.push(sharding.start(settings).expect("start"));
        keep.push((membership, sharding, t.clone()));
    }
    while !keep.iter().all(|(m, _, _)| m.view().members().len() == 2) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Warm up: every entity exists; keep those whose shard lives on node 2.
    for id in 0..2_000u32 {
        regions[0].ask(Msg { id }).await.expect("warm-up");
    }
    let remote_shards = regions[1].hosted_shards();
    let remote_ids: Vec<u32> = (0..2_000u32)
        .filter(|id| remote_shards.contains(&regions[0].shard_of(&EntityId::from(*id))))
        .collect();
    assert!(!remote_ids.is_empty(), "no shard on node 2");
    Pair {
        from: regions.swap_remove(0),
        remote_ids,
        _keep: keep,
    }
}

async fn raw_pair() -> (Framed<TcpStream, LengthDelimitedCodec>, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let received = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&received);
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        stream.set_nodelay(true).expect("nodelay");
        let mut framed = Framed::new(stream, LengthDelimitedCodec::new());
        while let Some(Ok(frame)) = framed.next().await {
            let _: Msg = postcard::from_bytes(&frame).expect("decode");
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    (Framed::new(stream, LengthDelimitedCodec::new()), received)
}

fn remote_tell(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("remote_tell/multi_thread");
    group.throughput(Throughput::Elements(u64::from(MESSAGES)));
    group.sample_size(10);

    let certs = tempfile::tempdir().expect("temp dir");
    for (name, certs) in [("sharded_tcp", None), ("sharded_mtls", Some(certs.path()))] {
        let pair = rt.block_on(two_nodes(certs));
        group.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let from = pair.from.clone();
                let ids = pair.remote_ids.clone();
                async move {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let target = PROCESSED.load(Ordering::Relaxed) + u64::from(MESSAGES);
                        for i in 0..MESSAGES {
                            let id = ids[i as usize % ids.len()];
                            while from.tell(Msg { id }).is_err() {
                                tokio::task::yield_now().await;
                            }
                        }
                        wait_processed(target).await;
                    }
                    start.elapsed()
                }
            });
        });
        drop(pair);
    }

    let (framed, received) = rt.block_on(raw_pair());
    let framed = Arc::new(tokio::sync::Mutex::new(framed));
    group.bench_function("raw_framed_tcp", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let framed = Arc::clone(&framed);
            let received = Arc::clone(&received);
            async move {
                let mut framed = framed.lock().await;
                let start = Instant::now();
                for _ in 0..iters {
                    let target = received.load(Ordering::Relaxed) + u64::from(MESSAGES);
                    for id in 0..MESSAGES {
                        let bytes = postcard::to_stdvec(&Msg { id }).expect("encode");
                        framed.feed(Bytes::from(bytes)).await.expect("feed");
                    }
                    SinkExt::<Bytes>::flush(&mut *framed).await.expect("flush");
                    while received.load(Ordering::Relaxed) < target {
                        tokio::time::sleep(Duration::from_micros(50)).await;
                    }
                }
                start.elapsed()
            }
        });
    });
    group.finish();
}

criterion_group!(benches, remote_tell);
criterion_main!(benches);
