//! The QUIC link to a server, shared: offloading elements of one process that point at the same
//! server with the same trust and token use one connection (one quinn endpoint, one
//! connection, a stream per request) instead of one each.
//!
//! A [`Link`] owns a connection manager task (connecting with the hello, reconnecting with
//! exponential backoff, 0.2 s doubling to 5 s) that publishes the link's [`LinkState`] on a
//! watch channel. The process-wide registry ([`acquire`]) hands out the running link for a
//! [`LinkKey`] while any element holds it; the last holder dropping it stops the manager, which
//! closes the connection. An element set to NULL therefore leaves the others' connection (and
//! their requests in flight) alone.
//!
//! What is shared is the transport only. Each element keeps its own planner, uplink estimate,
//! in-flight window and delivery record: each element's estimate is measured from its own
//! requests, which already travel over the shared link alongside the others', so it reports the
//! share of the uplink that element actually got. One pooled estimate would give every planner
//! the whole link's throughput and let each plan to use all of it. See docs/element.md.
//!
//! Each user watches the state on its own ([`Watcher`]): [`Watcher::update`] is the pure rule
//! that turns the states it sees into the [`ClientEvent`]s its element gets, so an element that
//! joins a link that is already up is told `Connected` at once, and one that joins a failing link
//! is told why.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use tokio::sync::watch;

use super::client::ClientEvent;
use crate::quic;
use crate::tls::Trust;

/// What must match for two elements to share a connection: the address as written, whom to
/// trust (a PEM file by its canonical path, or a fingerprint) and the token the hello carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LinkKey {
    /// `host:port`.
    pub server: String,
    pub trust: Trust,
    pub token: String,
}

impl LinkKey {
    pub fn new(server: &str, trust: &Trust, token: &str) -> Self {
        let trust = match trust {
            Trust::Pem(p) => Trust::Pem(std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())),
            // The separators and case `tls::parse_fingerprint` accepts do not make another pin.
            Trust::Fingerprint(f) => Trust::Fingerprint(
                f.chars()
                    .filter(|c| !matches!(c, ':' | ' ' | '-'))
                    .collect::<String>()
                    .to_ascii_lowercase(),
            ),
        };
        Self {
            server: server.to_string(),
            trust,
            token: token.to_string(),
        }
    }
}

/// Where the link stands, without the connection itself (what [`Watcher::update`] reads).
#[derive(Debug, Clone, PartialEq)]
pub enum LinkStatus {
    /// No attempt has finished yet.
    Connecting,
    /// Connection number `generation` (counted from 1 per link) is up, serving `model`.
    Up { generation: u64, model: String },
    /// Connection `generation` was lost; reconnecting.
    Down { generation: u64, reason: String },
    /// The latest connection attempt failed; retrying.
    Failed { reason: String },
}

/// What the manager publishes: the status and, while up, the connection.
#[derive(Clone)]
pub struct LinkState {
    pub status: LinkStatus,
    pub connection: Option<quinn::Connection>,
}

/// One element's view of a link: what it has been told so far.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Watcher {
    /// The generation of the connection the element was told is up.
    told_up: Option<u64>,
    /// The last connect failure it was told (each distinct reason once).
    told_failure: Option<String>,
    /// `Connected` events after the first.
    pub reconnects: u64,
    connected_before: bool,
}

impl Watcher {
    /// The events a new `status` means for this element, in order. A watch channel shows its
    /// latest value only, so a state can be skipped (a connection lost and replaced between two
    /// looks): the element still hears `Disconnected` before the new `Connected`.
    pub fn update(&mut self, status: &LinkStatus) -> Vec<ClientEvent> {
        let mut events = Vec::new();
        match status {
            LinkStatus::Connecting => {}
            LinkStatus::Up { generation, model } => {
                if self.told_up == Some(*generation) {
                    return events;
                }
                if self.told_up.is_some() {
                    events.push(ClientEvent::Disconnected {
                        reason: "the connection was replaced".into(),
                    });
                }
                events.push(ClientEvent::Connected {
                    model: model.clone(),
                    min_rtt_ms: None,
                });
                if self.connected_before {
                    self.reconnects += 1;
                }
                self.connected_before = true;
                self.told_up = Some(*generation);
                self.told_failure = None;
            }
            LinkStatus::Down { reason, .. } => {
                if self.told_up.take().is_some() {
                    events.push(ClientEvent::Disconnected {
                        reason: reason.clone(),
                    });
                }
            }
            LinkStatus::Failed { reason } => {
                if self.told_up.take().is_some() {
                    events.push(ClientEvent::Disconnected {
                        reason: reason.clone(),
                    });
                }
                if self.told_failure.as_deref() != Some(reason.as_str()) {
                    events.push(ClientEvent::ConnectFailed {
                        reason: reason.clone(),
                    });
                    self.told_failure = Some(reason.clone());
                }
            }
        }
        events
    }
}

/// A running link (see the module docs); stopping is dropping the last `Arc`.
pub struct Link {
    state: watch::Receiver<LinkState>,
    shutdown: watch::Sender<bool>,
    users: AtomicUsize,
}

impl Link {
    /// The connection while it is up.
    pub fn connection(&self) -> Option<quinn::Connection> {
        self.state.borrow().connection.clone()
    }

    /// A receiver of the link's state, for a user's watcher task.
    pub fn subscribe(&self) -> watch::Receiver<LinkState> {
        self.state.clone()
    }

    /// Elements using the link now.
    pub fn users(&self) -> usize {
        self.users.load(Ordering::SeqCst)
    }

    /// Counts an element in until the guard drops.
    pub fn enter(self: &Arc<Self>) -> LinkUser {
        self.users.fetch_add(1, Ordering::SeqCst);
        LinkUser(self.clone())
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // The manager closes the connection and the endpoint.
        let _ = self.shutdown.send(true);
    }
}

/// An element's hold on a link.
pub struct LinkUser(Arc<Link>);

impl LinkUser {
    pub fn link(&self) -> &Arc<Link> {
        &self.0
    }
}

impl Drop for LinkUser {
    fn drop(&mut self) {
        self.0.users.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Running shared links by key; an entry lives while an element holds its link.
static LINKS: LazyLock<Mutex<HashMap<LinkKey, Weak<Link>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Everything the manager task needs to (re)connect.
pub struct Dial {
    pub host: String,
    pub tls: quinn::ClientConfig,
    pub client_name: &'static str,
}

/// The process-wide link for `key` (started if none runs), or, with `shared` false, a link of
/// the caller's own. A new link's endpoint and manager task run on `rt`; `dial` is called only
/// for a new link.
pub fn acquire(
    rt: &tokio::runtime::Runtime,
    key: LinkKey,
    shared: bool,
    dial: impl FnOnce() -> Result<Dial, String>,
) -> Result<Arc<Link>, String> {
    if !shared {
        return start(rt, key, dial()?);
    }
    let mut links = LINKS.lock().unwrap();
    links.retain(|_, w| w.strong_count() > 0);
    if let Some(link) = links.get(&key).and_then(Weak::upgrade) {
        return Ok(link);
    }
    let link = start(rt, key.clone(), dial()?)?;
    links.insert(key, Arc::downgrade(&link));
    Ok(link)
}

fn start(rt: &tokio::runtime::Runtime, key: LinkKey, dial: Dial) -> Result<Arc<Link>, String> {
    let endpoint = {
        let _guard = rt.enter();
        quic::client_endpoint()?
    };
    let (state_tx, state) = watch::channel(LinkState {
        status: LinkStatus::Connecting,
        connection: None,
    });
    let (shutdown, shutdown_rx) = watch::channel(false);
    rt.spawn(manage(endpoint, key, dial, state_tx, shutdown_rx));
    Ok(Arc::new(Link {
        state,
        shutdown,
        users: AtomicUsize::new(0),
    }))
}

/// Keeps the link's connection up until shutdown, publishing each change.
async fn manage(
    endpoint: quinn::Endpoint,
    key: LinkKey,
    dial: Dial,
    state: watch::Sender<LinkState>,
    mut shutdown: watch::Receiver<bool>,
) {
    const MIN_BACKOFF: Duration = Duration::from_millis(200);
    const MAX_BACKOFF: Duration = Duration::from_secs(5);
    let mut backoff = MIN_BACKOFF;
    let mut generation = 0;
    let publish = |status: LinkStatus, connection: Option<quinn::Connection>| {
        state.send_replace(LinkState { status, connection });
    };
    while !*shutdown.borrow() {
        let attempt = async {
            let addr = tokio::net::lookup_host(&key.server)
                .await
                .map_err(|e| format!("cannot resolve '{}': {e}", key.server))?
                .next()
                .ok_or_else(|| format!("'{}' resolves to no address", key.server))?;
            quic::connect(
                &endpoint,
                addr,
                &dial.host,
                dial.tls.clone(),
                &key.token,
                dial.client_name,
                // Short, so an absent server is reported (and retried) quickly; a QUIC
                // handshake takes two round trips.
                Duration::from_secs(2),
            )
            .await
            .map_err(|e| e.to_string())
        };
        let result = tokio::select! {
            r = attempt => r,
            _ = shutdown.changed() => break,
        };
        match result {
            Ok(session) => {
                backoff = MIN_BACKOFF;
                generation += 1;
                let connection = session.connection;
                publish(
                    LinkStatus::Up {
                        generation,
                        model: session.hello.model,
                    },
                    Some(connection.clone()),
                );
                let reason = tokio::select! {
                    e = connection.closed() => crate::quic::lost_reason(&e),
                    _ = shutdown.changed() => {
                        connection.close(0u32.into(), b"client stopping");
                        break;
                    }
                };
                publish(LinkStatus::Down { generation, reason }, None);
            }
            Err(reason) => {
                publish(LinkStatus::Failed { reason }, None);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => break,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    publish(
        LinkStatus::Down {
            generation,
            reason: "client stopping".into(),
        },
        None,
    );
    endpoint.close(0u32.into(), b"client stopping");
}

/// Watches `state` for one element until `stop` fires, handing `report` each change's events
/// (with the watcher, for its counts). A `Connected` event carries the connection's minimum RTT
/// so far (the handshake's, for a new one), which [`Watcher::update`] cannot see.
pub async fn watch_for(
    mut state: watch::Receiver<LinkState>,
    mut stop: watch::Receiver<bool>,
    mut report: impl FnMut(&Watcher, Vec<ClientEvent>) + Send,
) {
    let mut watcher = Watcher::default();
    while !*stop.borrow() {
        let (status, min_rtt_ms) = {
            let s = state.borrow_and_update();
            let rtt = s
                .connection
                .as_ref()
                .map(|c| c.stats().path.min_rtt.as_secs_f64() * 1000.0);
            (s.status.clone(), rtt)
        };
        let mut events = watcher.update(&status);
        for e in &mut events {
            if let ClientEvent::Connected { min_rtt_ms: m, .. } = e {
                *m = min_rtt_ms;
            }
        }
        if !events.is_empty() {
            report(&watcher, events);
        }
        tokio::select! {
            changed = state.changed() => if changed.is_err() { break },
            r = stop.changed() => if r.is_err() { break },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(generation: u64) -> LinkStatus {
        LinkStatus::Up {
            generation,
            model: "m".into(),
        }
    }

    fn connected() -> ClientEvent {
        ClientEvent::Connected {
            model: "m".into(),
            min_rtt_ms: None,
        }
    }

    #[test]
    fn an_element_joining_an_up_link_is_told_connected_once() {
        let mut w = Watcher::default();
        assert_eq!(w.update(&LinkStatus::Connecting), []);
        assert_eq!(w.update(&up(3)), [connected()]);
        assert_eq!(w.update(&up(3)), []);
        assert_eq!(w.reconnects, 0);
    }

    #[test]
    fn a_lost_connection_is_disconnected_then_a_new_one_counts_as_a_reconnect() {
        let mut w = Watcher::default();
        w.update(&up(1));
        let down = LinkStatus::Down {
            generation: 1,
            reason: "gone".into(),
        };
        assert_eq!(
            w.update(&down),
            [ClientEvent::Disconnected {
                reason: "gone".into()
            }]
        );
        assert_eq!(w.update(&down), []);
        assert_eq!(w.update(&up(2)), [connected()]);
        assert_eq!(w.reconnects, 1);
    }

    #[test]
    fn a_skipped_down_still_disconnects_before_the_new_connection() {
        let mut w = Watcher::default();
        w.update(&up(1));
        assert_eq!(
            w.update(&up(2)),
            [
                ClientEvent::Disconnected {
                    reason: "the connection was replaced".into()
                },
                connected()
            ]
        );
        assert_eq!(w.reconnects, 1);
        let failed = LinkStatus::Failed {
            reason: "refused".into(),
        };
        assert_eq!(
            w.update(&failed),
            [
                ClientEvent::Disconnected {
                    reason: "refused".into()
                },
                ClientEvent::ConnectFailed {
                    reason: "refused".into()
                }
            ]
        );
    }

    #[test]
    fn each_distinct_failure_is_told_once() {
        let mut w = Watcher::default();
        let failed = |r: &str| LinkStatus::Failed { reason: r.into() };
        let told = |r: &str| ClientEvent::ConnectFailed { reason: r.into() };
        assert_eq!(w.update(&failed("a")), [told("a")]);
        assert_eq!(w.update(&failed("a")), []);
        assert_eq!(w.update(&failed("b")), [told("b")]);
        // A success in between: the same failure again is news.
        w.update(&up(1));
        w.update(&LinkStatus::Down {
            generation: 1,
            reason: "x".into(),
        });
        assert_eq!(w.update(&failed("b")), [told("b")]);
    }

    #[test]
    fn keys_match_on_the_canonical_certificate_path_and_the_plain_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("cert.pem");
        std::fs::write(&pem, "x").unwrap();
        let via_dot = dir.path().join(".").join("cert.pem");
        assert_eq!(
            LinkKey::new("127.0.0.1:1", &Trust::Pem(pem.clone()), ""),
            LinkKey::new("127.0.0.1:1", &Trust::Pem(via_dot), "")
        );
        assert_eq!(
            LinkKey::new("h:1", &Trust::Fingerprint("AB:cd".into()), "t"),
            LinkKey::new("h:1", &Trust::Fingerprint("abcd".into()), "t")
        );
        assert_ne!(
            LinkKey::new("h:1", &Trust::Fingerprint("ab".into()), "t"),
            LinkKey::new("h:1", &Trust::Fingerprint("ab".into()), "u")
        );
    }
}
