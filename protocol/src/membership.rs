//! The membership view as a state machine driven by announcements and time.
//!
//! Each node feeds every verified [`Announcement`] it receives, with the
//! current time in milliseconds (any monotonic clock; the caller owns it),
//! into [`Membership::observe`], and calls [`Membership::tick`] now and
//! then. A member is
//! - `Alive` while its announcements keep arriving,
//! - `Suspect` once nothing arrived for `suspect_after_ms` (it keeps its
//!   shards but gets no new ones),
//! - `Down` once nothing arrived for `down_after_ms` (its shards count as
//!   lost and are repaired elsewhere).
//!
//! A fresher announcement (higher `seq`) brings any member back to `Alive`.
//! Announcements with a `seq` not above the last one seen are ignored, so a
//! replayed or reordered message cannot revive a member or roll its
//! capacity back. A node that restarts starts its `seq` from the wall clock
//! in milliseconds, so it stays above what it sent before.
//!
//! Time never comes from inside this module.

use std::collections::BTreeMap;

use crate::ids::NodeId;
use crate::placement::{Member, MemberState, View};
use crate::wire::Announcement;

/// How long silence may last before a member changes state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub suspect_after_ms: u64,
    pub down_after_ms: u64,
}

/// A member's entry: its latest announcement, when it arrived, its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub announcement: Announcement,
    pub last_seen_ms: u64,
    pub state: MemberState,
}

/// A change of state reported by [`Membership::tick`] or [`Membership::observe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub node: NodeId,
    pub from: Option<MemberState>,
    pub to: MemberState,
}

/// The membership view of one node.
#[derive(Debug, Clone)]
pub struct Membership {
    local: NodeId,
    timeouts: Timeouts,
    members: BTreeMap<NodeId, Entry>,
}

impl Membership {
    pub fn new(local: NodeId, timeouts: Timeouts) -> Self {
        Membership {
            local,
            timeouts,
            members: BTreeMap::new(),
        }
    }

    pub fn local(&self) -> &NodeId {
        &self.local
    }

    /// Records an announcement received at `now_ms`. Returns the state
    /// change it caused, if any; `None` also for a stale announcement.
    pub fn observe(&mut self, ann: Announcement, now_ms: u64) -> Option<Transition> {
        let node = ann.node.clone();
        match self.members.get_mut(&node) {
            Some(entry) => {
                if ann.seq <= entry.announcement.seq {
                    return None;
                }
                let from = entry.state;
                entry.announcement = ann;
                entry.last_seen_ms = now_ms;
                entry.state = MemberState::Alive;
                (from != MemberState::Alive).then_some(Transition {
                    node,
                    from: Some(from),
                    to: MemberState::Alive,
                })
            }
            None => {
                self.members.insert(
                    node.clone(),
                    Entry {
                        announcement: ann,
                        last_seen_ms: now_ms,
                        state: MemberState::Alive,
                    },
                );
                Some(Transition {
                    node,
                    from: None,
                    to: MemberState::Alive,
                })
            }
        }
    }

    /// Moves silent members to `Suspect` or `Down`. The local node never
    /// suspects itself.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Transition> {
        let t = self.timeouts;
        let mut changes = Vec::new();
        for (id, e) in self.members.iter_mut() {
            if *id == self.local {
                continue;
            }
            let silent = now_ms.saturating_sub(e.last_seen_ms);
            let want = if silent >= t.down_after_ms {
                MemberState::Down
            } else if silent >= t.suspect_after_ms {
                MemberState::Suspect
            } else {
                MemberState::Alive
            };
            // Only silence moves a member here; only an announcement revives.
            if want > e.state {
                changes.push(Transition {
                    node: id.clone(),
                    from: Some(e.state),
                    to: want,
                });
                e.state = want;
            }
        }
        changes
    }

    pub fn get(&self, id: &NodeId) -> Option<&Entry> {
        self.members.get(id)
    }

    pub fn entries(&self) -> impl Iterator<Item = (&NodeId, &Entry)> {
        self.members.iter()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The placement view ([`View::weighted`]): every member weighted by
    /// [`crate::placement::fill_weight`] of its space (durable containers
    /// only for a durable member, [`Announcement::placement_space`]) against
    /// the reference fill of the `Alive` members, its capacity for the
    /// rebalancer's ranking, and whether it is volatile
    /// ([`Announcement::is_volatile`]).
    pub fn view(&self) -> View {
        View::weighted(self.members.values().map(|e| {
            let member = Member {
                id: e.announcement.node.clone(),
                site: e.announcement.site.clone(),
                weight: 0,
                state: e.state,
                volatile: e.announcement.is_volatile(),
            };
            (member, e.announcement.placement_space())
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{ContainerReport, Load, ANNOUNCEMENT_VERSION};

    fn id(i: u8) -> NodeId {
        NodeId::from_bytes(vec![i; 8]).unwrap()
    }

    fn ann(i: u8, seq: u64, free: u64) -> Announcement {
        Announcement {
            version: ANNOUNCEMENT_VERSION,
            node: id(i),
            site: "s".into(),
            addrs: vec![],
            containers: vec![ContainerReport {
                name: "c".into(),
                kind: "mem".into(),
                capacity_bytes: 100,
                free_bytes: free,
            }],
            load: Load::default(),
            software: "t".into(),
            seq,
            cert: None,
            revocations: 0,
        }
    }

    const T: Timeouts = Timeouts {
        suspect_after_ms: 100,
        down_after_ms: 1000,
    };

    #[test]
    fn silence_makes_suspect_then_down_and_news_revives() {
        let mut m = Membership::new(id(0), T);
        assert!(m.observe(ann(0, 1, 50), 0).is_some());
        assert!(m.observe(ann(1, 1, 50), 0).is_some());
        assert!(m.tick(99).is_empty());
        let t = m.tick(100);
        assert_eq!(t.len(), 1, "the local node never becomes suspect");
        assert_eq!(t[0].to, MemberState::Suspect);
        assert_eq!(m.tick(1000)[0].to, MemberState::Down);
        assert!(m.tick(5000).is_empty());
        // A replay of the old announcement does not revive it.
        assert!(m.observe(ann(1, 1, 50), 5000).is_none());
        assert_eq!(m.get(&id(1)).unwrap().state, MemberState::Down);
        let t = m.observe(ann(1, 2, 40), 5001).unwrap();
        assert_eq!(t.from, Some(MemberState::Down));
        assert_eq!(m.get(&id(1)).unwrap().state, MemberState::Alive);
    }

    #[test]
    fn view_carries_free_space_and_state() {
        let mut m = Membership::new(id(0), T);
        m.observe(ann(0, 1, 70), 0);
        m.observe(ann(1, 1, 30), 0);
        m.tick(200);
        let v = m.view();
        // Node 0 (30% used) is the only Alive member, so it is at the
        // reference fill and weighs its capacity.
        assert_eq!(v.get(&id(0)).unwrap().weight, 100);
        assert!(v.get(&id(1)).unwrap().weight > 0);
        assert_eq!(v.get(&id(1)).unwrap().state, MemberState::Suspect);
        assert_eq!(v.eligible_count(), 1);
    }
}
