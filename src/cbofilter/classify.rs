//! The inference thread (`cbo-infer`, one per element, from start to stop): runs the model on the
//! frames the streaming thread has pre-processed, in arrival order, and hands each result on:
//! device only the frame is ready to leave; offloading it goes to the hold queue's undecided
//! frames and to the planner thread. So the streaming thread pre-processes frame N+1 while the
//! model runs frame N.
//!
//! It owns the model half of the classifier, the calibration and the score buffers outright: no
//! element lock is held while the model runs (with a shared session it waits for, or runs, the
//! batch: [`crate::shared_inference`]). It takes only the hold queue's lock, briefly, to take a
//! frame and to put its result back.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::imp::CboFilter;
use super::offload::{Job, Offload};
use super::output::Hold;
use super::{CAT, PLANNER_CAT};
use crate::calibration::Calibrator;
use crate::inference::ClassifierModel;
use crate::meta::{CboResult, Decision, Source};
use crate::offload::clock::Clock;
use crate::offload::driver::Event;
use crate::offload::planner::FrameIn;
use crate::postprocess::{Classification, OutputKind};
use crate::preprocess::Tensor;

/// A pre-processed frame on its way to the model.
pub struct ToClassify {
    /// The frame's index since start (the meta's `frame`, the planner's frame id).
    pub id: u64,
    pub tensor: Tensor,
    /// Offloading: the frame and its format, for the size probe and the send. `None` device
    /// only, so that the queued buffer is the only reference and stays writable for the meta.
    pub to_send: Option<(gst::Buffer, gst_video::VideoInfo)>,
    /// When the frame reached the sink pad (its deadline counts from there).
    pub entered: Instant,
    pub preprocess_us: u64,
}

/// What the inference thread owns: the model, and the calibration of its confidences.
pub struct Inference {
    pub model: ClassifierModel,
    pub calibrator: Option<Calibrator>,
    /// Log-probabilities of a probability-output model, for temperature scaling.
    pub log_scores: Vec<f32>,
}

impl Inference {
    /// Calibrated confidence of the frame just classified (raw when no calibration is loaded).
    fn calibrated(&mut self, raw: f64) -> f64 {
        match &self.calibrator {
            None => raw,
            Some(cal) => cal.apply_to_output(
                raw,
                self.model.last_output(),
                self.model.postprocessor().kind() == OutputKind::Probabilities,
                &mut self.log_scores,
            ),
        }
    }

    /// The device result of the frame just classified.
    fn result(&mut self, job: &ToClassify, c: Classification, inference_us: u64) -> CboResult {
        let confidence = self.calibrated(c.confidence);
        CboResult {
            frame: job.id,
            class_id: c.class_id,
            label: c.label,
            confidence,
            raw_confidence: c.confidence,
            source: Source::Device,
            decision: Decision::Device,
            resolution: 0,
            inference_us,
            preprocess_us: job.preprocess_us,
            top_classes: c.top_classes,
            top_scores: c.top_scores.iter().map(|&v| v as f64).collect(),
            device_class_id: c.class_id,
            device_confidence: confidence,
            server_latency_us: 0,
        }
    }
}

/// The running inference thread.
pub struct InferenceThread {
    handle: JoinHandle<()>,
}

impl InferenceThread {
    /// Starts the thread on `hold`'s frames; `offload` while the element offloads.
    pub fn spawn(
        element: &super::CboFilter,
        hold: Arc<Hold>,
        inference: Inference,
        offload: Option<Arc<Offload>>,
    ) -> std::io::Result<Self> {
        let weak = element.downgrade();
        let handle = std::thread::Builder::new()
            .name("cbo-infer".into())
            .spawn(move || run(weak, hold, inference, offload))?;
        Ok(Self { handle })
    }

    /// Lets the thread finish the frame it is running (if any) and waits for it. Never waits for
    /// itself (an application stopping the element from a bus sync handler on this thread):
    /// then the thread exits on its own once this returns.
    pub fn stop(self, hold: &Hold) {
        hold.stop_inference();
        if self.handle.thread().id() != std::thread::current().id() {
            let _ = self.handle.join();
        }
    }
}

fn run(
    element: glib::WeakRef<super::CboFilter>,
    hold: Arc<Hold>,
    mut inference: Inference,
    offload: Option<Arc<Offload>>,
) {
    while let Some(mut job) = hold.next_job() {
        let t = Instant::now();
        // A panic inside ONNX Runtime becomes an error, not a lost thread and a stalled stream.
        let classified = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            inference.model.classify(&mut job.tensor)
        }));
        let inference_us = t.elapsed().as_micros() as u64;
        let Some(obj) = element.upgrade() else {
            return;
        };
        let imp = obj.imp();
        match classified {
            Ok(Ok(c)) => {
                let result = inference.result(&job, c, inference_us);
                gst::trace!(
                    CAT,
                    imp = imp,
                    "frame {}: {} ({}) p={:.3} pre={}us inf={}us",
                    result.frame,
                    result.label,
                    result.class_id,
                    result.confidence,
                    result.preprocess_us,
                    result.inference_us
                );
                match (&offload, job.to_send.take()) {
                    (Some(o), Some((buffer, info))) => {
                        imp.offload_classified(o, &hold, job, buffer, info, result)
                    }
                    _ => {
                        hold.classified(job.id, result, None, job.tensor, || {});
                    }
                }
            }
            Ok(Err(e)) => {
                gst::element_imp_error!(imp, gst::StreamError::Failed, ("{e}"));
                hold.classification_failed(job.tensor);
            }
            Err(_) => {
                gst::element_imp_error!(
                    imp,
                    gst::StreamError::Failed,
                    ("The model panicked while classifying frame {}", job.id)
                );
                hold.classification_failed(job.tensor);
            }
        }
    }
}

impl CboFilter {
    /// Inference thread, offloading: queues classified frame `job` as undecided until its
    /// deadline and hands it to the planner thread.
    fn offload_classified(
        &self,
        offload: &Offload,
        hold: &Hold,
        job: ToClassify,
        buffer: gst::Buffer,
        info: gst_video::VideoInfo,
        mut result: CboResult,
    ) {
        // The frame's JPEG size at the smallest resolution: the planner scales the profile's
        // sizes by it. Not while offline: the frame stays on the device anyway.
        let probe = offload
            .size_probe
            .as_ref()
            .filter(|_| offload.client.connected());
        let small_jpeg_bytes = probe.and_then(|probe| {
            let frame =
                gst_video::VideoFrameRef::from_buffer_ref_readable(buffer.as_ref(), &info).ok()?;
            let mut probe = probe.lock().unwrap();
            let short = probe.1;
            probe
                .0
                .encode(&frame, short)
                .ok()
                .map(|j| j.bytes.len() as f64)
        });
        let deadline = job.entered + offload.deadline;
        let frame = FrameIn {
            id: result.frame,
            arrival_ms: offload.clock.ms(job.entered),
            deadline_ms: offload.clock.ms(deadline),
            confidence: result.device_confidence,
            raw_confidence: result.raw_confidence,
            class: result.class_id,
            small_jpeg_bytes,
        };
        gst::log!(
            PLANNER_CAT,
            imp = self,
            "frame {}: p={:.3} raw={:.3} class={} small-jpeg={:?}",
            frame.id,
            frame.confidence,
            frame.raw_confidence,
            frame.class,
            small_jpeg_bytes
        );
        // Undecided: if the planner never decides it, it leaves at its deadline (late).
        result.decision = Decision::Late;
        let send = Job {
            buffer,
            info,
            deadline,
        };
        hold.classified(job.id, result, Some(deadline), job.tensor, || {
            offload
                .driver
                .send(offload.now_ms(), vec![Event::Frame(frame, send)]);
        });
    }
}
