//! Many nodes in one process, on a network that tests can break at will.
//!
//! Messages are encoded to frames and decoded again on delivery, exactly as
//! over TCP, so serialization is always exercised. All timing is tokio time
//! and all randomness comes from one seeded RNG, so a simulation with paused
//! time replays identically from its seed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::mpsc;

use super::{EnvelopeHandler, Inboxes, PayloadWriter, SendError, Transport, TransportStats};
use crate::envelope::put_header;
use crate::{Channel, Envelope, NodeAddr, NodeId};

/// Capacity of each channel inbox of an in-process node.
const INBOX_CAPACITY: usize = 65_536;

/// Latency, loss, reordering and duplication of one directed link.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkFaults {
    /// Delay before delivery.
    pub latency: Duration,
    /// Probability in `[0, 1]` that a message is lost.
    pub drop_probability: f64,
    /// Up to this much more delay, drawn per message: messages overtake
    /// one another, as over a reconnect or two connections.
    pub jitter: Duration,
    /// Probability in `[0, 1]` that a message is delivered twice (each copy
    /// with its own delay).
    pub duplicate_probability: f64,
}

/// The shared network; cheap to clone. Each node joins with [`join`](Self::join).
#[derive(Clone)]
pub struct InProcessNetwork {
    state: Arc<Mutex<NetState>>,
}

struct NetState {
    nodes: HashMap<NodeId, Arc<Inboxes>>,
    /// Directed links that lose everything.
    blocked: HashSet<(NodeId, NodeId)>,
    isolated: HashSet<NodeId>,
    links: HashMap<(NodeId, NodeId), LinkFaults>,
    /// Faults of one channel of one link, in place of the link's own.
    channel_links: HashMap<(NodeId, NodeId, Channel), LinkFaults>,
    default_link: LinkFaults,
    /// Loss on one channel of every link, on top of the link's own.
    channel_loss: HashMap<Channel, f64>,
    rng: StdRng,
    dropped_by_network: u64,
}

impl NetState {
    fn reachable(&self, from: NodeId, to: NodeId) -> bool {
        // A node always reaches itself: faults cut links, not loopback.
        from == to
            || (!self.blocked.contains(&(from, to))
                && !self.isolated.contains(&from)
                && !self.isolated.contains(&to))
    }
}

impl InProcessNetwork {
    /// A fully connected network whose random losses come from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: Arc::new(Mutex::new(NetState {
                nodes: HashMap::new(),
                blocked: HashSet::new(),
                isolated: HashSet::new(),
                links: HashMap::new(),
                channel_links: HashMap::new(),
                default_link: LinkFaults::default(),
                channel_loss: HashMap::new(),
                rng: StdRng::seed_from_u64(seed),
                dropped_by_network: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Attaches `node`; a node that joins again (a restart) replaces its old
    /// attachment, whose transport then stops working.
    pub fn join(&self, node: NodeId) -> InProcessTransport {
        let inboxes = Arc::new(Inboxes::new(node, INBOX_CAPACITY));
        self.lock().nodes.insert(node, Arc::clone(&inboxes));
        InProcessTransport {
            node,
            network: self.clone(),
            inboxes,
        }
    }

    /// Detaches `node` (a crash): messages to and from it are lost.
    pub fn kill(&self, node: NodeId) {
        self.lock().nodes.remove(&node);
    }

    /// Splits the network: nodes in different groups cannot reach each other.
    /// Nodes in no group keep their links.
    pub fn partition(&self, groups: &[&[NodeId]]) {
        let mut state = self.lock();
        for (i, a) in groups.iter().enumerate() {
            for b in groups.iter().skip(i + 1) {
                for &x in a.iter() {
                    for &y in b.iter() {
                        state.blocked.insert((x, y));
                        state.blocked.insert((y, x));
                    }
                }
            }
        }
        tracing::info!(?groups, "network partitioned");
    }

    /// Cuts the link from `from` to `to` only; `to` can still reach `from`.
    pub fn cut_one_way(&self, from: NodeId, to: NodeId) {
        self.lock().blocked.insert((from, to));
        tracing::info!(%from, %to, "one-way cut");
    }

    /// Cuts `node` off from every other node, including nodes that join later.
    pub fn isolate(&self, node: NodeId) {
        self.lock().isolated.insert(node);
        tracing::info!(%node, "node isolated");
    }

    /// Sets latency and loss on the directed link `from` -> `to`.
    pub fn set_link(&self, from: NodeId, to: NodeId, faults: LinkFaults) {
        self.lock().links.insert((from, to), faults);
    }

    /// Sets the faults of `channel` alone on the directed link `from` ->
    /// `to`, in place of the link's own: protocol messages reordered or
    /// duplicated while user messages keep TCP's order and uniqueness.
    pub fn set_channel_link(&self, from: NodeId, to: NodeId, channel: Channel, faults: LinkFaults) {
        self.lock()
            .channel_links
            .insert((from, to, channel), faults);
    }

    /// Sets latency and loss for every link without its own setting.
    pub fn set_default_link(&self, faults: LinkFaults) {
        self.lock().default_link = faults;
    }

    /// Loses each message on `channel` (any link) with `probability`, on top
    /// of the link's own loss: protocol messages go missing while
    /// membership, on its own channel, carries on.
    pub fn set_channel_loss(&self, channel: Channel, probability: f64) {
        let mut state = self.lock();
        if probability > 0.0 {
            state
                .channel_loss
                .insert(channel, probability.clamp(0.0, 1.0));
        } else {
            state.channel_loss.remove(&channel);
        }
    }

    /// Removes every latency and loss setting (links, default, channels).
    pub fn clear_link_faults(&self) {
        let mut state = self.lock();
        state.links.clear();
        state.channel_links.clear();
        state.default_link = LinkFaults::default();
        state.channel_loss.clear();
    }

    /// Removes every cut, partition and isolation that involves `node` only.
    pub fn reconnect(&self, node: NodeId) {
        let mut state = self.lock();
        state.isolated.remove(&node);
        state.blocked.retain(|(a, b)| *a != node && *b != node);
        tracing::info!(%node, "node reconnected");
    }

    /// Removes every partition, cut and isolation; latency and loss stay.
    pub fn heal(&self) {
        let mut state = self.lock();
        state.blocked.clear();
        state.isolated.clear();
        tracing::info!("network healed");
    }

    /// Whether a message from `from` to `to` would currently be carried.
    pub fn can_reach(&self, from: NodeId, to: NodeId) -> bool {
        self.lock().reachable(from, to)
    }

    /// Messages lost by partitions, cuts, isolation, loss or dead nodes.
    pub fn dropped_by_network(&self) -> u64 {
        self.lock().dropped_by_network
    }

    /// Delivers `payload` on `channel` to `to` as if `from` had sent it,
    /// through the link's faults: a member speaking for a node it is not is
    /// played with the `from` of that member (this network, like mTLS,
    /// authenticates every sender), a replay with an old message.
    pub fn inject(&self, from: NodeId, to: NodeId, channel: Channel, payload: &[u8]) {
        let mut frame = BytesMut::new();
        put_header(&mut frame, from, to, channel);
        frame.extend_from_slice(payload);
        let frame = frame.freeze();
        for latency in self.route(from, to, channel).into_iter().flatten() {
            self.carry(from, to, frame.clone(), latency);
        }
    }

    /// Carries one copy of a frame after `latency`.
    fn carry(&self, from: NodeId, to: NodeId, frame: Bytes, latency: Duration) {
        if latency.is_zero() {
            self.arrive(from, to, frame);
        } else {
            let network = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(latency).await;
                network.arrive(from, to, frame);
            });
        }
    }

    /// Decides the fate of one frame: the delay of each copy that will be
    /// carried (none if it is lost, two if it is duplicated; no allocation,
    /// every frame of a simulation passes here).
    fn route(&self, from: NodeId, to: NodeId, channel: Channel) -> [Option<Duration>; 2] {
        let mut state = self.lock();
        let faults = (state.channel_links.get(&(from, to, channel)))
            .or_else(|| state.links.get(&(from, to)))
            .copied()
            .unwrap_or(state.default_link);
        let channel_loss = state.channel_loss.get(&channel).copied().unwrap_or(0.0);
        let mut chance = |p: f64| p > 0.0 && state.rng.random_bool(p.clamp(0.0, 1.0));
        let lost = chance(faults.drop_probability) || chance(channel_loss);
        let twice = !lost && chance(faults.duplicate_probability);
        if lost || !state.reachable(from, to) || !state.nodes.contains_key(&to) {
            state.dropped_by_network += 1;
            return [None, None];
        }
        let mut delay = || {
            let nanos = u64::try_from(faults.jitter.as_nanos()).unwrap_or(u64::MAX);
            let jitter = match nanos {
                0 => Duration::ZERO,
                n => Duration::from_nanos(state.rng.random_range(0..=n)),
            };
            faults.latency + jitter
        };
        let first = delay();
        [Some(first), twice.then(delay)]
    }

    /// Delivers a frame that arrived at `to`, unless the link broke meanwhile.
    fn arrive(&self, from: NodeId, to: NodeId, frame: Bytes) {
        let target = {
            let mut state = self.lock();
            let target = state
                .nodes
                .get(&to)
                .filter(|_| state.reachable(from, to))
                .cloned();
            if target.is_none() {
                state.dropped_by_network += 1;
            }
            target
        };
        let Some(inboxes) = target else { return };
        match Envelope::decode(frame) {
            Ok(envelope) => inboxes.deliver(envelope),
            Err(error) => {
                inboxes.bad_frames.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%from, %to, %error, "undecodable frame dropped");
            }
        }
    }
}

/// One node's attachment to an [`InProcessNetwork`].
pub struct InProcessTransport {
    node: NodeId,
    network: InProcessNetwork,
    inboxes: Arc<Inboxes>,
}

impl InProcessTransport {
    fn attached(&self) -> bool {
        self.network
            .lock()
            .nodes
            .get(&self.node)
            .is_some_and(|current| Arc::ptr_eq(current, &self.inboxes))
    }
}

impl Transport for InProcessTransport {
    fn local_node(&self) -> NodeId {
        self.node
    }

    fn send_with(
        &self,
        to: NodeId,
        channel: Channel,
        payload: &mut PayloadWriter<'_>,
    ) -> Result<(), SendError> {
        if !self.attached() {
            return Err(SendError::Closed(self.node));
        }
        let mut frame = BytesMut::new();
        put_header(&mut frame, self.node, to, channel);
        payload(&mut frame).map_err(SendError::Encode)?;
        let frame = frame.freeze();
        self.inboxes.sent.fetch_add(1, Ordering::Relaxed);
        for latency in self
            .network
            .route(self.node, to, channel)
            .into_iter()
            .flatten()
        {
            self.network.carry(self.node, to, frame.clone(), latency);
        }
        Ok(())
    }

    fn subscribe(&self, channel: Channel) -> mpsc::Receiver<Envelope> {
        self.inboxes.subscribe(channel)
    }

    fn subscribe_handler(&self, channel: Channel, handler: EnvelopeHandler) {
        self.inboxes.subscribe_handler(channel, handler);
    }

    fn learn_address(&self, _node: NodeId, _addr: &NodeAddr) {}

    fn stats(&self) -> TransportStats {
        self.inboxes.stats()
    }
}
