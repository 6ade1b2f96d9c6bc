//! One region on the in-process network, with a scripted coordinator.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cluster::{
    Envelope, InProcessNetwork, Membership, MembershipSettings, NodeAddr, NodeId, TcpSettings,
    TcpTransport, Transport,
};
use serde::{Deserialize, Serialize};
use sharding_core::protocol::{
    CoordinatorMsg, DataMsg, Directive, RegionMsg, TypeChannels, decode, encode,
};
use sharding_core::{
    Entity, EntityId, Epoch, RegionConfig, RegionEvent, RegionSettings, ShardId, ShardRegion,
    ShardingError, TenureSettings, TypeName,
};
use tokio::sync::mpsc;
use tokio::time::sleep;

#[derive(Debug, Serialize, Deserialize)]
struct Add {
    id: String,
    n: i64,
}

#[derive(Default)]
struct Counter(i64);

impl Entity for Counter {
    type Message = Add;
    type Reply = i64;
    async fn handle(&mut self, m: Add) -> i64 {
        self.0 += m.n;
        self.0
    }
}

const REGION: NodeId = NodeId(1);
const COORDINATOR: NodeId = NodeId(9);

struct Rig<E: Entity<Message = Add>> {
    region: ShardRegion<E>,
    /// Another node (9), for data messages and for directives that do not
    /// come from the region's coordinator.
    coordinator: Arc<dyn Transport>,
    /// The region's own node, which leads its view of one: directives of
    /// the scripted coordinator come from here, as only the coordinator the
    /// region registered with may direct it.
    leader: Arc<dyn Transport>,
    /// The highest epoch the scripted coordinator has acknowledged a
    /// registration with.
    acked: Arc<Mutex<Epoch>>,
    to_coordinator: mpsc::Receiver<Envelope>,
    replies: mpsc::Receiver<Envelope>,
    channels: TypeChannels,
    events: Arc<Mutex<Vec<RegionEvent>>>,
    /// The allocation number the scripted coordinator's homes carry.
    allocation: u64,
    _membership: Membership,
}

fn rig(settings: RegionSettings) -> Rig<Counter> {
    Rig::start("counter", Counter::default, settings, None)
}

impl<E: Entity<Message = Add>> Rig<E> {
    /// One region of `type_name` on node 1, alone in its cluster.
    fn start(
        type_name: &str,
        make: fn() -> E,
        settings: RegionSettings,
        tenure: Option<TenureSettings>,
    ) -> Self {
        let network = InProcessNetwork::new(1);
        let transport = Arc::new(network.join(REGION));
        let coordinator = Arc::new(network.join(COORDINATOR));
        let addr = NodeAddr::from("inproc:1");
        Self::start_on(
            transport,
            coordinator,
            addr,
            type_name,
            make,
            settings,
            tenure,
        )
    }

    /// One region of `type_name` on `transport` (node 1, reached at
    /// `addr`), alone in its cluster; the scripted coordinator speaks
    /// through `coordinator` (node 9).
    fn start_on(
        transport: Arc<dyn Transport>,
        coordinator: Arc<dyn Transport>,
        addr: NodeAddr,
        type_name: &str,
        make: fn() -> E,
        settings: RegionSettings,
        tenure: Option<TenureSettings>,
    ) -> Self {
        let membership =
            Membership::start(transport.clone(), addr, MembershipSettings::new(Vec::new()))
                .unwrap();
        let type_name = TypeName::from(type_name);
        let channels = TypeChannels::of(&type_name);
        // The region sends to its view's leader (itself, alone): intercept there.
        let to_coordinator = transport.subscribe(channels.coordinator);
        // Answers to directives go to the node that sent them.
        let replies = coordinator.subscribe(channels.coordinator);
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        let leader = Arc::clone(&transport);
        let region = ShardRegion::start(
            RegionConfig {
                type_name,
                extractor: Arc::new(|m: &Add| EntityId::from(&m.id)),
                factory: Arc::new(move |_: &EntityId| make()),
                settings,
                observer: Some(Arc::new(move |_, _, e: &RegionEvent| {
                    sink.lock().unwrap().push(e.clone());
                })),
                tenure,
                suspender: None,
            },
            transport,
            membership.view(),
        );
        Rig {
            region,
            coordinator,
            leader,
            acked: Arc::new(Mutex::new(Epoch(0))),
            to_coordinator,
            replies,
            channels,
            events,
            allocation: 1,
            _membership: membership,
        }
    }

    /// Sends `directive` as the region's coordinator; a directive at an
    /// epoch above the last acknowledged one is preceded by a `RegisterAck`
    /// at that epoch (a coordinator's new term begins with one).
    fn direct(&self, directive: Directive) {
        let epoch = directive.epoch();
        let ack = matches!(directive, Directive::RegisterAck { .. });
        let mut acked = self.acked.lock().unwrap();
        if !ack && epoch > *acked && epoch.is_plausible() {
            self.send_directive(&self.leader, Directive::RegisterAck { epoch });
        }
        if (ack || !epoch.is_plausible() || epoch > *acked) && epoch.is_plausible() {
            *acked = (*acked).max(epoch);
        }
        drop(acked);
        self.send_directive(&self.leader, directive);
    }

    /// Sends `directive` through `through`, whoever that is.
    fn send_directive(&self, through: &Arc<dyn Transport>, directive: Directive) {
        let bytes = encode(&RegionMsg::Directive(directive)).unwrap();
        through.send(REGION, self.channels.region, bytes).unwrap();
    }

    /// Messages the region sent towards a coordinator so far.
    fn sent(&mut self) -> Vec<CoordinatorMsg> {
        let mut out = Vec::new();
        while let Ok(e) = self.to_coordinator.try_recv() {
            out.push(decode("coordinator message", &e.payload).unwrap());
        }
        while let Ok(e) = self.replies.try_recv() {
            out.push(decode("coordinator message", &e.payload).unwrap());
        }
        out
    }

    /// Plays a coordinator that homes every requested shard on the region.
    async fn answer_home_requests(&mut self, epoch: Epoch) {
        sleep(Duration::from_millis(10)).await;
        for msg in self.sent() {
            if let CoordinatorMsg::GetShardHome { shard } = msg {
                self.direct(Directive::ShardHome {
                    epoch,
                    shard,
                    region: REGION,
                    allocation: 1,
                });
            }
        }
        sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_directive_with_a_lower_epoch_is_refused() {
    let mut rig = rig(RegionSettings::default());
    let shard = ShardId(3);
    rig.direct(Directive::HostShard {
        epoch: Epoch(5),
        shard,
        allocation: 1,
    });
    sleep(Duration::from_millis(10)).await;
    assert_eq!(rig.region.hosted_shards(), vec![shard]);
    assert_eq!(rig.region.max_epoch(), Epoch(5));
    assert!(rig.sent().contains(&CoordinatorMsg::ShardStarted { shard }));

    // A stale coordinator (epoch 4) tries to move the shard: refused.
    rig.direct(Directive::HandOff {
        epoch: Epoch(4),
        shard,
    });
    sleep(Duration::from_millis(10)).await;
    assert_eq!(rig.region.hosted_shards(), vec![shard], "still hosted");
    assert_eq!(rig.region.stats().refused_directives, 1);
    assert!(
        rig.events
            .lock()
            .unwrap()
            .contains(&RegionEvent::DirectiveRefused {
                from: REGION,
                kind: "HandOff",
                epoch: Epoch(4),
                max_epoch: Epoch(5),
            })
    );
    assert!(!rig.sent().contains(&CoordinatorMsg::ShardStopped { shard }));

    // The current coordinator's handoff is obeyed.
    rig.direct(Directive::HandOff {
        epoch: Epoch(5),
        shard,
    });
    sleep(Duration::from_millis(10)).await;
    assert!(rig.region.hosted_shards().is_empty());
    assert!(rig.sent().contains(&CoordinatorMsg::ShardStopped { shard }));
}

#[tokio::test(start_paused = true)]
async fn idle_entities_are_passivated_and_restarted_on_the_next_message() {
    let mut rig = rig(RegionSettings {
        passivate_after: Duration::from_secs(10),
        ..RegionSettings::default()
    });
    rig.region
        .tell(Add {
            id: "a".into(),
            n: 5,
        })
        .unwrap();
    rig.answer_home_requests(Epoch(1)).await;
    assert_eq!(
        rig.region
            .ask(Add {
                id: "a".into(),
                n: 1
            })
            .await
            .unwrap(),
        6
    );
    assert_eq!(rig.region.stats().entities_started, 1);

    // Not before the idle timeout...
    sleep(Duration::from_secs(9)).await;
    assert_eq!(rig.region.stats().entities_passivated, 0);
    // ...and by 1.5 x the timeout at the latest (a sweep every half timeout).
    sleep(Duration::from_secs(7)).await;
    assert_eq!(rig.region.stats().entities_passivated, 1);
    // A fresh incarnation: in-memory state starts over.
    assert_eq!(
        rig.region
            .ask(Add {
                id: "a".into(),
                n: 1
            })
            .await
            .unwrap(),
        1
    );
    assert_eq!(rig.region.stats().entities_started, 2);

    // Activity keeps an entity alive.
    for _ in 0..5 {
        sleep(Duration::from_secs(6)).await;
        rig.region
            .tell(Add {
                id: "a".into(),
                n: 1,
            })
            .unwrap();
    }
    sleep(Duration::from_millis(10)).await;
    assert_eq!(rig.region.stats().entities_passivated, 1);
}

#[tokio::test(start_paused = true)]
async fn buffer_overflow_is_an_error_to_the_caller_and_counted() {
    let rig = rig(RegionSettings {
        buffer_size: 10,
        ..RegionSettings::default()
    });
    // No coordinator answers: everything waits in the buffer.
    for i in 0..10 {
        rig.region
            .tell(Add {
                id: format!("e{i}"),
                n: 1,
            })
            .unwrap();
    }
    sleep(Duration::from_millis(10)).await;
    assert_eq!(rig.region.stats().buffered, 10);
    assert_eq!(
        rig.region.tell(Add {
            id: "x".into(),
            n: 1
        }),
        Err(ShardingError::BufferFull { capacity: 10 })
    );
    assert!(matches!(
        rig.region
            .ask(Add {
                id: "y".into(),
                n: 1
            })
            .await,
        Err(ShardingError::BufferFull { capacity: 10 })
    ));
    assert_eq!(rig.region.stats().dropped_buffer_full, 2);
}

#[tokio::test(start_paused = true)]
async fn buffered_messages_are_delivered_once_the_home_is_known() {
    let mut rig = rig(RegionSettings::default());
    for i in 0..50 {
        rig.region
            .tell(Add {
                id: format!("e{}", i % 5),
                n: 1,
            })
            .unwrap();
    }
    rig.answer_home_requests(Epoch(1)).await;
    for i in 0..5 {
        let v = rig
            .region
            .ask(Add {
                id: format!("e{i}"),
                n: 0,
            })
            .await
            .unwrap();
        assert_eq!(v, 10, "entity e{i}");
    }
    assert_eq!(rig.region.stats().buffered, 0);
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_ask_times_out() {
    let rig = rig(RegionSettings::default());
    let err = rig
        .region
        .ask(Add {
            id: "z".into(),
            n: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ShardingError::AskTimeout {
            entity: EntityId::from("z"),
            after: Duration::from_secs(5)
        }
    );
}

#[tokio::test(start_paused = true)]
async fn garbage_on_the_region_channel_is_counted_and_ignored() {
    let mut rig = rig(RegionSettings::default());
    rig.coordinator
        .send(
            REGION,
            rig.channels.region,
            Bytes::from_static(&[0xff, 0x00, 0x13]),
        )
        .unwrap();
    sleep(Duration::from_millis(10)).await;
    assert_eq!(rig.region.stats().dropped_undeliverable, 1);
    // Still serving.
    rig.region
        .tell(Add {
            id: "a".into(),
            n: 2,
        })
        .unwrap();
    rig.answer_home_requests(Epoch(1)).await;
    assert_eq!(
        rig.region
            .ask(Add {
                id: "a".into(),
                n: 0
            })
            .await
            .unwrap(),
        2
    );
}

/// Remembers the order it saw `n` values in.
struct Recorder(Vec<i64>);

impl Entity for Recorder {
    type Message = Add;
    type Reply = Vec<i64>;
    async fn handle(&mut self, m: Add) -> Vec<i64> {
        if m.n >= 0 {
            self.0.push(m.n);
        }
        self.0.clone()
    }
}

impl Rig<Recorder> {
    /// Hands `shard` off (epoch 1) and waits until the region reports it stopped.
    async fn hand_off(&mut self, shard: ShardId) {
        self.direct(Directive::HandOff {
            epoch: Epoch(1),
            shard,
        });
        loop {
            let e = self.to_coordinator.recv().await.unwrap();
            if decode::<CoordinatorMsg>("coordinator message", &e.payload).unwrap()
                == (CoordinatorMsg::ShardStopped { shard })
            {
                return;
            }
        }
    }

    /// Answers the next `GetShardHome` with this region as the home.
    async fn home_here(&mut self) -> ShardId {
        loop {
            let e = self.to_coordinator.recv().await.unwrap();
            if let CoordinatorMsg::GetShardHome { shard } =
                decode("coordinator message", &e.payload).unwrap()
            {
                self.direct(Directive::ShardHome {
                    epoch: Epoch(1),
                    shard,
                    region: REGION,
                    allocation: 1,
                });
                return shard;
            }
        }
    }

    /// Waits for the entity to have seen `total` values; returns them.
    async fn seen(&self, total: usize) -> Vec<i64> {
        loop {
            let seen = self
                .region
                .ask(Add {
                    id: "one".into(),
                    n: -1,
                })
                .await
                .unwrap();
            if seen.len() >= total {
                return seen;
            }
            sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Tells `0..total` to entity "one" from one task, yielding now and then.
fn send_in_order(region: &ShardRegion<Recorder>, total: i64) -> tokio::task::JoinHandle<()> {
    let sender = region.clone();
    tokio::spawn(async move {
        for n in 0..total {
            sender
                .tell(Add {
                    id: "one".into(),
                    n,
                })
                .unwrap();
            if n % 64 == 0 {
                tokio::task::yield_now().await;
            }
        }
    })
}

fn inversions(seen: &[i64]) -> usize {
    seen.windows(2).filter(|w| w[0] > w[1]).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_senders_messages_keep_their_order_while_the_home_arrives() {
    let mut rig = Rig::start(
        "recorder",
        || Recorder(Vec::new()),
        RegionSettings::default(),
        None,
    );
    let total = 20_000;
    let sending = send_in_order(&rig.region, total);
    // The home arrives while messages keep coming.
    rig.home_here().await;
    sending.await.unwrap();
    let seen = rig.seen(total as usize).await;
    assert_eq!(
        inversions(&seen),
        0,
        "messages from one sender were reordered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_senders_messages_keep_their_order_across_a_handoff() {
    let mut rig = Rig::start(
        "recorder",
        || Recorder(Vec::new()),
        RegionSettings::default(),
        None,
    );
    let total = 40_000;
    let sending = send_in_order(&rig.region, total);
    let shard = rig.home_here().await;
    sleep(Duration::from_millis(5)).await;
    // Hand the shard off while messages keep coming, then home it here again.
    rig.hand_off(shard).await;
    rig.home_here().await;
    sending.await.unwrap();
    // The second incarnation saw the rest, in order.
    let seen = rig.seen(1).await;
    assert!(!seen.is_empty());
    assert_eq!(
        *seen.last().unwrap(),
        total - 1,
        "the last message arrived last"
    );
    assert_eq!(
        inversions(&seen),
        0,
        "messages were reordered across the handoff"
    );
}

#[tokio::test(start_paused = true)]
async fn an_absurd_epoch_is_refused_and_counted_and_fences_nothing() {
    let mut rig = rig(RegionSettings::default());
    let shard = ShardId(3);
    // A peer claiming an epoch no coordinator could have issued: obeying it
    // would make the region refuse every real coordinator for good.
    rig.direct(Directive::HostShard {
        epoch: Epoch(u64::MAX),
        shard,
        allocation: 1,
    });
    sleep(Duration::from_millis(10)).await;
    assert!(rig.region.hosted_shards().is_empty());
    assert_eq!(rig.region.max_epoch(), Epoch(0));
    assert_eq!(rig.region.stats().refused_directives, 1);
    // The real coordinator is still obeyed.
    rig.direct(Directive::HostShard {
        epoch: Epoch(2),
        shard,
        allocation: 1,
    });
    sleep(Duration::from_millis(10)).await;
    assert_eq!(rig.region.hosted_shards(), vec![shard]);
    assert!(rig.sent().contains(&CoordinatorMsg::ShardStarted { shard }));
}

#[tokio::test(start_paused = true)]
async fn a_register_request_is_answered_with_the_hosted_shards_and_the_incarnation() {
    let mut rig = rig(RegionSettings::default());
    let shard = ShardId(9);
    rig.direct(Directive::HostShard {
        epoch: Epoch(1),
        shard,
        allocation: 1,
    });
    sleep(Duration::from_millis(10)).await;
    rig.sent();
    let bytes = encode(&RegionMsg::RegisterRequest).unwrap();
    rig.leader.send(REGION, rig.channels.region, bytes).unwrap();
    sleep(Duration::from_millis(10)).await;
    let registered = rig.sent().into_iter().find_map(|m| match m {
        CoordinatorMsg::Register {
            shards,
            max_epoch,
            incarnation,
        } => Some((shards, max_epoch, incarnation)),
        _ => None,
    });
    let (shards, max_epoch, incarnation) = registered.expect("no Register sent");
    assert_eq!((shards, max_epoch), (vec![shard], Epoch(1)));
    assert!(incarnation > 0, "the node's membership generation");
}

fn tenure() -> TenureSettings {
    TenureSettings {
        tenure: Duration::from_secs(10),
        renew_interval: Duration::from_secs(2),
        clock_rate_bound: 0.01,
        margin: Duration::from_secs(1),
        bridge: Duration::from_secs(6),
    }
}

impl<E: Entity<Message = Add>> Rig<E> {
    /// Plays a coordinator that acknowledges registrations, grants every
    /// renewal and homes every requested shard on the region.
    async fn grant_renewals(&mut self, epoch: Epoch) -> usize {
        sleep(Duration::from_millis(10)).await;
        let mut granted = 0;
        for msg in self.sent() {
            match msg {
                CoordinatorMsg::Register { .. } => self.direct(Directive::RegisterAck { epoch }),
                CoordinatorMsg::RenewTenure { seq } => {
                    self.direct(Directive::TenureGranted { epoch, seq });
                    granted += 1;
                }
                CoordinatorMsg::GetShardHome { shard } => self.direct(Directive::ShardHome {
                    epoch,
                    shard,
                    region: REGION,
                    allocation: self.allocation,
                }),
                _ => {}
            }
        }
        sleep(Duration::from_millis(10)).await;
        granted
    }
}

#[tokio::test(start_paused = true)]
async fn with_tenure_a_region_hosts_only_while_granted_and_stops_at_the_lapse() {
    let mut rig = Rig::start(
        "counter",
        Counter::default,
        RegionSettings::default(),
        Some(tenure()),
    );
    let shard = ShardId(3);
    let epoch = Epoch(1);
    // No grant yet: a HostShard is not obeyed (not acknowledged either).
    rig.direct(Directive::HostShard {
        epoch,
        shard,
        allocation: 1,
    });
    sleep(Duration::from_millis(10)).await;
    assert!(
        rig.region.hosted_shards().is_empty(),
        "hosted without a tenure"
    );
    // Register and renew: granted.
    sleep(Duration::from_secs(2)).await;
    rig.grant_renewals(epoch).await;
    sleep(Duration::from_secs(2)).await;
    assert!(rig.grant_renewals(epoch).await > 0, "the region renews");
    rig.direct(Directive::HostShard {
        epoch,
        shard,
        allocation: 1,
    });
    sleep(Duration::from_millis(10)).await;
    assert_eq!(rig.region.hosted_shards(), vec![shard]);
    let entity = "e".to_string();
    let id = (0..)
        .map(|i| format!("{entity}{i}"))
        .find(|id| rig.region.shard_of(&EntityId::from(id.as_str())) == shard)
        .unwrap();
    assert_eq!(
        rig.region
            .ask(Add {
                id: id.clone(),
                n: 1
            })
            .await
            .unwrap(),
        1
    );

    // The coordinator goes silent: within tenure - margin of the last
    // answered request, every shard stops and messages wait.
    let started = rig.events.lock().unwrap().len();
    sleep(Duration::from_secs(10)).await;
    rig.sent();
    assert!(
        rig.region.hosted_shards().is_empty(),
        "still hosting after the lapse"
    );
    assert!(rig.events.lock().unwrap()[started..].contains(&RegionEvent::ShardStopped(shard)));
    let region = rig.region.clone();
    let waiting = tokio::spawn({
        let id = id.clone();
        async move { region.ask(Add { id, n: 1 }).await }
    });
    sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "handled without a tenure");
    assert!(rig.region.hosted_shards().is_empty());

    // A grant: hosted again, and the waiting message is handled (by a fresh
    // incarnation: the entity's state lived in memory on the stopped one).
    rig.grant_renewals(epoch).await;
    rig.grant_renewals(epoch).await;
    assert_eq!(waiting.await.unwrap().unwrap(), 1);
    assert_eq!(rig.region.hosted_shards(), vec![shard]);
}

/// Contexts of every `Witness` incarnation started, in order.
static CONTEXTS: Mutex<Vec<sharding_core::EntityContext>> = Mutex::new(Vec::new());

#[derive(Default)]
struct Witness;

impl Entity for Witness {
    type Message = Add;
    type Reply = ();
    async fn started_in(&mut self, context: &sharding_core::EntityContext) {
        CONTEXTS.lock().unwrap().push(context.clone());
    }
    async fn handle(&mut self, _: Add) {}
}

#[tokio::test(start_paused = true)]
async fn an_entity_runs_under_the_token_of_its_shards_allocation() {
    let mut rig = Rig::start("witness", Witness::default, RegionSettings::default(), None);
    let shard = ShardId(3);
    let id = (0..)
        .map(|i| format!("w{i}"))
        .find(|id| rig.region.shard_of(&EntityId::from(id.as_str())) == shard)
        .unwrap();
    rig.direct(Directive::HostShard {
        epoch: Epoch(5),
        shard,
        allocation: 9,
    });
    sleep(Duration::from_millis(10)).await;
    rig.region
        .ask(Add {
            id: id.clone(),
            n: 1,
        })
        .await
        .unwrap();
    // Moved away and back under a newer coordinator.
    rig.direct(Directive::HandOff {
        epoch: Epoch(5),
        shard,
    });
    sleep(Duration::from_millis(10)).await;
    assert!(rig.sent().contains(&CoordinatorMsg::ShardStopped { shard }));
    rig.direct(Directive::HostShard {
        epoch: Epoch(6),
        shard,
        allocation: 2,
    });
    sleep(Duration::from_millis(10)).await;
    rig.region
        .ask(Add {
            id: id.clone(),
            n: 1,
        })
        .await
        .unwrap();
    let tokens: Vec<sharding_core::FencingToken> =
        CONTEXTS.lock().unwrap().iter().map(|c| c.token).collect();
    assert_eq!(
        tokens,
        vec![
            sharding_core::FencingToken {
                epoch: Epoch(5),
                allocation: 9
            },
            sharding_core::FencingToken {
                epoch: Epoch(6),
                allocation: 2
            },
        ]
    );
    assert!(tokens[0] < tokens[1]);
    assert!(
        CONTEXTS
            .lock()
            .unwrap()
            .iter()
            .all(|c| c.shard == shard && c.id.as_str() == id)
    );
}

/// Contexts of every `LapseWitness` incarnation started, in order.
static LAPSE_CONTEXTS: Mutex<Vec<sharding_core::EntityContext>> = Mutex::new(Vec::new());

#[derive(Default)]
struct LapseWitness;

impl Entity for LapseWitness {
    type Message = Add;
    type Reply = ();
    async fn started_in(&mut self, context: &sharding_core::EntityContext) {
        LAPSE_CONTEXTS.lock().unwrap().push(context.clone());
    }
    async fn handle(&mut self, _: Add) {}
}

#[tokio::test(start_paused = true)]
async fn a_shard_restarted_after_a_lapse_keeps_its_allocations_token() {
    let mut rig = Rig::start(
        "lapse-witness",
        LapseWitness::default,
        RegionSettings::default(),
        Some(tenure()),
    );
    let (shard, epoch) = (ShardId(3), Epoch(1));
    rig.allocation = 7;
    let id = (0..)
        .map(|i| format!("l{i}"))
        .find(|id| rig.region.shard_of(&EntityId::from(id.as_str())) == shard)
        .unwrap();
    sleep(Duration::from_secs(2)).await;
    rig.grant_renewals(epoch).await;
    sleep(Duration::from_secs(2)).await;
    rig.grant_renewals(epoch).await;
    rig.direct(Directive::HostShard {
        epoch,
        shard,
        allocation: 7,
    });
    sleep(Duration::from_millis(10)).await;
    rig.region
        .ask(Add {
            id: id.clone(),
            n: 1,
        })
        .await
        .unwrap();
    // The coordinator goes silent: the tenure lapses and the shard stops.
    sleep(Duration::from_secs(10)).await;
    rig.sent();
    assert!(rig.region.hosted_shards().is_empty());
    // Granted again: the restart (through the coordinator's answer, or the
    // token kept while the home is here) runs under the same allocation,
    // never a lower token that storage would fence.
    let region = rig.region.clone();
    let waiting = tokio::spawn(async move { region.ask(Add { id, n: 1 }).await });
    rig.grant_renewals(epoch).await;
    rig.grant_renewals(epoch).await;
    waiting.await.unwrap().unwrap();
    let tokens: Vec<sharding_core::FencingToken> = LAPSE_CONTEXTS
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.token)
        .collect();
    let token = sharding_core::FencingToken {
        epoch,
        allocation: 7,
    };
    assert_eq!(tokens, vec![token, token]);
}

/// Sleeps `-n` seconds for a negative `n` (a handler waiting on I/O), then adds.
#[derive(Default)]
struct Napper(i64);

impl Entity for Napper {
    type Message = Add;
    type Reply = i64;
    async fn handle(&mut self, m: Add) -> i64 {
        if m.n < 0 {
            sleep(Duration::from_secs(m.n.unsigned_abs())).await;
        }
        self.0 += m.n;
        self.0
    }
}

#[tokio::test(start_paused = true)]
async fn a_waiting_handler_holds_up_its_own_entity_only() {
    let mut rig = Rig::start(
        "napper",
        Napper::default,
        RegionSettings {
            num_shards: 1, // both entities in one shard
            ..RegionSettings::default()
        },
        None,
    );
    let handle = rig.region.clone();
    let ask = |id: &str, n: i64| {
        let region = handle.clone();
        let id = id.to_owned();
        tokio::spawn(async move { region.ask(Add { id, n }).await })
    };
    let slow = ask("slow", -60);
    rig.answer_home_requests(Epoch(1)).await;
    let slow_again = ask("slow", 1);
    sleep(Duration::from_millis(10)).await;
    // The neighbour answers at once while `slow` waits for its timer...
    let fast = tokio::time::timeout(Duration::from_secs(1), ask("fast", 2))
        .await
        .expect("a busy neighbour held the shard up")
        .unwrap();
    assert_eq!(fast.unwrap(), 2);
    assert!(!slow.is_finished() && !slow_again.is_finished());
    // ...and `slow` handles its messages one at a time, in order.
    let slow = slow.await.unwrap();
    let slow_again = slow_again.await.unwrap();
    // The ask timeout (5 s by default) answers the waiting callers, but the
    // entity still handles both messages in order.
    assert!(
        matches!(slow, Err(ShardingError::AskTimeout { .. })),
        "{slow:?}"
    );
    assert!(
        matches!(slow_again, Err(ShardingError::AskTimeout { .. })),
        "{slow_again:?}"
    );
    sleep(Duration::from_secs(61)).await;
    assert_eq!(
        rig.region
            .ask(Add {
                id: "slow".into(),
                n: 0
            })
            .await
            .unwrap(),
        -59
    );
    assert_eq!(rig.region.stats().entities_started, 2);
}

/// Records values like `Recorder`; `n == -2` makes the handler wait a second.
struct SlowRecorder(Vec<i64>);

impl Entity for SlowRecorder {
    type Message = Add;
    type Reply = Vec<i64>;
    async fn handle(&mut self, m: Add) -> Vec<i64> {
        match m.n {
            -2 => sleep(Duration::from_secs(1)).await,
            n if n >= 0 => self.0.push(n),
            _ => {}
        }
        self.0.clone()
    }
}

#[tokio::test(start_paused = true)]
async fn a_long_queue_behind_a_waiting_handler_is_handled_in_order() {
    let mut rig = Rig::start(
        "slow-recorder",
        || SlowRecorder(Vec::new()),
        RegionSettings {
            num_shards: 1,
            ..RegionSettings::default()
        },
        None,
    );
    let handle = rig.region.clone();
    let tell = |id: String, n: i64| handle.tell(Add { id, n }).unwrap();
    tell("one".into(), -2);
    rig.answer_home_requests(Epoch(1)).await;
    // 2000 messages queue up behind the waiting handler, more than the
    // shard polls in a row, and 300 other entities start meanwhile.
    for n in 0..2000 {
        tell("one".into(), n);
        if n < 300 {
            tell(format!("other-{n}"), n);
        }
        if n % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    sleep(Duration::from_secs(2)).await;
    let seen = rig
        .region
        .ask(Add {
            id: "one".into(),
            n: -1,
        })
        .await
        .unwrap();
    assert_eq!(seen, (0..2000).collect::<Vec<_>>());
    for n in [0, 150, 299] {
        let other = rig
            .region
            .ask(Add {
                id: format!("other-{n}"),
                n: -1,
            })
            .await
            .unwrap();
        assert_eq!(other, vec![n]);
    }
    assert_eq!(rig.region.stats().entities_started, 301);
}

/// What another node sends a region on the type's data channel.
fn from_another_node<M: Serialize>(rig: &Rig<Counter>, shard: ShardId, request: u64, message: &M) {
    let msg = DataMsg::<&M, &i64>::Deliver {
        shard,
        entity: EntityId::from("a"),
        reply_to: Some((COORDINATOR, request)),
        hops: 1,
        message,
    };
    let bytes = encode(&msg).unwrap();
    rig.coordinator
        .send(REGION, rig.channels.data, bytes)
        .unwrap();
}

/// Messages from another node for a shard hosted here are decoded by the
/// shard's task: each good one is handled and answered over the wire; one
/// that does not decode is counted, and its asker hears why.
#[tokio::test(start_paused = true)]
async fn a_message_from_another_node_is_answered_and_a_bad_one_is_refused_with_the_reason() {
    let rig = rig(RegionSettings::default());
    let mut answers = rig.coordinator.subscribe(rig.channels.data);
    let shard = rig.region.shard_of(&EntityId::from("a"));
    rig.direct(Directive::HostShard {
        epoch: Epoch(1),
        shard,
        allocation: 1,
    });
    sleep(Duration::from_millis(10)).await;
    assert_eq!(rig.region.hosted_shards(), vec![shard]);

    let good = Add {
        id: "a".into(),
        n: 5,
    };
    from_another_node(&rig, shard, 1, &good);
    // `true` is no `Add`: its head decodes, its message does not.
    from_another_node(&rig, shard, 2, &true);
    from_another_node(&rig, shard, 3, &good);
    let mut replies = Vec::new();
    for _ in 0..3 {
        let e = tokio::time::timeout(Duration::from_secs(1), answers.recv())
            .await
            .expect("an answer")
            .unwrap();
        match decode::<DataMsg<Add, i64>>("reply", &e.payload).unwrap() {
            DataMsg::Reply { request, result } => replies.push((request, result)),
            other => panic!("not a reply: {other:?}"),
        }
    }
    replies.sort_by_key(|(request, _)| *request);
    assert_eq!(replies[0], (1, Ok(5)));
    assert_eq!(replies[2], (3, Ok(10)));
    let (request, refused) = &replies[1];
    assert_eq!(*request, 2);
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("undecodable")),
        "{refused:?}"
    );
    assert_eq!(rig.region.stats().dropped_undeliverable, 1);
}

/// A region on TCP, with the scripted coordinator on a second TCP node:
/// frames between them arrive in batches, as between real nodes.
async fn rig_on_tcp() -> Rig<Recorder> {
    let bind = |node| async move {
        let settings = TcpSettings::new("rig", node, "127.0.0.1:0".parse().unwrap());
        Arc::new(TcpTransport::bind(settings).await.unwrap())
    };
    let region = bind(REGION).await;
    let coordinator = bind(COORDINATOR).await;
    let region_addr = NodeAddr::from(region.local_addr());
    region.learn_address(COORDINATOR, &NodeAddr::from(coordinator.local_addr()));
    coordinator.learn_address(REGION, &region_addr);
    Rig::start_on(
        region,
        coordinator,
        region_addr,
        "recorder",
        || Recorder(Vec::new()),
        RegionSettings::default(),
        None,
    )
}

/// Tells `0..total` to entity "one" from the coordinator's node, as a
/// region there would forward them, yielding now and then.
fn send_in_order_from_another_node(
    rig: &Rig<Recorder>,
    shard: ShardId,
    total: i64,
) -> tokio::task::JoinHandle<()> {
    let transport = Arc::clone(&rig.coordinator);
    let channel = rig.channels.data;
    tokio::spawn(async move {
        for n in 0..total {
            let message = Add {
                id: "one".into(),
                n,
            };
            let msg = DataMsg::<&Add, &Vec<i64>>::Deliver {
                shard,
                entity: EntityId::from("one"),
                reply_to: None,
                hops: 1,
                message: &message,
            };
            transport
                .send(REGION, channel, encode(&msg).unwrap())
                .unwrap();
            if n % 64 == 0 {
                tokio::task::yield_now().await;
            }
        }
    })
}

/// Messages another node sends one entity, read in batches off a TCP
/// connection while the entity's shard is handed off and homed here again,
/// are handled once each and in the order sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_from_another_node_keep_their_order_across_a_handoff() {
    let mut rig = rig_on_tcp().await;
    let shard = rig.region.shard_of(&EntityId::from("one"));
    rig.direct(Directive::HostShard {
        epoch: Epoch(1),
        shard,
        allocation: 1,
    });
    while rig.region.hosted_shards() != vec![shard] {
        sleep(Duration::from_millis(5)).await;
    }
    let total = 40_000;
    let sending = send_in_order_from_another_node(&rig, shard, total);
    sleep(Duration::from_millis(20)).await;
    rig.hand_off(shard).await;
    // Messages that arrive meanwhile wait for the shard's home.
    rig.home_here().await;
    sending.await.unwrap();
    // The last one sent is the last one seen, once the rest are through.
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let seen = rig.seen(1).await;
            if seen.contains(&(total - 1)) {
                return seen;
            }
            sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the last message arrives");
    assert_eq!(*seen.last().unwrap(), total - 1, "the last arrived last");
    assert_eq!(
        inversions(&seen),
        0,
        "messages were reordered across the handoff"
    );
    assert_eq!(rig.region.stats().dropped_undeliverable, 0);
}

/// A member that is not the coordinator this region registered with (node
/// 9, a valid member of the cluster) speaks for a coordinator: its grants,
/// homes and handoffs are refused and counted, and it cannot make the
/// region register with it either. Before the sender rule, the forged grant
/// kept the region hosting past its real tenure, and the forged handoff
/// stopped a shard.
#[tokio::test(start_paused = true)]
async fn only_the_registered_coordinator_may_direct_a_region() {
    let mut rig = Rig::start(
        "counter",
        Counter::default,
        RegionSettings::default(),
        Some(tenure()),
    );
    let epoch = Epoch(3);
    sleep(Duration::from_secs(2)).await;
    rig.grant_renewals(epoch).await; // the registration
    assert!(rig.grant_renewals(epoch).await > 0, "the region renews");
    let shard = ShardId(5);
    rig.direct(Directive::HostShard {
        epoch,
        shard,
        allocation: 1,
    });
    sleep(Duration::from_millis(10)).await;
    assert_eq!(rig.region.hosted_shards(), vec![shard]);

    // Node 9 asks the region to register with it, acknowledges, then
    // directs: a handoff of the hosted shard, a home for another shard, and
    // grants for every sequence number the region could be waiting on.
    let insider = Arc::clone(&rig.coordinator);
    let bytes = encode(&RegionMsg::RegisterRequest).unwrap();
    insider.send(REGION, rig.channels.region, bytes).unwrap();
    rig.send_directive(&insider, Directive::RegisterAck { epoch });
    rig.send_directive(&insider, Directive::HandOff { epoch, shard });
    rig.send_directive(
        &insider,
        Directive::HostShard {
            epoch,
            shard: ShardId(6),
            allocation: 1,
        },
    );
    sleep(Duration::from_millis(10)).await;
    assert!(
        !rig.sent()
            .iter()
            .any(|m| matches!(m, CoordinatorMsg::Register { .. })),
        "registered with a node that does not lead its view"
    );
    assert_eq!(
        rig.region.hosted_shards(),
        vec![shard],
        "obeyed the insider"
    );
    let stats = rig.region.stats();
    assert_eq!(stats.refused_foreign_directives, 3);
    assert_eq!(stats.refused_directives, 3);

    // The real coordinator goes silent; the insider keeps granting. The
    // region stops at the end of its real tenure all the same (I5).
    for _ in 0..60 {
        for seq in 0..20 {
            rig.send_directive(&insider, Directive::TenureGranted { epoch, seq });
        }
        sleep(Duration::from_millis(250)).await;
    }
    assert!(
        rig.region.hosted_shards().is_empty(),
        "hosted past its tenure on forged grants"
    );
    assert!(rig.region.stats().refused_foreign_directives > 1000);
}

/// The ceiling itself is refused (2^48; 2^48 + 1 always was), and an epoch
/// of the region's own coordinator that is not the one its acknowledgement
/// carried is a refusal, not a new floor: the region registers again and
/// goes on obeying the epoch it registered with. Before, one directive at
/// 2^48 made that the region's floor and every real directive was refused
/// until a restart.
#[tokio::test(start_paused = true)]
async fn no_directive_but_an_acknowledgement_raises_the_epoch_floor() {
    let mut rig = rig(RegionSettings::default());
    let epoch = Epoch(7);
    let shard = ShardId(2);
    rig.direct(Directive::HostShard {
        epoch,
        shard,
        allocation: 1,
    });
    sleep(Duration::from_millis(10)).await;
    assert_eq!(rig.region.max_epoch(), epoch);
    rig.sent();

    for high in [Epoch::CEILING, Epoch(1 << 40), Epoch(8)] {
        let through = Arc::clone(&rig.leader);
        rig.send_directive(&through, Directive::HandOff { epoch: high, shard });
        sleep(Duration::from_millis(10)).await;
        assert_eq!(rig.region.max_epoch(), epoch, "{high} became the floor");
        assert_eq!(rig.region.hosted_shards(), vec![shard], "{high} obeyed");
    }
    let ceiling = Arc::clone(&rig.leader);
    rig.send_directive(
        &ceiling,
        Directive::RegisterAck {
            epoch: Epoch::CEILING,
        },
    );
    sleep(Duration::from_millis(10)).await;
    assert_eq!(rig.region.max_epoch(), epoch, "the ceiling acknowledged");
    assert_eq!(rig.region.stats().refused_directives, 4);
    // Below the ceiling, an epoch above the registered one makes the
    // region register again (the coordinator may have begun a new term).
    let registers = |rig: &mut Rig<Counter>| {
        rig.sent()
            .into_iter()
            .filter(|m| matches!(m, CoordinatorMsg::Register { .. }))
            .count()
    };
    assert_eq!(registers(&mut rig), 1, "one Register for the burst");
    // Unanswered (the Register may have been lost): again on the next
    // retry tick, not never (seen in a nemesis run without a lease).
    sleep(RegionSettings::default().retry_interval).await;
    assert_eq!(registers(&mut rig), 1, "no Register again after a tick");
    // The registered epoch is still obeyed.
    rig.direct(Directive::HandOff { epoch, shard });
    sleep(Duration::from_millis(10)).await;
    assert!(rig.region.hosted_shards().is_empty());
}
