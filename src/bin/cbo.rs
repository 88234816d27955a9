//! `cbo`: tools around the cbofilter element: classify a clip, benchmark, calibrate, profile,
//! evaluate offloading policies, emulate a cellular uplink, load-test a server.

use clap::{Parser, Subcommand};
use gstcbo::tools::{
    bench, bench_streams, calibrate, classify, eval, loadgen, netem, overlay, profile, slideshow,
};

#[derive(Parser)]
#[command(
    name = "cbo",
    version,
    about = "Confidence-based offloading tools for the cbofilter GStreamer element"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a clip through cbofilter, show progress, and summarise the labels
    Classify(classify::ClassifyArgs),
    /// cbofilter throughput vs a bare ONNX Runtime loop on the same decoded frames
    Bench(bench::BenchArgs),
    /// Fit a confidence calibration for a model on labelled photos or a labelled clip
    Calibrate(calibrate::CalibrateArgs),
    /// Raw vs calibrated ECE / NLL / Brier of a calibration file on labelled data (JSON)
    Ece(calibrate::EceArgs),
    /// Measure offloading per resolution: JPEG bytes, server time and accuracy per device-confidence bin
    Profile(profile::ProfileArgs),
    /// Replay offloading policies over a labelled clip against uplink traces (simulation)
    Eval(eval::EvalArgs),
    /// Draw each frame's label, confidence and source on the video and write an MP4
    Overlay(overlay::OverlayArgs),
    /// Make a labelled slideshow clip from labelled photos (content nothing was fitted on)
    Slideshow(slideshow::SlideshowArgs),
    /// Load a running cboserver with concurrent clients; compare with a bare ORT batch loop
    Loadgen(loadgen::LoadgenArgs),
    /// Relay UDP between cbofilter and cboserver through a real cellular uplink (Mahimahi trace)
    ///
    /// A userspace UDP relay that delivers uplink packets by a Mahimahi trace (one 1500-byte
    /// opportunity per listed millisecond, IP and UDP headers included), behind a drop-tail queue,
    /// with a one-way delay each way and a fixed-rate downlink. Point the element's
    /// `server` at --listen. Loopback addresses only.
    ///
    /// Prints `relaying on ADDR -> SERVER` on stdout once ready; with --verbose, one line per
    /// second of uplink activity on stderr. Trace time 0 is when the relay starts; the trace
    /// repeats. SIGINT/SIGTERM stop it and print totals on stderr.
    Netem(netem::NetemArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Classify(args) => classify::run(&args).map(|s| {
            if args.json {
                eprintln!("{}", serde_json::to_string(&s).unwrap_or_default());
            } else {
                classify::print_summary(&s);
            }
        }),
        Command::Bench(args) if args.streams > 1 => bench_streams::run(&args).map(|r| {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                bench_streams::print_report(&r);
            }
        }),
        Command::Bench(args) => bench::run(&args).map(|r| {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                bench::print_report(&r);
            }
        }),
        Command::Calibrate(args) => calibrate::calibrate(&args).map(|r| {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                calibrate::print_calibrate(&r);
            }
        }),
        Command::Ece(args) => calibrate::ece(&args).map(|v| println!("{v}")),
        Command::Overlay(args) => {
            overlay::run(&args).map(|n| eprintln!("wrote {} ({n} frames)", args.output.display()))
        }
        Command::Slideshow(args) => slideshow::run(&args).map(|n| {
            eprintln!(
                "wrote {} and {} ({n} frames)",
                args.output.display(),
                slideshow::labels_path(&args.output).display()
            )
        }),
        Command::Eval(args) => eval::run(&args).map(|r| {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&eval::to_json(&r)).unwrap_or_default()
                );
            } else {
                eval::print_table(&r);
            }
        }),
        Command::Profile(args) => profile::run(&args).map(|p| {
            if args.json {
                println!("{}", p.to_json());
            } else {
                profile::print_table(&p);
            }
        }),
        Command::Loadgen(args) => loadgen::run(&args).map(|r| {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                loadgen::print_report(&r);
            }
        }),
        Command::Netem(args) => netem::run(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cbo: error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
