fn main() {
    gst_plugin_version_helper::info();
    open_inference_protocol();
}

/// Generates the gRPC client of `cboserver --backend grpc://` from the vendored Open Inference
/// Protocol definition. protox parses the .proto in Rust, so building needs no `protoc`. No
/// `rerun-if-changed` here: it would stop cargo rerunning the version helper above on commits.
fn open_inference_protocol() {
    const PROTO: &str = "proto/open_inference_grpc.proto";
    let fds =
        protox::compile([PROTO], ["proto"]).unwrap_or_else(|e| panic!("cannot parse {PROTO}: {e}"));
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(fds)
        .unwrap_or_else(|e| panic!("cannot generate the client of {PROTO}: {e}"));
}
