//! The session target: two nodes' sessions through the intake and the claim
//! rules, against a model of etcd (claims, node records, fencing).

use std::collections::{BTreeMap, BTreeSet};

use claim_service::claims::{
    Action, Claim, ClaimOutcome, Event, Limits, NodeClaims, Reply, TakeoverOutcome,
};
use claim_service::intake::{admit, Intake};
use claims_proto::v1 as pb;
use pb::node_message::Msg as NodeMsg;
use prost::Message;

/// Reads fuzz input a byte at a time; zeros once it runs out.
struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    fn more(&self) -> bool {
        self.pos < self.data.len()
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let start = self.pos.min(self.data.len());
        let end = (start + n).min(self.data.len());
        self.pos = end;
        &self.data[start..end]
    }
}

// Valid names, and hostile ones the intake must refuse.
const BROADCASTS: [&str; 8] = [
    "live/a",
    "live/b",
    "live/c",
    "live/d",
    "live/../a",
    "",
    "live/a b",
    "live//a",
];
const TRACKS: [&str; 5] = ["video", "audio", "data", "", "vid eo"];

/// What the model of etcd holds for a broadcast.
#[derive(Debug, Clone)]
struct Held {
    node: usize,
    lease: i64,
    token: i64,
}

/// Work a node's session started, waiting for etcd's answer.
#[derive(Debug, Clone)]
enum Pending {
    /// A claim, fenced by the node record's lease.
    Claim(String, i64),
    /// A release: the broadcast, the claim's token, the guard lease.
    Release(String, i64, i64),
    /// The node record's write (replacing this lost lease).
    Record(Option<i64>),
    /// A takeover request: the broadcast, the owner's token, the guard.
    Takeover(String, i64, i64),
}

/// A node's record in the model of etcd: who wrote it, on which lease.
#[derive(Debug, Clone)]
struct Record {
    session: String,
    lease: i64,
}

struct Sim {
    id: String,
    core: NodeClaims,
    /// Tracks the node has live, as far as the claim rules were told:
    /// admitted `created` minus `closed`; emptied at goodbye and detach.
    live: BTreeMap<String, BTreeSet<String>>,
    /// Stopped reading (goodbye, a fatal message, a detach).
    gone: bool,
    timers: BTreeMap<String, u64>,
}

impl Sim {
    fn wants(&self, broadcast: &str) -> bool {
        self.live.get(broadcast).is_some_and(|t| !t.is_empty())
    }
}

struct World {
    nodes: Vec<Sim>,
    store: BTreeMap<String, Held>,
    records: BTreeMap<usize, Record>,
    pending: Vec<(usize, Pending)>,
    revision: i64,
    next_lease: i64,
    /// Owners told their claim was taken over: they release it with its
    /// tracks still live.
    yielding: BTreeSet<(usize, String)>,
}

impl World {
    fn apply(&mut self, n: usize, event: Event) {
        let actions = self.nodes[n].core.handle(event);
        for action in actions {
            self.act(n, action);
        }
        self.check();
    }

    fn act(&mut self, n: usize, action: Action) {
        let node = &self.nodes[n];
        match action {
            Action::Claim {
                broadcast,
                guard_lease,
            } => {
                // Only a node whose own track is live asks for a claim, and
                // only under its session's own record.
                assert!(
                    node.wants(&broadcast),
                    "{} asked to claim {broadcast} without a live track of it: {:?}",
                    node.id,
                    node.live
                );
                assert_eq!(node.core.record_lease(), Some(guard_lease));
                self.pending
                    .push((n, Pending::Claim(broadcast, guard_lease)));
            }
            Action::WriteRecord { replaces } => self.pending.push((n, Pending::Record(replaces))),
            Action::DropRecord { lease_id } => {
                if self.records.get(&n).is_some_and(|r| r.lease == lease_id) {
                    self.records.remove(&n);
                }
            }
            Action::Supersede { .. } => {
                // The shell ends the stream: the node is gone.
                let node = &mut self.nodes[n];
                node.gone = true;
                node.live.clear();
            }
            Action::Release {
                broadcast,
                fencing_token,
                guard_lease,
                ..
            } => {
                // Released only when its owner closed it (last track,
                // goodbye, or the detach grace ran out), or was told it
                // was taken over.
                let yielded = self.yielding.remove(&(n, broadcast.clone()));
                let node = &self.nodes[n];
                assert!(
                    yielded || !node.wants(&broadcast),
                    "{} revokes {broadcast} while its tracks {:?} are live",
                    node.id,
                    node.live.get(&broadcast)
                );
                self.pending
                    .push((n, Pending::Release(broadcast, fencing_token, guard_lease)));
            }
            Action::Send(Reply::Claimed { claim, .. }) => {
                let held = self.store.get(&claim.broadcast);
                assert!(
                    held.is_some_and(|h| h.node == n && h.lease == claim.lease_id),
                    "{} told claimed for {} but etcd holds {held:?}",
                    node.id,
                    claim.broadcast
                );
            }
            Action::RetryAfter {
                broadcast, timer, ..
            } => {
                self.nodes[n].timers.insert(broadcast, timer);
            }
            Action::RequestTakeover {
                broadcast,
                fencing_token,
                guard_lease,
            } => {
                assert!(
                    node.wants(&broadcast),
                    "{} asked to take {broadcast} over without a live track of it",
                    node.id
                );
                assert_eq!(node.core.record_lease(), Some(guard_lease));
                self.pending
                    .push((n, Pending::Takeover(broadcast, fencing_token, guard_lease)));
            }
            Action::LetGoLease { lease_id } | Action::KeepLease { lease_id, .. } => {
                // A claim's own lease, never the node record's.
                assert_ne!(
                    node.core.record_lease(),
                    Some(lease_id),
                    "{} keeps or lets go its record's lease as a claim's",
                    node.id
                );
            }
            Action::ReleaseStale { .. }
            | Action::Held { .. }
            | Action::Forget { .. }
            | Action::KeepRecord { .. }
            | Action::FindEarlierClaims { .. }
            | Action::StartGrace
            | Action::MarkDetached { .. }
            | Action::Send(_)
            | Action::Finished => {}
        }
    }

    /// No node's rules think they hold a claim that etcd gives to another,
    /// and every claim in etcd belongs to a node that holds it or is
    /// revoking it.
    fn check(&self) {
        for (n, node) in self.nodes.iter().enumerate() {
            for (broadcast, claim) in node.core.held() {
                let held = self.store.get(broadcast);
                assert!(
                    held.is_some_and(|h| h.node == n && h.lease == claim.lease_id),
                    "{} holds {broadcast} (lease {}) but etcd has {held:?}",
                    node.id,
                    claim.lease_id
                );
            }
        }
        for (broadcast, held) in &self.store {
            let node = &self.nodes[held.node];
            let holds = node
                .core
                .held()
                .any(|(b, c)| b == broadcast && c.lease_id == held.lease);
            // A newer session of the node (outside the model) took it
            // over: the key is that session's to adopt or release.
            let taken = self
                .records
                .get(&held.node)
                .is_some_and(|r| r.session.ends_with("-newer"));
            let revoking = taken || self.pending.iter().any(|(p, w)| {
                *p == held.node
                    && matches!(w, Pending::Release(b, t, _) if b == broadcast && *t == held.token)
            });
            assert!(
                holds || revoking,
                "etcd gives {broadcast} to {} which neither holds nor releases it",
                node.id
            );
        }
    }

    fn claim(&self, broadcast: &str, n: usize, held: &Held) -> Claim {
        Claim {
            broadcast: broadcast.into(),
            node_id: self.nodes[n].id.as_str().into(),
            lease_id: held.lease,
            fencing_token: held.token,
            lease_ttl_ms: 10_000,
            ..Claim::default()
        }
    }

    /// etcd answers one piece of pending work (`unavailable`: the call failed).
    fn deliver(&mut self, index: usize, unavailable: bool) {
        let (n, work) = self.pending.remove(index);
        match work {
            Pending::Record(replaces) => {
                if unavailable {
                    // The shell retries the write until etcd answers.
                    self.pending.push((n, Pending::Record(replaces)));
                    let reason = "etcd unreachable".into();
                    self.apply(n, Event::RecordFailed { reason });
                    return;
                }
                let current = self.records.get(&n).cloned();
                let session = format!("{}-session", self.nodes[n].id);
                // A rewrite checks that the record is still on the lost
                // lease, or gone; anyone else's record wins.
                if let Some(other) =
                    current.filter(|r| r.session != session && Some(r.lease) != replaces)
                {
                    self.apply(n, Event::RecordTaken { by: other.session });
                    return;
                }
                self.revision += 1;
                self.next_lease += 1;
                let lease = self.next_lease;
                self.records.insert(n, Record { session, lease });
                let written = Event::RecordWritten {
                    lease_id: lease,
                    revision: self.revision,
                    draining: false,
                    earlier: claim_service::claims::Earlier::None,
                };
                self.apply(n, written);
            }
            Pending::Claim(broadcast, guard_lease) => {
                let record = self.records.get(&n).cloned();
                if !unavailable && record.as_ref().is_none_or(|r| r.lease != guard_lease) {
                    // The transaction's fence: the record is not on the
                    // lease the claim was made under.
                    let session_id = record.map(|r| r.session).unwrap_or_default();
                    self.apply(
                        n,
                        Event::Fenced {
                            broadcast,
                            session_id,
                        },
                    );
                    return;
                }
                let outcome = if unavailable {
                    ClaimOutcome::Unavailable {
                        reason: "etcd unreachable".into(),
                    }
                } else {
                    self.revision += 1;
                    match self.store.get(&broadcast).cloned() {
                        // Create-if-absent, on the record's lease.
                        None => {
                            let held = Held {
                                node: n,
                                lease: guard_lease,
                                token: self.revision,
                            };
                            self.store.insert(broadcast.clone(), held.clone());
                            ClaimOutcome::Claimed {
                                claim: self.claim(&broadcast, n, &held),
                                adopted: false,
                            }
                        }
                        // The key names this node: adopted as it is, on
                        // its lease, same fencing token.
                        Some(held) if held.node == n => ClaimOutcome::Claimed {
                            claim: self.claim(&broadcast, n, &held),
                            adopted: true,
                        },
                        Some(owner) => ClaimOutcome::Conflict {
                            owner: self.claim(&broadcast, owner.node, &owner),
                            revision: self.revision,
                        },
                    }
                };
                self.apply(n, Event::ClaimAnswered { broadcast, outcome });
            }
            Pending::Takeover(broadcast, token, guard) => {
                let owner = self.store.get(&broadcast).cloned();
                let fenced = self.records.get(&n).is_some_and(|r| r.lease == guard);
                let outcome = match owner.filter(|h| h.token == token) {
                    _ if unavailable => TakeoverOutcome::Unavailable {
                        reason: "etcd unreachable".into(),
                    },
                    Some(owner) if fenced => {
                        // Written: every session's view sees the request.
                        self.revision += 1;
                        self.apply(
                            n,
                            Event::TakeoverAnswered {
                                broadcast: broadcast.clone(),
                                outcome: TakeoverOutcome::Requested,
                            },
                        );
                        for other in 0..self.nodes.len() {
                            if other == owner.node
                                && self.nodes[other]
                                    .core
                                    .held()
                                    .any(|(b, c)| b == broadcast && c.fencing_token == token)
                            {
                                self.yielding.insert((other, broadcast.clone()));
                            }
                            let seen = Event::TakenOver {
                                broadcast: broadcast.clone(),
                                fencing_token: token,
                                by: self.nodes[n].id.clone(),
                                by_this_node: other == n,
                            };
                            self.apply(other, seen);
                        }
                        return;
                    }
                    _ => TakeoverOutcome::Changed,
                };
                self.apply(n, Event::TakeoverAnswered { broadcast, outcome });
            }
            Pending::Release(broadcast, token, guard) => {
                if unavailable {
                    // The shell retries a release until it lands.
                    self.pending
                        .push((n, Pending::Release(broadcast, token, guard)));
                    return;
                }
                // Deleted only if still that claim and the record still the
                // releasing session's fence.
                let fenced = self.records.get(&n).is_some_and(|r| r.lease == guard);
                let same = self.store.get(&broadcast).is_some_and(|h| h.token == token);
                if fenced && same {
                    self.store.remove(&broadcast);
                    self.revision += 1;
                    self.tell_standbys(&broadcast);
                }
                self.apply(n, Event::Released { broadcast });
            }
        }
    }

    /// A lease expires: etcd deletes every key on it (claims and a node
    /// record); the broadcasts whose claims went.
    fn expire_lease(&mut self, lease: i64) -> Vec<String> {
        let gone: Vec<String> = self
            .store
            .iter()
            .filter(|(_, h)| h.lease == lease)
            .map(|(b, _)| b.clone())
            .collect();
        for b in &gone {
            self.store.remove(b);
        }
        self.records.retain(|_, r| r.lease != lease);
        self.revision += 1;
        gone
    }

    /// The watch tells every standby of `broadcast` that its key is gone.
    fn tell_standbys(&mut self, broadcast: &str) {
        let revision = self.revision;
        for other in 0..self.nodes.len() {
            if self.nodes[other].core.standby().any(|b| b == broadcast) {
                self.apply(
                    other,
                    Event::OwnerReleased {
                        broadcast: broadcast.into(),
                        revision,
                    },
                );
            }
        }
    }

    /// A message from node `n`, as the session shell handles it.
    fn message(&mut self, n: usize, msg: Option<NodeMsg>) {
        if self.nodes[n].gone {
            return;
        }
        match admit(msg) {
            Intake::Event(event) => {
                let node = &mut self.nodes[n];
                match &event {
                    Event::Created { broadcast, track } => {
                        // The rules may refuse it over a limit; only what
                        // they took counts as live.
                        let before = node.core.is_live(broadcast, track);
                        let actions = node.core.handle(event.clone());
                        if node.core.is_live(broadcast, track) && !before {
                            node.live
                                .entry(broadcast.clone())
                                .or_default()
                                .insert(track.clone());
                        }
                        for a in actions {
                            self.act(n, a);
                        }
                        self.check();
                        return;
                    }
                    Event::Closed { broadcast, track } => {
                        if let Some(t) = node.live.get_mut(broadcast) {
                            t.remove(track);
                        }
                    }
                    Event::Goodbye => {
                        node.live.clear();
                        node.gone = true;
                    }
                    Event::TakeoverAsked { .. } => {}
                    _ => unreachable!("intake yields only created, closed, goodbye, takeover"),
                }
                self.apply(n, event);
            }
            Intake::Refused { .. } => {}
            Intake::Fatal { .. } => self.detach(n),
        }
    }

    /// Another session of node `n` (on another replica) writes its record;
    /// the view tells `n`'s session.
    fn take_over(&mut self, n: usize) {
        self.revision += 1;
        self.next_lease += 1;
        let session = format!("{}-newer", self.nodes[n].id);
        let record = Record {
            session: session.clone(),
            lease: self.next_lease,
        };
        self.records.insert(n, record);
        let seen = Event::NodeSeen {
            session_id: session,
            draining: false,
            revision: self.revision,
        };
        self.apply(n, seen);
    }

    /// An operator deletes `broadcast`'s claim; its holder and the
    /// standbys hear of it through the view.
    fn force_release(&mut self, broadcast: &str) {
        let Some(held) = self.store.remove(broadcast) else {
            return;
        };
        self.revision += 1;
        let forced = Event::Forced {
            broadcast: broadcast.into(),
            fencing_token: held.token,
            reason: "operator".into(),
        };
        self.apply(held.node, forced);
        self.tell_standbys(broadcast);
    }

    fn detach(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        if node.gone && node.core.is_detached() {
            return;
        }
        node.gone = true;
        node.live.clear();
        self.apply(n, Event::Detached);
    }
}

/// Two nodes' sessions under an arbitrary program of messages, etcd
/// answers (in any order, some failing), lease losses, detaches, grace
/// expiries and retries.
pub fn session(data: &[u8]) {
    let limits = Limits {
        max_claims: 3,
        max_tracks_per_broadcast: 2,
        takeover: true,
    };
    let mut world = World {
        nodes: ["node-a", "node-b"]
            .into_iter()
            .map(|id| Sim {
                id: id.into(),
                core: NodeClaims::new(&format!("{id}-session"), limits),
                live: BTreeMap::new(),
                gone: false,
                timers: BTreeMap::new(),
            })
            .collect(),
        store: BTreeMap::new(),
        records: BTreeMap::new(),
        pending: Vec::new(),
        revision: 1,
        next_lease: 100,
        yielding: BTreeSet::new(),
    };
    for n in 0..world.nodes.len() {
        world.apply(n, Event::Began);
    }
    let mut input = Input { data, pos: 0 };
    let mut steps = 0;
    while input.more() && steps < 400 {
        steps += 1;
        let op = input.byte();
        let n = usize::from(op >> 7);
        match op & 0x0f {
            0..=4 => {
                let b = BROADCASTS[usize::from(input.byte()) % BROADCASTS.len()];
                let t = TRACKS[usize::from(input.byte()) % TRACKS.len()];
                let track = pb::Track {
                    broadcast: b.into(),
                    track: t.into(),
                };
                let msg = match op & 0x0f {
                    0 | 1 => Some(NodeMsg::Created(track)),
                    2 | 3 => Some(NodeMsg::Closed(track)),
                    _ => match input.byte() % 8 {
                        0 => Some(NodeMsg::Goodbye(pb::Goodbye {})),
                        1 => Some(NodeMsg::Hello(pb::Hello::default())),
                        2 => None,
                        3 | 4 => Some(NodeMsg::Takeover(pb::Takeover {
                            // The owner's token, or a stale one.
                            fencing_token: world.store.get(b).map_or(1, |h| h.token)
                                - i64::from(input.byte() % 2),
                            broadcast: track.broadcast,
                        })),
                        _ => Some(NodeMsg::Created(track)),
                    },
                };
                world.message(n, msg);
            }
            5 => {
                // Raw protobuf: whatever the bytes decode to.
                let len = usize::from(input.byte() % 48);
                if let Ok(msg) = pb::NodeMessage::decode(input.take(len)) {
                    world.message(n, msg.msg);
                }
            }
            6..=9 => {
                if !world.pending.is_empty() {
                    let i = usize::from(input.byte()) % world.pending.len();
                    let unavailable = input.byte().is_multiple_of(5);
                    world.deliver(i, unavailable);
                }
            }
            10 => {
                // A lease expires (etcd deletes the key), the node hears.
                let held: Vec<(String, i64)> = world.nodes[n]
                    .core
                    .held()
                    .map(|(b, c)| (b.to_string(), c.lease_id))
                    .collect();
                if !held.is_empty() {
                    let (_, lease_id) = held[usize::from(input.byte()) % held.len()].clone();
                    // The holder hears of the loss before anyone else can
                    // claim (the keep-alive reports it ahead of the TTL).
                    let gone = world.expire_lease(lease_id);
                    world.apply(
                        n,
                        Event::LeaseLost {
                            lease_id,
                            reason: "expired".into(),
                        },
                    );
                    for broadcast in gone {
                        world.tell_standbys(&broadcast);
                    }
                }
            }
            11 => world.detach(n),
            12 => {
                if world.nodes[n].core.is_detached() {
                    world.apply(n, Event::GraceExpired);
                }
            }
            13 => {
                let timers: Vec<(String, u64)> = world.nodes[n]
                    .timers
                    .iter()
                    .map(|(b, t)| (b.clone(), *t))
                    .collect();
                if !timers.is_empty() {
                    let (broadcast, timer) =
                        timers[usize::from(input.byte()) % timers.len()].clone();
                    world.nodes[n].timers.remove(&broadcast);
                    world.apply(n, Event::RetryDue { broadcast, timer });
                }
            }
            _ => match input.byte() % 8 {
                0..=2 => {
                    // A view event for the node's standby (a lagging view
                    // may repeat releases).
                    let b = BROADCASTS[usize::from(input.byte()) % 4];
                    if world.nodes[n].core.standby().any(|s| s == b) {
                        world.revision += 1;
                        let revision = world.revision;
                        world.apply(
                            n,
                            Event::OwnerReleased {
                                broadcast: b.into(),
                                revision,
                            },
                        );
                    }
                }
                3 => world.apply(n, Event::ViewLagged),
                4 => world.take_over(n),
                5 => {
                    // The node record's lease expires; the session hears.
                    if let Some(record) = world.records.get(&n).cloned() {
                        if world.nodes[n].core.record_lease() == Some(record.lease) {
                            // The node's claims on it go with it.
                            let gone = world.expire_lease(record.lease);
                            let lost = Event::LeaseLost {
                                lease_id: record.lease,
                                reason: "expired".into(),
                            };
                            world.apply(n, lost);
                            for broadcast in gone {
                                world.tell_standbys(&broadcast);
                            }
                        }
                    }
                }
                _ => {
                    // An operator force-releases a broadcast.
                    let b = BROADCASTS[usize::from(input.byte()) % 4];
                    world.force_release(b);
                }
            },
        }
    }
    // Let etcd answer everything: no lease is left behind by a node that
    // said goodbye or whose grace ran out.
    for n in 0..world.nodes.len() {
        if !world.nodes[n].gone {
            world.message(n, Some(NodeMsg::Goodbye(pb::Goodbye {})));
        } else if world.nodes[n].core.is_detached() {
            world.apply(n, Event::GraceExpired);
        }
    }
    let mut rounds = 0;
    while !world.pending.is_empty() {
        rounds += 1;
        assert!(rounds < 10_000, "work never settles: {:?}", world.pending);
        world.deliver(0, false);
    }
    // Only a newer session of a node (outside the model) may still have
    // claims: the older one, fenced by the record, deleted none of them.
    let left: Vec<_> = world
        .store
        .iter()
        .filter(|(_, h)| {
            !world
                .records
                .get(&h.node)
                .is_some_and(|r| r.session.ends_with("-newer"))
        })
        .collect();
    assert!(
        left.is_empty(),
        "claims left in etcd after every node left: {left:?}"
    );
}
