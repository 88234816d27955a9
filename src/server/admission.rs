//! How many connections may be in their handshake or awaiting their hello (not yet
//! authenticated), in all and per client address. Pure bookkeeping: the connection task asks
//! before it accepts a connection and holds the guard until the hello is done.
//!
//! Why a budget of its own: such a connection holds server state for up to the hello timeout
//! (5 s) without proving anything. Counted against `--max-connections` as before, 64 handshakes
//! that never sent a hello, renewed every 5 s, had every new client refused "too many
//! connections" (and 13 spoofed first packets a second did it too, which the stateless QUIC Retry
//! in [`super::connection`] now stops before anything is counted). Authenticated connections
//! count against `--max-connections` alone; unauthenticated ones against this budget, of which
//! one address may take at most a quarter, so a single host cannot block the others' connecting.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Share of the unauthenticated budget one address may hold: 1 / this.
const PER_ADDRESS_DIVISOR: usize = 4;

/// Connections not yet authenticated, by client address.
pub(super) struct Admission {
    total_limit: usize,
    per_address_limit: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// This address already has this many connections awaiting their hello.
    Address(usize),
    /// This many connections await their hello in all.
    Total(usize),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Address(n) => write!(f, "{n} connections from this address await their hello"),
            Refusal::Total(n) => write!(f, "{n} connections await their hello"),
        }
    }
}

/// One admitted, not yet authenticated connection; dropping it gives its place back.
pub(super) struct Unauthenticated {
    admission: Arc<Admission>,
    address: IpAddr,
}

impl Admission {
    /// A budget of `total` unauthenticated connections (`--max-connections`), a quarter of it
    /// (at least one) per address.
    pub(super) fn new(total: usize) -> Arc<Self> {
        let total = total.max(1);
        Arc::new(Self {
            total_limit: total,
            per_address_limit: (total / PER_ADDRESS_DIVISOR).max(1),
            state: Mutex::new(State::default()),
        })
    }

    pub(super) fn try_enter(self: &Arc<Self>, address: IpAddr) -> Result<Unauthenticated, Refusal> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.total >= self.total_limit {
            return Err(Refusal::Total(state.total));
        }
        let n = state.by_address.entry(address).or_insert(0);
        if *n >= self.per_address_limit {
            return Err(Refusal::Address(*n));
        }
        *n += 1;
        state.total += 1;
        Ok(Unauthenticated {
            admission: self.clone(),
            address,
        })
    }

    #[cfg(test)]
    fn total(&self) -> usize {
        self.state.lock().unwrap().total
    }
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        let mut state = self
            .admission
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        state.total -= 1;
        if let Some(n) = state.by_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                state.by_address.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_gets_a_quarter_of_the_budget_and_places_come_back() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let admission = Admission::new(8);
        let first: Vec<_> = (0..2).map(|_| admission.try_enter(a).unwrap()).collect();
        assert_eq!(admission.try_enter(a).err(), Some(Refusal::Address(2)));
        // Another address is not affected.
        let second = admission.try_enter(b).unwrap();
        drop(first);
        assert_eq!(admission.total(), 1);
        let again: Vec<_> = (0..2).map(|_| admission.try_enter(a).unwrap()).collect();
        drop(second);
        drop(again);
        assert_eq!(admission.total(), 0);
    }

    #[test]
    fn the_total_budget_holds_across_addresses() {
        let admission = Admission::new(4);
        let held: Vec<_> = (1..=4u8)
            .map(|i| admission.try_enter(IpAddr::from([192, 0, 2, i])).unwrap())
            .collect();
        assert_eq!(
            admission.try_enter(IpAddr::from([192, 0, 2, 9])).err(),
            Some(Refusal::Total(4))
        );
        drop(held);
        // A budget under four still lets each address have one.
        let small = Admission::new(2);
        let _one = small.try_enter(IpAddr::from([192, 0, 2, 1])).unwrap();
        assert_eq!(
            small.try_enter(IpAddr::from([192, 0, 2, 1])).err(),
            Some(Refusal::Address(1))
        );
        assert!(small.try_enter(IpAddr::from([192, 0, 2, 2])).is_ok());
    }
}
