//! The clocks the offload machinery runs on: the system's monotonic clock in the element, a
//! virtual one in the simulator and in tests, so that those replay the same code without sleeps
//! (the approach of quinn-proto's tests).
//!
//! The planners work in milliseconds as `f64` since the clock's epoch ([`Clock::ms`]); the hold
//! queue keeps the clock's own instants.

use std::fmt::Debug;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// What waiting for the next input ended with.
#[derive(Debug, PartialEq)]
pub enum Waited<T> {
    Input(T),
    /// The time asked for has come.
    Due,
    /// Every sender is gone.
    Closed,
}

pub trait Clock: Send + Sync + 'static {
    type Instant: Copy + PartialOrd + Debug + Send + Sync + 'static;
    fn now(&self) -> Self::Instant;
    /// `t` on the planners' time axis: milliseconds since the clock's epoch.
    fn ms(&self, t: Self::Instant) -> f64;
    /// The instant `ms` milliseconds after the epoch.
    fn at_ms(&self, ms: f64) -> Self::Instant;
    /// Waits for the next input on `rx`, or until `until_ms` (on the planners' axis) has come.
    fn wait<T>(&self, rx: &Receiver<T>, until_ms: Option<f64>) -> Waited<T>;
}

/// The monotonic system clock, counted from when the element started.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    epoch: Instant,
}

impl SystemClock {
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    type Instant = Instant;

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn ms(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.epoch).as_secs_f64() * 1000.0
    }

    fn at_ms(&self, ms: f64) -> Instant {
        self.epoch + Duration::from_secs_f64(ms.max(0.0) / 1000.0)
    }

    fn wait<T>(&self, rx: &Receiver<T>, until_ms: Option<f64>) -> Waited<T> {
        let received = match until_ms {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(until) => {
                let left = (until - self.ms(Instant::now())).max(0.0);
                rx.recv_timeout(Duration::from_secs_f64(left / 1000.0))
            }
        };
        match received {
            Ok(t) => Waited::Input(t),
            Err(RecvTimeoutError::Timeout) => Waited::Due,
            Err(RecvTimeoutError::Disconnected) => Waited::Closed,
        }
    }
}

/// Virtual time: instants are milliseconds, and time moves only with the inputs (each carries
/// its time), so waiting never times out. The simulator and the driver's tests run on it.
#[derive(Debug, Clone, Copy, Default)]
pub struct VirtualClock;

impl Clock for VirtualClock {
    type Instant = f64;

    /// Virtual time has no "now" of its own; the inputs say what time it is.
    fn now(&self) -> f64 {
        0.0
    }

    fn ms(&self, t: f64) -> f64 {
        t
    }

    fn at_ms(&self, ms: f64) -> f64 {
        ms
    }

    fn wait<T>(&self, rx: &Receiver<T>, _until_ms: Option<f64>) -> Waited<T> {
        match rx.recv() {
            Ok(t) => Waited::Input(t),
            Err(_) => Waited::Closed,
        }
    }
}
