//! Subscription trie and topic matching.
//!
//! Architecture invariant: pure data structure, no I/O and no locking; the broker state owns it.

use crate::codec::SubscriptionOptions;
use std::collections::{BTreeMap, HashMap};

/// One client's subscription to one filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub options: SubscriptionOptions,
    pub identifier: Option<u32>,
}

#[derive(Debug, Default)]
struct SharedGroup {
    members: BTreeMap<String, Subscription>,
    next: usize,
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<String, Node>,
    subscribers: HashMap<String, Subscription>,
    shared: BTreeMap<String, SharedGroup>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subscribers.is_empty() && self.shared.is_empty()
    }
}

/// A matching subscription: who, with which options, and whether it came through a share group.
#[derive(Debug, Clone)]
pub struct Match {
    pub client_id: String,
    pub subscription: Subscription,
}

/// Splits `$share/<group>/<filter>` into its group and filter.
pub fn parse_shared(filter: &str) -> Option<(&str, &str)> {
    let rest = filter.strip_prefix("$share/")?;
    let (group, inner) = rest.split_once('/')?;
    Some((group, inner))
}

#[derive(Debug, Default)]
pub struct SubscriptionTree {
    root: Node,
}

impl SubscriptionTree {
    /// Adds or replaces a subscription; returns whether it already existed.
    pub fn subscribe(&mut self, client_id: &str, filter: &str, sub: Subscription) -> bool {
        let (group, filter) = match parse_shared(filter) {
            Some((g, f)) => (Some(g), f),
            None => (None, filter),
        };
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.entry(level.to_owned()).or_default();
        }
        match group {
            None => node.subscribers.insert(client_id.to_owned(), sub).is_some(),
            Some(g) => node
                .shared
                .entry(g.to_owned())
                .or_default()
                .members
                .insert(client_id.to_owned(), sub)
                .is_some(),
        }
    }

    /// Removes a subscription; returns whether it existed.
    pub fn unsubscribe(&mut self, client_id: &str, filter: &str) -> bool {
        let (group, filter) = match parse_shared(filter) {
            Some((g, f)) => (Some(g), f),
            None => (None, filter),
        };
        let levels: Vec<&str> = filter.split('/').collect();
        remove(&mut self.root, &levels, client_id, group)
    }

    /// Every subscription matching `topic`; one member per share group, chosen round-robin
    /// among the members for which `eligible` holds (falling back to any member).
    pub fn matches(&mut self, topic: &str, eligible: &dyn Fn(&str) -> bool) -> Vec<Match> {
        let levels: Vec<&str> = topic.split('/').collect();
        let mut out = Vec::new();
        collect(
            &mut self.root,
            &levels,
            0,
            topic.starts_with('$'),
            eligible,
            &mut out,
        );
        out
    }
}

fn remove(node: &mut Node, levels: &[&str], client_id: &str, group: Option<&str>) -> bool {
    let Some((first, rest)) = levels.split_first() else {
        return match group {
            None => node.subscribers.remove(client_id).is_some(),
            Some(g) => {
                let Some(sg) = node.shared.get_mut(g) else {
                    return false;
                };
                let removed = sg.members.remove(client_id).is_some();
                if sg.members.is_empty() {
                    node.shared.remove(g);
                }
                removed
            }
        };
    };
    let Some(child) = node.children.get_mut(*first) else {
        return false;
    };
    let removed = remove(child, rest, client_id, group);
    if child.is_empty() {
        node.children.remove(*first);
    }
    removed
}

fn emit(node: &mut Node, eligible: &dyn Fn(&str) -> bool, out: &mut Vec<Match>) {
    for (client_id, subscription) in &node.subscribers {
        out.push(Match {
            client_id: client_id.clone(),
            subscription: subscription.clone(),
        });
    }
    for group in node.shared.values_mut() {
        let n = group.members.len();
        let members: Vec<(&String, &Subscription)> = group.members.iter().collect();
        let pick = (0..n)
            .map(|i| (group.next + i) % n)
            .find(|&i| eligible(members[i].0))
            .unwrap_or(group.next % n);
        out.push(Match {
            client_id: members[pick].0.clone(),
            subscription: members[pick].1.clone(),
        });
        group.next = pick + 1;
    }
}

fn collect(
    node: &mut Node,
    levels: &[&str],
    depth: usize,
    dollar: bool,
    eligible: &dyn Fn(&str) -> bool,
    out: &mut Vec<Match>,
) {
    // Wildcards at the first level never match topics starting with `$`.
    let wildcards = !(dollar && depth == 0);
    if wildcards && let Some(hash) = node.children.get_mut("#") {
        emit(hash, eligible, out);
    }
    let Some((first, rest)) = levels.split_first() else {
        emit(node, eligible, out);
        return;
    };
    if let Some(child) = node.children.get_mut(*first) {
        collect(child, rest, depth + 1, dollar, eligible, out);
    }
    if wildcards && let Some(plus) = node.children.get_mut("+") {
        collect(plus, rest, depth + 1, dollar, eligible, out);
    }
}

/// Whether `filter` (without a `$share` prefix) matches `topic`.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut t = topic.split('/');
    let mut first = true;
    for f in filter.split('/') {
        let wildcard = f == "#" || f == "+";
        if first && wildcard && topic.starts_with('$') {
            return false;
        }
        first = false;
        if f == "#" {
            return true;
        }
        match t.next() {
            Some(level) if f == "+" || f == level => {}
            _ => return false,
        }
    }
    t.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;

    fn sub() -> Subscription {
        Subscription {
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: false,
                retain_as_published: false,
                retain_handling: 0,
            },
            identifier: None,
        }
    }

    fn clients(tree: &mut SubscriptionTree, topic: &str) -> Vec<String> {
        let mut v: Vec<String> = tree
            .matches(topic, &|_| true)
            .into_iter()
            .map(|m| m.client_id)
            .collect();
        v.sort();
        v
    }

    #[test]
    fn wildcards_match_like_the_standard() {
        let mut t = SubscriptionTree::default();
        t.subscribe("hash", "a/#", sub());
        t.subscribe("plus", "a/+/c", sub());
        t.subscribe("exact", "a/b/c", sub());
        t.subscribe("all", "#", sub());
        assert_eq!(clients(&mut t, "a/b/c"), ["all", "exact", "hash", "plus"]);
        assert_eq!(clients(&mut t, "a"), ["all", "hash"]);
        assert_eq!(clients(&mut t, "a/b"), ["all", "hash"]);
        assert_eq!(clients(&mut t, "$SYS/x"), Vec::<String>::new());
        t.subscribe("sys", "$SYS/#", sub());
        assert_eq!(clients(&mut t, "$SYS/x"), ["sys"]);
        assert!(t.unsubscribe("hash", "a/#"));
        assert!(!t.unsubscribe("hash", "a/#"));
        assert_eq!(clients(&mut t, "a"), ["all"]);
    }

    #[test]
    fn shared_groups_round_robin() {
        let mut t = SubscriptionTree::default();
        t.subscribe("x", "$share/g/s/#", sub());
        t.subscribe("y", "$share/g/s/#", sub());
        let picks: Vec<String> = (0..4).map(|_| clients(&mut t, "s/1").remove(0)).collect();
        assert_eq!(picks, ["x", "y", "x", "y"]);
        // Offline members are skipped while others can take the message.
        let only_y: Vec<String> = (0..2)
            .map(|_| t.matches("s/1", &|c| c == "y").remove(0).client_id)
            .collect();
        assert_eq!(only_y, ["y", "y"]);
    }

    #[test]
    fn filter_matching_function() {
        assert!(filter_matches("a/+/c", "a/b/c"));
        assert!(filter_matches("a/#", "a"));
        assert!(filter_matches("+", "x"));
        assert!(!filter_matches("+", "x/y"));
        assert!(!filter_matches("#", "$SYS/a"));
        assert!(filter_matches("$SYS/#", "$SYS/a"));
        assert!(!filter_matches("a/b", "a/b/c"));
    }
}
