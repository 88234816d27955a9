//! How many connections may be in their handshake or awaiting their hello (not yet
//! authenticated), in all and per client address. Pure bookkeeping: the connection task asks
//! before it accepts a connection and holds the guard until the hello is done.
//!
//! Why a budget of its own: such a connection holds server state for up to the hello timeout
//! (5 s) without proving anything. Counted against `--max-connections` as before, 64 handshakes
//! that never sent a hello, renewed every 5 s, had every new client refused "too many
//! connections" (and 13 spoofed first packets a second did it too). Once half the budget is
//! taken, a new connection must first prove its address (a stateless QUIC Retry, asked for by
//! [`Admission::try_enter`]), so spoofed first packets can take at most that half; at about 7 a
//! second they can keep it taken, and every client then pays the Retry's extra round trip. Authenticated connections
//! count against `--max-connections` alone; unauthenticated ones against this budget. Once half
//! of it is taken, an address that holds a quarter of it gets no more: a single host can take at
//! most half and cannot block the others' connecting, while one that connects many clients at
//! once (an edge box's cameras starting, `cbo loadgen --clients 32`) may use half the budget
//! when no one else needs it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Share of the unauthenticated budget one address may hold once half of it is taken: 1 / this.
const PER_ADDRESS_DIVISOR: usize = 4;

/// Connections not yet authenticated, by client address.
pub(super) struct Admission {
    total_limit: usize,
    /// Applies once `total` reaches half of `total_limit`.
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
    /// Half the budget is taken and the client has not proved its address yet.
    Unvalidated,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Address(n) => write!(f, "{n} connections from this address await their hello"),
            Refusal::Total(n) => write!(f, "{n} connections await their hello"),
            Refusal::Unvalidated => write!(f, "half the places are taken: address validation"),
        }
    }
}

/// What counts as one client address: an IPv4 address (also when mapped into IPv6), or an IPv6
/// /64 prefix, the block one host or site is given: counted per full IPv6 address, one host would
/// have 2^64 "addresses".
fn client_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
    }
}

/// One admitted, not yet authenticated connection; dropping it gives its place back.
pub(super) struct Unauthenticated {
    admission: Arc<Admission>,
    address: IpAddr,
}

impl Admission {
    /// A budget of `total` unauthenticated connections (`--max-connections`), a quarter of it
    /// (at least one) per address once half is taken.
    pub(super) fn new(total: usize) -> Arc<Self> {
        let total = total.max(1);
        Arc::new(Self {
            total_limit: total,
            per_address_limit: (total / PER_ADDRESS_DIVISOR).max(1),
            state: Mutex::new(State::default()),
        })
    }

    /// A place for a connection from `address`, or why not. `validated`: whether the client
    /// has proved its address (a Retry); once half the budget is taken, one that has not is
    /// asked to ([`Refusal::Unvalidated`]), decided under the same lock as the count.
    pub(super) fn try_enter(
        self: &Arc<Self>,
        address: IpAddr,
        validated: bool,
    ) -> Result<Unauthenticated, Refusal> {
        let address = client_key(address);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !validated && 2 * state.total >= self.total_limit {
            return Err(Refusal::Unvalidated);
        }
        if state.total >= self.total_limit {
            return Err(Refusal::Total(state.total));
        }
        let contended = 2 * state.total >= self.total_limit;
        let n = state.by_address.entry(address).or_insert(0);
        if contended && *n >= self.per_address_limit {
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

    fn ip(i: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, i])
    }

    #[test]
    fn one_address_may_take_half_the_budget_then_a_quarter_is_its_limit() {
        let admission = Admission::new(8);
        // Alone, one address connects up to half the budget.
        let first: Vec<_> = (0..4)
            .map(|_| admission.try_enter(ip(1), true).unwrap())
            .collect();
        assert_eq!(
            admission.try_enter(ip(1), true).err(),
            Some(Refusal::Address(4))
        );
        // The other half stays for the others, two (a quarter) each.
        let b: Vec<_> = (0..2)
            .map(|_| admission.try_enter(ip(2), true).unwrap())
            .collect();
        assert_eq!(
            admission.try_enter(ip(2), true).err(),
            Some(Refusal::Address(2))
        );
        let c = admission.try_enter(ip(3), true).unwrap();
        let d = admission.try_enter(ip(4), true).unwrap();
        assert_eq!(
            admission.try_enter(ip(5), true).err(),
            Some(Refusal::Total(8))
        );
        // Places come back.
        drop(first);
        assert_eq!(admission.total(), 4);
        let again = admission.try_enter(ip(1), true).unwrap();
        drop((b, c, d, again));
        assert_eq!(admission.total(), 0);
    }

    #[test]
    fn an_ipv6_client_is_its_64_prefix() {
        let admission = Admission::new(4);
        let host = |last: u16| IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, last]);
        let _a = admission.try_enter(host(1), true).unwrap();
        let _b = admission.try_enter(host(2), true).unwrap();
        // Half taken: a client that has not proved its address is asked to.
        assert_eq!(
            admission.try_enter(host(9), false).err(),
            Some(Refusal::Unvalidated)
        );
        assert_eq!(
            admission.try_enter(host(3), true).err(),
            Some(Refusal::Address(2))
        );
        // Another /64, and an IPv4 address however written, are other clients.
        let _c = admission
            .try_enter(IpAddr::from([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1]), true)
            .unwrap();
        assert_eq!(
            client_key("::ffff:192.0.2.7".parse().unwrap()),
            client_key("192.0.2.7".parse().unwrap())
        );
    }

    #[test]
    fn a_small_budget_still_lets_each_address_have_one() {
        let small = Admission::new(2);
        let _one = small.try_enter(ip(1), true).unwrap();
        assert_eq!(
            small.try_enter(ip(1), true).err(),
            Some(Refusal::Address(1))
        );
        let _two = small.try_enter(ip(2), true).unwrap();
        assert_eq!(small.try_enter(ip(3), true).err(), Some(Refusal::Total(2)));
    }
}
