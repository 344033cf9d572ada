//! The tract backend on tiny models written at test time.

mod support;

use std::sync::Arc;

use lichen_inference::{
    Backend, InferenceError, Model, ModelOptions, Tensor, TensorData, TensorSpec,
};

fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn f32s(t: &Tensor) -> &[f32] {
    match &t.data {
        TensorData::F32(v) => v,
        other => panic!("expected f32, got {}", other.dtype()),
    }
}

fn x(batch: usize) -> Tensor {
    let data: Vec<f32> = (0..batch * 3).map(|i| i as f32 * 0.25 - 1.0).collect();
    Tensor::new(vec![batch, 3], TensorData::F32(data)).unwrap()
}

#[test]
fn linear_model_specs_and_symbolic_batch() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "linear.onnx", &support::linear());
    let model = Model::load(
        &path,
        &ModelOptions {
            threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(model.backend(), Backend::Tract);
    assert_eq!(
        model.inputs(),
        &[TensorSpec {
            name: "x".into(),
            dtype: "f32",
            shape: vec![None, Some(3)]
        }]
    );
    assert_eq!(
        model.outputs(),
        &[TensorSpec {
            name: "y".into(),
            dtype: "f32",
            shape: vec![None, Some(2)]
        }]
    );
    for batch in [1, 4, 1, 7] {
        let input = x(batch);
        let want = support::linear_expected(f32s(&input));
        let out = model.run(vec![input]).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].shape, vec![batch, 2]);
        assert_eq!(f32s(&out[0]), want.as_slice());
    }
}

#[test]
fn generic_and_specialised_plans_agree() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "linear.onnx", &support::linear());
    // One specialised shape at most: batch 2 gets it, the others run on the generic plan.
    for specialized_shapes in [0, 1, 8] {
        let opts = ModelOptions {
            threads: 2,
            specialized_shapes,
            ..Default::default()
        };
        let model = Model::load(&path, &opts).unwrap();
        for batch in [2, 3, 5, 2] {
            let input = x(batch);
            let want = support::linear_expected(f32s(&input));
            assert_eq!(f32s(&model.run(vec![input]).unwrap()[0]), want.as_slice());
        }
    }
}

#[test]
fn wrong_shape_and_dtype_fail_that_run_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "linear.onnx", &support::linear());
    let model = Model::load(&path, &ModelOptions::default()).unwrap();
    let bad = Tensor::new(vec![1, 4], TensorData::F32(vec![0.0; 4])).unwrap();
    match model.run(vec![bad]) {
        Err(InferenceError::Shape {
            input,
            expected,
            got,
        }) => {
            assert_eq!(input, "x");
            assert_eq!(expected, vec![None, Some(3)]);
            assert_eq!(got, vec![1, 4]);
        }
        other => panic!("expected a shape error, got {other:?}"),
    }
    let ints = Tensor::new(vec![1, 3], TensorData::I64(vec![1, 2, 3])).unwrap();
    let e = model.run(vec![ints]).unwrap_err();
    assert!(matches!(e, InferenceError::Input(_)), "{e}");
    assert!(e.to_string().contains("'x' has dtype i64"), "{e}");
    let short = Tensor {
        shape: vec![2, 3],
        data: TensorData::F32(vec![0.0; 5]),
    };
    assert!(matches!(
        model.run(vec![short]),
        Err(InferenceError::Input(_))
    ));
    assert!(matches!(model.run(vec![]), Err(InferenceError::Input(_))));
    // Still serving.
    assert_eq!(model.run(vec![x(1)]).unwrap()[0].shape, vec![1, 2]);
}

#[test]
fn scalar_int64_input_as_rank_0_or_one_element() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "scalar.onnx", &support::scalar_input());
    let model = Model::load(
        &path,
        &ModelOptions {
            threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        model.inputs()[1],
        TensorSpec {
            name: "k".into(),
            dtype: "i64",
            shape: vec![]
        }
    );
    assert_eq!(model.outputs()[1].dtype, "i64");
    for k_shape in [vec![], vec![1]] {
        let xs = Tensor::new(vec![3], TensorData::F32(vec![1.0, 2.0, -3.0])).unwrap();
        let k = Tensor::new(k_shape, TensorData::I64(vec![3])).unwrap();
        let out = model.run(vec![xs, k]).unwrap();
        assert_eq!(f32s(&out[0]), &[3.0, 6.0, -9.0]);
        assert_eq!(
            out[1],
            Tensor {
                shape: vec![],
                data: TensorData::I64(vec![6])
            }
        );
    }
}

#[test]
fn corrupt_truncated_and_missing_files_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let good = support::linear();
    let cases = [
        ("truncated.onnx", good[..good.len() / 2].to_vec()),
        (
            "garbage.onnx",
            b"\xff\xfe this is not a protobuf \x00\x01".to_vec(),
        ),
        ("empty.onnx", Vec::new()),
    ];
    for (name, bytes) in cases {
        let path = write(&dir, name, &bytes);
        match Model::load(&path, &ModelOptions::default()) {
            Err(e @ InferenceError::Load { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(&path.display().to_string()), "{msg}");
                assert!(
                    msg.len() > path.display().to_string().len() + 25,
                    "no cause in: {msg}"
                );
            }
            other => panic!("{name}: expected a load error, got {other:?}"),
        }
    }
    let missing = dir.path().join("missing.onnx");
    let e = Model::load(&missing, &ModelOptions::default()).unwrap_err();
    assert!(
        e.to_string().contains("missing.onnx") && e.to_string().contains("No such file"),
        "{e}"
    );
    let e = Model::load(dir.path(), &ModelOptions::default()).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
}

#[test]
fn many_threads_share_one_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "linear.onnx", &support::linear());
    let model = Arc::new(
        Model::load(
            &path,
            &ModelOptions {
                threads: 1,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let model = model.clone();
            std::thread::spawn(move || {
                for i in 0..40 {
                    let batch = 1 + (t + i) % 3;
                    let input = x(batch);
                    let want = support::linear_expected(f32s(&input));
                    let out = model.run(vec![input]).unwrap();
                    assert_eq!(f32s(&out[0]), want.as_slice());
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[cfg(not(feature = "onnxruntime"))]
#[test]
fn onnxruntime_backend_without_the_feature_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "linear.onnx", &support::linear());
    let opts = ModelOptions {
        backend: Backend::OnnxRuntime,
        ..Default::default()
    };
    let e = Model::load(&path, &opts).unwrap_err().to_string();
    assert!(e.contains("feature `onnxruntime` is off"), "{e}");
}

#[test]
fn ifs_decided_by_scalar_values_and_shapes_run_the_taken_branch() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "branchy.onnx", &support::branchy());
    let model = Model::load(
        &path,
        &ModelOptions {
            threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let run = |shape: Vec<usize>, k: i64| {
        let n = shape.iter().product();
        let xs = Tensor::new(shape, TensorData::F32((0..n).map(|i| i as f32).collect())).unwrap();
        let k = Tensor::new(vec![], TensorData::I64(vec![k])).unwrap();
        model.run(vec![xs, k])
    };
    // k = 1, x[1, 4]: outer then, inner then → squeeze axis 0.
    let out = run(vec![1, 4], 1).unwrap();
    assert_eq!(out[0].shape, vec![4]);
    assert_eq!(f32s(&out[0]), &[0.0, 1.0, 2.0, 3.0]);
    // k = 2, x[3, 1]: outer else → squeeze axis 1.
    let out = run(vec![3, 1], 2).unwrap();
    assert_eq!(out[0].shape, vec![3]);
    // k = 2, x[1, 4]: the branch taken cannot squeeze a dimension of 4: an error, not a crash.
    let e = run(vec![1, 4], 2).unwrap_err();
    assert!(matches!(e, InferenceError::Backend(_)), "{e}");
    assert_eq!(run(vec![1, 2], 1).unwrap()[0].shape, vec![2]);
}
