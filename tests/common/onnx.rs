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
    let mut opset = Vec::new();
    field_varint(2, 13, &mut opset);
    let mut model = Vec::new();
    field_varint(1, 7, &mut model); // ir_version
    field_bytes(8, &opset, &mut model);
    field_bytes(7, &graph, &mut model);
    model
}
