//! The Open Inference Protocol (KServe v2) as cboserver uses it, without any networking: the
//! generated messages, the check of a model's metadata against cboserver's pre-processing, the
//! `ModelInfer` request for a batch and the scores read back from an answer.

use std::fmt::Write as _;

use crate::preprocess::{Layout, TensorSpec};

/// Messages and client generated at build time from `proto/open_inference_grpc.proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("inference");
}

use proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use proto::model_metadata_response::TensorMetadata;
use proto::{ModelInferRequest, ModelInferResponse, ModelMetadataResponse};

/// What cboserver's pre- and post-processing need the backend model to be.
#[derive(Debug, Clone)]
pub struct Expected {
    /// Input size and layout cboserver pre-processes frames to; the element type is FP32 (the
    /// backend refuses any other at start).
    pub spec: TensorSpec,
    /// Number of class names given with `--labels`; `None`: any width.
    pub labels: Option<usize>,
}

/// How a model's metadata differs from what cboserver sends or reads; each names the mismatch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataMismatch {
    #[error("model '{model}' has {count} inputs ({names}); cboserver sends one image tensor")]
    InputCount {
        model: String,
        count: usize,
        names: String,
    },
    #[error(
        "model '{model}' input '{input}' is {datatype}; cboserver sends FP32 (raw_input_contents)"
    )]
    InputDatatype {
        model: String,
        input: String,
        datatype: String,
    },
    #[error(
        "model '{model}' input '{input}' has shape {shape}: not an image of 3 channels \
         ([N,3,H,W] or [N,H,W,3], N = -1 when the model batches)"
    )]
    InputShape {
        model: String,
        input: String,
        shape: String,
    },
    #[error(
        "model '{model}' input '{input}' has shape {shape} ({found}) but cboserver \
         pre-processes to {expected} (--input-layout)"
    )]
    Layout {
        model: String,
        input: String,
        shape: String,
        found: &'static str,
        expected: &'static str,
    },
    #[error(
        "model '{model}' input '{input}' is {found} (shape {shape}) but cboserver \
         pre-processes to {expected} (--input-size)"
    )]
    Size {
        model: String,
        input: String,
        shape: String,
        found: String,
        expected: String,
    },
    #[error(
        "model '{model}' input '{input}' fixes its batch at {batch} (shape {shape}); \
         cboserver sends batches of any size up to --max-batch: use -1 (dynamic) or 1"
    )]
    FixedBatch {
        model: String,
        input: String,
        shape: String,
        batch: i64,
    },
    #[error("model '{model}' has no outputs")]
    NoOutput { model: String },
    #[error("model '{model}' output '{output}' is {datatype}; cboserver reads FP32 scores")]
    OutputDatatype {
        model: String,
        output: String,
        datatype: String,
    },
    #[error(
        "model '{model}' output '{output}' has shape {shape}: not one row of class scores per image"
    )]
    OutputShape {
        model: String,
        output: String,
        shape: String,
    },
    #[error(
        "model '{model}' output '{output}' has {width} scores per image but --labels has \
         {labels} names (expected {width}, or {} with a background entry)",
        width.saturating_sub(1)
    )]
    Labels {
        model: String,
        output: String,
        width: usize,
        labels: usize,
    },
}

/// How a backend model takes several images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchMode {
    /// A batch dimension of -1 (Triton `max_batch_size` > 0): one request per batch.
    Dynamic,
    /// A batch dimension fixed at 1: one request per image, with the dimension.
    One,
    /// No batch dimension (Triton `max_batch_size: 0`): one request per image, without it.
    Unbatched,
}

impl BatchMode {
    /// Images one request may carry.
    pub fn max_images(self) -> Option<usize> {
        match self {
            BatchMode::Dynamic => None,
            BatchMode::One | BatchMode::Unbatched => Some(1),
        }
    }
}

/// The model as cboserver talks to it, once its metadata passed [`check_metadata`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub input: String,
    pub output: String,
    pub batch: BatchMode,
    /// Scores per image, when the metadata fixes it.
    pub classes: Option<usize>,
}

fn shape_text(shape: &[i64]) -> String {
    let dims: Vec<String> = shape.iter().map(i64::to_string).collect();
    format!("[{}]", dims.join(","))
}

fn layout_name(layout: Layout) -> &'static str {
    match layout {
        Layout::Nchw => "NCHW",
        Layout::Nhwc => "NHWC",
    }
}

fn size_text(w: i64, h: i64) -> String {
    let d = |v: i64| {
        if v < 0 {
            "any".to_string()
        } else {
            v.to_string()
        }
    };
    format!("{}x{}", d(w), d(h))
}

/// Checks the backend model's metadata against what cboserver sends (one FP32 image tensor of
/// `expected.spec`) and reads (one FP32 row of scores per image).
pub fn check_metadata(
    meta: &ModelMetadataResponse,
    expected: &Expected,
) -> Result<Checked, MetadataMismatch> {
    let model = meta.name.clone();
    let [input] = meta.inputs.as_slice() else {
        let names: Vec<&str> = meta.inputs.iter().map(|i| i.name.as_str()).collect();
        return Err(MetadataMismatch::InputCount {
            model,
            count: meta.inputs.len(),
            names: names.join(", "),
        });
    };
    let batch = check_input(&model, input, expected)?;
    let output = check_output(&model, meta.outputs.first(), batch != BatchMode::Unbatched)?;
    let classes = output.1;
    if let (Some(width), Some(labels)) = (classes, expected.labels)
        && width != labels
        && width != labels + 1
    {
        return Err(MetadataMismatch::Labels {
            model,
            output: output.0,
            width,
            labels,
        });
    }
    Ok(Checked {
        input: input.name.clone(),
        output: output.0,
        batch,
        classes,
    })
}

/// Returns how the input takes several images.
fn check_input(
    model: &str,
    input: &TensorMetadata,
    expected: &Expected,
) -> Result<BatchMode, MetadataMismatch> {
    let name = input.name.clone();
    let shape = shape_text(&input.shape);
    if input.datatype != "FP32" {
        return Err(MetadataMismatch::InputDatatype {
            model: model.into(),
            input: name,
            datatype: input.datatype.clone(),
        });
    }
    let (batch, dims) = match input.shape.as_slice() {
        [n, a, b, c] if *n < 0 => (BatchMode::Dynamic, [*a, *b, *c]),
        [1, a, b, c] => (BatchMode::One, [*a, *b, *c]),
        [n, ..] if input.shape.len() == 4 => {
            return Err(MetadataMismatch::FixedBatch {
                model: model.into(),
                input: name,
                shape,
                batch: *n,
            });
        }
        [a, b, c] => (BatchMode::Unbatched, [*a, *b, *c]),
        _ => {
            return Err(MetadataMismatch::InputShape {
                model: model.into(),
                input: name,
                shape,
            });
        }
    };
    let found = match dims {
        [3, _, _] => Layout::Nchw,
        [_, _, 3] => Layout::Nhwc,
        _ => {
            return Err(MetadataMismatch::InputShape {
                model: model.into(),
                input: name,
                shape,
            });
        }
    };
    // [3, H, W, 3] is ambiguous only for 3x3 images; the expected layout decides then.
    let found = if dims[0] == 3 && dims[2] == 3 {
        expected.spec.layout
    } else {
        found
    };
    if found != expected.spec.layout {
        return Err(MetadataMismatch::Layout {
            model: model.into(),
            input: name,
            shape,
            found: layout_name(found),
            expected: layout_name(expected.spec.layout),
        });
    }
    let (h, w) = match found {
        Layout::Nchw => (dims[1], dims[2]),
        Layout::Nhwc => (dims[0], dims[1]),
    };
    let (ew, eh) = (
        i64::from(expected.spec.width),
        i64::from(expected.spec.height),
    );
    // -1: the model takes any size, so the pre-processing's fits.
    if (w >= 0 && w != ew) || (h >= 0 && h != eh) {
        return Err(MetadataMismatch::Size {
            model: model.into(),
            input: name,
            shape,
            found: size_text(w, h),
            expected: size_text(ew, eh),
        });
    }
    Ok(batch)
}

/// Returns the output's name and row width (when fixed).
fn check_output(
    model: &str,
    output: Option<&TensorMetadata>,
    batched: bool,
) -> Result<(String, Option<usize>), MetadataMismatch> {
    let Some(output) = output else {
        return Err(MetadataMismatch::NoOutput {
            model: model.into(),
        });
    };
    if output.datatype != "FP32" {
        return Err(MetadataMismatch::OutputDatatype {
            model: model.into(),
            output: output.name.clone(),
            datatype: output.datatype.clone(),
        });
    }
    // Per image: [C], or [1, C] / [C, 1, 1] style shapes whose other dims are 1.
    let per_image: &[i64] = if batched {
        output.shape.get(1..).unwrap_or(&[])
    } else {
        &output.shape
    };
    let bad = || MetadataMismatch::OutputShape {
        model: model.into(),
        output: output.name.clone(),
        shape: shape_text(&output.shape),
    };
    let wide: Vec<i64> = per_image.iter().copied().filter(|&d| d != 1).collect();
    let width = match wide.as_slice() {
        [] => return Err(bad()),
        [d] if *d < 0 => None,
        [d] => Some(*d as usize),
        _ => return Err(bad()),
    };
    Ok((output.name.clone(), width))
}

/// The `ModelInfer` request for `n` images given back to back in `images` (FP32, as
/// `raw_input_contents`, little-endian). `image_shape` is one image's shape without N.
pub fn infer_request(
    model: &str,
    version: &str,
    checked: &Checked,
    image_shape: &[usize],
    n: usize,
    images: &[f32],
) -> ModelInferRequest {
    let mut shape: Vec<i64> = Vec::with_capacity(image_shape.len() + 1);
    if checked.batch != BatchMode::Unbatched {
        shape.push(n as i64);
    }
    shape.extend(image_shape.iter().map(|&d| d as i64));
    let mut raw = Vec::with_capacity(std::mem::size_of_val(images));
    for v in images {
        raw.extend_from_slice(&v.to_le_bytes());
    }
    ModelInferRequest {
        model_name: model.into(),
        model_version: version.into(),
        inputs: vec![InferInputTensor {
            name: checked.input.clone(),
            datatype: "FP32".into(),
            shape,
            ..Default::default()
        }],
        outputs: vec![InferRequestedOutputTensor {
            name: checked.output.clone(),
            ..Default::default()
        }],
        raw_input_contents: vec![raw],
        ..Default::default()
    }
}

/// Why an answer could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("backend answer: {0}")]
pub struct AnswerError(pub String);

/// Appends the scores of `output` for `n` images to `scores` (whether the server sent them as
/// `raw_output_contents` or typed `contents`) and returns the row width.
pub fn read_scores(
    answer: &ModelInferResponse,
    output: &str,
    n: usize,
    scores: &mut Vec<f32>,
) -> Result<usize, AnswerError> {
    let index = answer
        .outputs
        .iter()
        .position(|o| o.name == output)
        .or(if answer.outputs.len() == 1 {
            Some(0)
        } else {
            None
        })
        .ok_or_else(|| {
            let names: Vec<&str> = answer.outputs.iter().map(|o| o.name.as_str()).collect();
            AnswerError(format!("no output '{output}' (got: {})", names.join(", ")))
        })?;
    let tensor = &answer.outputs[index];
    if tensor.datatype != "FP32" {
        return Err(AnswerError(format!(
            "output '{}' is {}, expected FP32",
            tensor.name, tensor.datatype
        )));
    }
    let start = scores.len();
    if !answer.raw_output_contents.is_empty() {
        let raw = answer.raw_output_contents.get(index).ok_or_else(|| {
            AnswerError(format!(
                "{} raw outputs for {} output tensors",
                answer.raw_output_contents.len(),
                answer.outputs.len()
            ))
        })?;
        if raw.len() % 4 != 0 {
            return Err(AnswerError(format!(
                "raw output of {} bytes is not a whole number of FP32 values",
                raw.len()
            )));
        }
        scores.extend(
            raw.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
    } else if let Some(contents) = &tensor.contents {
        scores.extend_from_slice(&contents.fp32_contents);
    }
    let got = scores.len() - start;
    if got == 0 || n == 0 || !got.is_multiple_of(n) {
        scores.truncate(start);
        return Err(AnswerError(format!(
            "{got} scores for {n} image(s) in output '{}' (shape {})",
            tensor.name,
            shape_text(&tensor.shape)
        )));
    }
    Ok(got / n)
}

/// One line describing a model's tensors, for the start-up log.
pub fn describe(meta: &ModelMetadataResponse) -> String {
    let mut s = String::new();
    for (what, list) in [("in", &meta.inputs), ("out", &meta.outputs)] {
        for t in list {
            let _ = write!(
                s,
                "{what} {} {} {}; ",
                t.name,
                t.datatype,
                shape_text(&t.shape)
            );
        }
    }
    s.trim_end_matches("; ").to_string()
}

#[cfg(test)]
mod tests {
    use super::proto::InferTensorContents;
    use super::proto::model_infer_response::InferOutputTensor;
    use super::*;
    use crate::preprocess::InputType;

    fn tensor(name: &str, datatype: &str, shape: &[i64]) -> TensorMetadata {
        TensorMetadata {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
        }
    }

    /// The bundled server model as Triton's onnxruntime backend describes it.
    fn lite2(input: TensorMetadata, output: TensorMetadata) -> ModelMetadataResponse {
        ModelMetadataResponse {
            name: "efficientnet-lite2".into(),
            versions: vec!["1".into()],
            platform: "onnxruntime_onnx".into(),
            inputs: vec![input],
            outputs: vec![output],
            ..Default::default()
        }
    }

    fn expected(layout: Layout, size: u32, labels: Option<usize>) -> Expected {
        Expected {
            spec: TensorSpec {
                layout,
                width: size,
                height: size,
                elem: InputType::F32,
            },
            labels,
        }
    }

    fn logits() -> TensorMetadata {
        tensor("logits", "FP32", &[-1, 1000])
    }

    #[test]
    fn matching_metadata_gives_names_batching_and_width() {
        let meta = lite2(tensor("input", "FP32", &[-1, 3, 260, 260]), logits());
        let checked = check_metadata(&meta, &expected(Layout::Nchw, 260, Some(1000))).unwrap();
        assert_eq!(
            checked,
            Checked {
                input: "input".into(),
                output: "logits".into(),
                batch: BatchMode::Dynamic,
                classes: Some(1000),
            }
        );
        // NHWC, any size, background entry, no batch dimension.
        let meta = lite2(
            tensor("x", "FP32", &[-1, -1, 3]),
            tensor("probs", "FP32", &[1001]),
        );
        let checked = check_metadata(&meta, &expected(Layout::Nhwc, 224, Some(1000))).unwrap();
        assert_eq!(checked.batch, BatchMode::Unbatched);
        assert_eq!(checked.classes, Some(1001));
        let meta = lite2(
            tensor("x", "FP32", &[1, 3, 224, 224]),
            tensor("y", "FP32", &[1, -1]),
        );
        let checked = check_metadata(&meta, &expected(Layout::Nchw, 224, None)).unwrap();
        assert_eq!(checked.batch, BatchMode::One);
        assert_eq!(checked.batch.max_images(), Some(1));
        assert_eq!(checked.classes, None);
    }

    #[test]
    fn each_mismatch_is_named() {
        let nchw260 = expected(Layout::Nchw, 260, None);
        let err = |meta: ModelMetadataResponse, e: &Expected| {
            check_metadata(&meta, e).unwrap_err().to_string()
        };
        let size = err(
            lite2(tensor("input", "FP32", &[-1, 3, 224, 224]), logits()),
            &nchw260,
        );
        assert_eq!(
            size,
            "model 'efficientnet-lite2' input 'input' is 224x224 (shape [-1,3,224,224]) but \
             cboserver pre-processes to 260x260 (--input-size)"
        );
        let layout = err(
            lite2(tensor("input", "FP32", &[-1, 260, 260, 3]), logits()),
            &nchw260,
        );
        assert!(
            layout.contains("(NHWC) but cboserver pre-processes to NCHW"),
            "{layout}"
        );
        let dtype = err(
            lite2(tensor("input", "UINT8", &[-1, 3, 260, 260]), logits()),
            &nchw260,
        );
        assert!(dtype.contains("is UINT8; cboserver sends FP32"), "{dtype}");
        let channels = err(
            lite2(tensor("input", "FP32", &[-1, 1, 260, 260]), logits()),
            &nchw260,
        );
        assert!(
            channels.contains("not an image of 3 channels"),
            "{channels}"
        );
        let batch = err(
            lite2(tensor("input", "FP32", &[4, 3, 260, 260]), logits()),
            &nchw260,
        );
        assert!(batch.contains("fixes its batch at 4"), "{batch}");
        let out = err(
            lite2(
                tensor("input", "FP32", &[-1, 3, 260, 260]),
                tensor("logits", "INT64", &[-1, 1000]),
            ),
            &nchw260,
        );
        assert!(out.contains("output 'logits' is INT64"), "{out}");
        let boxes = err(
            lite2(
                tensor("input", "FP32", &[-1, 3, 260, 260]),
                tensor("boxes", "FP32", &[-1, 100, 4]),
            ),
            &nchw260,
        );
        assert!(boxes.contains("not one row of class scores"), "{boxes}");
        let labels = err(
            lite2(tensor("input", "FP32", &[-1, 3, 260, 260]), logits()),
            &expected(Layout::Nchw, 260, Some(10)),
        );
        assert!(labels.contains("1000 scores per image but --labels has 10 names"));
        let mut two = lite2(tensor("a", "FP32", &[-1, 3, 260, 260]), logits());
        two.inputs.push(tensor("b", "FP32", &[-1, 4]));
        assert!(err(two, &nchw260).contains("has 2 inputs (a, b)"));
    }

    fn checked(batch: BatchMode) -> Checked {
        Checked {
            input: "input".into(),
            output: "logits".into(),
            batch,
            classes: Some(2),
        }
    }

    #[test]
    fn a_batch_is_one_request_of_raw_little_endian_fp32() {
        let images = [1.0f32, -2.5, 3.0, 0.5];
        let r = infer_request("m", "2", &checked(BatchMode::Dynamic), &[2], 2, &images);
        assert_eq!(
            (r.model_name.as_str(), r.model_version.as_str()),
            ("m", "2")
        );
        assert_eq!(r.inputs.len(), 1);
        assert_eq!(r.inputs[0].shape, vec![2, 2]);
        assert_eq!(r.inputs[0].datatype, "FP32");
        assert_eq!(r.outputs[0].name, "logits");
        assert_eq!(r.raw_input_contents.len(), 1);
        assert_eq!(&r.raw_input_contents[0][4..8], &(-2.5f32).to_le_bytes());
        assert_eq!(r.raw_input_contents[0].len(), 16);
        let r = infer_request(
            "m",
            "",
            &checked(BatchMode::Unbatched),
            &[2],
            1,
            &images[..2],
        );
        assert_eq!(r.inputs[0].shape, vec![2]);
    }

    fn answer(raw: Option<Vec<f32>>, typed: Option<Vec<f32>>) -> ModelInferResponse {
        ModelInferResponse {
            outputs: vec![InferOutputTensor {
                name: "logits".into(),
                datatype: "FP32".into(),
                shape: vec![2, 3],
                contents: typed.map(|v| InferTensorContents {
                    fp32_contents: v,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            raw_output_contents: raw
                .map(|v| vec![v.iter().flat_map(|x| x.to_le_bytes()).collect()])
                .unwrap_or_default(),
            ..Default::default()
        }
    }

    #[test]
    fn scores_are_read_from_raw_or_typed_contents() {
        let rows = vec![0.1, 0.2, 0.7, 0.5, 0.4, 0.1];
        for a in [
            answer(Some(rows.clone()), None),
            answer(None, Some(rows.clone())),
        ] {
            let mut scores = vec![9.0];
            assert_eq!(read_scores(&a, "logits", 2, &mut scores), Ok(3));
            assert_eq!(&scores[1..], &rows[..]);
        }
        let mut scores = Vec::new();
        let short = answer(Some(rows[..5].to_vec()), None);
        assert!(read_scores(&short, "logits", 2, &mut scores).is_err());
        assert!(scores.is_empty());
        let empty = answer(None, None);
        assert!(read_scores(&empty, "logits", 2, &mut scores).is_err());
        let mut bad = answer(Some(rows), None);
        bad.raw_output_contents[0].pop();
        assert!(read_scores(&bad, "logits", 2, &mut scores).is_err());
    }
}
