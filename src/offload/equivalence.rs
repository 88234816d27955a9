//! The element and `cbo eval` decide the same: the simulator's replay of a policy over a real
//! uplink trace is recorded call by call (frames, answers with their RTT, failures, polls and the
//! actions each poll returned), and the same inputs at the same virtual times are fed to the
//! element's planner thread ([`super::driver::spawn`] on the [`VirtualClock`]) with a fresh
//! planner of the same policy; every frame must get the same decision at the same resolution.

use std::path::Path;
use std::sync::{Arc, Mutex};

use super::clock::VirtualClock;
use super::driver::{Decided, Effects, Event, PolicyDriver, Window, input_channel, spawn};
use super::planner::{Action, AnswerIn, FrameIn, Planner};
use super::policy::PolicySpec;
use super::sim::{SimConfig, SimFrame, SimReuse, SimServer, simulate};
use crate::meta::Decision;
use crate::profile::Profile;
use crate::trace::Trace;

enum Call {
    Frame(FrameIn),
    Rtt(f64, f64),
    PathRtt(f64, f64),
    Answer(AnswerIn),
    Failure(u64, f64),
    Poll(f64, Vec<(u64, Action)>),
}

/// A planner that records every call the simulator makes.
struct Recorder {
    inner: Box<dyn Planner>,
    calls: Vec<Call>,
}

impl Planner for Recorder {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn on_frame(&mut self, frame: FrameIn) {
        self.calls.push(Call::Frame(frame));
        self.inner.on_frame(frame);
    }
    fn on_answer(&mut self, answer: AnswerIn) {
        self.calls.push(Call::Answer(answer));
        self.inner.on_answer(answer);
    }
    fn on_failure(&mut self, id: u64, now_ms: f64) {
        self.calls.push(Call::Failure(id, now_ms));
        self.inner.on_failure(id, now_ms);
    }
    fn poll(&mut self, now_ms: f64) -> Vec<(u64, Action)> {
        let actions = self.inner.poll(now_ms);
        self.calls.push(Call::Poll(now_ms, actions.clone()));
        actions
    }
    fn next_wakeup(&self) -> Option<f64> {
        self.inner.next_wakeup()
    }
    fn resolutions(&self) -> &[u32] {
        self.inner.resolutions()
    }
    fn on_rtt(&mut self, now_ms: f64, rtt_ms: f64) {
        self.calls.push(Call::Rtt(now_ms, rtt_ms));
        self.inner.on_rtt(now_ms, rtt_ms);
    }
    fn on_path_rtt(&mut self, now_ms: f64, rtt_ms: f64) {
        self.calls.push(Call::PathRtt(now_ms, rtt_ms));
        self.inner.on_path_rtt(now_ms, rtt_ms);
    }
}

type Log = Arc<Mutex<Vec<(u64, Decision, Option<u32>)>>>;

struct RecordEffects(Log);

impl Effects<()> for RecordEffects {
    fn apply(&mut self, d: Decided<()>, _: &dyn Planner) -> bool {
        let short = match &d {
            Decided::Send { short_side, .. } => Some(*short_side),
            Decided::Keep { .. } => None,
        };
        self.0.lock().unwrap().push((d.id(), d.decision(), short));
        true
    }
}

/// Frames drawn from the profile: scenes of 5-40 alike frames, device confidence uniform, the
/// device and the server right as often as the profile says, JPEG sizes ±30 % of its means.
fn frames(profile: &Profile, n: usize) -> Vec<SimFrame> {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut out = Vec::with_capacity(n);
    let mut scene = 0;
    while out.len() < n {
        scene += 1;
        let len = 5 + (rand() * 35.0) as usize;
        for _ in 0..len.min(n - out.len()) {
            let confidence = rand();
            let device_correct = rand() < confidence;
            let server = profile
                .resolutions
                .iter()
                .enumerate()
                .map(|(r, res)| {
                    let correct = rand() < profile.server_accuracy(confidence, r);
                    SimServer {
                        bytes: (res.bytes_mean * (0.7 + 0.6 * rand())) as u32,
                        correct,
                        class: if correct { scene } else { -1 },
                        score: if correct { 0.8 } else { 0.4 },
                        encode_ms: res.encode_ms_mean,
                        server_ms: res.server_decode_ms_mean + res.server_inference_ms_mean,
                    }
                })
                .collect();
            out.push(SimFrame {
                confidence,
                raw_confidence: (confidence * 1.1).min(1.0),
                device_correct,
                device_class: if device_correct { scene } else { -scene },
                truth: scene,
                server,
            });
        }
    }
    out
}

#[test]
fn the_planner_thread_decides_what_the_simulator_decides() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let assets = std::env::var_os("CBO_ASSETS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo.join("../shared/assets"));
    let profile =
        Profile::load(&repo.join("models/efficientnet-lite0-to-lite2.profile.json")).unwrap();
    let trace = Trace::load(&assets.join("traces/Verizon-LTE-short.up")).unwrap();
    let frames = frames(&profile, 900);
    let cfg = SimConfig {
        fps: 30.0,
        deadline_ms: 300.0,
        rtt_ms: 40.0,
        queue_bytes: 150_000,
        overhead_bytes: 200,
        send_window_bytes: crate::offload::sender::MEASURED_WINDOW_BYTES,
        // As the element merges: by the profile's model.
        merge: profile.merge,
    };
    for name in super::policy::ELEMENT_POLICIES {
        let spec = PolicySpec::parse(name, 0.5, 224, 1000.0).unwrap();
        let planner = || spec.planner(Some(&profile), 1e6, cfg.rtt_ms).unwrap();
        let mut recorder = Recorder {
            inner: planner(),
            calls: Vec::new(),
        };
        let reuse = spec.reuse_window_ms.map(|window_ms| SimReuse {
            window_ms,
            profile: &profile,
            gain_z: crate::offload::planner::DEFAULT_PARAMS.gain_z,
        });
        let result = simulate(&mut recorder, &frames, &trace, &cfg, reuse);
        let shorts = planner().resolutions().to_vec();
        // What the simulator decided, in order.
        let mut simulated = Vec::new();
        for call in &recorder.calls {
            if let Call::Poll(_, actions) = call {
                simulated.extend(actions.iter().map(|&(id, a)| match a {
                    Action::Keep => (id, Decision::Device, None),
                    Action::Send { resolution } => {
                        (id, Decision::Offload, Some(shorts[resolution]))
                    }
                }));
            }
        }
        // The same inputs, batched as the simulator polled, through the element's thread.
        let log = Log::default();
        let (tx, rx) = input_channel();
        let thread = spawn(
            PolicyDriver::new(planner(), Window::UNLIMITED, true),
            VirtualClock,
            RecordEffects(log.clone()),
            tx,
            rx,
        )
        .unwrap();
        let mut events = Vec::new();
        let mut rtt = None;
        for call in recorder.calls {
            match call {
                Call::Frame(f) => events.push(Event::Frame(f, ())),
                Call::Rtt(at, r) => rtt = Some((at, r)),
                // The handshake's RTT is its own event in the element, not an answer's sample.
                Call::PathRtt(now_ms, rtt_ms) => events.push(Event::PathRtt { now_ms, rtt_ms }),
                Call::Answer(a) => {
                    // The RTT sample comes with the answer, as in the element.
                    let rtt = rtt.take().map(|(at, r)| {
                        assert_eq!(at, a.now_ms);
                        r
                    });
                    events.push(Event::Answer(a, rtt));
                }
                Call::Failure(id, now_ms) => events.push(Event::Failure { id, now_ms }),
                Call::Poll(at_ms, _) => thread.send(at_ms, std::mem::take(&mut events)),
            }
        }
        thread.stop();
        let driven = std::mem::take(&mut *log.lock().unwrap());
        assert_eq!(driven.len(), frames.len(), "{name}: one decision per frame");
        if let Some(k) = (0..driven.len()).find(|&k| driven.get(k) != simulated.get(k)) {
            panic!(
                "{name}: decision {k} differs: element {:?}, simulator {:?}",
                driven.get(k),
                simulated.get(k)
            );
        }
        assert_eq!(driven.len(), simulated.len(), "{name}");
        let offloaded = simulated
            .iter()
            .filter(|d| d.1 == Decision::Offload)
            .count();
        match name {
            "local" => assert_eq!(offloaded, 0),
            "all" => assert_eq!(offloaded, frames.len()),
            _ => assert!(
                offloaded > 0 && offloaded < frames.len(),
                "{name}: {offloaded} offloaded"
            ),
        }
        assert!((result.offload_ratio - offloaded as f64 / frames.len() as f64).abs() < 1e-9);
    }
}
