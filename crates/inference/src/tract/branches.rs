//! Inlining the branch of an ONNX `If` whose condition the folded scalar inputs decide.
//!
//! tract analyses both branches of an `If` with the shapes it is given, even when the condition
//! is a constant, and a branch written for other inputs fails that analysis (silero-vad's 8 kHz
//! branch cannot take a 512-sample window). So for a plan specialised to a scalar's value, the
//! top-level `If`s whose condition that value decides are replaced in the ONNX graph by the
//! nodes of the branch taken, before tract parses it.

use std::collections::HashMap;

use tract_onnx::pb;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

/// Top-level `If` nodes (index in `graph.node`) whose condition has a known value in
/// `analysed` (a model already run through `analyse(true)`), with that value.
pub(super) fn decided(
    analysed: &InferenceModel,
    graph: &pb::GraphProto,
    outlets: &HashMap<String, OutletId>,
) -> Vec<(usize, bool)> {
    graph
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| n.op_type == "If" && n.domain.is_empty())
        .filter_map(|(ix, n)| {
            let outlet = outlets.get(n.input.first()?)?;
            let value = analysed.outlet_fact(*outlet).ok()?.value.concretize()?;
            Some((ix, value.cast_to_scalar::<bool>().ok()?))
        })
        .collect()
}

/// `model` with each decided `If` replaced by its taken branch: the branch's nodes and
/// initializers join the graph (ONNX names are unique across scopes, and a branch reads outer
/// values by name), and `Identity` nodes give the branch's outputs the `If`'s output names.
pub(super) fn inline(model: &pb::ModelProto, decided: &[(usize, bool)]) -> Option<pb::ModelProto> {
    let mut model = model.clone();
    let graph = model.graph.as_mut()?;
    let decided: HashMap<usize, bool> = decided.iter().copied().collect();
    let mut nodes = Vec::with_capacity(graph.node.len());
    for (ix, node) in std::mem::take(&mut graph.node).into_iter().enumerate() {
        let Some(&cond) = decided.get(&ix) else {
            nodes.push(node);
            continue;
        };
        let wanted = if cond { "then_branch" } else { "else_branch" };
        let branch = node
            .attribute
            .iter()
            .find(|a| a.name == wanted)?
            .g
            .as_ref()?;
        if branch.output.len() != node.output.len() {
            return None;
        }
        nodes.extend(branch.node.iter().cloned());
        graph.initializer.extend(branch.initializer.iter().cloned());
        for (inner, outer) in branch.output.iter().zip(&node.output) {
            nodes.push(pb::NodeProto {
                input: vec![inner.name.clone()],
                output: vec![outer.clone()],
                name: format!("{}/taken_{wanted}/{outer}", node.name),
                op_type: "Identity".into(),
                ..Default::default()
            });
        }
    }
    graph.node = nodes;
    Some(model)
}
