//! The socket side of the relay: one task owns the client-facing socket and the delivery timer;
//! one small task per client reads the server's replies from that client's upstream socket. All
//! scheduling decisions are the [`Scheduler`]'s.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::schedule::{Direction, Scheduler};
use super::{MAX_CLIENTS, NetemConfig, NetemStats, format_second};

/// Largest UDP payload (IPv4); receive buffers are this big so nothing is truncated.
const MAX_DATAGRAM: usize = 65_535;
/// Replies read from the server but not yet queued by the main task. Bounded so a flood from the
/// server back-pressures into the kernel's socket buffer instead of this process's memory.
const REPLY_CHANNEL: usize = 4096;

/// A datagram waiting in the scheduler.
enum Packet {
    /// To the server, from the client that owns `socket`.
    Up {
        socket: Arc<UdpSocket>,
        data: Vec<u8>,
    },
    /// To the client at `to`, from the listening socket.
    Down { to: SocketAddr, data: Vec<u8> },
}

/// A reply the server sent to a client's upstream socket.
struct Reply {
    client: SocketAddr,
    at: Instant,
    data: Vec<u8>,
}

struct Client {
    socket: Arc<UdpSocket>,
    reader: JoinHandle<()>,
    last_seen: Instant,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

struct Shared {
    scheduler: Mutex<Scheduler<Packet>>,
    clients: AtomicUsize,
    send_errors: AtomicU64,
}

/// A running relay. Dropping it stops the relay (pending datagrams are discarded).
pub struct NetemHandle {
    local_addr: SocketAddr,
    server: SocketAddr,
    started_at: Instant,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl NetemHandle {
    /// Where clients send (the relay's listening address).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// Trace time 0.
    pub fn started_at(&self) -> Instant {
        self.started_at
    }

    pub fn stats(&self) -> NetemStats {
        let scheduler = self.shared.scheduler.lock().expect("scheduler lock");
        NetemStats {
            uplink: scheduler.uplink_stats(),
            downlink: scheduler.downlink_stats(),
            clients: self.shared.clients.load(Ordering::Relaxed),
            send_errors: self.shared.send_errors.load(Ordering::Relaxed),
            seconds: scheduler.seconds().to_vec(),
        }
    }

    /// Stops the relay and waits until its sockets are closed.
    pub async fn shutdown(mut self) {
        self.stop.take();
        let _ = (&mut self.task).await;
    }
}

impl Drop for NetemHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds the listening socket and starts relaying (call inside a tokio runtime).
pub async fn start(config: NetemConfig) -> Result<NetemHandle, String> {
    config.validate()?;
    let listen = UdpSocket::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let local_addr = listen
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    let shared = Arc::new(Shared {
        scheduler: Mutex::new(Scheduler::new(
            config.trace.clone(),
            config.downlink_bps,
            config.queue_bytes,
            config.delay.as_millis() as u64,
            config.header_bytes(),
        )),
        clients: AtomicUsize::new(0),
        send_errors: AtomicU64::new(0),
    });
    let started_at = Instant::now();
    let (stop_tx, stop_rx) = oneshot::channel();
    let relay = Relay {
        listen: Arc::new(listen),
        server: config.server,
        shared: shared.clone(),
        start: started_at,
        clients: HashMap::new(),
        verbose: config.verbose,
        idle_timeout: config.idle_timeout,
    };
    let task = tokio::spawn(relay.run(stop_rx));
    Ok(NetemHandle {
        local_addr,
        server: config.server,
        started_at,
        shared,
        stop: Some(stop_tx),
        task,
    })
}

struct Relay {
    listen: Arc<UdpSocket>,
    server: SocketAddr,
    shared: Arc<Shared>,
    start: Instant,
    clients: HashMap<SocketAddr, Client>,
    verbose: bool,
    idle_timeout: Duration,
}

impl Relay {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let (reply_tx, mut reply_rx) = mpsc::channel::<Reply>(REPLY_CHANNEL);
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let delay_ms = self.scheduler().delay_ms();
        // Second s of trace time is complete once everything that crossed the link in it has also
        // served its delay: report each second just after that.
        let mut tick = tokio::time::interval_at(
            self.start + Duration::from_millis(1000 + delay_ms + 2),
            Duration::from_secs(1),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let due = self.scheduler().next_due_ms();
            // A far-off deadline when nothing is pending; that branch is disabled then anyway.
            let wake = self.start + Duration::from_millis(due.unwrap_or(u64::from(u32::MAX)));
            tokio::select! {
                _ = &mut stop => break,
                received = self.listen.recv_from(&mut buf) => match received {
                    Ok((n, from)) => {
                        let at = Instant::now();
                        self.on_client_datagram(from, at, &buf[..n], &reply_tx);
                    }
                    // Transient per-datagram errors; the socket itself stays usable.
                    Err(e) => self.log(format_args!("receive error: {e}")),
                },
                Some(reply) = reply_rx.recv() => self.on_server_reply(reply),
                _ = tokio::time::sleep_until(wake), if due.is_some() => {}
                _ = tick.tick() => self.housekeeping(),
            }
            self.deliver_due().await;
        }
    }

    fn scheduler(&self) -> std::sync::MutexGuard<'_, Scheduler<Packet>> {
        self.shared.scheduler.lock().expect("scheduler lock")
    }

    /// Whole milliseconds since the start that have passed at `at` (for what is due by now).
    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.start).as_millis() as u64
    }

    /// An arrival's millisecond, rounded up: a datagram arriving at 100.7 ms cannot use the
    /// opportunity at 100 ms, and so is never delivered sooner than its arrival plus the delay.
    fn arrival_ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.start)
            .as_micros()
            .div_ceil(1000) as u64
    }

    fn log(&self, args: std::fmt::Arguments) {
        if self.verbose {
            eprintln!("netem: {args}");
        }
    }

    fn on_client_datagram(
        &mut self,
        from: SocketAddr,
        at: Instant,
        data: &[u8],
        reply_tx: &mpsc::Sender<Reply>,
    ) {
        let socket = match self.clients.get_mut(&from) {
            Some(c) => {
                c.last_seen = at;
                c.socket.clone()
            }
            None => match self.open_client(from, at, reply_tx) {
                Ok(s) => s,
                Err(e) => {
                    self.log(format_args!("cannot relay for {from}: {e}"));
                    self.shared.send_errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
        };
        let now = self.arrival_ms(at);
        let packet = Packet::Up {
            socket,
            data: data.to_vec(),
        };
        self.scheduler()
            .offer(Direction::Uplink, now, data.len(), packet);
    }

    /// A new client: an upstream socket connected to the server (so the kernel filters out
    /// anything not from the server, and the server sees one peer per client) and its reader.
    fn open_client(
        &mut self,
        client: SocketAddr,
        at: Instant,
        reply_tx: &mpsc::Sender<Reply>,
    ) -> Result<Arc<UdpSocket>, String> {
        if self.clients.len() >= MAX_CLIENTS
            && let Some(oldest) = self
                .clients
                .iter()
                .min_by_key(|(_, c)| c.last_seen)
                .map(|(a, _)| *a)
        {
            self.log(format_args!("too many clients: forgetting {oldest}"));
            self.clients.remove(&oldest);
        }
        let local: SocketAddr = if self.server.is_ipv4() {
            "127.0.0.1:0".parse().expect("literal")
        } else {
            "[::1]:0".parse().expect("literal")
        };
        let std_socket = std::net::UdpSocket::bind(local).map_err(|e| format!("bind: {e}"))?;
        std_socket
            .connect(self.server)
            .map_err(|e| format!("connect to {}: {e}", self.server))?;
        std_socket
            .set_nonblocking(true)
            .map_err(|e| format!("non-blocking: {e}"))?;
        let socket = Arc::new(UdpSocket::from_std(std_socket).map_err(|e| e.to_string())?);
        let reader = tokio::spawn(read_replies(socket.clone(), client, reply_tx.clone()));
        self.clients.insert(
            client,
            Client {
                socket: socket.clone(),
                reader,
                last_seen: at,
            },
        );
        self.shared
            .clients
            .store(self.clients.len(), Ordering::Relaxed);
        self.log(format_args!(
            "new client {client} (upstream {})",
            socket.local_addr().map_or("?".into(), |a| a.to_string())
        ));
        Ok(socket)
    }

    fn on_server_reply(&mut self, reply: Reply) {
        // A reply for a mapping expired meanwhile still goes back: the client address is known.
        if let Some(c) = self.clients.get_mut(&reply.client) {
            c.last_seen = c.last_seen.max(reply.at);
        }
        let now = self.arrival_ms(reply.at);
        let len = reply.data.len();
        let packet = Packet::Down {
            to: reply.client,
            data: reply.data,
        };
        self.scheduler()
            .offer(Direction::Downlink, now, len, packet);
    }

    /// Sends everything due by now, in delivery order.
    async fn deliver_due(&mut self) {
        let now = self.ms(Instant::now());
        loop {
            // The lock is not held across the send.
            let Some((_, packet)) = self.scheduler().pop_due(now) else {
                break;
            };
            let sent = match &packet {
                Packet::Up { socket, data } => socket.send(data).await,
                Packet::Down { to, data } => self.listen.send_to(data, *to).await,
            };
            if let Err(e) = sent {
                // Typically ECONNREFUSED: the server's port is closed (ICMP port unreachable).
                self.shared.send_errors.fetch_add(1, Ordering::Relaxed);
                self.log(format_args!("send error: {e}"));
            }
        }
    }

    /// Once a second: report the seconds of the trace that are complete and forget idle clients.
    fn housekeeping(&mut self) {
        let now = Instant::now();
        let closed = self.scheduler().close_seconds(self.ms(now));
        if self.verbose {
            for s in &closed {
                eprintln!("{}", format_second(s, self.clients.len()));
            }
        }
        let idle = self.idle_timeout;
        let before = self.clients.len();
        self.clients
            .retain(|_, c| now.saturating_duration_since(c.last_seen) < idle);
        if self.clients.len() != before {
            self.log(format_args!(
                "forgot {} idle client(s)",
                before - self.clients.len()
            ));
        }
        self.shared
            .clients
            .store(self.clients.len(), Ordering::Relaxed);
    }
}

/// Reads the server's replies to one client until the relay drops the mapping.
async fn read_replies(socket: Arc<UdpSocket>, client: SocketAddr, tx: mpsc::Sender<Reply>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match socket.recv(&mut buf).await {
            Ok(n) => {
                let reply = Reply {
                    client,
                    at: Instant::now(),
                    data: buf[..n].to_vec(),
                };
                if tx.send(reply).await.is_err() {
                    return; // the relay stopped
                }
            }
            // The server's port was closed when we sent (ICMP port unreachable reported on the
            // connected socket): nothing to read, keep listening in case it comes back.
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset
                ) => {}
            // Anything else is unexpected; pause so a persistent error cannot spin the CPU.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}
