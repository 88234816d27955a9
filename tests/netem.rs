//! `cbo netem` on real sockets on 127.0.0.1: the uplink delivers what the trace allows and drops
//! beyond the queue, adds the delay, maps replies back to each client, carries real QUIC to a
//! real cboserver at the speed of a real cellular trace, relays garbage as bytes, and the binary
//! refuses non-loopback addresses and stops cleanly on SIGTERM.
//!
//! The timing tests hold `SERIAL` so that a neighbour's inference does not steal their CPU.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use gstcbo::inference::{self, ModelConfig};
use gstcbo::netem::{self, IPV4_UDP_HEADER_BYTES, NetemConfig, NetemHandle};
use gstcbo::preprocess::Normalization;
use gstcbo::protocol::{Answer, RequestHeader};
use gstcbo::quic;
use gstcbo::server::{Server, ServerConfig};
use gstcbo::tls::{self, Trust};
use gstcbo::trace::{MTU, Trace};
use tokio::net::UdpSocket;
use tokio::time::Instant;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn relay(server: SocketAddr, trace: Trace, delay_ms: u64, queue_bytes: u64) -> NetemHandle {
    let mut config = NetemConfig::new("127.0.0.1:0".parse().unwrap(), server, trace);
    config.delay = Duration::from_millis(delay_ms);
    config.queue_bytes = queue_bytes;
    netem::start(config).await.unwrap()
}

async fn socket_to(peer: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.connect(peer).await.unwrap();
    s
}

async fn sink() -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let a = s.local_addr().unwrap();
    (s, a)
}

/// Receives on `socket` until `quiet` passes without a datagram: (arrival, bytes) each.
async fn collect(socket: &UdpSocket, quiet: Duration) -> Vec<(Instant, Vec<u8>)> {
    let mut buf = vec![0u8; 65_536];
    let mut got = Vec::new();
    while let Ok(Ok(n)) = tokio::time::timeout(quiet, socket.recv(&mut buf)).await {
        got.push((Instant::now(), buf[..n].to_vec()));
    }
    got
}

/// Polls `done` every 20 ms until it holds; panics with `what` after `limit`. For counters the
/// relay's own tasks update: the test waits for them, however long a loaded machine takes (a
/// safety net, never a speed check).
async fn settled(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < until, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Milliseconds from `from` to `to`.
fn ms(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1000.0
}

#[test]
fn uplink_throughput_follows_the_trace_and_the_queue_drops_the_excess() {
    let _serial = serial();
    runtime().block_on(async {
        let (sink, sink_addr) = sink().await;
        // 2 Mbit/s = 250 kB/s; offered: two 1200-byte datagrams every 5 ms (3.84 Mbit/s) for 2 s.
        let trace = Trace::constant(2e6);
        let queue = 30_000;
        let relay = relay(sink_addr, trace.clone(), 10, queue).await;
        let t0 = relay.started_at();
        let client = socket_to(relay.local_addr()).await;
        let receiver =
            tokio::spawn(async move { collect(&sink, Duration::from_millis(600)).await });
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        let mut seq = 0u32;
        while ms(t0, Instant::now()) < 2000.0 {
            tick.tick().await;
            for _ in 0..2 {
                let mut d = vec![0u8; 1200];
                d[..4].copy_from_slice(&seq.to_be_bytes());
                client.send(&d).await.unwrap();
                seq += 1;
            }
        }
        let sent_until = ms(t0, Instant::now());
        let got = receiver.await.unwrap();
        let stats = relay.stats();

        // Every datagram accounted for, FIFO, and the sink saw exactly what the relay delivered.
        assert_eq!(stats.uplink.packets_in, u64::from(seq), "{stats:?}");
        assert_eq!(
            stats.uplink.packets_in,
            stats.uplink.delivered_packets + stats.uplink.dropped_packets
        );
        assert_eq!(got.len() as u64, stats.uplink.delivered_packets);
        let seqs: Vec<u32> = got
            .iter()
            .map(|(_, d)| u32::from_be_bytes(d[..4].try_into().unwrap()))
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "reordered");
        // Nothing is lost before the queue is full: the first queue's worth all arrive.
        let fit = (queue / (1200 + IPV4_UDP_HEADER_BYTES)) as u32;
        assert_eq!(&seqs[..fit as usize], (0..fit).collect::<Vec<_>>());
        // Offered at about twice the capacity: about half is dropped.
        let dropped = stats.uplink.dropped_packets as f64 / f64::from(seq);
        assert!((0.3..0.7).contains(&dropped), "dropped fraction {dropped}");

        // Throughput at the sink over the saturated interval, on the link's own terms (IP
        // packets), against what the trace allows in the interval (shifted by the delay).
        let (a, b) = (300.0, sent_until.min(2000.0) - 100.0);
        let link_bytes: u64 = got
            .iter()
            .filter(|(t, _)| (a..b).contains(&ms(t0, *t)))
            .map(|(_, d)| d.len() as u64 + IPV4_UDP_HEADER_BYTES)
            .sum();
        let capacity = trace.capacity_bytes(a as u64 - 10, b as u64 - 10);
        let ratio = link_bytes as f64 / capacity as f64;
        assert!(
            (0.9..1.1).contains(&ratio),
            "delivered {link_bytes} B vs capacity {capacity} B in [{a}, {b}) ms"
        );
        // The relay's own per-second series says the same for the full second in the middle
        // (a datagram counts in the second its last byte crosses, so a second may show up to one
        // datagram more than its capacity).
        let s1 = stats.seconds[1];
        let r1 = s1.delivered_bytes as f64 / s1.capacity_bytes as f64;
        assert!((0.9..1.1).contains(&r1), "{s1:?}");
        assert!(
            s1.dropped_packets > 0 && s1.peak_backlog_bytes > 0,
            "{s1:?}"
        );
        eprintln!(
            "constant 2 Mbit/s: sink {:.3} Mbit/s ({:.1} % of capacity), {:.0} % dropped",
            link_bytes as f64 * 8.0 / (b - a) / 1000.0,
            ratio * 100.0,
            dropped * 100.0
        );
        relay.shutdown().await;
    });
}

#[test]
fn a_packet_on_an_idle_link_waits_for_the_next_opportunity_and_the_delay_each_way() {
    let _serial = serial();
    runtime().block_on(async {
        let (sink, sink_addr) = sink().await;
        // One opportunity every 6 ms or so; 40 ms each way.
        let trace = Trace::constant(2e6);
        let delay = 40.0;
        let relay = relay(sink_addr, trace.clone(), delay as u64, 150_000).await;
        let t0 = relay.started_at();
        let client = socket_to(relay.local_addr()).await;
        let mut buf = vec![0u8; 2048];
        for i in 0..5u8 {
            let sent = Instant::now();
            client.send(&[i; 100]).await.unwrap();
            let (n, upstream) = sink.recv_from(&mut buf).await.unwrap();
            let arrived = Instant::now();
            assert_eq!(&buf[..n], &[i; 100]);
            // The earliest the trace allows: its next opportunity, then the delay.
            let sent_ms = ms(t0, sent) as u64;
            let opportunity = trace.time_of(trace.first_at_or_after(sent_ms)) as f64;
            let expected = opportunity + delay;
            let up = ms(sent, arrived);
            let at = ms(t0, arrived);
            assert!(up >= delay, "uplink took {up:.1} ms, less than the delay");
            assert!(
                at >= expected - 1.0 && at <= expected + 30.0,
                "arrived at {at:.1} ms, expected {expected} (+30) ms"
            );
            // The reply comes back through the relay's listening address, after the delay.
            let echoed = Instant::now();
            sink.send_to(&[i ^ 0xff; 50], upstream).await.unwrap();
            // `client` is connected to the relay's address: the kernel only passes it datagrams
            // from there.
            let mut b = [0u8; 256];
            let n = tokio::time::timeout(Duration::from_secs(2), client.recv(&mut b))
                .await
                .expect("no reply through the relay")
                .unwrap();
            let down = ms(echoed, Instant::now());
            assert_eq!(&b[..n], &[i ^ 0xff; 50]);
            assert!(
                (delay..delay + 30.0).contains(&down),
                "downlink took {down:.1} ms"
            );
            eprintln!(
                "packet {i}: uplink {up:.1} ms (next opportunity at +{:.0} ms), downlink {down:.1} ms",
                opportunity - sent_ms as f64
            );
            // Let the link go idle again.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        relay.shutdown().await;
    });
}

#[test]
fn each_client_gets_its_own_upstream_socket_and_idle_ones_are_forgotten() {
    runtime().block_on(async {
        let (sink, sink_addr) = sink().await;
        let mut config = NetemConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            sink_addr,
            Trace::constant(12e6),
        );
        config.delay = Duration::from_millis(1);
        config.idle_timeout = Duration::from_millis(1500);
        let relay = netem::start(config).await.unwrap();
        let a = socket_to(relay.local_addr()).await;
        let b = socket_to(relay.local_addr()).await;
        let mut buf = [0u8; 64];
        let mut upstream = Vec::new();
        for (c, tag) in [(&a, b'a'), (&b, b'b'), (&a, b'a')] {
            c.send(&[tag]).await.unwrap();
            let (n, from) = sink.recv_from(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], &[tag]);
            upstream.push(from);
        }
        assert_ne!(
            upstream[0], upstream[1],
            "two clients, two upstream sockets"
        );
        assert_eq!(
            upstream[0], upstream[2],
            "one client keeps its upstream socket"
        );
        assert_eq!(relay.stats().clients, 2);
        // Replies go to the client behind each upstream socket, not to the other one. The last
        // datagram either mapping sees arrives after this moment.
        let quiet_from = Instant::now();
        sink.send_to(b"to b", upstream[1]).await.unwrap();
        sink.send_to(b"to a", upstream[0]).await.unwrap();
        let wait = Duration::from_secs(2);
        let n = tokio::time::timeout(wait, b.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"to b");
        let n = tokio::time::timeout(wait, a.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"to a");
        // Idle for longer than the timeout: both mappings go (checked once a second), and not
        // before the timeout.
        settled("idle clients forgotten", Duration::from_secs(30), || {
            relay.stats().clients == 0
        })
        .await;
        assert!(
            quiet_from.elapsed() >= Duration::from_millis(1500),
            "forgotten after {:?} idle",
            quiet_from.elapsed()
        );
        // A returning client gets a fresh mapping and is relayed again.
        a.send(b"again").await.unwrap();
        let (n, _) = sink.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"again");
        assert_eq!(relay.stats().clients, 1);
    });
}

#[test]
fn garbage_of_any_size_is_relayed_byte_for_byte_both_ways() {
    runtime().block_on(async {
        let (sink, sink_addr) = sink().await;
        let relay = relay(sink_addr, Trace::constant(12e6), 2, 200_000).await;
        let client = socket_to(relay.local_addr()).await;
        let mut buf = vec![0u8; 65_536];
        let wait = Duration::from_secs(5);
        let mut x = 0x2545_f491_u32;
        for len in [0usize, 1, 17, 1200, 1472, 9000, 65_507] {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            client.send(&bytes).await.unwrap();
            let (n, upstream) = tokio::time::timeout(wait, sink.recv_from(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("{len}-byte datagram not relayed"))
                .unwrap();
            assert_eq!(&buf[..n], &bytes[..], "{len}-byte datagram changed");
            let back: Vec<u8> = bytes.iter().rev().copied().collect();
            sink.send_to(&back, upstream).await.unwrap();
            let n = tokio::time::timeout(wait, client.recv(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("{len}-byte reply not relayed"))
                .unwrap();
            assert_eq!(&buf[..n], &back[..], "{len}-byte reply changed");
        }
        let stats = relay.stats();
        assert_eq!(stats.uplink.delivered_packets, 7);
        assert_eq!(stats.downlink.delivered_packets, 7);
        assert_eq!(
            stats.uplink.dropped_packets + stats.downlink.dropped_packets,
            0
        );
        relay.shutdown().await;
    });
}

#[test]
fn a_closed_server_port_does_not_stop_the_relay() {
    runtime().block_on(async {
        let (gone, gone_addr) = sink().await;
        drop(gone);
        let relay = relay(gone_addr, Trace::constant(12e6), 1, 150_000).await;
        let client = socket_to(relay.local_addr()).await;
        // Each send draws an ICMP port-unreachable that the upstream socket reports as errors on
        // its next send or receive.
        for round in 1..=3u64 {
            for _ in 0..10 {
                client.send(b"anyone?").await.unwrap();
            }
            settled("every datagram relayed", Duration::from_secs(10), || {
                let s = relay.stats();
                s.uplink.packets_in >= 10 * round && s.uplink.delivered_packets >= 10 * round
            })
            .await;
            let s = relay.stats();
            assert_eq!(s.uplink.packets_in, 10 * round, "{s:?}");
            assert_eq!(s.uplink.delivered_packets, 10 * round, "{s:?}");
        }
        tokio::time::timeout(Duration::from_secs(2), relay.shutdown())
            .await
            .expect("shutdown hangs");
    });
}

// ---- real QUIC through the relay ----

const TOKEN: &str = "netem-test-token";

struct QuicFixture {
    server: Server,
    trust: Trust,
    /// Real JPEGs of the bottle clip at 360 px (about 14 kB), and their request headers.
    frames: Vec<(RequestHeader, Vec<u8>)>,
    _dir: tempfile::TempDir,
}

async fn quic_fixture() -> QuicFixture {
    common::init();
    let frames = gstcbo::tools::loadgen::encode_clip(&common::bottle_clip(), 40, 360, 85)
        .unwrap()
        .into_iter()
        .step_by(10)
        .enumerate()
        .map(|(i, f)| {
            let header = RequestHeader {
                frame_id: i as u64,
                width: f.width,
                height: f.height,
                short_side: f.width.min(f.height),
                deadline_ms: 0,
                jpeg_len: 0,
                top_k: 5,
            };
            (header, f.bytes)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let identity = tls::load_or_create_self_signed(dir.path()).unwrap();
    let trust = Trust::Fingerprint(tls::fingerprint(&identity.0[0]));
    let model = ModelConfig {
        model: inference::models_dir().join(inference::DEFAULT_SERVER_MODEL),
        normalization: Normalization {
            mean: [127.0; 3],
            std: [128.0; 3],
        },
        top_k: 5,
        ..ModelConfig::default()
    };
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), model, identity);
    config.token = Some(TOKEN.into());
    config.decode_threads = 1;
    let server = Server::start(config).await.unwrap();
    QuicFixture {
        server,
        trust,
        frames,
        _dir: dir,
    }
}

impl QuicFixture {
    async fn session(&self, addr: SocketAddr) -> (quinn::Endpoint, quic::Session) {
        let endpoint = quic::client_endpoint().unwrap();
        let session = quic::connect(
            &endpoint,
            addr,
            "localhost",
            tls::client_config(&self.trust).unwrap(),
            TOKEN,
            "netem-test",
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|e| panic!("connect via {addr}: {e}"));
        (endpoint, session)
    }

    /// Sends every frame once, one at a time: the answers and each request's latency.
    async fn requests(&self, session: &quic::Session) -> Vec<(Answer, Instant, Instant)> {
        let mut out = Vec::new();
        for (header, jpeg) in &self.frames {
            let start = Instant::now();
            let answer = quic::request(&session.connection, header, jpeg, 64 * 1024)
                .await
                .unwrap();
            out.push((answer, start, Instant::now()));
        }
        out
    }
}

#[test]
fn real_quic_through_real_cellular_traces() {
    let _serial = serial();
    let traces = common::assets().join("traces");
    runtime().block_on(async {
        let fx = quic_fixture().await;
        let server = fx.server.local_addr();
        let (_e, direct) = fx.session(server).await;
        // Warm up the model, then the loopback baseline.
        fx.requests(&direct).await;
        let base = fx.requests(&direct).await;
        let base_ms: Vec<f64> = base.iter().map(|(_, s, e)| ms(*s, *e)).collect();
        let mut att = Vec::new();

        let delay = 20u64;
        for name in ["Verizon-LTE-short.up", "ATT-LTE-driving.up"] {
            let trace = Trace::load(&traces.join(name)).unwrap();
            let relay = relay(server, trace.clone(), delay, 150_000).await;
            let t0 = relay.started_at();
            let (_e, session) = fx.session(relay.local_addr()).await;
            let got = fx.requests(&session).await;
            for (i, ((answer, start, end), (want, _, _))) in got.iter().zip(&base).enumerate() {
                // The same bytes reach the same server: the same answer.
                assert_eq!(answer.frame_id, want.frame_id);
                assert_eq!(answer.class_ids, want.class_ids, "{name} frame {i}");
                assert!((answer.scores[0] - want.scores[0]).abs() < 1e-4);
                // No faster than the trace can carry the JPEG (ignoring every header), plus the
                // delay each way.
                let jpeg = fx.frames[i].1.len() as u64;
                let from = ms(t0, *start) as u64;
                let first = trace.first_at_or_after(from);
                let last_byte = trace.time_of(first + jpeg.div_ceil(MTU) - 1);
                let floor = (last_byte - from + 2 * delay) as f64;
                let took = ms(*start, *end);
                assert!(
                    took >= floor - 2.0 && took <= floor + base_ms[i] + 2000.0,
                    "{name} frame {i} ({jpeg} B) took {took:.0} ms; the link needs {floor} ms"
                );
                eprintln!(
                    "{name}: frame {i} ({jpeg} B) {took:.0} ms (link floor {floor} ms, loopback {:.0} ms)",
                    base_ms[i]
                );
                if name.starts_with("ATT") {
                    att.push((jpeg, took, floor));
                }
            }
            let stats = relay.stats();
            let jpeg_bytes: u64 = fx.frames.iter().map(|(_, j)| j.len() as u64).sum();
            assert!(stats.uplink.delivered_bytes >= jpeg_bytes, "{stats:?}");
            assert!(stats.downlink.delivered_packets > 0);
            session.connection.close(0u32.into(), b"done");
            relay.shutdown().await;
        }
        // What a request costs without the link: the quickest of the loopback requests before and
        // after (a busy CPU only adds to it, and the ATT requests ran in between).
        let after = fx.requests(&direct).await;
        let loopback = base
            .iter()
            .chain(&after)
            .map(|(_, s, e)| ms(*s, *e))
            .fold(f64::INFINITY, f64::min);
        // A big JPEG's transfer and the server's work add up: the link's floor for that request
        // (from where in the trace it started, which moves with the machine's speed: 99 ms for
        // 14 kB once, not a fixed 100) plus the quickest request without the link.
        let big: Vec<_> = att.iter().filter(|(jpeg, _, _)| *jpeg >= 13_000).collect();
        assert!(!big.is_empty(), "no JPEG big enough: {att:?}");
        for (jpeg, took, floor) in big {
            assert!(
                *took >= loopback + floor - 5.0,
                "{jpeg} B over a 0.83 Mbit/s link took only {took:.0} ms (link floor {floor}, \
                 loopback {loopback:.0})"
            );
        }
        fx.server.shutdown().await.unwrap();
    });
}

// ---- the binary ----

fn cbo() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cbo"))
}

#[test]
fn the_binary_refuses_non_loopback_addresses() {
    for args in [
        ["--server", "192.0.2.7:4433", "--listen", "127.0.0.1:0"],
        ["--server", "127.0.0.1:4433", "--listen", "0.0.0.0:0"],
    ] {
        let out = cbo()
            .arg("netem")
            .args(args)
            .args(["--uplink-mbps", "2"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not a loopback address"), "{err}");
    }
}

#[test]
fn the_binary_relays_reports_and_stops_on_sigterm() {
    let target = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    target
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let server = target.local_addr().unwrap();
    let trace = common::assets().join("traces/TMobile-LTE-short.up");
    let mut child = cbo()
        .args([
            "netem",
            "--listen",
            "127.0.0.1:0",
            "--delay-ms",
            "5",
            "--verbose",
        ])
        .arg("--server")
        .arg(server.to_string())
        .arg("--trace")
        .arg(&trace)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let rest = line
        .strip_prefix("relaying on ")
        .unwrap_or_else(|| panic!("unexpected first line '{line}'"));
    let (listen, to) = rest.trim().split_once(" -> ").unwrap();
    assert_eq!(to, server.to_string());
    let listen: SocketAddr = listen.parse().unwrap();
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client.send_to(b"hello", listen).unwrap();
    let mut buf = [0u8; 16];
    let n = target.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello");
    // Its standard error, read as it comes: the first one-second report is awaited, not slept
    // for.
    let err = Arc::new(Mutex::new(String::new()));
    let reader = {
        let err = err.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut e = err.lock().unwrap();
                e.push_str(&line);
                e.push('\n');
            }
        })
    };
    assert!(
        common::settles(Duration::from_secs(60), || err
            .lock()
            .unwrap()
            .contains("netem: t=0s uplink delivered")),
        "no one-second report: {}",
        err.lock().unwrap()
    );
    // SAFETY: signals the child this test spawned.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    // The child is gone: its standard error ends, and the reader with it.
    reader.join().unwrap();
    let err = err.lock().unwrap().clone();
    assert!(status.success(), "{status}: {err}");
    assert!(err.contains("SIGTERM"), "{err}");
    assert!(err.contains("netem: t=0s uplink delivered"), "{err}");
    assert!(err.contains("uplink 1 packets in, 1 delivered"), "{err}");
}

/// Saturates the uplink of a relay on `trace` for `seconds` with 1200-byte datagrams offered at
/// 1.3 times the trace's busiest second: (link bytes the sink got, trace capacity) over the
/// saturated interval, and the fraction dropped.
async fn saturate(trace: &Trace, seconds: u64, queue: u64) -> (u64, u64, f64) {
    let (sink, sink_addr) = sink().await;
    let delay = 20;
    let peak = (0..seconds)
        .map(|s| trace.capacity_bytes(s * 1000, (s + 1) * 1000))
        .max()
        .unwrap();
    let per_ms = peak as f64 * 1.3 / 1000.0 / (1200 + IPV4_UDP_HEADER_BYTES) as f64;
    let relay = relay(sink_addr, trace.clone(), delay, queue).await;
    let t0 = relay.started_at();
    let client = socket_to(relay.local_addr()).await;
    // Quiet for longer than any gap in the traces (ATT's first opportunity is at 831 ms).
    let receiver = tokio::spawn(async move { collect(&sink, Duration::from_millis(2000)).await });
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut sent = 0u64;
    let end = seconds as f64 * 1000.0;
    while ms(t0, Instant::now()) < end {
        tick.tick().await;
        // Keep the offered average even when the runtime wakes late.
        let want = (ms(t0, Instant::now()) * per_ms) as u64;
        while sent < want {
            client.send(&[7u8; 1200]).await.unwrap();
            sent += 1;
        }
    }
    let got = receiver.await.unwrap();
    let stats = relay.stats();
    relay.shutdown().await;
    let (a, b) = (1000.0, end - 200.0);
    let link_bytes: u64 = got
        .iter()
        .filter(|(t, _)| (a..b).contains(&ms(t0, *t)))
        .map(|(_, d)| d.len() as u64 + IPV4_UDP_HEADER_BYTES)
        .sum();
    let capacity = trace.capacity_bytes(a as u64 - delay, b as u64 - delay);
    let dropped = stats.uplink.dropped_packets as f64 / stats.uplink.packets_in as f64;
    (link_bytes, capacity, dropped)
}

/// The three real traces, 10 s each (about 35 s): `cargo test --test netem -- --ignored`.
#[test]
#[ignore = "a 35 s measurement; run on demand"]
fn measure_real_trace_throughput() {
    let _serial = serial();
    let traces = common::assets().join("traces");
    runtime().block_on(async {
        for name in [
            "ATT-LTE-driving.up",
            "Verizon-LTE-short.up",
            "TMobile-LTE-short.up",
        ] {
            let trace = Trace::load(&traces.join(name)).unwrap();
            let (got, capacity, dropped) = saturate(&trace, 10, 150_000).await;
            let ratio = got as f64 / capacity as f64;
            eprintln!(
                "{name}: delivered {:.2} Mbit/s vs trace {:.2} Mbit/s over [1, 9.8) s ({:.1} %), \
                 {:.0} % of offered dropped; trace mean {:.2} Mbit/s",
                got as f64 * 8.0 / 8.8e6,
                capacity as f64 * 8.0 / 8.8e6,
                ratio * 100.0,
                dropped * 100.0,
                trace.mean_bps() / 1e6
            );
            assert!((0.9..1.1).contains(&ratio), "{name}: {ratio}");
        }
    });
}
