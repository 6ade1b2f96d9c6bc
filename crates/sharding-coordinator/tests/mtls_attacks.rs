//! The attacks that took a plaintext cluster over, replayed against three
//! sharded nodes on mutual TLS (loopback, real time): a stranger without a
//! certificate of the cluster's CA gets nowhere; a holder of a valid
//! certificate can neither speak as another node nor fence the cluster with
//! an absurd epoch. After every attack each counter still answers through
//! every node and the coordinator's epoch is unchanged.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::sync::Arc;
use std::time::Duration;

use cluster::transport::dev_certs::DevCa;
use cluster::{
    Membership, MembershipSettings, NodeAddr, NodeId, RefusalReason, TcpSettings, TcpTransport,
    TlsSettings, Transport,
};
use serde::{Deserialize, Serialize};
use sharding_coordinator::{ClusterSharding, ShardingSettings};
use sharding_core::protocol::{CoordinatorMsg, Directive, RegionMsg, TypeChannels, encode};
use sharding_core::{Entity, EntityId, Epoch, ShardId, ShardRegion, TypeName};
use tokio::time::sleep;

const CLUSTER: &str = "mtls-attacks";
const TYPE: &str = "counter";
const SHARDS: u32 = 16;

#[derive(Serialize, Deserialize)]
struct Add {
    id: u32,
    n: i64,
}

#[derive(Default)]
struct Counter(i64);

impl Entity for Counter {
    type Message = Add;
    type Reply = i64;
    async fn handle(&mut self, msg: Add) -> i64 {
        self.0 += msg.n;
        self.0
    }
}

struct Node {
    transport: Arc<TcpTransport>,
    membership: Membership,
    sharding: ClusterSharding,
    region: ShardRegion<Counter>,
}

struct Cluster {
    ca: DevCa,
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

fn tcp(node: u64, tls: TlsSettings) -> TcpSettings {
    let mut s = TcpSettings::new(CLUSTER, NodeId(node), "127.0.0.1:0".parse().unwrap());
    s.tls = Some(tls);
    s.backoff_min = Duration::from_millis(20);
    s.backoff_max = Duration::from_millis(200);
    s
}

fn membership_settings(seed: NodeAddr, i: u64) -> MembershipSettings {
    let mut ms = MembershipSettings::new(vec![(NodeId(1), seed)]);
    ms.heartbeat_interval = Duration::from_millis(200);
    ms.probe_timeout = Duration::from_millis(100);
    ms.down_after = Duration::from_secs(2);
    ms.announce_interval = Duration::from_millis(300);
    ms.rng_seed = i;
    ms
}

impl Cluster {
    async fn start() -> Self {
        Self::start_allowing(None).await
    }

    /// Three nodes; with `allowed`, each admits only those node ids.
    async fn start_allowing(allowed: Option<&[u64]>) -> Self {
        let ca = DevCa::new(CLUSTER).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut transports = Vec::new();
        for i in 1..=3 {
            let files = ca
                .write_node(NodeId(i), &dir.path().join(i.to_string()))
                .unwrap();
            let mut settings = tcp(i, files);
            settings.allowed_nodes = allowed.map(|ids| ids.iter().map(|n| NodeId(*n)).collect());
            transports.push(Arc::new(TcpTransport::bind(settings).await.unwrap()));
        }
        let seed = NodeAddr::from(transports[0].local_addr());
        let mut nodes = Vec::new();
        for (i, transport) in transports.into_iter().enumerate() {
            let membership = Membership::start(
                transport.clone(),
                NodeAddr::from(transport.local_addr()),
                membership_settings(seed.clone(), i as u64),
            )
            .unwrap();
            let sharding = ClusterSharding::new(transport.clone(), membership.view());
            let mut settings = ShardingSettings::new(
                TYPE,
                |m: &Add| EntityId::from(m.id),
                |_: &EntityId| Counter::default(),
            );
            settings.region.num_shards = SHARDS;
            settings.coordinator.recovery_timeout = Duration::from_millis(300);
            settings.region.retry_interval = Duration::from_millis(100);
            let region = sharding.start(settings).unwrap();
            nodes.push(Node {
                transport,
                membership,
                sharding,
                region,
            });
        }
        let cluster = Self { ca, dir, nodes };
        for _ in 0..100 {
            if cluster
                .nodes
                .iter()
                .all(|n| n.membership.view().members().len() == 3)
            {
                break;
            }
            sleep(Duration::from_millis(100)).await;
        }
        cluster.all_answer(0).await;
        cluster
    }

    fn epoch(&self) -> Option<Epoch> {
        self.nodes[0]
            .sharding
            .coordinator(&TypeName(TYPE.into()))
            .unwrap()
            .status()
            .epoch
    }

    /// Every one of 30 counters, through every node, within 10 s; `round`
    /// counts the increments so far.
    async fn all_answer(&self, round: i64) {
        for (k, node) in self.nodes.iter().enumerate() {
            for id in 0..30 {
                let mut last = None;
                for _ in 0..100 {
                    match tokio::time::timeout(
                        Duration::from_millis(500),
                        node.region.ask(Add { id, n: 1 }),
                    )
                    .await
                    {
                        Ok(Ok(v)) => {
                            last = Some(v);
                            break;
                        }
                        _ => sleep(Duration::from_millis(100)).await,
                    }
                }
                assert_eq!(
                    last,
                    Some(round * 3 + k as i64 + 1),
                    "counter {id} through node {}",
                    k + 1
                );
            }
        }
    }

    /// A node outside the cluster, as `claimed`, holding `tls`.
    async fn rogue(&self, claimed: u64, tls: TlsSettings) -> TcpTransport {
        let rogue = TcpTransport::bind(tcp(claimed, tls)).await.unwrap();
        for n in &self.nodes {
            rogue.learn_address(
                n.transport.local_node(),
                &NodeAddr::from(n.transport.local_addr()),
            );
        }
        rogue
    }

    /// A stranger holding `tls` runs membership as node 0 (which would lead
    /// every view) against node 1 for a second.
    async fn join_as_node_0(&self, tls: TlsSettings) -> Membership {
        let as_node_0 = Arc::new(self.rogue(0, tls).await);
        let joined = Membership::start(
            as_node_0.clone(),
            NodeAddr::from(as_node_0.local_addr()),
            membership_settings(NodeAddr::from(self.nodes[0].transport.local_addr()), 9),
        )
        .unwrap();
        sleep(Duration::from_secs(1)).await;
        joined
    }

    fn refused(&self, reason: RefusalReason) -> u64 {
        self.nodes.iter().map(|n| n.transport.refused(reason)).sum()
    }
}

/// The plaintext attacks: fence node 2 with `u64::MAX` (an ack and a handoff
/// of every shard, as if from the coordinator) and wrap the coordinator's
/// term with a registration at `u64::MAX`.
fn fence_and_wrap(rogue: &TcpTransport) {
    let channels = TypeChannels::of(&TypeName(TYPE.into()));
    let absurd = Epoch(u64::MAX);
    let to_region = |msg: RegionMsg| {
        let _ = rogue.send(NodeId(2), channels.region, encode(&msg).unwrap());
    };
    to_region(RegionMsg::Directive(Directive::RegisterAck {
        epoch: absurd,
    }));
    for shard in 0..SHARDS {
        to_region(RegionMsg::Directive(Directive::HandOff {
            epoch: absurd,
            shard: ShardId(shard),
        }));
    }
    let register = CoordinatorMsg::Register {
        shards: vec![],
        max_epoch: absurd,
        incarnation: 1,
    };
    let _ = rogue.send(NodeId(1), channels.coordinator, encode(&register).unwrap());
}

async fn attack_for_a_while(rogue: &TcpTransport) {
    for _ in 0..10 {
        fence_and_wrap(rogue);
        sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_cannot_fence_wrap_or_lead_a_cluster_on_mtls() {
    let cluster = Cluster::start().await;
    let epoch = cluster.epoch();
    assert!(epoch.is_some(), "a coordinator is active");

    // Speaking as the coordinator's node with a certificate of its own CA.
    let rogue_ca = DevCa::new(CLUSTER).unwrap();
    let dir = cluster.dir.path().join("rogue");
    let rogue_files = rogue_ca.write_node(NodeId(1), &dir).unwrap();
    let as_node_1 = cluster.rogue(1, rogue_files.clone()).await;
    attack_for_a_while(&as_node_1).await;

    // Joining the membership as node 0, which would lead every view.
    let _joined = cluster.join_as_node_0(rogue_files).await;

    assert!(cluster.refused(RefusalReason::Tls) >= 2);
    for n in &cluster.nodes {
        assert_eq!(n.membership.view().leader(), Some(NodeId(1)));
        assert_eq!(n.membership.view().members().len(), 3);
        assert_eq!(
            n.region.stats().refused_directives,
            0,
            "nothing reached a region"
        );
    }
    assert_eq!(cluster.epoch(), epoch);
    cluster.all_answer(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_certificate_can_neither_impersonate_nor_fence_with_an_absurd_epoch() {
    let cluster = Cluster::start().await;
    let epoch = cluster.epoch();
    // Node 9's real certificate from the cluster's CA.
    let files = cluster
        .ca
        .write_node(NodeId(9), &cluster.dir.path().join("9"))
        .unwrap();

    // As node 1 (the coordinator's node) and as node 0: refused for identity.
    let as_node_1 = cluster.rogue(1, files.clone()).await;
    attack_for_a_while(&as_node_1).await;
    let _joined = cluster.join_as_node_0(files.clone()).await;
    assert!(cluster.refused(RefusalReason::Identity) >= 2);
    for n in &cluster.nodes {
        assert_eq!(n.membership.view().leader(), Some(NodeId(1)));
    }
    assert_eq!(cluster.nodes[1].region.stats().refused_directives, 0);

    // As itself: admitted, but an absurd epoch is refused by the region and
    // by the coordinator, counted, and obeyed nowhere.
    let as_itself = cluster.rogue(9, files).await;
    attack_for_a_while(&as_itself).await;
    let refused = cluster.nodes[1].region.stats().refused_directives;
    assert!(refused > u64::from(SHARDS), "{refused}");
    assert!(cluster.nodes[1].region.max_epoch().is_plausible());
    assert_eq!(cluster.epoch(), epoch);
    cluster.all_answer(1).await;
}

/// A member with a valid certificate for its own new id (9) speaks for the
/// coordinator at the coordinator's real epoch: grants, homes and a handoff
/// of every shard to node 2, and the same at the ceiling epoch. Node 2
/// obeys only the coordinator it registered with, as the transport
/// authenticates it: every forged directive is refused and counted, node 2
/// keeps its shards and its epoch. (Before the sender rule, the handoffs at
/// the real epoch stopped node 2's shards, and an ack at 2^48 fenced it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_direct_another_members_region() {
    let cluster = Cluster::start().await;
    let epoch = cluster.epoch().unwrap();
    let files = cluster
        .ca
        .write_node(NodeId(9), &cluster.dir.path().join("9"))
        .unwrap();
    let insider = cluster.rogue(9, files).await;
    let before = cluster.nodes[1].region.hosted_shards();
    assert!(!before.is_empty(), "node 2 hosts shards");
    let channels = TypeChannels::of(&TypeName(TYPE.into()));
    let to_region = |msg: Directive| {
        let bytes = encode(&RegionMsg::Directive(msg)).unwrap();
        let _ = insider.send(NodeId(2), channels.region, bytes);
    };
    for _ in 0..10 {
        for e in [epoch, Epoch::CEILING] {
            to_region(Directive::RegisterAck { epoch: e });
            for seq in 0..5 {
                to_region(Directive::TenureGranted { epoch: e, seq });
            }
            for shard in 0..SHARDS {
                to_region(Directive::HandOff {
                    epoch: e,
                    shard: ShardId(shard),
                });
            }
        }
        let register = RegionMsg::RegisterRequest;
        let _ = insider.send(NodeId(2), channels.region, encode(&register).unwrap());
        sleep(Duration::from_millis(100)).await;
    }
    let stats = cluster.nodes[1].region.stats();
    assert!(
        stats.refused_foreign_directives >= 10 * 2 * (6 + u64::from(SHARDS)),
        "{stats:?}"
    );
    assert_eq!(cluster.nodes[1].region.hosted_shards(), before);
    assert_eq!(cluster.nodes[1].region.max_epoch(), epoch);
    assert_eq!(cluster.epoch(), Some(epoch));
    cluster.all_answer(1).await;
}

/// With the allow-list, a holder of a valid certificate for node 0 (which
/// would lead every view: the leader is the lowest id) is refused at the
/// handshake and counted, and node 1 stays the leader everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allow_list_keeps_a_valid_certificate_for_a_lower_id_out() {
    let cluster = Cluster::start_allowing(Some(&[1, 2, 3])).await;
    let files = cluster
        .ca
        .write_node(NodeId(0), &cluster.dir.path().join("0"))
        .unwrap();
    let _joined = cluster.join_as_node_0(files).await;
    assert!(cluster.refused(RefusalReason::NotAllowed) >= 1);
    for n in &cluster.nodes {
        assert_eq!(n.membership.view().leader(), Some(NodeId(1)));
        assert_eq!(n.membership.view().members().len(), 3);
    }
    cluster.all_answer(1).await;
}
