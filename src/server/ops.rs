//! The operations endpoint (`--metrics ADDR`): a minimal HTTP/1.1 server with three read-only
//! pages, each answered and the connection closed:
//! - `/metrics`: Prometheus text format ([`super::metrics`]);
//! - `/healthz`: 200 while the process serves;
//! - `/readyz`: 200 when the model or backend takes work, 503 (with the reason) when not.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::backend::Readiness;
use super::metrics::Metrics;

/// Largest request head read; scrapers send a few hundred bytes.
const MAX_HEAD: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What a request gets: status line, content type, body.
#[derive(Debug, PartialEq, Eq)]
pub struct Page {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

fn text(status: u16, body: impl Into<String>) -> Page {
    Page {
        status,
        content_type: "text/plain; charset=utf-8",
        body: body.into(),
    }
}

/// The page for a request head (pure: the caller reads and writes the socket).
pub fn route(head: &str, metrics: &Metrics, readiness: &Readiness) -> Page {
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" && method != "HEAD" {
        return text(405, "only GET\n");
    }
    let path = target.split('?').next().unwrap_or("");
    match path {
        "/metrics" => Page {
            status: 200,
            content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body: metrics.encode(readiness.is_ready()),
        },
        "/healthz" => text(200, "ok\n"),
        "/readyz" if readiness.is_ready() => text(200, "ready\n"),
        "/readyz" => text(503, format!("not ready: {}\n", readiness.reason())),
        _ => text(404, "not found: try /metrics, /healthz or /readyz\n"),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Serves until the task is aborted.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, readiness: Arc<Readiness>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors and the like: wait instead of spinning.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (metrics, readiness) = (metrics.clone(), readiness.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(READ_TIMEOUT, answer(stream, &metrics, &readiness)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, metrics: &Metrics, readiness: &Readiness) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let page = route(&head, metrics, readiness);
    let body = if head.starts_with("HEAD ") {
        ""
    } else {
        page.body.as_str()
    };
    let response = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        page.status,
        reason(page.status),
        page.content_type,
        page.body.len(),
        body
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_readiness_and_metrics() {
        let metrics = Metrics::new(4);
        let readiness = Readiness::new("connecting to grpc://127.0.0.1:1");
        metrics.request("ok", Duration::from_millis(3));
        metrics.request("overloaded", Duration::from_millis(1));

        let ready = route("GET /readyz HTTP/1.1\r\n\r\n", &metrics, &readiness);
        assert_eq!(ready.status, 503);
        assert!(ready.body.contains("connecting to grpc://127.0.0.1:1"));
        readiness.set_ready();
        assert_eq!(
            route("GET /readyz HTTP/1.1\r\n", &metrics, &readiness).status,
            200
        );
        assert_eq!(
            route("GET /healthz HTTP/1.0\r\n", &metrics, &readiness).status,
            200
        );
        assert_eq!(
            route("GET /nope HTTP/1.1\r\n", &metrics, &readiness).status,
            404
        );
        assert_eq!(
            route("POST /metrics HTTP/1.1\r\n", &metrics, &readiness).status,
            405
        );

        let page = route("GET /metrics?x=1 HTTP/1.1\r\n", &metrics, &readiness);
        assert_eq!(page.status, 200);
        assert!(
            page.body
                .contains("cboserver_requests_total{outcome=\"ok\"} 1")
        );
        assert!(
            page.body
                .contains("cboserver_requests_total{outcome=\"overloaded\"} 1")
        );
        assert!(page.body.contains("cboserver_backend_ready 1"));
        assert!(
            page.body
                .contains("cboserver_request_duration_seconds_count 2")
        );
        assert!(page.body.ends_with("# EOF\n"));
    }
}
