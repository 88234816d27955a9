//! The `--max-pending` places of requests in progress, and how they are shared among the
//! authenticated connections. Bookkeeping only: the request task asks for a place when its
//! stream opens and holds it until the request is answered; the time comes in as an argument.
//!
//! A request holds its place from the moment its stream opens, so a client that opens streams
//! and sends slowly holds places for up to the request timeout: a camera on a slow uplink with
//! many frames in flight, or a client that sends 4 bytes and stops. With one pool and nothing
//! else, 5 such connections of 64 streams held all 256 places and every other client was answered
//! `overloaded`. So the places are shared, work-conservingly, among the connections that want
//! them: those holding places or that asked for one within the last request timeout ("active"). Each
//! active connection's **share** is an equal part of the pool. A connection under its share
//! takes any free place; one at or over it takes a place only while more stay free than the other
//! active connections lack of their shares (their reserve). An idle connection reserves nothing,
//! so one busy client (many elements on one shared connection) may use the whole pool; a client
//! that asks becomes active, and from then on the others cannot take what it lacks of its share
//! while over theirs, so it gets its share as places come free (at the latest once the requests
//! holding them have timed out and been made again).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why a request got no place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Every place is taken.
    Full { max: usize },
    /// The connection holds `held`, its share is `share`, and the `free` places are the other
    /// active connections' reserve.
    Share {
        held: usize,
        share: usize,
        free: usize,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Full { max } => write!(f, "server busy: {max} requests in progress"),
            Refusal::Share { held, share, free } => write!(
                f,
                "this connection has {held} requests in progress, its share is {share}, and the \
                 {free} free places are other clients' share"
            ),
        }
    }
}

#[derive(Default)]
struct Connection {
    held: usize,
    /// When it last asked for a place (given or refused).
    asked_at: Option<Instant>,
}

/// The pool and who holds what.
pub(super) struct Places {
    max: usize,
    /// A connection that asked for a place stays active this long (the request timeout: by then
    /// every place held when it asked has come free).
    wanting_for: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    held: usize,
    connections: HashMap<u64, Connection>,
}

/// One place, given back when dropped.
pub(super) struct Place {
    places: Arc<Places>,
    connection: u64,
}

/// Whether a connection holding `held` places may take another, with `free` places left in a
/// pool of `max`, where `others` are the places held by the other active connections.
fn may_take(held: usize, others: &[usize], free: usize, max: usize) -> Result<(), Refusal> {
    if free == 0 {
        return Err(Refusal::Full { max });
    }
    let share = max.div_ceil(others.len() + 1).max(1);
    if held < share {
        return Ok(());
    }
    let reserve: usize = others.iter().map(|&h| share.saturating_sub(h)).sum();
    if free > reserve {
        Ok(())
    } else {
        Err(Refusal::Share { held, share, free })
    }
}

impl Places {
    pub(super) fn new(max: usize, wanting_for: Duration) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            wanting_for,
            state: Mutex::new(State::default()),
        })
    }

    /// A place for a request of `connection`, or why not; either way the connection counts as
    /// wanting places for a while.
    pub(super) fn take(self: &Arc<Self>, connection: u64, now: Instant) -> Result<Place, Refusal> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let free = self.max.saturating_sub(state.held);
        let active = |c: &Connection| {
            c.held > 0
                || c.asked_at
                    .is_some_and(|t| now.saturating_duration_since(t) < self.wanting_for)
        };
        let others: Vec<usize> = state
            .connections
            .iter()
            .filter(|(id, c)| **id != connection && active(c))
            .map(|(_, c)| c.held)
            .collect();
        let mine = state.connections.entry(connection).or_default();
        mine.asked_at = Some(now);
        match may_take(mine.held, &others, free, self.max) {
            Ok(()) => {
                mine.held += 1;
                state.held += 1;
                Ok(Place {
                    places: self.clone(),
                    connection,
                })
            }
            Err(refusal) => Err(refusal),
        }
    }

    /// The connection is gone and none of its requests holds a place any more (the caller
    /// makes sure: see `connection::Peer`).
    pub(super) fn forget(&self, connection: u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = state.connections.remove(&connection) {
            debug_assert_eq!(c.held, 0, "a connection forgotten while it holds places");
        }
    }

    #[cfg(test)]
    fn known(&self) -> usize {
        self.state.lock().unwrap().connections.len()
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.state.lock().unwrap().held
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut state = self.places.state.lock().unwrap_or_else(|e| e.into_inner());
        state.held -= 1;
        if let Some(c) = state.connections.get_mut(&self.connection) {
            c.held -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_keeps_the_other_active_connections_reserve() {
        // Alone, a connection may take the whole pool.
        assert_eq!(may_take(255, &[], 1, 256), Ok(()));
        assert_eq!(may_take(256, &[], 0, 256), Err(Refusal::Full { max: 256 }));
        // Two active: shares of 128; the one over its share leaves the other what it lacks.
        assert_eq!(may_take(127, &[0], 129, 256), Ok(()));
        assert_eq!(
            may_take(128, &[0], 128, 256),
            Err(Refusal::Share {
                held: 128,
                share: 128,
                free: 128
            })
        );
        assert_eq!(may_take(128, &[100], 29, 256), Ok(()));
        // Under its share a connection takes any free place.
        assert_eq!(may_take(3, &[200, 50], 3, 256), Ok(()));
    }

    /// Five clients that open 64 streams each and stall, one after another, then a good client:
    /// once the stalled requests have turned over, the good client holds its share (before:
    /// nothing, for as long as the slow clients went on).
    #[test]
    fn slow_clients_arriving_one_after_another_leave_a_newcomer_its_share() {
        let t0 = Instant::now();
        let places = Places::new(256, Duration::from_secs(5));
        let good = 6;
        let mut got = Vec::new();
        for round in 0..4u64 {
            // Each round the slow clients' requests have timed out and they open their 64
            // streams again, in the same order; the good client's requests stay.
            let now = t0 + Duration::from_secs(round);
            let mut slow_held = Vec::new();
            for slow in 1..=5 {
                for _ in 0..64 {
                    if let Ok(p) = places.take(slow, now) {
                        slow_held.push(p);
                    }
                }
            }
            let mut mine = Vec::new();
            while let Ok(p) = places.take(good, now) {
                mine.push(p);
            }
            got.push(mine.len());
            // The good client's requests are answered; the slow clients' time out.
            drop(mine);
            drop(slow_held);
        }
        let share = 256usize.div_ceil(6);
        assert_eq!(got[0], 0, "{got:?}");
        // One turn-over later it has its share (41 of the 43: 5 x 43 leave 41).
        assert_eq!(got[1], 256 - 5 * share, "{got:?}");
        assert_eq!(got[3], got[1], "{got:?}");
        assert_eq!(places.held(), 0);
    }

    #[test]
    fn an_idle_connection_reserves_nothing() {
        let t0 = Instant::now();
        let places = Places::new(4, Duration::from_secs(5));
        // Connection 2 asked a while ago and holds nothing: idle.
        drop(places.take(2, t0).unwrap());
        let later = t0 + Duration::from_secs(6);
        let busy: Vec<_> = (0..4).map(|_| places.take(1, later).unwrap()).collect();
        assert!(matches!(places.take(2, later), Err(Refusal::Full { .. })));
        drop(busy);
        // 2 asked a moment ago: active, so 1 keeps to its share of 2 while 2 lacks its own.
        let busy: Vec<_> = (0..2).map(|_| places.take(1, later).unwrap()).collect();
        assert!(matches!(places.take(1, later), Err(Refusal::Share { .. })));
        let two = places.take(2, later).unwrap();
        drop((busy, two));
        places.forget(1);
        places.forget(2);
        assert_eq!(places.held(), 0);
        assert_eq!(places.known(), 0);
    }
}
