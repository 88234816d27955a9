//! The pure part of the relay: when each datagram leaves, and what the link did each second.
//!
//! Both directions are [`LinkQueue`]s (the uplink on the cellular trace, the downlink on a
//! constant-rate trace), so a datagram's delivery time is fixed the moment it arrives:
//! `done_at + delay`. `LinkQueue` hands out non-decreasing `done_at` times, so each direction is a
//! FIFO of pending datagrams already sorted by delivery time and the next delivery is the earlier
//! of the two heads: no heap needed. Times are integer milliseconds since the relay started
//! (trace time 0), the resolution of both the trace and tokio's timers.

use std::collections::VecDeque;

use serde::Serialize;

use crate::trace::{LinkQueue, Trace};

/// Which way a datagram travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to server: the trace-driven cellular uplink.
    Uplink,
    /// Server to client: the fixed-rate downlink.
    Downlink,
}

/// Totals for one direction. Byte counts are UDP payload bytes (what the endpoints sent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LinkStats {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub delivered_packets: u64,
    pub delivered_bytes: u64,
    /// Lost to the drop-tail queue limit.
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
}

/// What the uplink did in one second of trace time, `[second, second + 1)` s after the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SecondStats {
    pub second: u64,
    /// Bytes the trace could carry in this second.
    pub capacity_bytes: u64,
    /// Link bytes (payload plus IP/UDP headers, what the trace's 1500-byte opportunities carry)
    /// of the datagrams whose last byte crossed the link in this second, counted once handed to
    /// the server: comparable with `capacity_bytes`.
    pub delivered_bytes: u64,
    pub delivered_packets: u64,
    /// Datagrams that arrived in this second and found the queue full.
    pub dropped_packets: u64,
    /// Largest queue backlog (link bytes, as [`LinkQueue::backlog_bytes`] counts it) seen by a
    /// datagram arriving in this second.
    pub peak_backlog_bytes: u64,
}

struct Pending<P> {
    due_ms: u64,
    /// When its last byte crossed the link (before the one-way delay).
    crossed_ms: u64,
    payload_bytes: u64,
    link_bytes: u64,
    payload: P,
}

/// Decides when datagrams are delivered; generic over what is carried (`P`) so it can be driven
/// by sockets or by a test with plain numbers.
pub struct Scheduler<P> {
    uplink: LinkQueue,
    downlink: LinkQueue,
    delay_ms: u64,
    header_bytes: u64,
    up: VecDeque<Pending<P>>,
    down: VecDeque<Pending<P>>,
    up_stats: LinkStats,
    down_stats: LinkStats,
    seconds: Vec<SecondStats>,
    /// Seconds already returned by [`Scheduler::close_seconds`].
    closed: u64,
}

impl<P> Scheduler<P> {
    /// `uplink`: the cellular trace; `downlink_bps`: the fixed downlink rate; `queue_bytes`: the
    /// drop-tail limit of each direction's queue; `header_bytes`: per-datagram bytes the link
    /// carries beyond the UDP payload (IP and UDP headers: mm-link's packets are IP packets).
    pub fn new(
        uplink: Trace,
        downlink_bps: f64,
        queue_bytes: u64,
        delay_ms: u64,
        header_bytes: u64,
    ) -> Self {
        Self {
            uplink: LinkQueue::new(uplink, queue_bytes),
            downlink: LinkQueue::new(Trace::constant(downlink_bps), queue_bytes),
            delay_ms,
            header_bytes,
            up: VecDeque::new(),
            down: VecDeque::new(),
            up_stats: LinkStats::default(),
            down_stats: LinkStats::default(),
            seconds: Vec::new(),
            closed: 0,
        }
    }

    pub fn uplink_trace(&self) -> &Trace {
        self.uplink.trace()
    }

    pub fn delay_ms(&self) -> u64 {
        self.delay_ms
    }

    /// A datagram of `payload_bytes` arrives at `now_ms` going `dir`: returns when it is to be
    /// delivered, or `None` when the queue is full and it is dropped.
    pub fn offer(
        &mut self,
        dir: Direction,
        now_ms: u64,
        payload_bytes: usize,
        payload: P,
    ) -> Option<u64> {
        let payload_bytes = payload_bytes as u64;
        let link_bytes = payload_bytes + self.header_bytes;
        let (link, queue, stats) = match dir {
            Direction::Uplink => (&mut self.uplink, &mut self.up, &mut self.up_stats),
            Direction::Downlink => (&mut self.downlink, &mut self.down, &mut self.down_stats),
        };
        stats.packets_in += 1;
        stats.bytes_in += payload_bytes;
        let done = link.send(now_ms, link_bytes);
        let backlog = link.backlog_bytes(now_ms);
        let Some(crossed_ms) = done else {
            stats.dropped_packets += 1;
            stats.dropped_bytes += payload_bytes;
            if dir == Direction::Uplink {
                self.second_mut(now_ms / 1000).dropped_packets += 1;
            }
            return None;
        };
        // LinkQueue's completion times never go backwards, so the FIFO stays sorted; the max only
        // guards that invariant rather than reordering datagrams.
        let due_ms = (crossed_ms + self.delay_ms).max(queue.back().map_or(0, |p| p.due_ms));
        queue.push_back(Pending {
            due_ms,
            crossed_ms,
            payload_bytes,
            link_bytes,
            payload,
        });
        if dir == Direction::Uplink {
            let s = self.second_mut(now_ms / 1000);
            s.peak_backlog_bytes = s.peak_backlog_bytes.max(backlog);
        }
        Some(due_ms)
    }

    /// When the next pending datagram is due, if any.
    pub fn next_due_ms(&self) -> Option<u64> {
        match (self.up.front(), self.down.front()) {
            (Some(u), Some(d)) => Some(u.due_ms.min(d.due_ms)),
            (Some(u), None) => Some(u.due_ms),
            (None, Some(d)) => Some(d.due_ms),
            (None, None) => None,
        }
    }

    /// The earliest datagram due at or before `now_ms` (counted as delivered), if any.
    pub fn pop_due(&mut self, now_ms: u64) -> Option<(Direction, P)> {
        let up_due = self.up.front().map(|p| p.due_ms).filter(|&t| t <= now_ms);
        let down_due = self.down.front().map(|p| p.due_ms).filter(|&t| t <= now_ms);
        let dir = match (up_due, down_due) {
            (Some(u), Some(d)) if d < u => Direction::Downlink,
            (Some(_), _) => Direction::Uplink,
            (None, Some(_)) => Direction::Downlink,
            (None, None) => return None,
        };
        let p = match dir {
            Direction::Uplink => self.up.pop_front(),
            Direction::Downlink => self.down.pop_front(),
        }?;
        match dir {
            Direction::Uplink => {
                self.up_stats.delivered_packets += 1;
                self.up_stats.delivered_bytes += p.payload_bytes;
                let s = self.second_mut(p.crossed_ms / 1000);
                s.delivered_packets += 1;
                s.delivered_bytes += p.link_bytes;
            }
            Direction::Downlink => {
                self.down_stats.delivered_packets += 1;
                self.down_stats.delivered_bytes += p.payload_bytes;
            }
        }
        Some((dir, p.payload))
    }

    /// Datagrams accepted but not yet delivered, per direction.
    pub fn pending(&self) -> (usize, usize) {
        (self.up.len(), self.down.len())
    }

    /// The seconds that are complete at `now_ms` and not returned before: every datagram that
    /// crossed the link in such a second has been delivered (its crossing plus the delay is past).
    pub fn close_seconds(&mut self, now_ms: u64) -> Vec<SecondStats> {
        let complete = now_ms.saturating_sub(self.delay_ms) / 1000;
        let from = self.closed;
        if complete <= from {
            return Vec::new();
        }
        self.second_mut(complete - 1);
        self.closed = complete;
        self.seconds[from as usize..complete as usize].to_vec()
    }

    pub fn uplink_stats(&self) -> LinkStats {
        self.up_stats
    }

    pub fn downlink_stats(&self) -> LinkStats {
        self.down_stats
    }

    /// The per-second uplink series so far (the current second may still change).
    pub fn seconds(&self) -> &[SecondStats] {
        &self.seconds
    }

    fn second_mut(&mut self, second: u64) -> &mut SecondStats {
        while self.seconds.len() as u64 <= second {
            let s = self.seconds.len() as u64;
            self.seconds.push(SecondStats {
                second: s,
                capacity_bytes: self.uplink.trace().capacity_bytes(s * 1000, (s + 1) * 1000),
                ..SecondStats::default()
            });
        }
        &mut self.seconds[second as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::MTU;

    /// One opportunity every 10 ms (1.2 Mbit/s), 5 ms delay, no header bytes, 12 Mbit/s down.
    fn sched(queue: u64) -> Scheduler<u32> {
        Scheduler::new(Trace::parse("10\n").unwrap(), 12e6, queue, 5, 0)
    }

    fn drain(s: &mut Scheduler<u32>, now: u64) -> Vec<(Direction, u32)> {
        std::iter::from_fn(|| s.pop_due(now)).collect()
    }

    #[test]
    fn uplink_waits_for_opportunities_then_the_delay() {
        let mut s = sched(100_000);
        // At t=0 the next opportunities are at 10, 20, 30 ms.
        assert_eq!(s.offer(Direction::Uplink, 0, 1500, 1), Some(15));
        assert_eq!(s.offer(Direction::Uplink, 0, 1500, 2), Some(25));
        // Arriving at 3 ms behind a queue: waits for its turn, not for 3 + something.
        assert_eq!(s.offer(Direction::Uplink, 3, 100, 3), Some(35));
        assert_eq!(s.next_due_ms(), Some(15));
        assert_eq!(drain(&mut s, 14), vec![]);
        assert_eq!(
            drain(&mut s, 25),
            vec![(Direction::Uplink, 1), (Direction::Uplink, 2)]
        );
        assert_eq!(s.pending(), (1, 0));
        assert_eq!(drain(&mut s, 100), vec![(Direction::Uplink, 3)]);
        assert_eq!(s.next_due_ms(), None);
        let st = s.uplink_stats();
        assert_eq!(
            (st.packets_in, st.delivered_packets, st.delivered_bytes),
            (3, 3, 3100)
        );
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let mut s = sched(3000);
        assert!(s.offer(Direction::Uplink, 0, 1500, 1).is_some());
        assert!(s.offer(Direction::Uplink, 0, 1500, 2).is_some());
        assert_eq!(s.offer(Direction::Uplink, 1, 1, 3), None);
        let st = s.uplink_stats();
        assert_eq!((st.dropped_packets, st.dropped_bytes), (1, 1));
        assert_eq!(s.seconds()[0].dropped_packets, 1);
        assert_eq!(s.seconds()[0].peak_backlog_bytes, 3000);
    }

    #[test]
    fn header_bytes_count_against_the_link() {
        // 1472 payload + 28 header = exactly one opportunity; 1473 needs two.
        let mut s: Scheduler<u32> =
            Scheduler::new(Trace::parse("10\n").unwrap(), 12e6, 1e6 as u64, 0, 28);
        assert_eq!(s.offer(Direction::Uplink, 0, 1472, 1), Some(10));
        assert_eq!(s.offer(Direction::Uplink, 0, 1473, 2), Some(30));
    }

    #[test]
    fn downlink_is_fixed_rate_and_interleaves_by_due_time() {
        // 12 Mbit/s = one 1500-byte opportunity per ms.
        let mut s = sched(100_000);
        assert_eq!(s.offer(Direction::Downlink, 0, 1500, 10), Some(6));
        assert_eq!(s.offer(Direction::Downlink, 0, 1500, 11), Some(7));
        assert_eq!(s.offer(Direction::Uplink, 0, 100, 1), Some(15));
        assert_eq!(s.offer(Direction::Downlink, 0, 1500, 12), Some(8));
        assert_eq!(s.next_due_ms(), Some(6));
        assert_eq!(
            drain(&mut s, 100),
            vec![
                (Direction::Downlink, 10),
                (Direction::Downlink, 11),
                (Direction::Downlink, 12),
                (Direction::Uplink, 1)
            ]
        );
        assert_eq!(s.downlink_stats().delivered_bytes, 4500);
        // The downlink does not count in the uplink series.
        assert_eq!(s.seconds()[0].delivered_packets, 1);
    }

    #[test]
    fn saturated_seconds_deliver_their_capacity() {
        // Offer 2 opportunities' worth every 10 ms for 3 s: the link is always busy.
        let mut s = sched(30_000);
        let mut closed = Vec::new();
        for now in 0..4000u64 {
            if now < 3000 && now % 10 == 0 {
                for k in 0..2 {
                    s.offer(Direction::Uplink, now, MTU as usize, k);
                }
            }
            drain(&mut s, now);
            closed.extend(s.close_seconds(now));
        }
        // Second k closes at (k + 1) * 1000 + delay; the loop ends at 3999.
        assert_eq!(closed.len(), 3);
        for sec in &closed {
            // [0, 1000) holds the opportunities at 10..990 ms; later seconds hold 100.
            let opportunities = if sec.second == 0 { 99 } else { 100 };
            assert_eq!(sec.capacity_bytes, opportunities * MTU, "{sec:?}");
            assert_eq!(sec.delivered_bytes, sec.capacity_bytes, "{sec:?}");
            assert!(sec.dropped_packets > 0, "{sec:?}");
        }
        assert_eq!(closed[0].second, 0);
        assert_eq!(closed[2].second, 2);
        // Nothing is returned twice, and a closed second no longer changes (its deliveries are
        // all done: they were due by the time it closed).
        assert!(s.close_seconds(3999).is_empty());
        let st = s.uplink_stats();
        assert_eq!(st.packets_in, st.delivered_packets + st.dropped_packets);
    }

    #[test]
    fn idle_seconds_are_reported_with_their_capacity() {
        let mut s = sched(30_000);
        assert!(s.close_seconds(1004).is_empty(), "second 0 closes at 1005");
        let c = s.close_seconds(2005);
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].second, 1);
        assert_eq!(c[1].capacity_bytes, 100 * MTU);
        assert_eq!(c[1].delivered_bytes, 0);
    }
}
