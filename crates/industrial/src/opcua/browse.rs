//! Finding the variables to collect: a breadth-first browse from the Objects folder along
//! hierarchical references (properties such as EURange excepted), descending only where the
//! node filter can still match, and keeping the variables it takes with their browse paths.

use std::collections::{HashSet, VecDeque};

use ::opcua::client::Session;
use ::opcua::types::{
    BrowseDescription, BrowseDirection, BrowseResultMask, ByteString, NodeClass, NodeClassMask,
    NodeId, ObjectId, ReferenceDescription, ReferenceTypeId,
};

use super::filter::NodeFilter;

/// A variable node to collect and where it sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundVariable {
    pub node_id: NodeId,
    /// Browse names from (not including) the Objects folder.
    pub path: Vec<String>,
}

/// Bounds that keep a huge or cyclic address space from running away.
const MAX_DEPTH: usize = 32;
const MAX_NODES: usize = 100_000;
/// Nodes browsed per Browse request.
const BATCH: usize = 50;

fn description(node_id: &NodeId) -> BrowseDescription {
    BrowseDescription {
        node_id: node_id.clone(),
        browse_direction: BrowseDirection::Forward,
        reference_type_id: ReferenceTypeId::HierarchicalReferences.into(),
        include_subtypes: true,
        node_class_mask: (NodeClassMask::OBJECT | NodeClassMask::VARIABLE).bits(),
        result_mask: BrowseResultMask::All as u32,
    }
}

/// Every reference of `nodes`, following continuation points.
async fn browse_batch(
    session: &Session,
    nodes: &[NodeId],
) -> Result<Vec<Vec<ReferenceDescription>>, ::opcua::types::Error> {
    let descriptions: Vec<BrowseDescription> = nodes.iter().map(description).collect();
    let results = session.browse(&descriptions, 1000, None).await?;
    let mut out = Vec::with_capacity(nodes.len());
    for result in results {
        let mut refs = result.references.unwrap_or_default();
        let mut cp: ByteString = result.continuation_point;
        while !cp.is_null() && !cp.is_empty() {
            let next = session
                .browse_next(false, std::slice::from_ref(&cp))
                .await?;
            let Some(r) = next.into_iter().next() else {
                break;
            };
            refs.extend(r.references.unwrap_or_default());
            cp = r.continuation_point;
        }
        out.push(refs);
    }
    Ok(out)
}

pub async fn find_variables(
    session: &Session,
    filter: &NodeFilter,
) -> Result<Vec<FoundVariable>, ::opcua::types::Error> {
    let objects: NodeId = ObjectId::ObjectsFolder.into();
    let mut seen: HashSet<NodeId> = HashSet::from([objects.clone()]);
    let mut queue: VecDeque<(NodeId, Vec<String>)> = VecDeque::from([(objects, Vec::new())]);
    let mut found = Vec::new();
    while !queue.is_empty() {
        let batch: Vec<(NodeId, Vec<String>)> = queue.drain(..queue.len().min(BATCH)).collect();
        let ids: Vec<NodeId> = batch.iter().map(|(id, _)| id.clone()).collect();
        let results = browse_batch(session, &ids).await?;
        for ((_, path), refs) in batch.iter().zip(results) {
            for r in refs {
                // Properties describe their parent (units, ranges); they are not measurements.
                if r.reference_type_id == ReferenceTypeId::HasProperty {
                    continue;
                }
                // Namespace 0 under Objects is the server's own diagnostics object; nodes on
                // other servers are not ours to read.
                let target = &r.node_id;
                let ns0 = target.node_id.namespace == 0 && target.namespace_uri.is_null();
                if ns0 || target.server_index != 0 || !seen.insert(target.node_id.clone()) {
                    continue;
                }
                if seen.len() > MAX_NODES {
                    tracing::warn!(
                        "browse stopped after {MAX_NODES} nodes; narrow the node filter rules"
                    );
                    return Ok(found);
                }
                let name = r.browse_name.name.value().clone().unwrap_or_default();
                let mut child = path.clone();
                child.push(name);
                let names: Vec<&str> = child.iter().map(String::as_str).collect();
                if r.node_class == NodeClass::Variable && filter.takes(&names) {
                    found.push(FoundVariable {
                        node_id: r.node_id.node_id.clone(),
                        path: child.clone(),
                    });
                }
                if child.len() < MAX_DEPTH && filter.worth_browsing(&names) {
                    queue.push_back((r.node_id.node_id, child));
                }
            }
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}
