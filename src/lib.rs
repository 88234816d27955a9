//! cbo: confidence-based offloading for GStreamer video analytics.
//!
//! The plugin `cbo` provides the `cbofilter` element. The library also exposes the pieces the
//! element is built from (pre-processing, inference, post-processing, the result meta), which the
//! `cbo` tools and the `cboserver` reuse so that they see frames exactly as the element does.

use gst::glib;

pub mod calibration;
mod cbofilter;
pub mod cli;
pub mod gstelements;
pub mod inference;
pub mod jpeg;
pub mod meta;
pub mod netem;
pub mod offload;
pub mod ortlib;
pub mod postprocess;
pub mod preprocess;
pub mod profile;
pub mod protocol;
pub mod quic;
pub mod server;
pub mod shared_inference;
pub mod tls;
pub mod tools;
pub mod trace;

pub use cbofilter::{CboFilter, ExecutionProviderProp, OutputKindProp, Policy};
pub use meta::{CboResult, Decision, Source};

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    meta::register();
    cbofilter::register(plugin)
}

gst::plugin_define!(
    cbo,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MIT/X11",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_REPOSITORY"),
    env!("BUILD_REL_DATE")
);
