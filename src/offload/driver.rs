//! Drives a [`Planner`] for the element: the in-flight window, offline frames, and the one
//! thread that owns the planner.
//!
//! [`PolicyDriver`] is the pure part (no GStreamer, no sockets, no clock): it feeds the planner
//! frames, answers and failures, and turns the planner's actions into [`Decision`]s, adding what a
//! planner does not know about: a frame that arrives while no server connection is up is
//! `offline` (the planner never sees it); a send while `max-in-flight` requests are outstanding
//! is `busy` on a live source, and waits for room on a non-live one (file processing loses no
//! offload to its own pacing); a send for a frame that was flushed meanwhile is dropped. Every
//! send that does not happen is reported to the planner as a failure, so its link accounting
//! stays true.
//!
//! [`spawn`] runs a `PolicyDriver` on its own thread (`cbo-planner`): frames, answers, failures,
//! connection changes and ticks arrive over one channel as [`Input`]s, each stamped with its
//! time; after each input the planner is polled at that time, and between inputs the thread
//! sleeps on the channel until the planner's next wake-up. The thread is generic over a
//! [`Clock`]: on the [`VirtualClock`](super::clock::VirtualClock) time moves only with the inputs, so the tests below (and
//! the test against `cbo eval`'s simulator) run the real thread on virtual time without sleeps.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use super::clock::{Clock, Waited};
use super::planner::{Action, AnswerIn, FrameIn, Planner, feed_answer};
use crate::meta::Decision;

/// The element's in-flight window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub max_in_flight: usize,
    /// A live source's frame never waits for room (it stays on the device, `busy`); a non-live
    /// source's does.
    pub live: bool,
}

impl Window {
    /// No limit (the simulator's link model has its own queue).
    pub const UNLIMITED: Window = Window {
        max_in_flight: usize::MAX,
        live: true,
    };
}

/// A decision the driver took for one frame; `job` is what sending it needs (`J`).
#[derive(Debug, PartialEq)]
pub enum Decided<J> {
    /// Send the frame at `short_side` (index `resolution` of the planner's list).
    Send {
        id: u64,
        resolution: usize,
        short_side: u32,
        job: J,
    },
    /// The frame leaves with its device label: `Device`, `Busy` or `Offline`.
    Keep { id: u64, decision: Decision },
}

impl<J> Decided<J> {
    pub fn id(&self) -> u64 {
        match self {
            Decided::Send { id, .. } | Decided::Keep { id, .. } => *id,
        }
    }

    pub fn decision(&self) -> Decision {
        match self {
            Decided::Send { .. } => Decision::Offload,
            Decided::Keep { decision, .. } => *decision,
        }
    }
}

/// What happens, as the planner's driver sees it.
#[derive(Debug)]
pub enum Event<J> {
    Frame(FrameIn, J),
    /// An answer, with the round-trip time the transport measured with it.
    Answer(AnswerIn, Option<f64>),
    /// A sent frame got no answer (error, connection loss, or its deadline passed).
    Failure {
        id: u64,
        now_ms: f64,
    },
    /// The server connection came up or went down.
    Online(bool),
    /// The transport's RTT of the path without an answer (the connection's handshake).
    PathRtt {
        now_ms: f64,
        rtt_ms: f64,
    },
    /// Upstream's liveness became known (the window's `live`).
    Live(bool),
    /// The `threshold` property changed.
    Threshold(f64),
    /// The element flushed: frames not decided yet are gone.
    Flush {
        now_ms: f64,
    },
    /// The element dropped these frames (downstream returned EOS) while others, behind a new
    /// segment, stay: none of these is sent or kept, and the frames besides them are decided as
    /// before (a [`Event::Flush`] would leave those undecided, to go `late` at their deadline).
    Forget {
        ids: Vec<u64>,
        now_ms: f64,
    },
}

/// The pure driver (see the module docs).
pub struct PolicyDriver<J> {
    planner: Box<dyn Planner>,
    shorts: Vec<u32>,
    window: Window,
    online: bool,
    /// Sent and neither answered nor failed.
    in_flight: HashSet<u64>,
    /// Frames the planner has not decided yet, with what sending them needs.
    jobs: HashMap<u64, J>,
    /// Non-live source: sends waiting for room in the window, in order.
    deferred: VecDeque<(u64, usize, J)>,
}

impl<J> PolicyDriver<J> {
    pub fn new(planner: Box<dyn Planner>, window: Window, online: bool) -> Self {
        let shorts = planner.resolutions().to_vec();
        Self {
            planner,
            shorts,
            window,
            online,
            in_flight: HashSet::new(),
            jobs: HashMap::new(),
            deferred: VecDeque::new(),
        }
    }

    pub fn planner(&self) -> &dyn Planner {
        self.planner.as_ref()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Takes in one event. A frame that arrives offline is decided at once (returned).
    pub fn handle(&mut self, event: Event<J>) -> Option<Decided<J>> {
        match event {
            Event::Frame(frame, job) => {
                if !self.online {
                    return Some(Decided::Keep {
                        id: frame.id,
                        decision: Decision::Offline,
                    });
                }
                self.jobs.insert(frame.id, job);
                self.planner.on_frame(frame);
            }
            Event::Answer(answer, rtt_ms) => {
                self.in_flight.remove(&answer.id);
                feed_answer(self.planner.as_mut(), answer, rtt_ms);
            }
            Event::Failure { id, now_ms } => {
                if self.in_flight.remove(&id) {
                    self.planner.on_failure(id, now_ms);
                }
            }
            Event::Online(online) => self.online = online,
            Event::PathRtt { now_ms, rtt_ms } => self.planner.on_path_rtt(now_ms, rtt_ms),
            Event::Live(live) => self.window.live = live,
            Event::Threshold(t) => self.planner.set_threshold(t),
            Event::Flush { now_ms } => {
                self.jobs.clear();
                self.drop_deferred(now_ms, |_| true);
            }
            Event::Forget { ids, now_ms } => {
                for id in &ids {
                    self.jobs.remove(id);
                }
                self.drop_deferred(now_ms, |id| ids.contains(&id));
            }
        }
        None
    }

    /// Drops the sends waiting for room in the window whose frames `gone` names. Such a send
    /// does not happen, and the planner, which counted it as sent, must hear so: a failure, as
    /// any send that does not happen; otherwise its link estimate kept it as sent and overdue for
    /// ever. (In the element only the fixed rules on a non-live source defer sends, and they do
    /// not plan by the estimate; a planner that does, under a window, stopped offloading after a
    /// flush: the unit test.)
    fn drop_deferred(&mut self, now_ms: f64, gone: impl Fn(u64) -> bool) {
        let planner = &mut self.planner;
        self.deferred.retain(|&(id, ..)| {
            let dropped = gone(id);
            if dropped {
                planner.on_failure(id, now_ms);
            }
            !dropped
        });
    }

    /// The decisions due at `now_ms`: deferred sends that now have room, then the planner's.
    pub fn poll(&mut self, now_ms: f64) -> Vec<Decided<J>> {
        let mut out = Vec::new();
        while self.in_flight.len() < self.window.max_in_flight
            && let Some((id, resolution, job)) = self.deferred.pop_front()
        {
            out.push(self.send(id, resolution, job));
        }
        for (id, action) in self.planner.poll(now_ms) {
            let job = self.jobs.remove(&id);
            match (action, job) {
                // Flushed meanwhile: nothing leaves for it.
                (Action::Keep, None) => {}
                (Action::Send { .. }, None) => self.planner.on_failure(id, now_ms),
                (Action::Keep, Some(_)) => out.push(Decided::Keep {
                    id,
                    decision: Decision::Device,
                }),
                (Action::Send { resolution }, Some(job)) => {
                    let full = self.in_flight.len() >= self.window.max_in_flight;
                    if !self.online || (full && self.window.live) {
                        self.planner.on_failure(id, now_ms);
                        let decision = if self.online {
                            Decision::Busy
                        } else {
                            Decision::Offline
                        };
                        out.push(Decided::Keep { id, decision });
                    } else if full || !self.deferred.is_empty() {
                        self.deferred.push_back((id, resolution, job));
                    } else {
                        out.push(self.send(id, resolution, job));
                    }
                }
            }
        }
        out
    }

    fn send(&mut self, id: u64, resolution: usize, job: J) -> Decided<J> {
        self.in_flight.insert(id);
        Decided::Send {
            id,
            resolution,
            short_side: self.shorts[resolution],
            job,
        }
    }

    /// A send the caller could not carry out (the frame had left meanwhile): the window frees
    /// and the planner counts it as failed.
    pub fn not_sent(&mut self, id: u64, now_ms: f64) {
        if self.in_flight.remove(&id) {
            self.planner.on_failure(id, now_ms);
        }
    }

    /// When the planner wants to be polled without another event.
    pub fn next_wakeup(&self) -> Option<f64> {
        self.planner.next_wakeup()
    }
}

/// What arrives over the driver thread's channel: events that happened at `at_ms`, after which
/// the planner is polled at `at_ms`; no events is a tick.
pub enum Input<J> {
    At { at_ms: f64, events: Vec<Event<J>> },
    Stop,
}

/// Carries out the driver's decisions (the element: the hold queue and the offload client).
pub trait Effects<J>: Send {
    /// Returns false when a `Send` could not be carried out (the frame had left).
    fn apply(&mut self, decided: Decided<J>, planner: &dyn Planner) -> bool;
}

/// The running driver thread.
pub struct DriverThread<J> {
    tx: Sender<Input<J>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl<J> DriverThread<J> {
    /// A sender for inputs (the client's completions and events hold clones).
    pub fn sender(&self) -> Sender<Input<J>> {
        self.tx.clone()
    }

    pub fn send(&self, at_ms: f64, events: Vec<Event<J>>) {
        // Fails only when the thread is gone, i.e. while stopping.
        let _ = self.tx.send(Input::At { at_ms, events });
    }

    /// Stops the thread and waits for it (the inputs still queued before it are handled).
    pub fn stop(&self) {
        let _ = self.tx.send(Input::Stop);
        if let Some(t) = self.thread.lock().unwrap().take() {
            let _ = t.join();
        }
    }
}

impl<J> Drop for DriverThread<J> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts the driver thread, returning it and the channel's sender. `rx` is the receiving end
/// of a channel made with [`channel`] (made by the caller, so that the offload client can hold
/// a sender before the thread exists).
pub fn spawn<J, C, E>(
    mut driver: PolicyDriver<J>,
    clock: C,
    mut effects: E,
    tx: Sender<Input<J>>,
    rx: Receiver<Input<J>>,
) -> std::io::Result<DriverThread<J>>
where
    J: Send + 'static,
    C: Clock,
    E: Effects<J> + 'static,
{
    let thread = std::thread::Builder::new()
        .name("cbo-planner".into())
        .spawn(move || {
            loop {
                let now = match clock.wait(&rx, driver.next_wakeup()) {
                    Waited::Input(Input::At { at_ms, events }) => {
                        let mut decided = Vec::new();
                        for e in events {
                            decided.extend(driver.handle(e));
                        }
                        for d in decided {
                            effects.apply(d, driver.planner());
                        }
                        at_ms
                    }
                    Waited::Due => clock.ms(clock.now()),
                    Waited::Input(Input::Stop) | Waited::Closed => break,
                };
                for d in driver.poll(now) {
                    let id = d.id();
                    if !effects.apply(d, driver.planner()) {
                        driver.not_sent(id, now);
                    }
                }
            }
        })?;
    Ok(DriverThread {
        tx,
        thread: Mutex::new(Some(thread)),
    })
}

/// A channel for [`spawn`].
pub fn input_channel<J>() -> (Sender<Input<J>>, Receiver<Input<J>>) {
    channel()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::clock::VirtualClock;
    use crate::offload::policy::PolicySpec;
    use std::sync::Arc;

    fn frame(id: u64, at: f64, confidence: f64) -> FrameIn {
        FrameIn {
            id,
            arrival_ms: at,
            deadline_ms: at + 200.0,
            confidence,
            raw_confidence: confidence,
            class: 0,
            small_jpeg_bytes: None,
        }
    }

    fn answer(id: u64, now_ms: f64) -> AnswerIn {
        AnswerIn {
            id,
            now_ms,
            bytes: 10_000.0,
            server_ms: 10.0,
        }
    }

    fn threshold() -> Box<dyn Planner> {
        PolicySpec::parse("threshold", 0.5, 224, 0.0)
            .unwrap()
            .planner(None, 1e6, 40.0)
            .unwrap()
    }

    fn decisions(d: Vec<Decided<()>>) -> Vec<(u64, Decision)> {
        d.iter().map(|d| (d.id(), d.decision())).collect()
    }

    #[test]
    fn a_live_source_with_a_full_window_is_busy_a_file_waits_for_room() {
        for live in [true, false] {
            let window = Window {
                max_in_flight: 1,
                live,
            };
            let mut d: PolicyDriver<()> = PolicyDriver::new(threshold(), window, true);
            d.handle(Event::Frame(frame(0, 0.0, 0.1), ()));
            d.handle(Event::Frame(frame(1, 0.0, 0.1), ()));
            d.handle(Event::Frame(frame(2, 0.0, 0.9), ()));
            let got = decisions(d.poll(0.0));
            if live {
                assert_eq!(
                    got,
                    [
                        (0, Decision::Offload),
                        (1, Decision::Busy),
                        (2, Decision::Device)
                    ]
                );
            } else {
                assert_eq!(got, [(0, Decision::Offload), (2, Decision::Device)]);
                d.handle(Event::Answer(answer(0, 50.0), Some(30.0)));
                assert_eq!(decisions(d.poll(50.0)), [(1, Decision::Offload)]);
            }
        }
    }

    /// The CBO planner on the test profile, an 8 Mbit/s first guess and a 40 ms RTT.
    fn cbo() -> Box<dyn Planner> {
        Box::new(crate::offload::planner::CboPlanner::new(
            crate::offload::planner::tests::profile(),
            8e6,
            40.0,
        ))
    }

    #[test]
    fn the_path_rtt_of_the_handshake_reaches_the_planner() {
        // 200 ms deadlines: with the planner's 40 ms guess an unsure frame goes; told that the
        // path's RTT is 180 ms, nothing can arrive in time (20 ms left for server and margin).
        let mut d: PolicyDriver<()> = PolicyDriver::new(cbo(), Window::UNLIMITED, true);
        d.handle(Event::Frame(frame(0, 0.0, 0.2), ()));
        assert_eq!(decisions(d.poll(0.0)), [(0, Decision::Offload)]);
        let mut d: PolicyDriver<()> = PolicyDriver::new(cbo(), Window::UNLIMITED, true);
        d.handle(Event::PathRtt {
            now_ms: 0.0,
            rtt_ms: 180.0,
        });
        d.handle(Event::Frame(frame(0, 0.0, 0.2), ()));
        assert_eq!(decisions(d.poll(0.0)), [(0, Decision::Device)]);
        // It is the path's, not a sample that ages out: 20 s later, with no answer since, the
        // RTT is still 180 ms, not the 40 ms guess.
        d.handle(Event::Frame(frame(1, 20_000.0, 0.2), ()));
        assert_eq!(decisions(d.poll(20_000.0)), [(1, Decision::Device)]);
    }

    #[test]
    fn offline_frames_never_reach_the_planner_and_flushed_frames_are_not_sent() {
        let mut d: PolicyDriver<()> = PolicyDriver::new(threshold(), Window::UNLIMITED, false);
        let got = d.handle(Event::Frame(frame(0, 0.0, 0.1), ()));
        assert_eq!(got.map(|g| g.decision()), Some(Decision::Offline));
        assert!(d.poll(0.0).is_empty());
        d.handle(Event::Online(true));
        d.handle(Event::Frame(frame(1, 10.0, 0.1), ()));
        d.handle(Event::Flush { now_ms: 10.0 });
        assert!(
            d.poll(10.0).is_empty(),
            "a flushed frame is neither sent nor kept"
        );
        assert_eq!(d.in_flight(), 0);
        // A new threshold applies to the frames after it.
        d.handle(Event::Threshold(0.05));
        d.handle(Event::Frame(frame(2, 20.0, 0.1), ()));
        assert_eq!(decisions(d.poll(20.0)), [(2, Decision::Device)]);
    }

    /// A flush while a send waits for room in the window: the planner hears it failed, so its
    /// link estimate does not keep it as overdue (before: every later frame stayed on the
    /// device for the rest of the stream).
    #[test]
    fn a_flush_fails_the_sends_waiting_for_room() {
        let window = Window {
            max_in_flight: 1,
            live: false,
        };
        let mut d: PolicyDriver<()> = PolicyDriver::new(cbo(), window, true);
        d.handle(Event::Frame(frame(0, 0.0, 0.2), ()));
        d.handle(Event::Frame(frame(1, 0.0, 0.2), ()));
        let mut t = 0.0;
        let mut sent = Vec::new();
        while d.deferred.is_empty() {
            assert!(t < 50.0, "1 was never planned");
            sent.extend(decisions(d.poll(t)));
            t += 1.0;
        }
        assert_eq!(sent, [(0, Decision::Offload)]);
        d.handle(Event::Flush { now_ms: t });
        d.handle(Event::Answer(answer(0, 60.0), Some(40.0)));
        assert!(d.poll(60.0).is_empty(), "1 was flushed");
        // Long after: a frame goes, as on the link measured.
        d.handle(Event::Frame(frame(2, 20_000.0, 0.2), ()));
        assert_eq!(decisions(d.poll(20_000.0)), [(2, Decision::Offload)]);
    }

    #[test]
    fn forgotten_frames_are_neither_sent_nor_kept_the_others_still_are() {
        let window = Window {
            max_in_flight: 1,
            live: false,
        };
        let mut d: PolicyDriver<()> = PolicyDriver::new(threshold(), window, true);
        d.handle(Event::Frame(frame(0, 0.0, 0.1), ()));
        d.handle(Event::Frame(frame(1, 0.0, 0.1), ()));
        // 0 goes; 1 waits for room in the window.
        assert_eq!(decisions(d.poll(0.0)), [(0, Decision::Offload)]);
        d.handle(Event::Frame(frame(2, 10.0, 0.1), ()));
        d.handle(Event::Frame(frame(3, 10.0, 0.9), ()));
        d.handle(Event::Frame(frame(4, 10.0, 0.1), ()));
        // 1 (deferred) and 2 (undecided) are dropped; 3 and 4 stay.
        d.handle(Event::Forget {
            ids: vec![1, 2],
            now_ms: 10.0,
        });
        assert_eq!(decisions(d.poll(10.0)), [(3, Decision::Device)]);
        d.handle(Event::Answer(answer(0, 50.0), Some(30.0)));
        assert_eq!(
            decisions(d.poll(50.0)),
            [(4, Decision::Offload)],
            "the room goes to 4, not to a forgotten frame"
        );
        assert_eq!(d.in_flight(), 1);
    }

    /// Records what the thread decided.
    struct Record(Arc<Mutex<Vec<(u64, Decision)>>>);

    impl Effects<()> for Record {
        fn apply(&mut self, d: Decided<()>, _: &dyn Planner) -> bool {
            self.0.lock().unwrap().push((d.id(), d.decision()));
            true
        }
    }

    #[test]
    fn the_thread_on_virtual_time() {
        let window = Window {
            max_in_flight: 2,
            live: true,
        };
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = input_channel();
        let t = spawn(
            PolicyDriver::new(threshold(), window, true),
            VirtualClock,
            Record(log.clone()),
            tx,
            rx,
        )
        .unwrap();
        for i in 0..6u64 {
            let at = i as f64 * 33.0;
            t.send(at, vec![Event::Frame(frame(i, at, 0.1), ())]);
            // Frame 1's answer comes before frame 3 arrives; frame 0's never does.
            if i == 2 {
                t.send(
                    at + 1.0,
                    vec![Event::Answer(answer(1, at + 1.0), Some(20.0))],
                );
            }
        }
        t.stop();
        assert_eq!(
            *log.lock().unwrap(),
            [
                (0, Decision::Offload),
                (1, Decision::Offload),
                (2, Decision::Busy),
                (3, Decision::Offload),
                (4, Decision::Busy),
                (5, Decision::Busy),
            ]
        );
    }
}
