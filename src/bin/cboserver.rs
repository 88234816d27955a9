//! `cboserver`: the offloading server (runs the big model for frames cbofilter sends over QUIC).
//! The QUIC service lands with the offloading issue; today it only describes itself.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "cboserver",
    version,
    about = "Offloading server for cbofilter: classifies JPEG frames received over QUIC with a large ONNX model",
    long_about = "Offloading server for cbofilter. Not implemented yet in this version: the QUIC \
                  service (ALPN cbo/1, one stream per frame, token authentication, dynamic batching) \
                  arrives with the offloading work. Running it exits with an error."
)]
struct Cli {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:4433")]
    listen: String,
    /// Server ONNX model (default: the bundled EfficientNet-Lite2)
    #[arg(long)]
    model: Option<std::path::PathBuf>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    eprintln!(
        "cboserver: error: serving is not implemented in this version (would listen on {} with model {})",
        cli.listen,
        cli.model
            .map(|m| m.display().to_string())
            .unwrap_or_else(|| gstcbo::inference::DEFAULT_SERVER_MODEL.to_string())
    );
    std::process::ExitCode::FAILURE
}
