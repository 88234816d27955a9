//! `cbo netem` as a library: a userspace UDP relay that puts a real cellular uplink (a Mahimahi
//! trace) between cbofilter and cboserver, so the element's real QUIC traffic sees the link's
//! capacity, queueing, drops and delay.
//!
//! ```no_run
//! # async fn demo() -> Result<(), String> {
//! use gstcbo::netem::{self, NetemConfig};
//! use gstcbo::trace::Trace;
//! let trace = Trace::load("Verizon-LTE-short.up".as_ref()).map_err(|e| e.to_string())?;
//! let config = NetemConfig::new(
//!     "127.0.0.1:4434".parse().unwrap(),
//!     "127.0.0.1:4433".parse().unwrap(),
//!     trace,
//! );
//! let relay = netem::start(config).await?;
//! println!("relaying on {}", relay.local_addr()); // point cbofilter's `server` here
//! # relay.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! Model (the same [`LinkQueue`](crate::trace::LinkQueue) the offline simulator uses):
//! - Uplink (client → server): a datagram is offered to the trace-driven drop-tail queue when it
//!   arrives; if accepted it reaches the server at the time its last byte crosses the link plus
//!   the one-way delay, otherwise it is lost. Every client shares the one queue: it is one
//!   cellular link.
//! - Downlink (server → client): a FIFO at a fixed rate plus the same one-way delay (and the same
//!   queue limit, so a misbehaving server cannot grow it without bound).
//! - The link carries IP packets, as mm-link's does: each datagram costs its payload plus the IP
//!   and UDP headers (28 bytes over IPv4, 48 over IPv6).
//! - Trace time 0 is when the relay starts ([`NetemHandle::started_at`]); the trace repeats.
//!   Arrivals are rounded up to the next whole millisecond (an opportunity that has passed cannot
//!   be used), so nothing is delivered sooner than its arrival plus the delay.
//!
//! Each client address gets its own upstream socket, so the server sees one peer per client and
//! its replies map back; mappings idle for [`NetemConfig::idle_timeout`] are dropped. The relay is
//! a dumb byte relay: it never parses what it carries. It only relays between loopback addresses:
//! it is a test instrument, not something to expose on a network.

mod relay;
mod schedule;

use std::net::SocketAddr;
use std::time::Duration;

pub use relay::{NetemHandle, start};
pub use schedule::{Direction, LinkStats, Scheduler, SecondStats};

use crate::trace::Trace;

/// IPv4 (20) + UDP (8) header bytes each datagram costs on the link.
pub const IPV4_UDP_HEADER_BYTES: u64 = 28;
/// IPv6 (40) + UDP (8) header bytes.
pub const IPV6_UDP_HEADER_BYTES: u64 = 48;

/// Most client mappings kept at once (each holds a socket); a new client beyond it evicts the
/// least recently active one.
pub const MAX_CLIENTS: usize = 256;

#[derive(Debug, Clone)]
pub struct NetemConfig {
    /// Where clients send (loopback; port 0 picks one).
    pub listen: SocketAddr,
    /// The real server (loopback).
    pub server: SocketAddr,
    /// The uplink: one 1500-byte delivery opportunity per listed millisecond.
    pub trace: Trace,
    /// One-way delay added in each direction.
    pub delay: Duration,
    /// Drop-tail limit of each direction's queue, bytes.
    pub queue_bytes: u64,
    /// Downlink rate, bits per second.
    pub downlink_bps: f64,
    /// A client mapping with no traffic either way for this long is dropped.
    pub idle_timeout: Duration,
    /// Print one line per second of the uplink's activity on stderr.
    pub verbose: bool,
}

impl NetemConfig {
    /// The `cbo netem` defaults: 20 ms one-way delay, 150 kB queue, 50 Mbit/s downlink, 60 s idle
    /// timeout.
    pub fn new(listen: SocketAddr, server: SocketAddr, trace: Trace) -> Self {
        Self {
            listen,
            server,
            trace,
            delay: Duration::from_millis(20),
            queue_bytes: 150_000,
            downlink_bps: 50e6,
            idle_timeout: Duration::from_secs(60),
            verbose: false,
        }
    }

    /// Checks what [`start`] needs: loopback addresses of one family, sensible numbers.
    pub fn validate(&self) -> Result<(), String> {
        require_loopback("listen", self.listen)?;
        require_loopback("server", self.server)?;
        if self.listen.is_ipv4() != self.server.is_ipv4() {
            return Err(format!(
                "listen address {} and server address {} must be of the same IP family",
                self.listen, self.server
            ));
        }
        if self.queue_bytes < crate::trace::MTU {
            return Err(format!(
                "the queue limit ({} bytes) must hold at least one {}-byte packet",
                self.queue_bytes,
                crate::trace::MTU
            ));
        }
        // Trace::constant's slowest link is one opportunity per second.
        if !(self.downlink_bps.is_finite() && self.downlink_bps >= 12_000.0) {
            return Err(format!(
                "the downlink rate must be at least 0.012 Mbit/s, not {} bit/s",
                self.downlink_bps
            ));
        }
        Ok(())
    }

    fn header_bytes(&self) -> u64 {
        if self.server.is_ipv4() {
            IPV4_UDP_HEADER_BYTES
        } else {
            IPV6_UDP_HEADER_BYTES
        }
    }
}

/// Refuses anything but a loopback address: the relay must not forward for other hosts.
pub fn require_loopback(what: &str, addr: SocketAddr) -> Result<(), String> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(format!(
            "the {what} address {addr} is not a loopback address: netem only relays on this \
             machine (use 127.0.0.1 or ::1)"
        ))
    }
}

/// What the relay has done so far.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct NetemStats {
    pub uplink: LinkStats,
    pub downlink: LinkStats,
    /// Client mappings open now.
    pub clients: usize,
    /// Datagrams the relay could not hand to the kernel (e.g. the server's port is closed).
    pub send_errors: u64,
    /// Per second of trace time: what the uplink carried against its capacity.
    pub seconds: Vec<SecondStats>,
}

/// One line for a second of uplink activity, as `cbo netem --verbose` prints it.
pub fn format_second(s: &SecondStats, clients: usize) -> String {
    format!(
        "netem: t={}s uplink delivered {:.0} kbit/s of {:.0} kbit/s capacity ({} packets), \
         {} dropped, peak backlog {} B, {clients} client(s)",
        s.second,
        s.delivered_bytes as f64 * 8.0 / 1000.0,
        s.capacity_bytes as f64 * 8.0 / 1000.0,
        s.delivered_packets,
        s.dropped_packets,
        s.peak_backlog_bytes,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listen: &str, server: &str) -> NetemConfig {
        NetemConfig::new(
            listen.parse().unwrap(),
            server.parse().unwrap(),
            Trace::constant(1e6),
        )
    }

    #[test]
    fn only_loopback_is_accepted() {
        assert!(config("127.0.0.1:0", "127.0.0.1:4433").validate().is_ok());
        assert!(config("[::1]:0", "[::1]:4433").validate().is_ok());
        for (listen, server, bad) in [
            ("0.0.0.0:4434", "127.0.0.1:4433", "listen"),
            ("127.0.0.1:4434", "10.1.2.3:4433", "server"),
            ("127.0.0.1:4434", "0.0.0.0:4433", "server"),
            ("192.168.1.2:4434", "127.0.0.1:4433", "listen"),
        ] {
            let e = config(listen, server).validate().unwrap_err();
            assert!(e.contains(bad) && e.contains("loopback"), "{e}");
        }
        let e = config("127.0.0.1:0", "[::1]:4433").validate().unwrap_err();
        assert!(e.contains("family"), "{e}");
    }

    #[test]
    fn numbers_are_checked() {
        let mut c = config("127.0.0.1:0", "127.0.0.1:4433");
        c.queue_bytes = 1000;
        assert!(c.validate().unwrap_err().contains("queue"));
        let mut c = config("127.0.0.1:0", "127.0.0.1:4433");
        c.downlink_bps = f64::NAN;
        assert!(c.validate().unwrap_err().contains("downlink"));
        c.downlink_bps = 0.0;
        assert!(c.validate().unwrap_err().contains("downlink"));
    }

    #[test]
    fn the_second_line_reports_rates() {
        let s = SecondStats {
            second: 3,
            capacity_bytes: 250_000,
            delivered_bytes: 125_000,
            delivered_packets: 100,
            dropped_packets: 7,
            peak_backlog_bytes: 42_000,
        };
        let line = format_second(&s, 2);
        assert_eq!(
            line,
            "netem: t=3s uplink delivered 1000 kbit/s of 2000 kbit/s capacity (100 packets), \
             7 dropped, peak backlog 42000 B, 2 client(s)"
        );
    }
}
