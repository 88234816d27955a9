//! `cbofilter`: classifies every video frame and attaches the result as `CboMeta`.
//!
//! GStreamer glue only; the work is done by [`crate::inference`] and friends.

use gst::glib;
use gst::prelude::*;

mod imp;

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

/// `output-kind` property.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum, Default)]
#[repr(u32)]
#[enum_type(name = "GstCboOutputKind")]
pub enum OutputKindProp {
    #[default]
    #[enum_value(
        name = "Auto: non-negative rows summing to 1 are probabilities, else logits",
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
    // Lets gst-inspect and the documentation tooling list the enum values.
    Policy::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    OutputKindProp::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    ExecutionProviderProp::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(
        Some(plugin),
        "cbofilter",
        gst::Rank::NONE,
        CboFilter::static_type(),
    )
}
