//! `cbofilter`'s GObject and pad functions: the properties (values and ParamSpecs in
//! [`super::settings`]), state changes (start and stop in [`super::lifecycle`]), and the
//! streaming thread's work: pre-processing each buffer and handing it to the inference thread
//! ([`super::classify`]) through the queue the source pad task pushes from ([`super::output`]).
//! Events, queries and flushing are handled here; the threads and locks are described in
//! [`super`].

use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::CAT;
use super::classify::{InferenceThread, ToClassify};
use super::offload::Offload;
use super::output::{Hold, MAX_HELD_ITEMS};
use super::settings::{self, Settings};
use crate::offload::driver::Event;
use crate::offload::hold::Admission;
use crate::preprocess::Tensor;

/// Raw formats accepted on both pads; all are read directly, no `videoconvert` needed.
const FORMATS: [gst_video::VideoFormat; 12] = [
    gst_video::VideoFormat::I420,
    gst_video::VideoFormat::Yv12,
    gst_video::VideoFormat::Nv12,
    gst_video::VideoFormat::Nv21,
    gst_video::VideoFormat::Rgb,
    gst_video::VideoFormat::Bgr,
    gst_video::VideoFormat::Rgba,
    gst_video::VideoFormat::Bgra,
    gst_video::VideoFormat::Rgbx,
    gst_video::VideoFormat::Bgrx,
    gst_video::VideoFormat::Xrgb,
    gst_video::VideoFormat::Xbgr,
];

/// How often the `cbo-stats` message is posted while offloading.
const STATS_INTERVAL: Duration = Duration::from_secs(1);

pub struct CboFilter {
    pub(super) sinkpad: gst::Pad,
    pub(super) srcpad: gst::Pad,
    /// Property values; copied at start, and per buffer for the few that may change while
    /// playing.
    pub(super) settings: Mutex<Settings>,
    /// The streaming thread's state (pre-processing, caps, frame counter), set in start.
    pub(super) state: Mutex<Option<super::lifecycle::State>>,
    /// The inference thread, from start to stop.
    pub(super) inference: Mutex<Option<InferenceThread>>,
    /// Offloading (client, planner thread), set in start when a server is used.
    pub(super) offload: Mutex<Option<Arc<Offload>>>,
    /// The queue between the pads (every mode), shared with the inference thread, the output
    /// task, and when offloading the planner thread and the client.
    pub(super) hold: Arc<Hold>,
    pub(super) active_provider: Mutex<String>,
    /// The session's id and, when shared, its group (0 and `None` until started and after stop).
    pub(super) session: Mutex<(u64, Option<crate::shared_inference::Group>)>,
    /// From start to stop: the settings it started with (the latency and the allocation
    /// queries answer from these, which a value set while running does not change).
    pub(super) started: Mutex<Option<Started>>,
}

/// What an element started with.
#[derive(Debug, Clone)]
pub(super) struct Started {
    pub settings: Settings,
    pub offloading: bool,
}

/// Most buffers the element asks upstream's pool for beyond downstream's needs: it may hold
/// [`MAX_HELD_ITEMS`], but a pool allocates its minimum up front, and a V4L2 device holds at most
/// 32 buffers (`VIDEO_MAX_FRAME`); 32 frames are a second of 30 fps video.
const MAX_BUFFERS_ASKED: usize = 32;

#[glib::object_subclass]
impl ObjectSubclass for CboFilter {
    const NAME: &'static str = "GstCboFilter";
    type Type = super::CboFilter;
    type ParentType = gst::Element;

    fn with_class(klass: &Self::Class) -> Self {
        let templ = klass.pad_template("sink").expect("sink template");
        let sinkpad = gst::Pad::builder_from_template(&templ)
            .chain_function(|pad, parent, buffer| {
                CboFilter::catch_panic_pad_function(
                    parent,
                    || Err(gst::FlowError::Error),
                    |this| this.sink_chain(pad, buffer),
                )
            })
            .event_function(|pad, parent, event| {
                CboFilter::catch_panic_pad_function(
                    parent,
                    || false,
                    |this| this.sink_event(pad, event),
                )
            })
            .query_function(|pad, parent, query| {
                CboFilter::catch_panic_pad_function(
                    parent,
                    || false,
                    |this| this.sink_query(pad, query),
                )
            })
            .flags(gst::PadFlags::PROXY_CAPS | gst::PadFlags::PROXY_ALLOCATION)
            .build();
        let templ = klass.pad_template("src").expect("src template");
        let srcpad = gst::Pad::builder_from_template(&templ)
            .query_function(|pad, parent, query| {
                CboFilter::catch_panic_pad_function(
                    parent,
                    || false,
                    |this| this.src_query(pad, query),
                )
            })
            .activatemode_function(|pad, parent, mode, active| {
                CboFilter::catch_panic_pad_function(
                    parent,
                    || {
                        Err(gst::loggable_error!(
                            CAT,
                            "panic while (de)activating the source pad"
                        ))
                    },
                    |this| this.src_activatemode(pad, mode, active),
                )
            })
            .flags(gst::PadFlags::PROXY_CAPS | gst::PadFlags::PROXY_ALLOCATION)
            .build();
        Self {
            sinkpad,
            srcpad,
            settings: Mutex::new(Settings::default()),
            state: Mutex::new(None),
            inference: Mutex::new(None),
            hold: Arc::new(Hold::default()),
            offload: Mutex::new(None),
            active_provider: Mutex::new(String::new()),
            session: Mutex::new((0, None)),
            started: Mutex::new(None),
        }
    }
}

impl ObjectImpl for CboFilter {
    fn properties() -> &'static [glib::ParamSpec] {
        settings::properties()
    }

    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        obj.add_pad(&self.sinkpad).expect("new pad");
        obj.add_pad(&self.srcpad).expect("new pad");
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let (threshold, changed) = {
            let mut s = self.settings.lock().unwrap();
            let before = s.get(pspec);
            s.set(value, pspec);
            let changed = match (before, s.get(pspec)) {
                (Some(a), Some(b)) => a.compare(&b) != Some(std::cmp::Ordering::Equal),
                _ => true,
            };
            (s.threshold, changed)
        };
        // The one property the planner thread reads while playing.
        if pspec.name() == "threshold"
            && let Some(o) = self.offload()
        {
            o.driver.send(o.now_ms(), vec![Event::Threshold(threshold)]);
        }
        // Most settings are copied at start: a value set while running is kept for the next
        // start, which a user changing `deadline` or `policy` mid-stream should be told.
        if changed
            && !pspec.flags().contains(gst::PARAM_FLAG_MUTABLE_PLAYING)
            && self.started.lock().unwrap().is_some()
        {
            gst::warning!(
                CAT,
                imp = self,
                "{} set while running: it takes effect at the next start (READY to PAUSED)",
                pspec.name()
            );
        }
        // A secret stays out of the log (which users attach to bug reports).
        if pspec.name() == "token" {
            gst::debug!(CAT, imp = self, "set token (not logged)");
        } else {
            gst::debug!(CAT, imp = self, "set {} = {:?}", pspec.name(), value);
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        match pspec.name() {
            "active-execution-provider" => self.active_provider.lock().unwrap().to_value(),
            // Read without waiting for the streaming thread (which holds `state` while it
            // pre-processes).
            "session-id" => self.session.lock().unwrap().0.to_value(),
            "shared-streams" => {
                let session = self.session.lock().unwrap();
                let streams = match &session.1 {
                    Some(group) => group.streams(),
                    None if session.0 > 0 => 1,
                    None => 0,
                };
                (streams as u32).to_value()
            }
            "stats" => self.stats().to_value(),
            _ => self
                .settings
                .lock()
                .unwrap()
                .get(pspec)
                .unwrap_or_else(|| unreachable!("unknown property {}", pspec.name())),
        }
    }
}

impl GstObjectImpl for CboFilter {}

impl ElementImpl for CboFilter {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static ELEMENT_METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "CBO classifier",
                "Filter/Analyzer/Video",
                "Classifies every frame with an ONNX model (ONNX Runtime), offloads low-confidence \
                 frames to a cboserver over QUIC, and attaches the label and confidence as CboMeta; \
                 video passes through unchanged",
                "cbo developers",
            )
        });
        Some(&*ELEMENT_METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static PAD_TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let caps = gst_video::VideoCapsBuilder::new()
                .format_list(FORMATS)
                .build();
            vec![
                gst::PadTemplate::new(
                    "src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &caps,
                )
                .unwrap(),
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &caps,
                )
                .unwrap(),
            ]
        });
        PAD_TEMPLATES.as_ref()
    }

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        // Started at READY→PAUSED, before the source pad activates (its task needs to know
        // whether the element offloads); stopped once the pads are deactivated.
        if transition == gst::StateChange::ReadyToPaused
            && let Err(e) = self.start()
        {
            self.post_error_message(e);
            return Err(gst::StateChangeError);
        }
        let ret = self.parent_change_state(transition);
        if transition == gst::StateChange::PausedToReady
            || (ret.is_err() && transition == gst::StateChange::ReadyToPaused)
        {
            self.stop();
        }
        ret
    }
}

impl CboFilter {
    /// Pre-processes a buffer and hands it to the inference thread (streaming thread): waits
    /// first, without any lock held, until the element has room for it.
    fn sink_chain(
        &self,
        _pad: &gst::Pad,
        buffer: gst::Buffer,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let entered = Instant::now();
        let offload = self.offload();
        let admission = match &offload {
            None => Admission::Device,
            Some(o) => Admission::Hold {
                max_items: MAX_HELD_ITEMS,
                window: (!self.upstream_live(o)?).then_some(o.max_in_flight),
            },
        };
        let spare = self.hold.admit(admission)?;
        let mut guard = self.state.lock().unwrap();
        let state = guard.as_mut().ok_or(gst::FlowError::Flushing)?;
        let info = state.info.clone().ok_or_else(|| {
            gst::element_imp_error!(self, gst::CoreError::Negotiation, ("No caps set"));
            gst::FlowError::NotNegotiated
        })?;
        let started = Instant::now();
        {
            let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer.as_ref(), &info)
                .map_err(|_| {
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::Format,
                        ("Cannot map the input frame")
                    );
                    gst::FlowError::Error
                })?;
            state.preprocessor.process(&frame).map_err(|e| {
                gst::element_imp_error!(self, gst::StreamError::Failed, ("{e}"));
                gst::FlowError::Error
            })?;
        }
        // The filled tensor goes with the frame; the preprocessor keeps one the model is done
        // with for the next.
        let mut tensor = spare.unwrap_or_else(|| Tensor::zeros(&state.spec));
        state.preprocessor.swap_tensor(&mut tensor);
        let preprocess_us = started.elapsed().as_micros() as u64;
        let id = state.frame;
        state.frame += 1;
        let post_stats =
            offload.is_some() && entered.duration_since(state.last_stats) >= STATS_INTERVAL;
        if post_stats {
            state.last_stats = entered;
        }
        drop(guard);
        let job = ToClassify {
            id,
            tensor,
            to_send: offload.as_ref().map(|_| (buffer.clone(), info)),
            entered,
            preprocess_us,
        };
        self.hold.push_to_classify(buffer, job)?;
        if post_stats {
            let msg = gst::message::Element::builder(self.stats())
                .src(&*self.obj())
                .build();
            let _ = self.obj().post_message(msg);
        }
        match self.hold.flow() {
            Some(e) => Err(e),
            None => Ok(gst::FlowSuccess::Ok),
        }
    }

    /// Whether upstream is live, queried at the first buffer after start or a flush and told
    /// to the planner thread (its window: busy frames when live, waiting for room when not).
    fn upstream_live(&self, offload: &Offload) -> Result<bool, gst::FlowError> {
        let mut guard = self.state.lock().unwrap();
        let state = guard.as_mut().ok_or(gst::FlowError::Flushing)?;
        if let Some(live) = state.live {
            return Ok(live);
        }
        let mut q = gst::query::Latency::new();
        let live = self.sinkpad.peer_query(&mut q) && q.result().0;
        gst::debug!(CAT, imp = self, "upstream is live: {live}");
        state.live = Some(live);
        offload
            .driver
            .send(offload.now_ms(), vec![Event::Live(live)]);
        Ok(live)
    }

    fn src_activatemode(
        &self,
        _pad: &gst::Pad,
        mode: gst::PadMode,
        active: bool,
    ) -> Result<(), gst::LoggableError> {
        if mode != gst::PadMode::Push {
            return Err(gst::loggable_error!(CAT, "only push mode is supported"));
        }
        if active {
            self.start_task()?;
        } else {
            self.hold.set_flushing();
            self.srcpad
                .stop_task()
                .map_err(|e| gst::loggable_error!(CAT, "cannot stop the output task: {e}"))?;
            // Dropped, and flushing until the task starts again.
            self.hold.flush();
            self.hold.set_flushing();
            if let Some(s) = self.state.lock().unwrap().as_mut() {
                s.live = None;
            }
        }
        Ok(())
    }

    fn sink_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        use gst::EventView;
        gst::log!(CAT, obj = pad, "event {:?}", event.type_());
        if let EventView::Caps(c) = event.view() {
            let caps = c.caps();
            let info = match gst_video::VideoInfo::from_caps(caps) {
                Ok(info) => info,
                Err(_) => {
                    gst::element_imp_error!(
                        self,
                        gst::CoreError::Negotiation,
                        ("Unsupported caps {caps}")
                    );
                    return false;
                }
            };
            gst::debug!(CAT, imp = self, "negotiated {caps}");
            match self.state.lock().unwrap().as_mut() {
                Some(state) => state.info = Some(info),
                None => return false,
            }
        }
        match event.view() {
            EventView::FlushStart(_) => {
                let ret = self.srcpad.push_event(event);
                self.hold.set_flushing();
                // Everything held will be dropped: the planner sends none of it any more.
                if let Some(o) = self.offload() {
                    let now_ms = o.now_ms();
                    o.driver.send(now_ms, vec![Event::Flush { now_ms }]);
                }
                let _ = self.srcpad.pause_task();
                ret
            }
            EventView::FlushStop(_) => {
                let ret = self.srcpad.push_event(event);
                // The frames held are dropped (answers still to come for them are ignored), the
                // sticky events among them kept; the planner forgets a frame that was queued
                // while FLUSH_START came.
                self.drop_held();
                if let Some(o) = self.offload() {
                    let now_ms = o.now_ms();
                    o.driver.send(now_ms, vec![Event::Flush { now_ms }]);
                }
                // Upstream may have changed (a seek on a live source).
                if let Some(s) = self.state.lock().unwrap().as_mut() {
                    s.live = None;
                }
                ret && self.start_task().is_ok()
            }
            _ if event.is_serialized() => self.hold.push_event(event),
            _ => self.srcpad.push_event(event),
        }
    }

    fn sink_query(&self, pad: &gst::Pad, query: &mut gst::QueryRef) -> bool {
        if query.is_serialized() {
            // A serialized query (drain, allocation) must see every frame before it pass:
            // wait until the output task has pushed everything queued.
            self.hold.wait_drained();
        }
        let answered = gst::Pad::query_default(pad, Some(&*self.obj()), query);
        if let gst::QueryViewMut::Allocation(q) = query.view_mut() {
            // Also when downstream had no answer (fakesink): the held buffers are this
            // element's need whatever downstream's.
            self.ask_for_held_buffers(q);
            return true;
        }
        answered
    }

    /// Adds the buffers this element may hold to what downstream asked of upstream's pool
    /// (each proposed pool's minimum, and its maximum where bounded; a pool-less entry when
    /// downstream proposed none), as any element that keeps buffers must: a camera or a
    /// hardware decoder with a fixed pool otherwise stalls while frames wait for answers.
    fn ask_for_held_buffers(&self, q: &mut gst::query::Allocation) {
        let (caps, _) = q.get_owned();
        let Some(info) = caps.and_then(|c| gst_video::VideoInfo::from_caps(&c).ok()) else {
            return;
        };
        let started = self.started_or_current();
        let fps = info.fps();
        let fps =
            (fps.numer() > 0 && fps.denom() > 0).then(|| fps.numer() as f64 / fps.denom() as f64);
        let held = crate::offload::hold::frames_held_at_most(
            started.offloading,
            started.settings.deadline_ms,
            fps,
            MAX_BUFFERS_ASKED.min(MAX_HELD_ITEMS),
        ) as u32;
        let pools: Vec<_> = q.allocation_pools().collect();
        if pools.is_empty() {
            q.add_allocation_pool(None::<&gst::BufferPool>, info.size() as u32, held, 0);
        }
        for (i, (pool, size, min, max)) in pools.into_iter().enumerate() {
            let (min, max) = crate::offload::hold::pool_with_held(min, max, held);
            q.set_nth_allocation_pool(i as u32, pool.as_ref(), size, min, max);
        }
        gst::debug!(
            CAT,
            imp = self,
            "allocation: asking upstream for {held} more buffers ({:?} fps)",
            fps
        );
    }

    fn src_query(&self, pad: &gst::Pad, query: &mut gst::QueryRef) -> bool {
        if let gst::QueryViewMut::Latency(q) = query.view_mut() {
            let mut upstream = gst::query::Latency::new();
            if !self.sinkpad.peer_query(&mut upstream) {
                return false;
            }
            let (live, min, max) = upstream.result();
            let started = self.started_or_current();
            let extra = added_latency(&started.settings, started.offloading);
            gst::debug!(
                CAT,
                imp = self,
                "latency: upstream live={live} min={min} max={max:?}, adding {extra}"
            );
            q.set(live, min + extra, max.map(|m| m + extra));
            return true;
        }
        gst::Pad::query_default(pad, Some(&*self.obj()), query)
    }

    /// The `stats` structure.
    fn stats(&self) -> gst::Structure {
        let counts = self.hold.counts();
        let client = self.offload().map(|o| o.client.stats());
        let c = client.unwrap_or_default();
        let (batches, batched_frames) = self
            .session
            .lock()
            .unwrap()
            .1
            .as_ref()
            .map(|g| g.batches())
            .unwrap_or((0, 0));
        gst::Structure::builder("cbo-stats")
            .field("frames", counts.frames)
            .field("kept", counts.kept)
            .field("offloaded", counts.offloaded)
            .field("answered", counts.answered)
            .field("late", counts.late)
            .field("failed", counts.failed)
            .field("busy", counts.busy)
            .field("offline", counts.offline)
            .field("reused", counts.reused)
            .field("overruled", counts.overruled)
            .field("flushed", counts.flushed)
            .field("bytes-sent", c.bytes_sent)
            .field("rtt-ms", c.rtt_us as f64 / 1000.0)
            .field("min-rtt-ms", c.min_rtt_us as f64 / 1000.0)
            .field("cwnd-bytes", c.cwnd_bytes)
            .field("uplink-kbps", c.uplink_bps / 1000.0)
            .field("encode-ms", c.encode_us / 1000.0)
            .field("reconnects", c.reconnects)
            .field("connected", c.connected)
            .field("connection-users", c.connection_users as u32)
            .field("shared-batches", batches)
            .field("shared-batched-frames", batched_frames)
            .build()
    }

    /// Offloading, while the element runs with a server.
    pub(super) fn offload(&self) -> Option<Arc<Offload>> {
        self.offload.lock().unwrap().clone()
    }

    /// The settings the element runs with; before it starts (or after it stopped) the current
    /// ones, device only.
    fn started_or_current(&self) -> Started {
        let started = self.started.lock().unwrap().clone();
        started.unwrap_or_else(|| Started {
            settings: self.settings.lock().unwrap().clone(),
            offloading: false,
        })
    }
}

/// The latency an element with `settings` adds: an offloading element holds a frame up to
/// `deadline`; a shared session may hold it for the batch to fill (`batch-timeout`). Handing
/// the frame from the streaming thread to the inference thread adds none: the frame waits there
/// only while the one before it is classified, as it waited upstream before.
pub(super) fn added_latency(settings: &Settings, offloading: bool) -> gst::ClockTime {
    let mut extra = gst::ClockTime::ZERO;
    if offloading {
        extra += gst::ClockTime::from_mseconds(settings.deadline_ms as u64);
    }
    if settings.shared_session {
        extra += gst::ClockTime::from_useconds(settings.batch_timeout_us as u64);
    }
    extra
}
