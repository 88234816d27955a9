//! The offload client inside `cbofilter`: uses a QUIC connection to `cboserver` (its own, or by
//! default the one every element of the process pointing at the same server shares, see
//! [`super::link`]), encodes offloaded frames off the streaming thread, sends each on its own
//! stream and reports the answer through a completion callback.
//!
//! Threads: frames are rescaled and JPEG-encoded on one encoder thread per element (the
//! streaming thread only hands over a buffer reference); QUIC runs on a tokio runtime shared by
//! every element of the process (see gst-plugins-rs `net/quinn` for the same pattern). The
//! link's manager reconnects with exponential backoff (0.2 s doubling to 5 s); each client
//! watches the link and reports each state change once through [`ClientEvent`]s, which the
//! element turns into warnings. Counters, the uplink estimate and the in-flight count are the
//! element's own even on a shared connection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::link::{self, Dial, Link, LinkKey, LinkUser};
use crate::jpeg::FrameEncoder;
use crate::protocol::{Answer, RequestHeader};
use crate::quic;
use crate::tls::{self, Trust};

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port`.
    pub server: String,
    pub trust: Trust,
    pub token: String,
    pub jpeg_quality: u32,
    pub top_k: u8,
    /// Use the process's connection to this server (with these trust settings and token),
    /// shared with the other elements, rather than one of this client's own.
    pub shared_connection: bool,
}

/// Connection state changes, for the element's log and warnings.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    Connected {
        model: String,
        /// The connection's minimum RTT when it came up (ms; quinn's, seeded by the
        /// handshake), for the planner, which otherwise learns the path's RTT only with the
        /// first answer.
        min_rtt_ms: Option<f64>,
    },
    Disconnected {
        reason: String,
    },
    /// A connection attempt failed; sent once per distinct reason.
    ConnectFailed {
        reason: String,
    },
}

/// One frame to offload.
pub struct OffloadJob {
    pub frame_id: u64,
    pub buffer: gst::Buffer,
    pub info: gst_video::VideoInfo,
    pub short_side: u32,
    /// The frame leaves the element at this time; the request is abandoned then.
    pub deadline: Instant,
}

/// A server answer with what it cost.
#[derive(Debug, Clone)]
pub struct ServerResult {
    pub answer: Answer,
    /// Send → answer.
    pub latency: Duration,
    pub jpeg_bytes: usize,
    pub short_side: u32,
    /// The path's round-trip time without queueing when the answer arrived (the planner's RTT
    /// sample): quinn's minimum RTT. Its smoothed RTT includes the time our own packets waited
    /// at the bottleneck (hundreds of ms on a slow uplink), which the planner already counts as
    /// upload time; fed that, the element planned with ~0.5 s less than it had and sent almost
    /// nothing on a 0.7 Mbit/s trace where the simulation, whose RTT is the path's, sent 10 %.
    pub rtt: Duration,
    /// quinn's congestion window when the answer arrived: how much of a request the transport
    /// had handed to the network at once (what a stream reset at the deadline cannot withdraw).
    pub cwnd_bytes: u64,
}

/// Why the client could not start, or a frame got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("server '{server}' {problem}")]
    Address { server: String, problem: String },
    #[error("cannot start the offload runtime: {0}")]
    Runtime(String),
    /// The trust settings (certificate file, fingerprint) or the QUIC endpoint.
    #[error("{0}")]
    Setup(String),
    #[error("cannot start the encoder thread: {0}")]
    Thread(String),
    #[error("offload client stopped")]
    Stopped,
    #[error("deadline passed before encoding")]
    DeadlineBeforeEncoding,
    #[error("not connected")]
    NotConnected,
    #[error("cannot map the frame: {0}")]
    Map(String),
    #[error("{0}")]
    Encode(String),
    /// The request failed on the connection or was refused by the server.
    #[error("{0}")]
    Request(String),
    #[error("no answer before the deadline")]
    Timeout,
}

pub type Completion = Box<dyn FnOnce(Result<ServerResult, ClientError>) + Send>;

/// Counters for the element's `stats` property.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub connected: bool,
    pub offloaded: u64,
    pub answered: u64,
    pub failed: u64,
    pub bytes_sent: u64,
    pub reconnects: u64,
    pub rtt_us: u64,
    /// The path's RTT without queueing (quinn's minimum RTT).
    pub min_rtt_us: u64,
    /// quinn's congestion window now.
    pub cwnd_bytes: u64,
    /// Smoothed uplink estimate from acknowledged requests, bits/s (0 until the first answer).
    pub uplink_bps: f64,
    /// Smoothed rescale + JPEG encode time per frame.
    pub encode_us: f64,
    /// Elements using this element's connection, this one included (1 when not shared).
    pub connection_users: usize,
}

struct Shared {
    link: Arc<Link>,
    in_flight: AtomicUsize,
    stats: Mutex<Stats>,
}

impl Shared {
    fn connection(&self) -> Option<quinn::Connection> {
        self.link.connection()
    }
}

/// The process-wide runtime for QUIC I/O.
fn runtime() -> Result<&'static tokio::runtime::Runtime, ClientError> {
    static RT: OnceLock<Result<tokio::runtime::Runtime, ClientError>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cbo-offload")
            .enable_all()
            .build()
            .map_err(|e| ClientError::Runtime(e.to_string()))
    })
    .as_ref()
    .map_err(Clone::clone)
}

pub struct OffloadClient {
    shared: Arc<Shared>,
    /// This element's place among the link's users, given up when the client stops.
    link: LinkUser,
    jobs: Option<mpsc::Sender<(OffloadJob, Completion)>>,
    encoder_thread: Option<std::thread::JoinHandle<()>>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

/// Splits `host:port` (IPv6 as `[::1]:4433`) into the TLS server name and the whole address.
fn server_name(server: &str) -> Result<String, ClientError> {
    let bad = |problem: String| ClientError::Address {
        server: server.to_string(),
        problem,
    };
    let (host, port) = server
        .rsplit_once(':')
        .ok_or_else(|| bad("is not host:port".into()))?;
    port.parse::<u16>()
        .map_err(|_| bad(format!("has an invalid port '{port}'")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("has no host".into()));
    }
    Ok(host.to_string())
}

/// Checks what can be wrong with the offload settings before any connection: `server` must be
/// host:port, and `trust` must give a usable TLS configuration (a readable PEM file with
/// certificates, or a well-formed fingerprint). These are configuration mistakes, unlike a
/// server that cannot be reached.
pub fn check_settings(server: &str, trust: &Trust) -> Result<(), ClientError> {
    server_name(server)?;
    tls::client_config(trust).map_err(ClientError::Setup)?;
    Ok(())
}

impl OffloadClient {
    /// Starts connecting in the background (or joins the shared connection);
    /// `events` is called from the runtime's threads.
    pub fn start(
        config: ClientConfig,
        events: Arc<dyn Fn(ClientEvent) + Send + Sync>,
    ) -> Result<Self, ClientError> {
        let host = server_name(&config.server)?;
        let rt = runtime()?;
        let key = LinkKey::new(&config.server, &config.trust, &config.token);
        let link = link::acquire(rt, key, config.shared_connection, || {
            Ok(Dial {
                host,
                tls: tls::client_config(&config.trust)?,
                client_name: "cbofilter",
            })
        })
        .map_err(ClientError::Setup)?;
        let encoder = FrameEncoder::new(config.jpeg_quality)
            .map_err(|e| ClientError::Encode(e.to_string()))?;
        let shared = Arc::new(Shared {
            link: link.clone(),
            in_flight: AtomicUsize::new(0),
            stats: Mutex::new(Stats::default()),
        });
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let watched = shared.clone();
        rt.spawn(link::watch_for(
            link.subscribe(),
            shutdown_rx,
            move |watcher, changes| {
                watched.stats.lock().unwrap().reconnects = watcher.reconnects;
                for e in changes {
                    events(e);
                }
            },
        ));
        let (jobs, rx) = mpsc::channel::<(OffloadJob, Completion)>();
        let thread_shared = shared.clone();
        let top_k = config.top_k;
        let stopping = shutdown.subscribe();
        let encoder_thread = std::thread::Builder::new()
            .name("cbo-encode".into())
            .spawn(move || {
                encode_loop(
                    rx,
                    encoder,
                    thread_shared,
                    rt.handle().clone(),
                    top_k,
                    stopping,
                )
            })
            .map_err(|e| ClientError::Thread(e.to_string()))?;
        Ok(Self {
            shared,
            link: link.enter(),
            jobs: Some(jobs),
            encoder_thread: Some(encoder_thread),
            shutdown,
        })
    }

    pub fn connected(&self) -> bool {
        self.shared.connection().is_some()
    }

    /// Offloads submitted and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    pub fn stats(&self) -> Stats {
        let mut s = self.shared.stats.lock().unwrap().clone();
        if let Some(c) = self.shared.connection() {
            s.connected = true;
            s.rtt_us = c.rtt().as_micros() as u64;
            let path = c.stats().path;
            s.min_rtt_us = path.min_rtt.as_micros() as u64;
            s.cwnd_bytes = path.cwnd;
        }
        s.connection_users = self.link.link().users();
        s
    }

    /// Queues a frame for encoding and sending. `done` is called exactly once, from another
    /// thread, with the answer or the reason there is none.
    pub fn submit(&self, job: OffloadJob, done: Completion) {
        self.shared.in_flight.fetch_add(1, Ordering::SeqCst);
        let done = counted(self.shared.clone(), done);
        match &self.jobs {
            Some(tx) => {
                if let Err(mpsc::SendError((_, done))) = tx.send((job, done)) {
                    done(Err(ClientError::Stopped));
                }
            }
            None => done(Err(ClientError::Stopped)),
        }
    }
}

/// Wraps a completion so the in-flight count drops when it runs.
fn counted(shared: Arc<Shared>, done: Completion) -> Completion {
    Box::new(move |result| {
        shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        done(result)
    })
}

impl Drop for OffloadClient {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        // Closing the job channel ends the encoder thread after the job it is on.
        self.jobs = None;
        if let Some(t) = self.encoder_thread.take() {
            let _ = t.join();
        }
        // The connection closes when its last user lets go of the link (the shared one may
        // serve other elements still).
    }
}

fn encode_loop(
    rx: mpsc::Receiver<(OffloadJob, Completion)>,
    mut encoder: FrameEncoder,
    shared: Arc<Shared>,
    rt: tokio::runtime::Handle,
    top_k: u8,
    stopping: tokio::sync::watch::Receiver<bool>,
) {
    while let Ok((job, done)) = rx.recv() {
        if Instant::now() >= job.deadline {
            done(Err(ClientError::DeadlineBeforeEncoding));
            continue;
        }
        let Some(connection) = shared.connection() else {
            done(Err(ClientError::NotConnected));
            continue;
        };
        let t0 = Instant::now();
        let encoded = {
            match gst_video::VideoFrameRef::from_buffer_ref_readable(job.buffer.as_ref(), &job.info)
            {
                Ok(frame) => encoder
                    .encode(&frame, job.short_side)
                    .map_err(|e| ClientError::Encode(e.to_string())),
                Err(e) => Err(ClientError::Map(e.to_string())),
            }
        };
        // The buffer reference goes now, so the frame stays cheap to make writable downstream.
        drop(job.buffer);
        let encoded = match encoded {
            Ok(e) => e,
            Err(e) => {
                done(Err(e));
                continue;
            }
        };
        let encode_us = t0.elapsed().as_micros() as f64;
        {
            let mut s = shared.stats.lock().unwrap();
            s.encode_us = ewma(s.encode_us, encode_us, 0.1);
            s.offloaded += 1;
            s.bytes_sent += encoded.bytes.len() as u64;
        }
        let header = RequestHeader {
            frame_id: job.frame_id,
            width: encoded.width,
            height: encoded.height,
            short_side: job.short_side,
            deadline_ms: job
                .deadline
                .saturating_duration_since(Instant::now())
                .as_millis() as u32,
            jpeg_len: encoded.bytes.len() as u32,
            top_k,
        };
        let shared = shared.clone();
        let deadline = tokio::time::Instant::from_std(job.deadline);
        let (mut stopping, stop_flag) = (stopping.clone(), stopping.clone());
        rt.spawn(async move {
            let sent = Instant::now();
            // At the deadline, or when the element stops, the request is cancelled (its stream
            // reset), so what is left of it stops using the uplink (which, on a shared
            // connection, other elements still use).
            let stopped = async move {
                let _ = stopping.wait_for(|s| *s).await;
            };
            let result = quic::request_until_or(
                &connection,
                &header,
                &encoded.bytes,
                64 * 1024,
                deadline,
                stopped,
            )
            .await
            .ok_or(());
            let latency = sent.elapsed();
            let mut s = shared.stats.lock().unwrap();
            match result {
                Ok(Ok(answer)) => {
                    s.answered += 1;
                    // Upload time ≈ latency − server time − one RTT (the answer's way back and
                    // the stream open): a coarse uplink estimate the policy refines.
                    let server = Duration::from_micros(
                        answer.decode_us + answer.queue_us + answer.inference_us,
                    );
                    let upload = latency
                        .saturating_sub(server)
                        .saturating_sub(connection.rtt())
                        .max(Duration::from_millis(1));
                    let bps = (encoded.bytes.len() as f64 * 8.0) / upload.as_secs_f64();
                    s.uplink_bps = ewma(s.uplink_bps, bps, 0.2);
                    drop(s);
                    // quinn's minimum RTT excludes ack delay and is seeded by the handshake.
                    let path = connection.stats().path;
                    done(Ok(ServerResult {
                        answer,
                        latency,
                        jpeg_bytes: encoded.bytes.len(),
                        short_side: header.short_side,
                        rtt: path.min_rtt,
                        cwnd_bytes: path.cwnd,
                    }));
                }
                Ok(Err(e)) => {
                    s.failed += 1;
                    drop(s);
                    done(Err(ClientError::Request(e.to_string())));
                }
                Err(_) => {
                    s.failed += 1;
                    drop(s);
                    let stopped = *stop_flag.borrow();
                    done(Err(if stopped {
                        ClientError::Stopped
                    } else {
                        ClientError::Timeout
                    }));
                }
            }
        });
    }
}

fn ewma(old: f64, new: f64, alpha: f64) -> f64 {
    if old == 0.0 {
        new
    } else {
        old + alpha * (new - old)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        assert_eq!(server_name("127.0.0.1:4433").unwrap(), "127.0.0.1");
        assert_eq!(server_name("localhost:1").unwrap(), "localhost");
        assert_eq!(server_name("[::1]:4433").unwrap(), "::1");
        assert!(server_name("localhost").is_err());
        assert!(server_name("localhost:http").is_err());
        assert!(server_name(":4433").is_err());
    }

    #[test]
    fn ewma_starts_at_the_first_sample() {
        assert_eq!(ewma(0.0, 10.0, 0.2), 10.0);
        assert_eq!(ewma(10.0, 20.0, 0.5), 15.0);
    }
}
