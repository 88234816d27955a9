//! The server's Prometheus metrics (the `prometheus-client` crate), served at `/metrics` by
//! [`super::ops`]. Every counter is recorded where the event happens: request outcomes and
//! latency in the connection tasks, batches and backend calls on the model thread.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets, linear_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    /// `ok`, or the error code a request was answered with (`timeout`, `overloaded`, ...), or
    /// `abandoned` when the client reset the stream before an answer.
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: String,
}

fn latency_buckets() -> Histogram {
    // 1 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

pub struct Metrics {
    registry: Registry,
    requests: Family<Outcome, Counter>,
    request_seconds: Histogram,
    batch_size: Histogram,
    connections: Gauge,
    clients_accepted: Counter,
    connections_refused: Counter,
    in_flight: Gauge,
    backend_seconds: Histogram,
    backend_errors: Family<Kind, Counter>,
    dropped: Counter,
    backend_ready: Gauge,
}

/// Holds one unit of a gauge (a connection, a request) while it lives.
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    fn enter(gauge: &Gauge) -> Self {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    /// `max_batch` sets the batch-size histogram's buckets (one per size).
    pub fn new(max_batch: usize) -> Arc<Metrics> {
        let mut registry = Registry::default();
        let requests = Family::<Outcome, Counter>::default();
        registry.register(
            "cboserver_requests",
            "Requests answered, by outcome: ok or the error code",
            requests.clone(),
        );
        let request_seconds = latency_buckets();
        registry.register(
            "cboserver_request_duration_seconds",
            "Time from a request stream's arrival to its answer",
            request_seconds.clone(),
        );
        let batch_size = Histogram::new(linear_buckets(1.0, 1.0, max_batch.clamp(1, 256) as u16));
        registry.register(
            "cboserver_batch_size",
            "Images per batch handed to the backend",
            batch_size.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "cboserver_connections",
            "Client connections open (handshakes included)",
            connections.clone(),
        );
        let clients_accepted = Counter::default();
        registry.register(
            "cboserver_connections_accepted",
            "Client connections whose hello was accepted (authenticated), since the start",
            clients_accepted.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "cboserver_connections_refused",
            "Connection attempts refused before their hello (too many awaiting their hello, from one address or in all), since the start",
            connections_refused.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "cboserver_requests_in_flight",
            "Request streams in progress",
            in_flight.clone(),
        );
        let backend_seconds = latency_buckets();
        registry.register(
            "cboserver_backend_duration_seconds",
            "Time of one backend call (a batch)",
            backend_seconds.clone(),
        );
        let backend_errors = Family::<Kind, Counter>::default();
        registry.register(
            "cboserver_backend_errors",
            "Failed backend calls, by kind",
            backend_errors.clone(),
        );
        let dropped = Counter::default();
        registry.register(
            "cboserver_dropped_before_backend",
            "Requests whose deadline passed (or whose client left) while queued: never decoded or sent to the backend",
            dropped.clone(),
        );
        let backend_ready = Gauge::default();
        registry.register(
            "cboserver_backend_ready",
            "1 when the model or backend takes work",
            backend_ready.clone(),
        );
        Arc::new(Metrics {
            registry,
            requests,
            request_seconds,
            batch_size,
            connections,
            clients_accepted,
            connections_refused,
            in_flight,
            backend_seconds,
            backend_errors,
            dropped,
            backend_ready,
        })
    }

    /// A request answered (`outcome` "ok" or an error code's name) or abandoned.
    pub fn request(&self, outcome: &str, took: Duration) {
        self.requests
            .get_or_create(&Outcome {
                outcome: outcome.to_string(),
            })
            .inc();
        self.request_seconds.observe(took.as_secs_f64());
    }

    /// Counts a connection until the guard drops.
    pub fn connection(&self) -> GaugeGuard {
        GaugeGuard::enter(&self.connections)
    }

    /// A connection's hello was accepted.
    pub fn connection_accepted(&self) {
        self.clients_accepted.inc();
    }

    /// A connection attempt was refused before its hello.
    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// Connection attempts refused before their hello, since the start.
    pub fn connections_refused(&self) -> u64 {
        self.connections_refused.get()
    }

    /// Counts a request stream in progress until the guard drops.
    pub fn request_in_flight(&self) -> GaugeGuard {
        GaugeGuard::enter(&self.in_flight)
    }

    /// A batch of `n` images went to the backend and took `took`.
    pub fn batch(&self, n: usize, took: Duration) {
        self.batch_size.observe(n as f64);
        self.backend_seconds.observe(took.as_secs_f64());
    }

    pub fn backend_error(&self, kind: &str) {
        self.backend_errors
            .get_or_create(&Kind {
                kind: kind.to_string(),
            })
            .inc();
    }

    pub fn dropped(&self, n: usize) {
        self.dropped.inc_by(n as u64);
    }

    /// The text exposition format, with the readiness as of now.
    pub fn encode(&self, ready: bool) -> String {
        self.backend_ready.set(i64::from(ready));
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
