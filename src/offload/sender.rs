//! The sending side of the replayed uplink (pure, integer milliseconds, time only moves forward):
//! QUIC's congestion window in front of the bottleneck, and what cancelling a request withdraws.
//!
//! A request's bytes wait in the sender until the transport may put them on the path: at most
//! `window` bytes of ours are in the bottleneck queue at once (the congestion window; the rest of
//! the path's in-flight data is negligible next to it on these uplinks). When a request is
//! cancelled (the element resets its QUIC stream at the frame's deadline), what is still in the
//! sender is withdrawn and frees the link for the requests behind it; what the path already
//! holds crosses anyway. The element logs quinn's window with every answer: on the corpus'
//! slowest trace it never fell below 64 kB (median 70 kB), against requests of 4–25 kB, so a
//! request whose deadline passes is usually on the path whole and a reset withdraws little; with
//! a small window, or large requests, it withdraws most of them.

use std::collections::VecDeque;

use crate::trace::{LinkQueue, MTU};

/// The smallest congestion window measured on the element's connection (see the module docs):
/// the replay's default, the choice under which cancelling withdraws the least.
pub const MEASURED_WINDOW_BYTES: u64 = 64 * 1024;

/// A request whose last byte the path has taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crossing {
    pub id: u64,
    /// When its last byte crosses the bottleneck; `None` when the drop-tail queue refused it
    /// (the request is lost).
    pub last_byte_ms: Option<u64>,
}

#[derive(Debug)]
struct Waiting {
    id: u64,
    /// Bytes not yet on the path.
    left: u64,
}

/// Requests in the sender in front of a [`LinkQueue`], under a congestion window.
#[derive(Debug)]
pub struct Sender {
    link: LinkQueue,
    window: u64,
    waiting: VecDeque<Waiting>,
    withdrawn: u64,
}

impl Sender {
    /// `window_bytes` is at least one packet (`u64::MAX`: everything goes on the path at once).
    pub fn new(link: LinkQueue, window_bytes: u64) -> Self {
        Self {
            link,
            window: window_bytes.max(MTU),
            waiting: VecDeque::new(),
            withdrawn: 0,
        }
    }

    /// Bytes withdrawn by cancellations so far.
    pub fn withdrawn_bytes(&self) -> u64 {
        self.withdrawn
    }

    /// A request of `bytes` is ready to go at `now_ms` (behind those already waiting); returns
    /// the requests whose last byte the path has taken by now.
    pub fn submit(&mut self, now_ms: u64, id: u64, bytes: u64) -> Vec<Crossing> {
        self.waiting.push_back(Waiting { id, left: bytes });
        self.pump(now_ms)
    }

    /// Puts waiting bytes on the path, in order, as far as the window allows at `now_ms`.
    pub fn pump(&mut self, now_ms: u64) -> Vec<Crossing> {
        let mut crossed = Vec::new();
        while let Some(head) = self.waiting.front_mut() {
            let room = self.window.saturating_sub(self.link.backlog_bytes(now_ms));
            if room == 0 {
                break;
            }
            let take = head.left.min(room);
            match self.link.send(now_ms, take) {
                Some(at) => {
                    head.left -= take;
                    if head.left == 0 {
                        crossed.push(Crossing {
                            id: head.id,
                            last_byte_ms: Some(at),
                        });
                        self.waiting.pop_front();
                    }
                }
                None => {
                    // The drop-tail queue is full (a window larger than the queue): lost.
                    crossed.push(Crossing {
                        id: head.id,
                        last_byte_ms: None,
                    });
                    self.waiting.pop_front();
                }
            }
        }
        crossed
    }

    /// When [`Self::pump`] can next put bytes on the path: once the next delivery opportunity
    /// has taken its packet off the queue. `None` when nothing waits.
    pub fn next_room_ms(&self, now_ms: u64) -> Option<u64> {
        if self.waiting.is_empty() {
            return None;
        }
        if self.link.backlog_bytes(now_ms) < self.window {
            return Some(now_ms);
        }
        let trace = self.link.trace();
        Some(trace.time_of(trace.first_at_or_after(now_ms)) + 1)
    }

    /// Cancels request `id` (its stream reset): withdraws its bytes still in the sender and
    /// returns how many; the part already on the path crosses anyway.
    pub fn cancel(&mut self, id: u64) -> u64 {
        let Some(k) = self.waiting.iter().position(|w| w.id == id) else {
            return 0;
        };
        let w = self.waiting.remove(k).expect("found");
        self.withdrawn += w.left;
        w.left
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::Trace;

    /// One 1500-byte opportunity per ms (12 Mbit/s).
    fn link() -> LinkQueue {
        LinkQueue::new(Trace::parse("1\n").unwrap(), 1_000_000)
    }

    #[test]
    fn an_unlimited_window_puts_everything_on_the_path_at_once() {
        let mut s = Sender::new(link(), u64::MAX);
        assert_eq!(
            s.submit(0, 1, 30_000),
            vec![Crossing {
                id: 1,
                last_byte_ms: Some(20)
            }]
        );
        assert_eq!(s.next_room_ms(0), None);
        assert_eq!(s.cancel(1), 0, "nothing left to withdraw");
    }

    #[test]
    fn the_window_holds_bytes_back_and_releases_them_as_packets_cross() {
        // Window of 10 packets: a 30-packet request has 10 on the path, 20 in the sender.
        let mut s = Sender::new(link(), 10 * MTU);
        assert!(s.submit(0, 1, 30 * MTU).is_empty());
        // The first packet crosses at 1 ms; from 2 ms the queue has room for one more.
        assert_eq!(s.next_room_ms(0), Some(2));
        let mut t = 0;
        let mut crossed = Vec::new();
        while let Some(next) = s.next_room_ms(t) {
            t = next;
            crossed.extend(s.pump(t));
        }
        // Work-conserving: the last packet crosses when it would have without a window.
        assert_eq!(
            crossed,
            vec![Crossing {
                id: 1,
                last_byte_ms: Some(30)
            }]
        );
    }

    #[test]
    fn a_cancelled_request_frees_the_link_for_the_next() {
        // A 30-packet request (A) then a 5-packet one (B), window 10 packets.
        let run = |cancel_a_at: Option<u64>| -> (u64, u64) {
            let mut s = Sender::new(link(), 10 * MTU);
            s.submit(0, 1, 30 * MTU);
            s.submit(0, 2, 5 * MTU);
            let mut t = 0;
            let mut withdrawn = 0;
            loop {
                if cancel_a_at == Some(t) {
                    withdrawn = s.cancel(1);
                }
                for c in s.pump(t) {
                    if c.id == 2 {
                        return (c.last_byte_ms.unwrap(), withdrawn);
                    }
                }
                t = s
                    .next_room_ms(t)
                    .unwrap()
                    .min(cancel_a_at.filter(|&c| c > t).unwrap_or(u64::MAX));
            }
        };
        // Without cancelling, B's last byte crosses after all of A: 35 ms.
        assert_eq!(run(None), (35, 0));
        // A reset at 5 ms: A has had 13 packets put on the path (opportunities 1-13: the window
        // refilled every ms), the other 17 are withdrawn; B follows A's last packet on the path
        // (opportunities 14-18).
        let (b, withdrawn) = run(Some(5));
        assert_eq!(withdrawn, 17 * MTU);
        assert_eq!(b, 18);
    }

    #[test]
    fn a_request_wholly_on_the_path_withdraws_nothing() {
        // The measured case: a 20 kB request under a 64 kB window.
        let mut s = Sender::new(link(), MEASURED_WINDOW_BYTES);
        assert_eq!(s.submit(0, 1, 20_000).len(), 1);
        assert_eq!(s.cancel(1), 0);
        assert_eq!(s.withdrawn_bytes(), 0);
    }
}
