//! A real `cboserver` child process on 127.0.0.1 for the tests that offload.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::repo;

/// A `cboserver` child process with a self-signed certificate (and a token when asked), serving
/// `/metrics` on another loopback port.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub cert: PathBuf,
    pub metrics: SocketAddr,
    _dir: tempfile::TempDir,
}

/// A loopback UDP port nobody listens on (for a server that starts later, or never).
pub fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A directory with a self-signed certificate, created the way `cboserver --self-signed` does.
pub fn cert_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    gstcbo::tls::load_or_create_self_signed(dir.path()).unwrap();
    let cert = dir.path().join("cert.pem");
    assert!(cert.is_file());
    (dir, cert)
}

impl Server {
    pub fn start(token: Option<&str>) -> Server {
        let (dir, cert) = cert_dir();
        Self::start_in(dir, cert, token, 0)
    }

    /// Like [`Server::start`] with `args` added to the command line (a limit, a backend).
    pub fn start_with(args: &[&str]) -> Server {
        let (dir, cert) = cert_dir();
        Self::spawn(dir, cert, None, 0, args)
    }

    /// Starts on `port` (0 = any) reusing the certificate in `dir`.
    pub fn start_in(
        dir: tempfile::TempDir,
        cert: PathBuf,
        token: Option<&str>,
        port: u16,
    ) -> Server {
        Self::spawn(dir, cert, token, port, &[])
    }

    fn spawn(
        dir: tempfile::TempDir,
        cert: PathBuf,
        token: Option<&str>,
        port: u16,
        args: &[&str],
    ) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cboserver"));
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--model")
            .arg(repo().join("models/efficientnet-lite2-fp32-260.onnx"))
            .arg("--self-signed")
            .arg(dir.path())
            .arg("--max-batch")
            .arg("4")
            .arg("--metrics")
            .arg("127.0.0.1:0")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(t) = token {
            let f = dir.path().join("token");
            std::fs::write(&f, t).unwrap();
            cmd.arg("--token-file").arg(f);
        }
        let mut child = cmd.spawn().expect("cboserver starts");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut metrics = None;
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(m) = line.strip_prefix("metrics on http://") {
                        metrics = m.trim().trim_end_matches("/metrics").parse().ok();
                    } else if let Some(a) = line.strip_prefix("listening on ") {
                        break a.trim().to_string();
                    }
                }
                _ => {
                    let _ = child.kill();
                    panic!("cboserver exited before listening");
                }
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            addr,
            cert,
            metrics: metrics.expect("cboserver printed its metrics address"),
            _dir: dir,
        }
    }

    /// The value of one series of `/metrics` (its exact name with labels; 0 when absent).
    pub fn metric(&self, series: &str) -> f64 {
        metric(self.metrics, series)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills the server (SIGKILL, as a crash) and starts it again on the same port with the same
    /// identity (no token).
    pub fn crash_and_restart(mut self) -> Server {
        self.kill();
        let port = self.addr.rsplit(':').next().unwrap().parse().unwrap();
        let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().unwrap());
        let cert = self.cert.clone();
        drop(self);
        Self::spawn(dir, cert, None, port, &[])
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The value of one series of the `/metrics` served at `metrics` (its exact name with labels; 0
/// when absent).
pub fn metric(metrics: SocketAddr, series: &str) -> f64 {
    let mut stream = TcpStream::connect(metrics).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {metrics}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

pub fn props(addr: &str, cert: &Path, extra: &str) -> String {
    format!("server={addr} server-cert=\"{}\" {extra}", cert.display())
}
