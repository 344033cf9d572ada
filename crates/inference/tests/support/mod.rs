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
