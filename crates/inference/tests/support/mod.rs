//! Tiny ONNX models written at test time through tract-onnx's own protobuf types.
#![allow(dead_code)]

use prost::Message;
use tract_onnx::pb::{self, tensor_proto::DataType};

pub fn dim(d: &str) -> pb::tensor_shape_proto::Dimension {
    use pb::tensor_shape_proto::dimension::Value;
    let value = match d.parse::<i64>() {
        Ok(v) => Value::DimValue(v),
        Err(_) => Value::DimParam(d.to_string()),
    };
    pb::tensor_shape_proto::Dimension {
        denotation: String::new(),
        value: Some(value),
    }
}

/// A graph input or output: `dims` are numbers or symbol names ("N").
pub fn value(name: &str, dt: DataType, dims: &[&str]) -> pb::ValueInfoProto {
    let shape = pb::TensorShapeProto {
        dim: dims.iter().map(|d| dim(d)).collect(),
    };
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: dt as i32,
                shape: Some(shape),
            })),
        }),
        doc_string: String::new(),
    }
}

pub fn node(
    op: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: format!("{op}_{}", outputs[0]),
        op_type: op.into(),
        attribute: attrs,
        ..Default::default()
    }
}

pub fn int_attr(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

pub fn f32_init(name: &str, dims: &[i64], data: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: DataType::Float as i32,
        float_data: data.to_vec(),
        ..Default::default()
    }
}

pub fn model(graph: pb::GraphProto) -> Vec<u8> {
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        producer_name: "lichen-tests".into(),
        graph: Some(graph),
        ..Default::default()
    }
    .encode_to_vec()
}

/// `y[N, 2] = x[N, 3] · W + b` with W = [[1, 2], [3, 4], [5, 6]], b = [0.5, -0.5].
pub fn linear() -> Vec<u8> {
    model(pb::GraphProto {
        name: "linear".into(),
        node: vec![
            node("MatMul", &["x", "W"], &["xw"], vec![]),
            node("Add", &["xw", "b"], &["y"], vec![]),
        ],
        initializer: vec![
            f32_init("W", &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
            f32_init("b", &[2], &[0.5, -0.5]),
        ],
        input: vec![value("x", DataType::Float, &["N", "3"])],
        output: vec![value("y", DataType::Float, &["N", "2"])],
        ..Default::default()
    })
}

/// What `linear` computes, for checking.
pub fn linear_expected(x: &[f32]) -> Vec<f32> {
    x.chunks(3)
        .flat_map(|r| {
            [
                r[0] + 3.0 * r[1] + 5.0 * r[2] + 0.5,
                2.0 * r[0] + 4.0 * r[1] + 6.0 * r[2] - 0.5,
            ]
        })
        .collect()
}

/// `y[L] = x[L] * float(k)` and `k2 = k + k`, with `k` an int64 scalar (rank 0).
pub fn scalar_input() -> Vec<u8> {
    model(pb::GraphProto {
        name: "scalar".into(),
        node: vec![
            node(
                "Cast",
                &["k"],
                &["kf"],
                vec![int_attr("to", DataType::Float as i64)],
            ),
            node("Mul", &["x", "kf"], &["y"], vec![]),
            node("Add", &["k", "k"], &["k2"], vec![]),
        ],
        input: vec![
            value("x", DataType::Float, &["L"]),
            value("k", DataType::Int64, &[]),
        ],
        output: vec![
            value("y", DataType::Float, &["L"]),
            value("k2", DataType::Int64, &[]),
        ],
        ..Default::default()
    })
}

fn graph_attr(name: &str, g: pb::GraphProto) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Graph as i32,
        g: Some(g),
        ..Default::default()
    }
}

fn i64_const(out: &str, values: &[i64]) -> pb::NodeProto {
    let t = pb::TensorProto {
        dims: if values.len() == 1 {
            vec![]
        } else {
            vec![values.len() as i64]
        },
        data_type: DataType::Int64 as i32,
        int64_data: values.to_vec(),
        ..Default::default()
    };
    let attr = pb::AttributeProto {
        name: "value".into(),
        r#type: pb::attribute_proto::AttributeType::Tensor as i32,
        t: Some(t),
        ..Default::default()
    };
    node("Constant", &[], &[out], vec![attr])
}

/// A branch squeezing `x` on `axis` into `out`.
fn squeeze_branch(out: &str, axis: i64) -> pb::GraphProto {
    let axes = format!("{out}_axes");
    pb::GraphProto {
        name: out.into(),
        node: vec![
            pb::NodeProto {
                name: format!("{out}_c"),
                ..i64_const(&axes, &[axis])
            },
            node("Squeeze", &["x", &axes], &[out], vec![]),
        ],
        output: vec![value(out, DataType::Float, &["L"])],
        ..Default::default()
    }
}

/// silero-vad's shape: `y = If(k == 1, then: If(shape(x)[0] == 1, squeeze(x, 0), squeeze(x, 1)),
/// else: squeeze(x, 1))` for `x[A, B]`, `k` an int64 scalar. With `k = 1` and `x[1, 4]` only
/// the taken branches can be analysed (a squeeze of axis 1 would drop a dimension of 4).
pub fn branchy() -> Vec<u8> {
    let inner = pb::GraphProto {
        name: "then".into(),
        node: vec![
            node("Shape", &["x"], &["shape"], vec![]),
            i64_const("zero", &[0]),
            node("Gather", &["shape", "zero"], &["a"], vec![]),
            i64_const("one_b", &[1]),
            node("Equal", &["a", "one_b"], &["a_is_1"], vec![]),
            node(
                "If",
                &["a_is_1"],
                &["inner_y"],
                vec![
                    graph_attr("then_branch", squeeze_branch("sq0", 0)),
                    graph_attr("else_branch", squeeze_branch("sq1_inner", 1)),
                ],
            ),
        ],
        output: vec![value("inner_y", DataType::Float, &["L"])],
        ..Default::default()
    };
    model(pb::GraphProto {
        name: "branchy".into(),
        node: vec![
            i64_const("one", &[1]),
            node("Equal", &["k", "one"], &["k_is_1"], vec![]),
            node(
                "If",
                &["k_is_1"],
                &["y"],
                vec![
                    graph_attr("then_branch", inner),
                    graph_attr("else_branch", squeeze_branch("sq1", 1)),
                ],
            ),
        ],
        input: vec![
            value("x", DataType::Float, &["A", "B"]),
            value("k", DataType::Int64, &[]),
        ],
        output: vec![value("y", DataType::Float, &["L"])],
        ..Default::default()
    })
}
