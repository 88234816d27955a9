//! `cboserver --backend grpc://` in front of a real Triton Inference Server on 127.0.0.1 (the
//! `tritonserver` of the PyPI `nvidia-pytriton` wheel, installed in .cache/triton-venv by
//! scripts/triton-venv.sh, which `make test` runs): the element's labels through Triton match the
//! in-process backend; Triton killed and restarted mid-stream loses no frame; a model that does
//! not match the pre-processing is a clear error; an absent backend is "not ready" and
//! `overloaded` until it appears; `/metrics` counts what was sent.
//!
//! The Triton build has only the Python backend, so the test model (tests/triton/) is a Python
//! `model.py` that runs the bundled ONNX server model with onnxruntime. A second implementation
//! of the protocol, MLServer (.cache/mlserver-venv, scripts/mlserver-venv.sh), serves the same
//! model through a custom runtime (tests/mlserver/).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{EosOnDrop, Run, assets, repo, result_feed, run_with, until};
use gstcbo::Source;
use gstcbo::jpeg::EncodedFrame;
use gstcbo::protocol::{ErrorCode, RequestHeader};
use gstcbo::quic::{self, RequestError};
use gstcbo::tls::{self, Trust};

const MODEL: &str = "efficientnet-lite2";

/// The Triton venv: `CBO_TRITON_VENV` or .cache/triton-venv.
fn venv() -> PathBuf {
    let venv = std::env::var_os("CBO_TRITON_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".cache/triton-venv"));
    assert!(
        venv.join("bin/python").is_file(),
        "no Triton venv at {}: run `bash scripts/triton-venv.sh` (`make test` does)",
        venv.display()
    );
    venv
}

fn python_output(venv: &Path, code: &str) -> String {
    let out = Command::new(venv.join("bin/python"))
        .args(["-c", code])
        .output()
        .expect("the venv's python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Where tritonserver is, and the environment its Python backend stub needs.
struct TritonInstall {
    root: PathBuf,
    path: String,
    libdir: String,
    site_packages: String,
}

fn install() -> &'static TritonInstall {
    static INSTALL: std::sync::OnceLock<TritonInstall> = std::sync::OnceLock::new();
    INSTALL.get_or_init(|| {
        let venv = venv();
        let site_packages = python_output(
            &venv,
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        );
        let root = Path::new(&site_packages).join("pytriton/tritonserver");
        assert!(
            root.join("backends/python/triton_python_backend_stub")
                .is_file(),
            "{} lacks the Python backend stub: rerun scripts/triton-venv.sh",
            root.display()
        );
        // The stub embeds the interpreter: it must find the same libpython and the venv's
        // packages (numpy, onnxruntime).
        let libdir = python_output(
            &venv,
            "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))",
        );
        let path = format!(
            "{}:{}",
            venv.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        TritonInstall {
            root,
            path,
            libdir,
            site_packages,
        }
    })
}

/// A model repository holding the test model, served by the bundled ONNX file.
fn model_repository() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    add_model(dir.path(), MODEL, None);
    dir
}

/// How the test model behaves (tests/triton/.../model.py reads these parameters).
#[derive(Default)]
struct Behaviour<'a> {
    /// Each batch takes this long (a slow backend).
    delay_ms: Option<u32>,
    /// Every batch fails while this file exists (a broken model).
    fail_while: Option<&'a Path>,
    /// Each batch is announced in the log, then held while this file exists.
    hold_while: Option<&'a Path>,
    /// Model instances (Triton's `instance_group.count`; 1 when not given).
    instances: Option<u32>,
}

/// Adds the test model as `name`; with `delay_ms`, each batch takes that long (a slow backend).
fn add_model(repository: &Path, name: &str, delay_ms: Option<u32>) {
    add_model_with(
        repository,
        name,
        Behaviour {
            delay_ms,
            ..Default::default()
        },
    );
}

fn add_model_with(repository: &Path, name: &str, behaviour: Behaviour) {
    let src = repo().join("tests/triton").join(MODEL);
    let dst = repository.join(name);
    std::fs::create_dir_all(dst.join("1")).unwrap();
    let mut config = std::fs::read_to_string(src.join("config.pbtxt"))
        .unwrap()
        .replace(&format!("name: \"{MODEL}\""), &format!("name: \"{name}\""));
    if let Some(n) = behaviour.instances {
        config = config.replace("count: 1", &format!("count: {n}"));
    }
    let parameter = |key: &str, value: String| {
        format!("parameters: {{\n  key: \"{key}\"\n  value: {{ string_value: \"{value}\" }}\n}}\n")
    };
    if let Some(ms) = behaviour.delay_ms {
        config.push_str(&parameter("delay_ms", ms.to_string()));
    }
    if let Some(path) = behaviour.fail_while {
        config.push_str(&parameter("fail_while", path.display().to_string()));
    }
    if let Some(path) = behaviour.hold_while {
        config.push_str(&parameter("hold_while", path.display().to_string()));
    }
    std::fs::write(dst.join("config.pbtxt"), config).unwrap();
    std::fs::copy(src.join("1/model.py"), dst.join("1/model.py")).unwrap();
    std::os::unix::fs::symlink(
        repo().join("models/efficientnet-lite2-fp32-260.onnx"),
        dst.join("1/model.onnx"),
    )
    .unwrap();
}

/// A TCP port free on 127.0.0.1 *below* the kernel's ephemeral range, for a server started
/// later on it.
///
/// A port the kernel hands out for `bind(0)` is an ephemeral one: until the server binds it, the
/// kernel may give it to any outgoing connection as its source port, and a client that keeps
/// connecting to a port in that range with nobody listening (cboserver retrying its absent
/// backend) can connect to itself on it (TCP simultaneous open). Either made Triton find its
/// port "already in use" once in `make test`.
fn free_tcp_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(32768);
    let (lo, hi) = (10_000, ephemeral.max(10_001));
    let start = u64::from(std::process::id()) * 7919;
    (0..(hi - lo))
        .map(|i| lo + (start + (NEXT.fetch_add(1, Ordering::Relaxed) + i) * 104_729) % (hi - lo))
        .find_map(|port| {
            let port = u16::try_from(port).ok()?;
            std::net::TcpListener::bind(("127.0.0.1", port))
                .ok()
                .map(|_| port)
        })
        .expect("a free port below the ephemeral range")
}

static INSTANCES: AtomicU64 = AtomicU64::new(0);

/// A running tritonserver (its own process group: the Python stubs die with it).
struct Triton {
    child: Option<Child>,
    port: u16,
    shm_prefix: String,
    log: Arc<Mutex<String>>,
}

impl Triton {
    /// Starts Triton on `port` serving the test model of `repository` and waits for its gRPC
    /// endpoint.
    fn start(repository: &Path, port: u16) -> Triton {
        Self::start_models(repository, port, &[MODEL])
    }

    fn start_models(repository: &Path, port: u16, models: &[&str]) -> Triton {
        let install = install();
        // Python backend shared memory is named with this prefix, so a killed instance's
        // regions can be removed.
        let shm_prefix = format!(
            "cbo-test-{}-{}-",
            std::process::id(),
            INSTANCES.fetch_add(1, Ordering::Relaxed)
        );
        let mut cmd = Command::new(install.root.join("bin/tritonserver"));
        cmd.arg(format!("--model-repository={}", repository.display()))
            .arg(format!(
                "--backend-directory={}",
                install.root.join("backends").display()
            ))
            .arg("--model-control-mode=explicit")
            .args(models.iter().map(|m| format!("--load-model={m}")))
            .arg("--allow-http=false")
            .arg("--allow-metrics=false")
            .arg("--grpc-address=127.0.0.1")
            .arg(format!("--grpc-port={port}"))
            .arg(format!(
                "--backend-config=python,shm-region-prefix-name={shm_prefix}"
            ))
            .env("PATH", &install.path)
            .env("LD_LIBRARY_PATH", &install.libdir)
            .env("PYTHONPATH", &install.site_packages)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().expect("tritonserver starts");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        for stream in [out, err] {
            let (tx, log) = (tx.clone(), log.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    log.lock().unwrap().push_str(&format!("{line}\n"));
                    let _ = tx.send(line);
                }
            });
        }
        drop(tx);
        let mut triton = Triton {
            child: Some(child),
            port,
            shm_prefix,
            log,
        };
        // Until Triton says it serves, exits, or a safety limit (not a speed check) passes. Its
        // pipes are no sign of its exit: the Python stubs it started hold them open.
        let limit = Instant::now() + Duration::from_secs(180);
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) if line.contains("Started GRPCInferenceService") => return triton,
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            let exited = triton.child.as_mut().map(|c| c.try_wait());
            if let Some(Ok(Some(status))) = exited {
                // Let the readers take in what it wrote last.
                std::thread::sleep(Duration::from_millis(200));
                panic!("Triton exited ({status}) before serving:\n{}", triton.log());
            }
            assert!(
                Instant::now() < limit,
                "Triton did not start in 180 s:\n{}",
                triton.log()
            );
        }
        panic!("Triton did not start:\n{}", triton.log());
    }

    fn address(&self) -> String {
        format!("grpc://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until Triton's log has `text` (a safety limit of 60 s, not a speed check).
    fn wait_for_log(&self, text: &str) {
        for _ in 0..3000 {
            if self.log.lock().unwrap().contains(text) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("Triton never logged '{text}':\n{}", self.log());
    }

    /// SIGKILL to the whole process group (Triton and its Python stubs), as a crash would.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain kill(2) on the group this test created.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
        }
        if let Ok(entries) = std::fs::read_dir("/dev/shm") {
            for e in entries.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(&self.shm_prefix)
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

impl Drop for Triton {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `cboserver` child process with a self-signed certificate.
struct CboServer {
    child: Child,
    addr: String,
    cert: PathBuf,
    fingerprint: String,
    metrics: Option<SocketAddr>,
    _dir: tempfile::TempDir,
}

impl CboServer {
    fn start(args: &[&str]) -> CboServer {
        match Self::try_start(args) {
            Ok(s) => s,
            Err(stderr) => panic!("cboserver did not start: {stderr}"),
        }
    }

    /// Starts cboserver; `Err(stderr)` when it exits before listening.
    fn try_start(args: &[&str]) -> Result<CboServer, String> {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cboserver"));
        cmd.args(["--listen", "127.0.0.1:0"]);
        if !args.contains(&"--max-batch") {
            cmd.args(["--max-batch", "4"]);
        }
        let mut child = cmd
            .arg("--self-signed")
            .arg(dir.path())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cboserver starts");
        let mut stderr = child.stderr.take().unwrap();
        let collected = Arc::new(Mutex::new(String::new()));
        let c = collected.clone();
        let stderr_thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                eprint!("{text}");
                c.lock().unwrap().push_str(&text);
            }
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut fingerprint, mut metrics) = (String::new(), None);
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(f) = line.strip_prefix("certificate sha256 fingerprint ") {
                        fingerprint = f.trim().to_string();
                    } else if let Some(m) = line.strip_prefix("metrics on http://") {
                        metrics = Some(m.trim_end_matches("/metrics").parse().unwrap());
                    } else if let Some(a) = line.strip_prefix("listening on ") {
                        break a.trim().to_string();
                    }
                }
                _ => {
                    let _ = child.wait();
                    let _ = stderr_thread.join();
                    return Err(collected.lock().unwrap().clone());
                }
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Ok(CboServer {
            child,
            addr,
            cert: dir.path().join("cert.pem"),
            fingerprint,
            metrics,
            _dir: dir,
        })
    }

    fn grpc(triton_address: &str, extra: &[&str]) -> CboServer {
        let mut args = vec!["--backend", triton_address, "--backend-model", MODEL];
        args.extend_from_slice(extra);
        Self::start(&args)
    }

    /// GET `path` on the operations endpoint: (status, body).
    fn get(&self, path: &str) -> (u16, String) {
        let addr = self.metrics.expect("started with --metrics");
        let mut stream = TcpStream::connect(addr).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        (status, body.to_string())
    }

    /// A sample of `/metrics` (exact series name with labels).
    fn metric(&self, series: &str) -> f64 {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200);
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits for a series of `/metrics` to read `want`, up to `limit` (a safety net, not a speed
    /// check), and returns its last value. A request the server is still finishing when the
    /// client goes away (its backend call, or the wait for the client's acknowledgement) leaves
    /// a gauge up for that long; the test waits for the server's state, not for a fixed time.
    fn metric_settles(&self, series: &str, want: f64, limit: Duration) -> f64 {
        common::settles(limit, || self.metric(series) == want);
        self.metric(series)
    }

    /// Waits for `/readyz` to say `want`, up to `limit` (a safety net, not a speed check).
    fn wait_ready(&self, want: bool, limit: Duration) {
        let step = Duration::from_millis(100);
        for _ in 0..(limit.as_millis() / step.as_millis()) {
            if (self.get("/readyz").0 == 200) == want {
                return;
            }
            std::thread::sleep(step);
        }
        panic!("/readyz never became {want}: {:?}", self.get("/readyz"));
    }
}

impl Drop for CboServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first `frames` frames of the dev clip through cbofilter offloading every frame.
fn dev_clip_pipeline(server: &CboServer, frames: u32) -> String {
    format!(
        "filesrc location=\"{}\" ! decodebin ! identity eos-after={frames} ! \
         cbofilter name=cbo server={} server-cert=\"{}\" policy=all deadline=10000 max-in-flight=4 ! fakesink",
        assets().join("video/dev-slideshow.mp4").display(),
        server.addr,
        server.cert.display()
    )
}

fn assert_complete(run: &Run) {
    assert!(run.error.is_none(), "pipeline error: {:?}", run.error);
    assert_eq!(run.missing_meta, 0);
    let order: Vec<u64> = run.results.iter().map(|r| r.frame).collect();
    assert_eq!(
        order,
        (0..run.frames_in as u64).collect::<Vec<_>>(),
        "every frame leaves once, in order"
    );
}

#[test]
fn element_labels_through_triton_match_the_local_backend() {
    let repository = model_repository();
    let triton = Triton::start(repository.path(), free_tcp_port());
    let frames = 200;
    let through_triton = {
        let server = CboServer::grpc(&triton.address(), &[]);
        run_with(&dev_clip_pipeline(&server, frames), |_| {})
    };
    let local = {
        let server = CboServer::start(&[
            "--model",
            repo()
                .join("models/efficientnet-lite2-fp32-260.onnx")
                .to_str()
                .unwrap(),
        ]);
        run_with(&dev_clip_pipeline(&server, frames), |_| {})
    };
    for run in [&through_triton, &local] {
        assert_complete(run);
        assert!(run.frames_in >= frames as usize);
    }
    // `identity eos-after=N` lets N or N + 1 frames through depending on when the EOS overtakes
    // the stream: compare the frames both runs classified.
    let both: Vec<(i32, i32)> = through_triton
        .results
        .iter()
        .zip(&local.results)
        .filter(|(a, b)| a.source == Source::Server && b.source == Source::Server)
        .map(|(a, b)| (a.class_id, b.class_id))
        .collect();
    assert!(
        both.len() * 100 >= local.frames_in * 95,
        "frames answered by both servers: {} of {}",
        both.len(),
        local.frames_in
    );
    let same = both.iter().filter(|(a, b)| a == b).count();
    eprintln!(
        "{} frames: {} answered by both servers, same label on {same}",
        local.frames_in,
        both.len()
    );
    assert!(
        same * 100 >= both.len() * 99,
        "same label on {same} of {} frames",
        both.len()
    );
}

/// Result indexes where the controller killed Triton, restarted it, and saw it answer again.
type Marks = (usize, usize, usize);

#[test]
fn triton_killed_and_restarted_mid_stream_loses_no_frame() {
    let repository = model_repository();
    let port = free_tcp_port();
    let triton = Triton::start(repository.path(), port);
    let server = CboServer::grpc(&triton.address(), &["--metrics", "127.0.0.1:0"]);
    // Live video at 10 fps, far longer than needed: the controller ends it with EOS once the
    // server answers again after the restart.
    let desc = format!(
        "videotestsrc is-live=true num-buffers=3000 pattern=ball ! \
         video/x-raw,width=320,height=240,framerate=10/1 ! \
         cbofilter name=cbo server={} server-cert=\"{}\" policy=all deadline=1000 max-in-flight=4 ! \
         fakesink sync=false",
        server.addr,
        server.cert.display()
    );
    type Controller = std::thread::JoinHandle<(Marks, Triton)>;
    let controller: Arc<Mutex<Option<Controller>>> = Arc::default();
    let c = controller.clone();
    let run = run_with(&desc, move |pipeline| {
        let rx = result_feed(pipeline);
        let eos = EosOnDrop(pipeline.clone());
        *c.lock().unwrap() = Some(std::thread::spawn(move || {
            let is_server = |s| s == Source::Server;
            // Up: the server labels frames; then Triton dies.
            let mut at = until(&rx, 10, 300, is_server);
            let mut triton = triton;
            triton.kill();
            let killed = at;
            // Down: frames keep flowing, with device labels.
            at += until(&rx, 10, 300, |s| s == Source::Device);
            let restarted = at;
            triton = Triton::start(repository.path(), port);
            // Up again: server labels within the stream (10 fps: 1200 results are 2 minutes,
            // Triton's start and cboserver's reconnect back-off on a loaded machine included).
            at += until(&rx, 10, 1200, is_server);
            drop(eos);
            // The feed ends when the pipeline is gone; Triton stays up until then.
            for _ in rx.iter() {}
            ((killed, restarted, at), triton)
        }));
    });
    let joined = controller.lock().unwrap().take().unwrap().join();
    let ((killed, restarted, recovered), _triton) = joined.expect("controller");
    assert_complete(&run);
    assert!(killed > 0 && restarted > killed && recovered > restarted);
    let sources: Vec<Source> = run.results.iter().map(|r| r.source).collect();
    assert!(
        sources[killed..restarted]
            .iter()
            .filter(|&&s| s == Source::Device)
            .count()
            >= 10
    );
    assert!(sources[restarted..].contains(&Source::Server));
    // Every request the server took got an answer: none left in flight once the server has
    // finished the ones it held when the pipeline ended (a backend call, the 2 s wait for the
    // client's acknowledgement).
    assert_eq!(
        server.metric_settles("cboserver_requests_in_flight", 0.0, Duration::from_secs(30)),
        0.0
    );
    assert!(server.metric("cboserver_requests_total{outcome=\"overloaded\"}") >= 1.0);
}

#[test]
fn a_model_that_does_not_match_the_preprocessing_is_a_clear_error() {
    let repository = model_repository();
    let triton = Triton::start(repository.path(), free_tcp_port());
    let address = triton.address();
    let fails = |extra: &[&str]| {
        let mut args = vec!["--backend", address.as_str(), "--backend-model", MODEL];
        args.extend_from_slice(extra);
        match CboServer::try_start(&args) {
            Ok(_) => panic!("cboserver started with {extra:?}"),
            Err(stderr) => stderr,
        }
    };
    let size = fails(&["--input-size", "224"]);
    assert!(
        size.contains("input 'input' is 260x260")
            && size.contains("pre-processes to 224x224 (--input-size)"),
        "{size}"
    );
    let layout = fails(&["--input-layout", "nhwc"]);
    assert!(
        layout.contains("[-1,3,260,260] (NCHW)") && layout.contains("NHWC (--input-layout)"),
        "{layout}"
    );
    let labels = tempfile::NamedTempFile::new().unwrap();
    let names: String = (0..10).map(|i| format!("class {i}\n")).collect();
    std::fs::write(labels.path(), names).unwrap();
    let wrong_labels = fails(&["--labels", labels.path().to_str().unwrap()]);
    assert!(
        wrong_labels.contains("output 'logits' has 1000 scores")
            && wrong_labels.contains("10 names"),
        "{wrong_labels}"
    );
    // A model the server does not have is not a mismatch: cboserver waits for it, not ready.
    let server = CboServer::start(&[
        "--backend",
        &address,
        "--backend-model",
        "no-such-model",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let (status, body) = server.get("/readyz");
    assert_eq!(status, 503);
    assert!(body.contains("no-such-model"), "{body}");
}

fn bottle_frames() -> &'static Vec<EncodedFrame> {
    static FRAMES: std::sync::OnceLock<Vec<EncodedFrame>> = std::sync::OnceLock::new();
    FRAMES.get_or_init(|| {
        common::init();
        gstcbo::tools::loadgen::encode_clip(&common::bottle_clip(), 8, 224, 80).unwrap()
    })
}

/// Sends frame `frame_id` (a bottle clip frame) with a deadline hint; the error code, if any.
async fn send_frame(
    connection: quinn::Connection,
    frame_id: u64,
    deadline_ms: u32,
) -> Option<ErrorCode> {
    let frames = bottle_frames();
    let f = &frames[frame_id as usize % frames.len()];
    let header = RequestHeader {
        frame_id,
        width: f.width,
        height: f.height,
        short_side: f.width.min(f.height),
        deadline_ms,
        jpeg_len: 0,
        top_k: 5,
    };
    match quic::request(&connection, &header, &f.bytes, 64 * 1024).await {
        Ok(answer) => {
            assert_eq!(answer.frame_id, frame_id);
            None
        }
        Err(RequestError::Server(e)) => Some(e.code),
        // The server's `timeout` answer.
        Err(RequestError::Timeout) => Some(ErrorCode::Timeout),
        Err(e) => panic!("request {frame_id}: {e}"),
    }
}

/// A client session on its own multi-threaded runtime (its tasks run while the test waits).
struct Client {
    runtime: tokio::runtime::Runtime,
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
}

impl Client {
    fn connect(server: &CboServer) -> Client {
        bottle_frames();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (endpoint, connection) = runtime.block_on(async {
            let endpoint = quic::client_endpoint().unwrap();
            let session = quic::connect(
                &endpoint,
                server.addr.parse().unwrap(),
                "localhost",
                tls::client_config(&Trust::Fingerprint(server.fingerprint.clone())).unwrap(),
                "",
                "triton-test",
                Duration::from_secs(10),
            )
            .await
            .unwrap();
            (endpoint, session.connection)
        });
        Client {
            runtime,
            endpoint,
            connection,
        }
    }

    fn close(self) {
        self.connection.close(0u32.into(), b"done");
        self.runtime.block_on(self.endpoint.wait_idle());
    }
}

/// Sends `n` frames one after the other on one connection; the error codes (None: answered).
fn send_frames(server: &CboServer, n: usize) -> Vec<Option<ErrorCode>> {
    let client = Client::connect(server);
    let codes = client.runtime.block_on(async {
        let mut codes = Vec::new();
        for i in 0..n {
            codes.push(send_frame(client.connection.clone(), i as u64, 0).await);
        }
        codes
    });
    client.close();
    codes
}

#[test]
fn requests_whose_deadline_passes_behind_a_slow_backend_are_dropped_not_forwarded() {
    const SLOW: &str = "efficientnet-lite2-slow";
    let repository = tempfile::tempdir().unwrap();
    // 5 s: long beside the time the test takes to see the batch start and queue three frames
    // behind it on a loaded machine.
    add_model(repository.path(), SLOW, Some(5000));
    let triton = Triton::start_models(repository.path(), free_tcp_port(), &[SLOW]);
    let server = CboServer::start(&[
        "--backend",
        &triton.address(),
        "--backend-model",
        SLOW,
        "--max-batch",
        "1",
        "--metrics",
        "127.0.0.1:0",
        // Frame 0 is answered after the slow batch, beyond the default 5 s limit.
        "--request-timeout-ms",
        "30000",
    ]);
    let client = Client::connect(&server);
    let done = Arc::new(Mutex::new(Vec::new()));
    let track = |frame_id: u64, deadline_ms: u32| {
        let (done, connection) = (done.clone(), client.connection.clone());
        client.runtime.spawn(async move {
            let code = send_frame(connection, frame_id, deadline_ms).await;
            done.lock().unwrap().push(frame_id);
            code
        })
    };
    // Frame 0 has time for the slow batch; while Triton holds it, three frames with a
    // 300 ms deadline queue behind it.
    let first = track(0, 10_000);
    triton.wait_for_log("cbo-test: batch of 1 started");
    let late: Vec<_> = (1..4).map(|i| track(i, 300)).collect();
    let late_codes: Vec<Option<ErrorCode>> = late
        .into_iter()
        .map(|t| client.runtime.block_on(t).unwrap())
        .collect();
    assert_eq!(late_codes, vec![Some(ErrorCode::Timeout); 3]);
    assert_eq!(client.runtime.block_on(first).unwrap(), None);
    // Answered at their deadline, not after the batch ahead of them.
    assert_eq!(done.lock().unwrap().last(), Some(&0));
    client.close();
    // None of them reached Triton: one batch went out.
    assert_eq!(
        server.metric_settles(
            "cboserver_dropped_before_backend_total",
            3.0,
            Duration::from_secs(10)
        ),
        3.0
    );
    assert_eq!(server.metric("cboserver_batch_size_count"), 1.0);
    assert_eq!(
        triton.log().matches("cbo-test: batch of").count(),
        1,
        "Triton ran only the first frame"
    );
    // A frame whose deadline passes during its backend call is answered `timeout`, and the
    // backend keeps its connection: a slow backend is not a lost one (its call's own timeout,
    // reported by the gRPC client as cancelled, had the connection torn down and rebuilt and
    // the frame answered `overloaded`).
    let client = Client::connect(&server);
    let code = client
        .runtime
        .block_on(send_frame(client.connection.clone(), 4, 1000));
    assert_eq!(code, Some(ErrorCode::Timeout));
    // The request's own timer answers the client at the same deadline as the backend call
    // ends: the model thread counts the call's outcome a moment later.
    assert_eq!(
        server.metric_settles(
            "cboserver_backend_errors_total{kind=\"deadline\"}",
            1.0,
            Duration::from_secs(10)
        ),
        1.0
    );
    assert_eq!(
        server.metric("cboserver_backend_errors_total{kind=\"unavailable\"}"),
        0.0
    );
    assert_eq!(server.get("/readyz").0, 200, "the backend stays connected");
    client.close();
}

#[test]
fn backend_absent_at_start_is_not_ready_then_serves_and_metrics_count_it() {
    let port = free_tcp_port();
    let server = CboServer::grpc(
        &format!("grpc://127.0.0.1:{port}"),
        &["--metrics", "127.0.0.1:0"],
    );
    // Up, but the backend is not: healthy, not ready, every frame `overloaded`.
    assert_eq!(server.get("/healthz").0, 200);
    let (status, body) = server.get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(&format!("127.0.0.1:{port}")), "{body}");
    let refused = send_frames(&server, 5);
    assert_eq!(refused, vec![Some(ErrorCode::Overloaded); 5]);

    // The backend appears: cboserver connects by itself and serves.
    let repository = model_repository();
    let triton = Triton::start(repository.path(), port);
    server.wait_ready(true, Duration::from_secs(60));
    let sent = 12;
    let answered = send_frames(&server, sent);
    assert_eq!(answered, vec![None; sent]);

    assert_eq!(
        server.metric("cboserver_requests_total{outcome=\"overloaded\"}"),
        5.0
    );
    assert_eq!(
        server.metric("cboserver_requests_total{outcome=\"ok\"}"),
        sent as f64
    );
    assert_eq!(
        server.metric("cboserver_request_duration_seconds_count"),
        17.0
    );
    // Every answered frame went to Triton in some batch.
    assert_eq!(server.metric("cboserver_batch_size_sum"), sent as f64);
    let batches = server.metric("cboserver_batch_size_count");
    assert!(batches >= 1.0 && batches <= sent as f64);
    assert_eq!(
        server.metric("cboserver_backend_duration_seconds_count"),
        batches
    );
    assert_eq!(server.metric("cboserver_backend_ready"), 1.0);
    assert_eq!(
        server.metric_settles("cboserver_requests_in_flight", 0.0, Duration::from_secs(10)),
        0.0
    );

    // The backend goes away while no frame comes: the health check finds it (before, `/readyz`
    // said ready until a frame failed).
    drop(triton);
    server.wait_ready(false, Duration::from_secs(60));
    assert_eq!(server.metric("cboserver_backend_ready"), 0.0);
}

/// Images of the batches the test model holds now (its "batch of N held" log lines).
fn held_images(triton: &Triton) -> usize {
    triton
        .log()
        .lines()
        .filter_map(|l| {
            let rest = l.split("cbo-test: batch of ").nth(1)?;
            let n = rest.trim_end_matches('"').strip_suffix(" held")?;
            n.trim().parse::<usize>().ok()
        })
        .sum()
}

/// `--backend-concurrency 2`: while the backend holds one batch, cboserver gathers and sends the
/// next, so two instances of the model work at once. Before, one batch at a time was in the
/// backend, whatever its instances: the second frame waited in cboserver until the first was
/// answered.
#[test]
fn two_batches_are_in_the_backend_at_once_with_backend_concurrency_2() {
    let repository = tempfile::tempdir().unwrap();
    let hold = repository.path().join("hold");
    std::fs::write(&hold, "").unwrap();
    add_model_with(
        repository.path(),
        MODEL,
        Behaviour {
            hold_while: Some(&hold),
            instances: Some(2),
            ..Default::default()
        },
    );
    let triton = Triton::start(repository.path(), free_tcp_port());
    let server = CboServer::grpc(
        &triton.address(),
        &[
            "--backend-concurrency",
            "2",
            "--max-batch",
            "1",
            "--request-timeout-ms",
            "120000",
        ],
    );
    let client = Client::connect(&server);
    let frames: Vec<_> = (0..2)
        .map(|i| {
            let connection = client.connection.clone();
            client
                .runtime
                .spawn(async move { send_frame(connection, i, 0).await })
        })
        .collect();
    // Both frames are in the model at once (a safety limit, not a speed check); with one batch
    // at a time the second never gets there while the first is held.
    assert!(
        common::settles(Duration::from_secs(60), || held_images(&triton) >= 2),
        "the backend never held both frames at once:\n{}",
        triton.log()
    );
    assert!(frames.iter().all(|f| !f.is_finished()));
    std::fs::remove_file(&hold).unwrap();
    let codes: Vec<Option<ErrorCode>> = frames
        .into_iter()
        .map(|f| client.runtime.block_on(f).unwrap())
        .collect();
    assert_eq!(codes, vec![None, None]);
    client.close();
}

/// A model that fails every batch while it still says it is ready: after three failed batches
/// in a row the backend counts as down (frames `overloaded` at once, without a call), cboserver
/// tries it again after a growing pause, and serves as soon as the model works again. Before,
/// every frame went to the backend and came back `internal`, `/readyz` up throughout; a model
/// whose failures read as a lost connection was reconnected to after every batch.
#[test]
fn a_model_failing_every_batch_is_taken_out_of_service_until_it_works() {
    let repository = tempfile::tempdir().unwrap();
    let broken = repository.path().join("broken");
    std::fs::write(&broken, "").unwrap();
    add_model_with(
        repository.path(),
        MODEL,
        Behaviour {
            fail_while: Some(&broken),
            ..Default::default()
        },
    );
    let _triton = Triton::start(repository.path(), free_tcp_port());
    let server = CboServer::grpc(&_triton.address(), &["--metrics", "127.0.0.1:0"]);
    server.wait_ready(true, Duration::from_secs(60));

    // One frame at a time: each reaches a batch of its own.
    let codes = send_frames(&server, 3);
    assert_eq!(codes, [Some(ErrorCode::Internal); 3]);
    // The third failure took the backend down before its frame was answered: the next frame is
    // refused at once, without a call. (Should the machine be too slow to send it within the
    // 200 ms pause before the reconnection, the next failure takes the backend down for 400 ms,
    // then 800 ms: one of the next three frames is refused at once, however loaded the machine.)
    let more = send_frames(&server, 3);
    assert!(more.contains(&Some(ErrorCode::Overloaded)), "{more:?}");
    assert!(
        more.iter()
            .all(|&c| matches!(c, Some(ErrorCode::Internal | ErrorCode::Overloaded))),
        "{more:?}"
    );
    // Every `internal` answer was one call to the model; the `overloaded` ones made none.
    let calls = 3 + more
        .iter()
        .filter(|&&c| c == Some(ErrorCode::Internal))
        .count();
    assert_eq!(
        server.metric("cboserver_backend_errors_total{kind=\"refused\"}"),
        calls as f64
    );

    // Mended: served again once cboserver has reconnected (a safety limit, not a speed check).
    std::fs::remove_file(&broken).unwrap();
    assert!(
        common::settles(Duration::from_secs(60), || send_frames(&server, 1)
            == [None]),
        "never served after the model was mended"
    );
    assert_eq!(send_frames(&server, 5), vec![None; 5]);
    assert_eq!(server.get("/readyz").0, 200);
}

/// A running MLServer (`mlserver start`) serving the test model on 127.0.0.1.
struct MlServer {
    child: Option<Child>,
    grpc_port: u16,
    _dir: tempfile::TempDir,
}

impl MlServer {
    fn start() -> MlServer {
        let venv = std::env::var_os("CBO_MLSERVER_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo().join(".cache/mlserver-venv"));
        assert!(
            venv.join("bin/mlserver").is_file(),
            "no MLServer at {}: run `bash scripts/mlserver-venv.sh` (`make test` does)",
            venv.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join(MODEL);
        std::fs::create_dir_all(&model).unwrap();
        let src = repo().join("tests/mlserver").join(MODEL);
        for f in ["model-settings.json", "runtime.py"] {
            std::fs::copy(src.join(f), model.join(f)).unwrap();
        }
        std::os::unix::fs::symlink(
            repo().join("models/efficientnet-lite2-fp32-260.onnx"),
            model.join("model.onnx"),
        )
        .unwrap();
        let grpc_port = free_tcp_port();
        // Every listener on loopback; inference in the server process (no worker pool).
        let settings = format!(
            "{{\"host\": \"127.0.0.1\", \"http_port\": {}, \"grpc_port\": {grpc_port}, \
             \"metrics_port\": {}, \"parallel_workers\": 0}}",
            free_tcp_port(),
            free_tcp_port()
        );
        std::fs::write(dir.path().join("settings.json"), settings).unwrap();
        let mut child = Command::new(venv.join("bin/mlserver"))
            .arg("start")
            .arg(dir.path())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("mlserver starts");
        let (tx, rx) = mpsc::channel::<String>();
        let log = Arc::new(Mutex::new(String::new()));
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        for stream in [out, err] {
            let (tx, log) = (tx.clone(), log.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    log.lock().unwrap().push_str(&format!("{line}\n"));
                    let _ = tx.send(line);
                }
            });
        }
        drop(tx);
        let server = MlServer {
            child: Some(child),
            grpc_port,
            _dir: dir,
        };
        let started = rx.iter().any(|l| l.contains("gRPC server running on"));
        assert!(started, "MLServer did not start:\n{}", log.lock().unwrap());
        server
    }
}

impl Drop for MlServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain kill(2) on the group this test created.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
        }
    }
}

/// Top-1 class of each bottle frame, sent one by one.
fn top1(server: &CboServer, n: usize) -> Vec<i32> {
    let client = Client::connect(server);
    let frames = bottle_frames();
    let classes = client.runtime.block_on(async {
        let mut classes = Vec::new();
        for i in 0..n {
            let f = &frames[i % frames.len()];
            let header = RequestHeader {
                frame_id: i as u64,
                width: f.width,
                height: f.height,
                short_side: f.width.min(f.height),
                deadline_ms: 0,
                jpeg_len: 0,
                top_k: 1,
            };
            let answer = quic::request(&client.connection, &header, &f.bytes, 64 * 1024)
                .await
                .unwrap_or_else(|e| panic!("frame {i}: {e}"));
            classes.push(answer.class_ids[0]);
        }
        classes
    });
    client.close();
    classes
}

#[test]
fn mlserver_serves_the_same_labels_through_the_protocol() {
    let mlserver = MlServer::start();
    let through_mlserver =
        CboServer::grpc(&format!("grpc://127.0.0.1:{}", mlserver.grpc_port), &[]);
    let local = CboServer::start(&[
        "--model",
        repo()
            .join("models/efficientnet-lite2-fp32-260.onnx")
            .to_str()
            .unwrap(),
    ]);
    let n = bottle_frames().len();
    let want = top1(&local, n);
    assert_eq!(top1(&through_mlserver, n), want);
    // A water bottle (898) or a close bottle class on most frames: real answers, not zeros.
    assert!(
        want.iter()
            .filter(|&&c| [440, 720, 737, 898, 899, 901, 907].contains(&c))
            .count()
            * 2
            > n
    );
}
