//! Writes tiny ONNX models by hand (protobuf wire format), to test how the element treats models
//! that are not image classifiers without shipping binary fixtures.

fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn field_varint(field: u32, v: u64, out: &mut Vec<u8>) {
    varint((field as u64) << 3, out);
    varint(v, out);
}

fn field_bytes(field: u32, bytes: &[u8], out: &mut Vec<u8>) {
    varint(((field as u64) << 3) | 2, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// ValueInfoProto for a float tensor of fixed shape.
fn value_info(name: &str, shape: &[u64]) -> Vec<u8> {
    let mut dims = Vec::new();
    for &d in shape {
        let mut dim = Vec::new();
        field_varint(1, d, &mut dim); // Dimension.dim_value
        field_bytes(1, &dim, &mut dims); // TensorShapeProto.dim
    }
    let mut tensor = Vec::new();
    field_varint(1, 1, &mut tensor); // elem_type = FLOAT
    field_bytes(2, &dims, &mut tensor); // shape
    let mut ty = Vec::new();
    field_bytes(1, &tensor, &mut ty); // TypeProto.tensor_type
    let mut vi = Vec::new();
    field_bytes(1, name.as_bytes(), &mut vi);
    field_bytes(2, &ty, &mut vi);
    vi
}

/// A model whose only node is `Identity(x) -> y`, with `x` and `y` of `shape`.
pub fn identity_model(shape: &[u64]) -> Vec<u8> {
    let mut node = Vec::new();
    field_bytes(1, b"x", &mut node);
    field_bytes(2, b"y", &mut node);
    field_bytes(4, b"Identity", &mut node);
    let mut graph = Vec::new();
    field_bytes(1, &node, &mut graph);
    field_bytes(2, b"identity", &mut graph);
    field_bytes(11, &value_info("x", shape), &mut graph);
    field_bytes(12, &value_info("y", shape), &mut graph);
    model_of(&graph)
}

fn attribute_int(name: &str, v: u64) -> Vec<u8> {
    let mut a = Vec::new();
    field_bytes(1, name.as_bytes(), &mut a); // name
    field_varint(3, v, &mut a); // i
    field_varint(20, 2, &mut a); // type = INT
    a
}

fn node(inputs: &[&str], outputs: &[&str], op: &str, attributes: &[Vec<u8>]) -> Vec<u8> {
    let mut n = Vec::new();
    for i in inputs {
        field_bytes(1, i.as_bytes(), &mut n);
    }
    for o in outputs {
        field_bytes(2, o.as_bytes(), &mut n);
    }
    field_bytes(4, op.as_bytes(), &mut n);
    for a in attributes {
        field_bytes(5, a, &mut n);
    }
    n
}

/// A float initializer of `dims`.
fn initializer(name: &str, dims: &[u64], values: &[f32]) -> Vec<u8> {
    let mut t = Vec::new();
    for &d in dims {
        field_varint(1, d, &mut t); // dims
    }
    field_varint(2, 1, &mut t); // data_type = FLOAT
    field_bytes(8, name.as_bytes(), &mut t);
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    field_bytes(9, &raw, &mut t); // raw_data
    t
}

/// An image classifier `[1,3,side,side] -> [1,2]` that works on an all-zero image (its load-time
/// warm-up, and black frames with input-mean=0) and fails at run time on anything brighter: it
/// picks its score row with `Gather(rows, int(max(x)))`, and there are two rows.
pub fn fails_unless_black_model(side: u64) -> Vec<u8> {
    let mut graph = Vec::new();
    for n in [
        node(&["x"], &["m"], "ReduceMax", &[attribute_int("keepdims", 0)]),
        node(&["m"], &["i"], "Cast", &[attribute_int("to", 7)]), // INT64
        node(&["rows", "i"], &["y"], "Gather", &[]),
    ] {
        field_bytes(1, &n, &mut graph);
    }
    field_bytes(2, b"fails_unless_black", &mut graph);
    field_bytes(
        5,
        &initializer("rows", &[2, 1, 2], &[2.0, 1.0, 1.0, 2.0]),
        &mut graph,
    );
    field_bytes(11, &value_info("x", &[1, 3, side, side]), &mut graph);
    field_bytes(12, &value_info("y", &[1, 2]), &mut graph);
    model_of(&graph)
}

/// An image classifier `[1,3,side,side] -> [1,2]` whose scores are finite on an all-zero image
/// (`log([2, 1] - max(x))`: class 0) and NaN on anything brighter than 1 (the log of a negative
/// number): a broken model, or an execution provider whose precision overflowed.
pub fn nan_unless_black_model(side: u64) -> Vec<u8> {
    let mut graph = Vec::new();
    for n in [
        node(&["x"], &["m"], "ReduceMax", &[attribute_int("keepdims", 0)]),
        node(&["c", "m"], &["d"], "Sub", &[]),
        node(&["d"], &["y"], "Log", &[]),
    ] {
        field_bytes(1, &n, &mut graph);
    }
    field_bytes(2, b"nan_unless_black", &mut graph);
    field_bytes(5, &initializer("c", &[1, 2], &[2.0, 1.0]), &mut graph);
    field_bytes(11, &value_info("x", &[1, 3, side, side]), &mut graph);
    field_bytes(12, &value_info("y", &[1, 2]), &mut graph);
    model_of(&graph)
}

/// ValueInfoProto for a float tensor whose dimensions are all named, none fixed: the shape
/// Hugging Face Optimum gives an image classifier's `pixel_values`.
fn dynamic_value_info(name: &str, dims: &[&str]) -> Vec<u8> {
    let mut shape = Vec::new();
    for d in dims {
        let mut dim = Vec::new();
        field_bytes(2, d.as_bytes(), &mut dim); // Dimension.dim_param
        field_bytes(1, &dim, &mut shape); // TensorShapeProto.dim
    }
    let mut tensor = Vec::new();
    field_varint(1, 1, &mut tensor); // elem_type = FLOAT
    field_bytes(2, &shape, &mut tensor);
    let mut ty = Vec::new();
    field_bytes(1, &tensor, &mut ty);
    let mut vi = Vec::new();
    field_bytes(1, name.as_bytes(), &mut vi);
    field_bytes(2, &ty, &mut vi);
    vi
}

/// An image classifier `[batch, channels, height, width] -> [batch, 4]`, every input dimension
/// dynamic (as Optimum exports them): the mean of each colour channel, times a 3x4 matrix. It
/// runs at any image size; class 0 scores red, 1 green, 2 blue, 3 nothing.
pub fn dynamic_size_model() -> Vec<u8> {
    dynamic_size_model_of(3)
}

/// [`dynamic_size_model`] for `channels` colour channels (its matrix is `channels`x4): with
/// other than 3 it fails on an RGB image.
pub fn dynamic_size_model_of(channels: u64) -> Vec<u8> {
    let mut graph = Vec::new();
    for n in [
        node(&["x"], &["pooled"], "GlobalAveragePool", &[]),
        node(&["pooled"], &["flat"], "Flatten", &[]),
        node(&["flat", "w"], &["y"], "MatMul", &[]),
    ] {
        field_bytes(1, &n, &mut graph);
    }
    field_bytes(2, b"dynamic_size", &mut graph);
    // Row c scores class c (the identity, padded with a column for "nothing").
    let w: Vec<f32> = (0..channels * 4)
        .map(|i| if i / 4 == i % 4 { 1.0 } else { 0.0 })
        .collect();
    field_bytes(5, &initializer("w", &[channels, 4], &w), &mut graph);
    field_bytes(
        11,
        &dynamic_value_info("x", &["batch", "channels", "height", "width"]),
        &mut graph,
    );
    field_bytes(
        12,
        &dynamic_value_info("y", &["batch", "classes"]),
        &mut graph,
    );
    model_of(&graph)
}

/// ModelProto (IR version 7, opset 13) around a GraphProto.
fn model_of(graph: &[u8]) -> Vec<u8> {
    let mut opset = Vec::new();
    field_varint(2, 13, &mut opset);
    let mut model = Vec::new();
    field_varint(1, 7, &mut model); // ir_version
    field_bytes(8, &opset, &mut model);
    field_bytes(7, graph, &mut model);
    model
}
