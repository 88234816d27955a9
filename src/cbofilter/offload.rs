//! The element's side of offloading: what the inference thread hands to the planner thread
//! ([`super::classify`]), and how the planner's decisions reach the hold queue and the offload
//! client.
//!
//! The planner itself, the in-flight window and offline frames are the pure
//! [`crate::offload::driver`]'s, on its own thread; this file adapts it to GStreamer buffers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::imp::CboFilter;
use super::output::Hold;
use super::{OFFLOAD_CAT, PLANNER_CAT};
use crate::jpeg::FrameEncoder;
use crate::offload::client::{ClientEvent, OffloadClient, OffloadJob};
use crate::offload::clock::{Clock, SystemClock};
use crate::offload::driver::{Decided, DriverThread, Effects, Event, Input};
use crate::offload::merge::MergeModel;
use crate::offload::planner::{AnswerIn, Planner};
use crate::profile::Profile;

/// What sending a frame needs.
pub struct Job {
    pub buffer: gst::Buffer,
    pub info: gst_video::VideoInfo,
    pub deadline: Instant,
}

/// Offloading, while the element runs with a server (set in start, taken in stop).
pub struct Offload {
    /// `server`, as the user set it (for messages).
    pub server: String,
    /// Whether the client has reported a connection or a failed attempt (which posts its own
    /// warning); if neither by the end of the stream, the element says that every frame stayed
    /// on the device because no connection was made in time.
    pub heard_from_server: Arc<AtomicBool>,
    pub client: Arc<OffloadClient>,
    pub driver: DriverThread<Job>,
    pub clock: SystemClock,
    pub deadline: Duration,
    pub max_in_flight: usize,
    /// policy=cbo: encodes each frame at the profile's smallest resolution (~0.3 ms); its size
    /// tells the planner how large the frame will be at the others.
    pub size_probe: Option<Mutex<(FrameEncoder, u32)>>,
    /// Answer reuse at the output: the window and the profile that says what an answer is worth.
    pub reuse: Option<(f64, Profile)>,
    /// Which label an answer that disagrees with the device leaves with (`merge` and the
    /// profile's model; `None`: the server's, always).
    pub merge: Option<MergeModel>,
}

impl Offload {
    pub fn now_ms(&self) -> f64 {
        self.clock.ms(Instant::now())
    }
}

/// Carries out the planner thread's decisions.
pub struct ElementEffects {
    pub hold: Arc<Hold>,
    pub client: Arc<OffloadClient>,
    pub tx: Sender<Input<Job>>,
    pub clock: SystemClock,
}

impl Effects<Job> for ElementEffects {
    fn apply(&mut self, decided: Decided<Job>, planner: &dyn Planner) -> bool {
        match decided {
            Decided::Keep { id, decision } => {
                gst::log!(
                    PLANNER_CAT,
                    "frame {id}: {decision} ({}; {} in flight)",
                    planner.describe(),
                    self.client.in_flight()
                );
                self.hold.decide(id, decision);
                true
            }
            Decided::Send {
                id,
                short_side,
                job,
                ..
            } => {
                if !self.hold.mark_sent(id, short_side) {
                    gst::log!(PLANNER_CAT, "frame {id}: left before it could be sent");
                    return false;
                }
                gst::log!(
                    PLANNER_CAT,
                    "frame {id}: offload at {short_side} ({}; {} in flight)",
                    planner.describe(),
                    self.client.in_flight()
                );
                let hold = self.hold.clone();
                let tx = self.tx.clone();
                let clock = self.clock;
                self.client.submit(
                    OffloadJob {
                        frame_id: id,
                        buffer: job.buffer,
                        info: job.info,
                        short_side,
                        deadline: job.deadline,
                    },
                    Box::new(move |r| {
                        let now_ms = clock.ms(Instant::now());
                        if let Ok(sr) = &r {
                            gst::log!(
                                OFFLOAD_CAT,
                                "frame {id}: answered ({} bytes at {} px in {:.1} ms; path rtt {:.1} ms, cwnd {} bytes)",
                                sr.jpeg_bytes,
                                sr.short_side,
                                sr.latency.as_secs_f64() * 1000.0,
                                sr.rtt.as_secs_f64() * 1000.0,
                                sr.cwnd_bytes
                            );
                        }
                        let event = match &r {
                            Ok(sr) => Event::Answer(
                                AnswerIn {
                                    id,
                                    now_ms,
                                    bytes: sr.jpeg_bytes as f64,
                                    server_ms: (sr.answer.decode_us
                                        + sr.answer.queue_us
                                        + sr.answer.inference_us)
                                        as f64
                                        / 1000.0,
                                },
                                Some(sr.rtt.as_secs_f64() * 1000.0),
                            ),
                            Err(_) => Event::Failure { id, now_ms },
                        };
                        hold.complete(id, r);
                        // The planner re-plans now: the link may be free.
                        let _ = tx.send(Input::At {
                            at_ms: now_ms,
                            events: vec![event],
                        });
                    }),
                );
                true
            }
        }
    }
}

/// The offload client's connection changes, from its threads: the planner thread learns whether
/// frames can go, the user gets a warning when the element falls back to the device.
pub fn client_events(
    element: glib::WeakRef<super::CboFilter>,
    tx: Sender<Input<Job>>,
    clock: SystemClock,
    server: String,
    heard_from_server: Arc<AtomicBool>,
) -> Arc<dyn Fn(ClientEvent) + Send + Sync> {
    Arc::new(move |event: ClientEvent| {
        if matches!(
            event,
            ClientEvent::Connected { .. } | ClientEvent::ConnectFailed { .. }
        ) {
            heard_from_server.store(true, Ordering::Release);
        }
        let online = match &event {
            ClientEvent::Connected { .. } => Some(true),
            ClientEvent::Disconnected { .. } => Some(false),
            ClientEvent::ConnectFailed { .. } => None,
        };
        if let Some(online) = online {
            let at_ms = clock.ms(Instant::now());
            let mut events = vec![Event::Online(online)];
            // The planner plans with the path's RTT from the start, as `cbo eval` replays it,
            // instead of its 40 ms guess until the first answer.
            if let ClientEvent::Connected {
                min_rtt_ms: Some(rtt_ms),
                ..
            } = &event
            {
                events.push(Event::PathRtt {
                    now_ms: at_ms,
                    rtt_ms: *rtt_ms,
                });
            }
            let _ = tx.send(Input::At { at_ms, events });
        }
        if let Some(obj) = element.upgrade() {
            obj.imp().on_client_event(event, &server);
        }
    })
}

impl CboFilter {
    /// Connection changes, logged, and warnings for the user when the element falls back to the
    /// device.
    pub(super) fn on_client_event(&self, event: ClientEvent, server: &str) {
        match event {
            ClientEvent::Connected { model, min_rtt_ms } => {
                gst::info!(
                    OFFLOAD_CAT,
                    imp = self,
                    "connected to the server (model {model}, path RTT {} ms)",
                    min_rtt_ms.map_or("unknown".to_string(), |r| format!("{r:.1}"))
                );
                let s = gst::Structure::builder("cbo-connection")
                    .field("connected", true)
                    .field("server-model", model)
                    .build();
                let _ = self
                    .obj()
                    .post_message(gst::message::Element::builder(s).src(&*self.obj()).build());
            }
            ClientEvent::Disconnected { reason } => {
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::Read,
                    ("Lost the connection to the server {server} ({reason}); classifying on the device while reconnecting")
                );
            }
            ClientEvent::ConnectFailed { reason } => {
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::OpenReadWrite,
                    ("Cannot use the server {server}: {reason}; classifying on the device and retrying")
                );
            }
        }
    }
}

impl CboFilter {
    /// At the end of a stream: a stream shorter than the client's connection attempt (2 s)
    /// otherwise ended with every frame `offline` and no word why. Not after a stream without
    /// frames: none was classified anywhere.
    pub(super) fn warn_if_never_connected(&self) {
        let Some(o) = self.offload() else {
            return;
        };
        if !o.heard_from_server.load(Ordering::Acquire) && self.hold.counts().frames > 0 {
            gst::element_imp_warning!(
                self,
                gst::ResourceError::OpenReadWrite,
                (
                    "The stream ended before a connection to the server {} was made; every \
                     frame was classified on the device (decision=offline)",
                    o.server
                )
            );
        }
    }
}
