//! Offloading elements of one process that point at the same server share one QUIC connection
//! (`shared-connection`, the default): each still gets every answer it asked for, the real
//! `cboserver` on 127.0.0.1 accepts one connection for all of them (its
//! `cboserver_connections_accepted_total`), and an element leaving leaves the connection to the
//! others.

mod common;

use std::sync::{Arc, Mutex};

use common::server::{Server, props};
use common::{assets, bottle_clip, run_with};
use gst::prelude::*;
use gstcbo::{CboResult, Source};

const ACCEPTED: &str = "cboserver_connections_accepted_total";

/// What one element did: its results, its `stats` at EOS, and the `connection-users` it reported
/// while running.
#[derive(Debug, Default, Clone)]
struct Branch {
    results: Vec<CboResult>,
    stats: Option<gst::Structure>,
    users: Vec<u32>,
}

fn clip(i: usize) -> std::path::PathBuf {
    [
        bottle_clip(),
        assets().join("video/dev-slideshow.mp4"),
        bottle_clip(),
    ][i % 3]
        .clone()
}

/// Records each result and the element's `connection-users` on `cbo`'s src pad, and its stats
/// at EOS.
fn record(cbo: &gst::Element, into: Arc<Mutex<Branch>>) {
    let b = into.clone();
    common::on_each_output(cbo, move |cbo, result| {
        let mut b = b.lock().unwrap();
        b.results.extend(result);
        let stats = cbo.property::<gst::Structure>("stats");
        b.users.push(stats.get("connection-users").unwrap());
    });
    common::stats_at_eos(cbo, "src", move |st| {
        into.lock().unwrap().stats = Some(st);
    });
}

/// `n` branches `clip ! cbofilter policy=all ... ! fakesink` in one pipeline, run to EOS.
fn run_branches(server: &Server, n: usize, frames: u32, extra: &str) -> Vec<Branch> {
    common::init();
    let cbo = props(
        &server.addr,
        &server.cert,
        &format!("policy=all deadline=10000 max-in-flight=4 {extra}"),
    );
    let desc: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "filesrc location=\"{}\" ! decodebin ! identity eos-after={frames} ! cbofilter name=c{i} {cbo} ! fakesink",
                clip(i).display()
            )
        })
        .collect();
    let pipeline = gst::parse::launch(&desc.join("  "))
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let out: Vec<Arc<Mutex<Branch>>> = (0..n).map(|_| Default::default()).collect();
    for (i, b) in out.iter().enumerate() {
        record(&pipeline.by_name(&format!("c{i}")).unwrap(), b.clone());
    }
    common::play_until_eos(&pipeline);
    pipeline.set_state(gst::State::Null).unwrap();
    out.iter().map(|b| b.lock().unwrap().clone()).collect()
}

/// Every frame left once, in order; every frame sent got its answer (none failed or late), and
/// most frames were sent (the first few may leave offline while the connection comes up).
fn assert_all_answered(b: &Branch, frames: usize) {
    let order: Vec<u64> = b.results.iter().map(|r| r.frame).collect();
    assert!(order.len() >= frames, "{} frames", order.len());
    assert_eq!(order, (0..order.len() as u64).collect::<Vec<_>>());
    let st = b.stats.as_ref().expect("stats read at EOS");
    let (offloaded, answered) = (
        st.get::<u64>("offloaded").unwrap(),
        st.get::<u64>("answered").unwrap(),
    );
    assert_eq!(answered, offloaded, "{st}");
    assert_eq!(st.get::<u64>("failed").unwrap(), 0, "{st}");
    assert_eq!(st.get::<u64>("late").unwrap(), 0, "{st}");
    let from_server = b
        .results
        .iter()
        .filter(|r| r.source == Source::Server)
        .count();
    assert_eq!(from_server as u64, answered, "{st}");
    assert!(2 * from_server > b.results.len(), "{st}");
}

#[test]
fn offloading_elements_to_one_server_share_one_connection() {
    let server = Server::start(None);
    let shared = run_branches(&server, 3, 40, "");
    for b in &shared {
        assert_all_answered(b, 40);
        assert!(b.users.contains(&3), "{:?}", b.users);
    }
    assert_eq!(server.metric(ACCEPTED), 1.0);
    // The control: each element with its own connection.
    let own = run_branches(&server, 3, 10, "shared-connection=false");
    for b in &own {
        assert_all_answered(b, 10);
        assert!(b.users.iter().all(|&u| u == 1), "{:?}", b.users);
    }
    assert_eq!(server.metric(ACCEPTED), 4.0);
}

/// Waits on `pipeline`'s bus for its cbofilter's `cbo-connection` message.
fn wait_connected(pipeline: &gst::Pipeline) {
    let bus = pipeline.bus().unwrap();
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(60)) {
        match msg.view() {
            gst::MessageView::Element(e)
                if e.structure().is_some_and(|s| s.name() == "cbo-connection") =>
            {
                return;
            }
            gst::MessageView::Error(e) => panic!("{}: {:?}", e.error(), e.debug()),
            _ => {}
        }
    }
    panic!("no cbo-connection message within 60 s");
}

/// An element set to NULL mid-run lets go of the connection without closing it: the element
/// still running keeps offloading on it, every frame answered, and the server saw one
/// connection.
#[test]
fn an_element_set_to_null_mid_run_leaves_the_others_offloading() {
    common::init();
    let server = Server::start(None);
    let cbo = props(
        &server.addr,
        &server.cert,
        "policy=all deadline=10000 max-in-flight=4",
    );
    let other = gst::parse::launch(&format!(
        "filesrc location=\"{}\" ! decodebin ! identity eos-after=1500 ! cbofilter name=other {cbo} ! fakesink",
        assets().join("video/dev-slideshow.mp4").display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    other.set_state(gst::State::Playing).unwrap();
    wait_connected(&other);
    let users = Arc::new(Mutex::new(Vec::<(u64, u32)>::new()));
    let u = users.clone();
    let other_in_probe = other.clone();
    let run = run_with(
        &format!(
            "filesrc location=\"{}\" ! decodebin ! identity eos-after=80 ! cbofilter name=cbo {cbo} ! fakesink",
            bottle_clip().display()
        ),
        move |pipeline| {
            common::on_each_output(&pipeline.by_name("cbo").unwrap(), move |c, result| {
                let frame = result.map(|r| r.frame).unwrap_or_default();
                let stats = c.property::<gst::Structure>("stats");
                u.lock()
                    .unwrap()
                    .push((frame, stats.get("connection-users").unwrap()));
                if frame == 20 {
                    // The other element leaves while this one is offloading.
                    other_in_probe.set_state(gst::State::Null).unwrap();
                }
            });
        },
    );
    assert!(run.error.is_none(), "{:?}", run.error);
    assert!(run.frames_in >= 80, "{}", run.frames_in);
    assert_eq!(run.results.len(), run.frames_in);
    // Joined a connection already up: every frame was sent and answered.
    let from_server = run
        .results
        .iter()
        .filter(|r| r.source == Source::Server)
        .count();
    assert_eq!(from_server, run.frames_in, "{:?}", run.warnings);
    assert!(
        run.warnings.is_empty(),
        "no disconnection: {:?}",
        run.warnings
    );
    assert_eq!(other.current_state(), gst::State::Null);
    let users = users.lock().unwrap();
    assert!(users.iter().any(|&(f, n)| f < 20 && n == 2), "{users:?}");
    assert!(
        users.iter().filter(|(f, _)| *f > 20).all(|&(_, n)| n == 1),
        "{users:?}"
    );
    assert_eq!(server.metric(ACCEPTED), 1.0);
}
