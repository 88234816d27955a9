//! `cbofilter`: classifies every video frame and attaches the result as `CboMeta`; with a
//! server, offloads the frames its policy picks and merges the answers back in order.
//!
//! The model, calibration, planners, hold queue and client are pure or GStreamer-free cores
//! elsewhere ([`crate::inference`], [`crate::calibration`], [`crate::offload`]); this module is
//! the element around them:
//!
//! | file | what |
//! |---|---|
//! | `imp.rs` | GObject, pads, state changes; the streaming thread's chain, events, queries, flushing |
//! | `settings.rs` | property values, ParamSpecs, defaults |
//! | `lifecycle.rs` | start (READY→PAUSED) and stop: model, calibration, inference thread, profile, client, planner thread |
//! | `classify.rs` | the inference thread: the model, calibration and result of each pre-processed frame |
//! | `offload.rs` | the planner's decisions to the hold queue and the client |
//! | `output.rs` | the queue between the pads and the source pad task that pushes it downstream in order |
//!
//! # Threads
//!
//! - **Streaming thread** (upstream's): waits until the element has room for one more frame
//!   ([`crate::offload::hold::Admission`]: never while a frame it handed over has not reached the
//!   model), then pre-processes the buffer (scale, colour conversion, normalisation into the
//!   model's tensor) and queues the frame, still to be classified, handing its tensor to the
//!   inference thread; so it pre-processes frame N+1 while the model runs frame N. Serialized
//!   events queue behind the frames; FLUSH_START unblocks every wait, FLUSH_STOP drops what is
//!   queued.
//! - **Inference thread** (`cbo-infer`, [`classify`]): runs the model on each frame in order,
//!   post-processes and calibrates; device only the frame is then ready to leave, offloading it
//!   waits in the queue, undecided, and goes to the planner thread. With `shared-session` (the
//!   default) it queues the tensor in the shared session and waits for its row; the member thread
//!   whose frame fills the batch, or waits longest (`batch-timeout`), runs the batch for every
//!   element of the group ([`crate::shared_inference`]).
//! - **Output task** (the source pad's): pushes the head of the queue when it may leave
//!   (classified and ready; offloading: decided, answered, failed, or at its deadline), events
//!   in their place; applies answer reuse. The one output path, device only or offloading.
//! - **Planner thread** (`cbo-planner`, offloading, [`crate::offload::driver`]): owns the planner;
//!   receives frames, answers, failures, connection changes and ticks over a channel; marks
//!   frames kept, busy, offline or sent in the hold queue, and submits sends to the client.
//! - **Client threads** (`cbo-offload`: one encoder thread, the shared tokio runtime): encode,
//!   send, and complete each request into the hold queue and the planner's channel.
//! - **Application threads**: properties, state changes, FLUSH_START, queries.
//!
//! At most one frame is in the model and one pre-processed behind it; device only at most
//! [`crate::offload::hold::DEVICE_FRAMES`] frames are queued (plus the one being pushed), so a
//! slow downstream blocks the streaming thread as before; offloading, frames wait for the server
//! up to `deadline` (at most `MAX_HELD_ITEMS`, and `max-in-flight` undecided from a non-live
//! source).
//!
//! # Locks, in the order they may be taken
//!
//! 1. `state` (streaming thread while it pre-processes, start, stop; a FLUSH_STOP and a
//!    deactivation reset `live`)
//! 2. `offload` (held only to clone the `Arc`)
//! 3. `hold.inner` (the queue, the frames for the model and their spare tensors; its two
//!    condition variables are the only waits with a lock: the streaming thread waits for room,
//!    the output task for the head, serialized queries for the queue to drain, and on a second
//!    one, the inference thread for a frame)
//! 4. `settings`, `active_provider`, `session`, `started` and `inference` (leaves:
//!    copied out or taken, nothing taken under them)
//!
//! The streaming thread holds no lock while it waits for room, and `state` only while it
//! pre-processes. The inference thread owns the model (and calibration) outright and holds no
//! element lock while it runs: it takes `hold.inner` only to take a frame and to put its result
//! back, and tells the planner about an offloaded frame under it (a channel send, which never
//! waits) so that the planner sees frames and flushes in order. With `shared-session` it waits for
//! its frame's row on the shared session's queue condition variable; running a batch it holds the
//! session's engine lock (the model) and, one at a time, the slots of the frames in the batch.
//! Those locks are the shared session's own (see [`crate::shared_inference`]); nothing of any
//! element is taken under them, so elements never wait on each other's locks. The wait ends at
//! most `batch-timeout` plus one batch inference (plus a batch already running) after the frame
//! was queued. Start (attach) takes the process-wide registry of shared sessions and may load the
//! model under it, so that elements starting together load one session; stop (leaving the group)
//! takes the queue lock. Stop lets the inference thread finish the frame it is running and joins
//! it with no lock held.
//!
//! The planner thread and the client's completions take only `hold.inner` (and the client's own
//! internal locks, never while holding `hold.inner`). Nothing polls: waits end on a notification
//! (every change to the queue notifies its waiters) or the head frame's deadline; the planner
//! thread sleeps on its channel until the planner's next wake-up.
//!
//! # Debug categories
//!
//! `cbofilter` (the element), `cbo-offload` (connection, hold queue, answers), `cbo-planner`
//! (each frame's numbers and each decision with the estimates behind it, at LOG level).

use std::sync::LazyLock;

use gst::glib;
use gst::prelude::*;

mod classify;
mod imp;
mod lifecycle;
mod offload;
mod output;
mod settings;

pub(crate) static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "cbofilter",
        gst::DebugColorFlags::empty(),
        Some("Confidence-based offloading classifier"),
    )
});

pub(crate) static OFFLOAD_CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "cbo-offload",
        gst::DebugColorFlags::empty(),
        Some("cbofilter: server connection, hold queue, answers"),
    )
});

pub(crate) static PLANNER_CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "cbo-planner",
        gst::DebugColorFlags::empty(),
        Some("cbofilter: offloading decisions and the numbers behind them"),
    )
});

glib::wrapper! {
    pub struct CboFilter(ObjectSubclass<imp::CboFilter>)
        @extends gst::Element, gst::Object;
}

/// Offloading policy (`policy` property).
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum, Default)]
#[repr(u32)]
#[enum_type(name = "GstCboPolicy")]
pub enum Policy {
    #[default]
    #[enum_value(
        name = "Local: never offload, every label comes from the device model",
        nick = "local"
    )]
    Local = 0,
    #[enum_value(name = "All: offload every frame", nick = "all")]
    All = 1,
    #[enum_value(
        name = "Threshold: offload frames whose confidence is below `threshold`",
        nick = "threshold"
    )]
    Threshold = 2,
    #[enum_value(
        name = "CBO: which frames to offload and at which resolution, maximising expected accuracy under the deadline and the measured uplink (needs `profile`)",
        nick = "cbo"
    )]
    Cbo = 3,
    #[enum_value(
        name = "Threshold on raw confidence: offload frames whose uncalibrated softmax confidence is below `threshold` (baseline)",
        nick = "threshold-raw"
    )]
    ThresholdRaw = 4,
    #[enum_value(
        name = "FastVA: offload whenever the uplink estimate says the answer arrives in time, at the largest resolution that does, ignoring confidence (baseline; uses the profile's sizes)",
        nick = "fastva"
    )]
    FastVa = 5,
}

/// `merge` property: which label an answered frame leaves with when the server's top-1 differs
/// from the device's ([`crate::offload::merge`]).
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum, Default)]
#[repr(u32)]
#[enum_type(name = "GstCboMerge")]
pub enum MergeProp {
    #[default]
    #[enum_value(
        name = "Confidence: the label more likely right, by the profile's merge model (the server's score, the device's calibrated confidence and the resolution; decision=overruled when the device's wins)",
        nick = "confidence"
    )]
    Confidence = 0,
    #[enum_value(
        name = "Server: the server's label, always (a server model known to be better on this content)",
        nick = "server"
    )]
    Server = 1,
}

impl From<MergeProp> for crate::offload::merge::Merge {
    fn from(p: MergeProp) -> Self {
        match p {
            MergeProp::Confidence => Self::Confidence,
            MergeProp::Server => Self::Server,
        }
    }
}

/// `output-kind` property.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum, Default)]
#[repr(u32)]
#[enum_type(name = "GstCboOutputKind")]
pub enum OutputKindProp {
    #[default]
    #[enum_value(
        name = "Auto, decided on the first frame: a row of scores in [0, 1] summing to 1 (up to 0.02 more, or less by what rounding each class down by 1/256 loses, at most to 0.5: quantised softmax outputs) is probabilities, else logits",
        nick = "auto"
    )]
    Auto = 0,
    #[enum_value(name = "Logits: softmax is applied", nick = "logits")]
    Logits = 1,
    #[enum_value(name = "Probabilities: used as they are", nick = "probabilities")]
    Probabilities = 2,
}

/// `execution-provider` property.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum, Default)]
#[repr(u32)]
#[enum_type(name = "GstCboExecutionProvider")]
pub enum ExecutionProviderProp {
    #[default]
    #[enum_value(
        name = "Auto: the first accelerator ONNX Runtime offers that takes the model, else CPU",
        nick = "auto"
    )]
    Auto = 0,
    #[enum_value(name = "CPU", nick = "cpu")]
    Cpu = 1,
    #[enum_value(name = "NVIDIA CUDA", nick = "cuda")]
    Cuda = 2,
    #[enum_value(name = "NVIDIA TensorRT", nick = "tensorrt")]
    TensorRt = 3,
    #[enum_value(name = "Intel OpenVINO", nick = "openvino")]
    OpenVino = 4,
    #[enum_value(name = "Qualcomm QNN (Hexagon NPU)", nick = "qnn")]
    Qnn = 5,
    #[enum_value(name = "Apple CoreML", nick = "coreml")]
    CoreMl = 6,
    #[enum_value(name = "Android NNAPI", nick = "nnapi")]
    Nnapi = 7,
    #[enum_value(name = "XNNPACK", nick = "xnnpack")]
    Xnnpack = 8,
}

impl From<ExecutionProviderProp> for crate::inference::ExecutionProvider {
    fn from(p: ExecutionProviderProp) -> Self {
        use crate::inference::ExecutionProvider as E;
        match p {
            ExecutionProviderProp::Auto => E::Auto,
            ExecutionProviderProp::Cpu => E::Cpu,
            ExecutionProviderProp::Cuda => E::Cuda,
            ExecutionProviderProp::TensorRt => E::TensorRt,
            ExecutionProviderProp::OpenVino => E::OpenVino,
            ExecutionProviderProp::Qnn => E::Qnn,
            ExecutionProviderProp::CoreMl => E::CoreMl,
            ExecutionProviderProp::Nnapi => E::Nnapi,
            ExecutionProviderProp::Xnnpack => E::Xnnpack,
        }
    }
}

impl From<OutputKindProp> for crate::postprocess::OutputKind {
    fn from(p: OutputKindProp) -> Self {
        use crate::postprocess::OutputKind as O;
        match p {
            OutputKindProp::Auto => O::Auto,
            OutputKindProp::Logits => O::Logits,
            OutputKindProp::Probabilities => O::Probabilities,
        }
    }
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    // The categories exist from the plugin's load, so `--gst-debug-help` lists them (lazily
    // created, they appeared only once an element had logged).
    LazyLock::force(&CAT);
    LazyLock::force(&OFFLOAD_CAT);
    LazyLock::force(&PLANNER_CAT);
    // Lets gst-inspect and the documentation tooling list the enum values.
    Policy::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    OutputKindProp::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    ExecutionProviderProp::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    MergeProp::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(
        Some(plugin),
        "cbofilter",
        gst::Rank::NONE,
        CboFilter::static_type(),
    )
}
