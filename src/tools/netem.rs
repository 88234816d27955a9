//! `cbo netem`: runs the [`crate::netem`] relay until SIGINT/SIGTERM.

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use crate::netem::{self, NetemConfig};
use crate::trace::Trace;

#[derive(Debug, Clone, clap::Args)]
pub struct NetemArgs {
    /// Address clients send to, the one to give cbofilter's `server` (`cbo classify --server`):
    /// loopback; port 0 picks a free one, printed as `relaying on ADDR`
    #[arg(long, default_value = "127.0.0.1:4434")]
    pub listen: String,
    /// The cboserver address (loopback)
    #[arg(long, default_value = "127.0.0.1:4433")]
    pub server: String,
    /// Mahimahi uplink trace (e.g. ../shared/assets/traces/Verizon-LTE-short.up)
    #[arg(long, required_unless_present = "uplink_mbps")]
    pub trace: Option<PathBuf>,
    /// A constant-rate uplink instead of a trace, Mbit/s
    #[arg(long, conflicts_with = "trace")]
    pub uplink_mbps: Option<f64>,
    /// One-way delay added in each direction, ms
    #[arg(long, default_value_t = 20)]
    pub delay_ms: u64,
    /// Drop-tail queue limit, bytes
    #[arg(long, default_value_t = 150_000)]
    pub queue_bytes: u64,
    /// Downlink (server to client) rate, Mbit/s
    #[arg(long, default_value_t = 50.0)]
    pub downlink_mbps: f64,
    /// Forget a client after this many seconds without traffic
    #[arg(long, default_value_t = 60)]
    pub idle_timeout_s: u64,
    /// Print the uplink's delivered bytes, drops, backlog and capacity every second (stderr)
    #[arg(long)]
    pub verbose: bool,
}

/// Resolves `addr`, preferring the IP family `v4` (a name such as `localhost` may give both, and
/// the two ends must match), and refuses anything that is not loopback.
fn loopback_addr(what: &str, addr: &str, v4: bool) -> Result<SocketAddr, String> {
    let all: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| format!("bad --{what} '{addr}': {e}"))?
        .collect();
    let resolved = all
        .iter()
        .find(|a| a.is_ipv4() == v4)
        .or(all.first())
        .copied()
        .ok_or_else(|| format!("--{what} '{addr}' resolves to no address"))?;
    netem::require_loopback(what, resolved)?;
    Ok(resolved)
}

/// The relay's configuration from the command line.
pub fn config(args: &NetemArgs) -> Result<NetemConfig, String> {
    let listen = loopback_addr("listen", &args.listen, true)?;
    let server = loopback_addr("server", &args.server, listen.is_ipv4())?;
    let trace = match (&args.trace, args.uplink_mbps) {
        (Some(path), _) => Trace::load(path).map_err(|e| e.to_string())?,
        (None, Some(mbps)) if mbps.is_finite() && mbps >= 0.012 => Trace::constant(mbps * 1e6),
        (None, Some(mbps)) => {
            return Err(format!(
                "--uplink-mbps must be at least 0.012 (one packet per second), not {mbps}"
            ));
        }
        (None, None) => return Err("give --trace or --uplink-mbps".into()),
    };
    let mut config = NetemConfig::new(listen, server, trace);
    config.delay = Duration::from_millis(args.delay_ms);
    config.queue_bytes = args.queue_bytes;
    config.downlink_bps = args.downlink_mbps * 1e6;
    config.idle_timeout = Duration::from_secs(args.idle_timeout_s.max(1));
    config.verbose = args.verbose;
    config.validate()?;
    Ok(config)
}

pub fn run(args: &NetemArgs) -> Result<(), String> {
    let config = config(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("cbo-netem")
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(serve(config))
}

async fn serve(config: NetemConfig) -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot watch SIGTERM: {e}"))?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| format!("cannot watch SIGINT: {e}"))?;
    let mbps = config.trace.mean_bps() / 1e6;
    let relay = netem::start(config).await?;
    {
        // Scripts and tests wait for this line before sending.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "relaying on {} -> {}",
            relay.local_addr(),
            relay.server()
        );
        let _ = out.flush();
    }
    eprintln!("netem: uplink mean {mbps:.2} Mbit/s");
    tokio::select! {
        _ = sigterm.recv() => eprintln!("netem: SIGTERM: stopping"),
        _ = sigint.recv() => eprintln!("netem: SIGINT: stopping"),
    }
    let stats = relay.stats();
    relay.shutdown().await;
    let (up, down) = (stats.uplink, stats.downlink);
    eprintln!(
        "netem: uplink {} packets in, {} delivered ({} B), {} dropped; downlink {} delivered \
         ({} B), {} dropped; {} send errors",
        up.packets_in,
        up.delivered_packets,
        up.delivered_bytes,
        up.dropped_packets,
        down.delivered_packets,
        down.delivered_bytes,
        down.dropped_packets,
        stats.send_errors
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: NetemArgs,
    }

    fn parse(argv: &[&str]) -> Result<NetemArgs, String> {
        Cli::try_parse_from(std::iter::once("netem").chain(argv.iter().copied()))
            .map(|c| c.args)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_constant_link_and_the_defaults() {
        let args = parse(&["--listen", "127.0.0.1:0", "--uplink-mbps", "2"]).unwrap();
        let c = config(&args).unwrap();
        assert_eq!(c.server, "127.0.0.1:4433".parse().unwrap());
        assert!((c.trace.mean_bps() - 2e6).abs() / 2e6 < 0.01);
        assert_eq!(c.delay, Duration::from_millis(20));
        assert_eq!(c.queue_bytes, 150_000);
        assert_eq!(c.downlink_bps, 50e6);
    }

    #[test]
    fn a_link_is_required_and_only_one() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["--trace", "x.up", "--uplink-mbps", "2"]).is_err());
        let args = parse(&["--uplink-mbps", "0"]).unwrap();
        assert!(config(&args).unwrap_err().contains("uplink-mbps"));
        let args = parse(&["--trace", "/nonexistent/x.up"]).unwrap();
        assert!(config(&args).unwrap_err().contains("cannot read trace"));
    }

    #[test]
    fn non_loopback_addresses_are_refused() {
        let args = parse(&["--uplink-mbps", "2", "--server", "192.0.2.1:4433"]).unwrap();
        let e = config(&args).unwrap_err();
        assert!(e.contains("server") && e.contains("loopback"), "{e}");
        let args = parse(&["--uplink-mbps", "2", "--listen", "0.0.0.0:4434"]).unwrap();
        let e = config(&args).unwrap_err();
        assert!(e.contains("listen") && e.contains("loopback"), "{e}");
        // Names resolve first: localhost is fine.
        let args = parse(&["--uplink-mbps", "2", "--server", "localhost:4433"]).unwrap();
        assert!(config(&args).is_ok());
    }
}
