use super::*;
use proptest::prelude::*;

const ARN: &str = "arn:aws:iot:eu-west-1:123456789012:";

fn policy(doc: &str) -> Policy {
    Policy::parse("test", doc).expect("valid policy")
}

fn allow(resource: &str, action: &str) -> Policy {
    policy(&format!(
        r#"{{"Version":"2012-10-17","Statement":{{"Effect":"Allow","Action":"{action}","Resource":"{resource}"}}}}"#
    ))
}

fn decide(policies: &[&Policy], action: &str, resource: &str, ctx: &Context<'_>) -> Decision {
    evaluate(
        policies.iter().copied(),
        action,
        &format!("{ARN}{resource}"),
        ctx,
    )
}

#[test]
fn statement_as_object_or_array_and_action_forms() {
    let p = policy(
        r#"{"Version":"2012-10-17","Statement":[
            {"Effect":"Allow","Action":["iot:Connect","iot:Publish"],"Resource":["arn:aws:iot:*:*:client/a","arn:aws:iot:*:*:topic/t"]}]}"#,
    );
    let ctx = Context::default();
    assert!(decide(&[&p], "iot:Connect", "client/a", &ctx).is_allowed());
    assert!(decide(&[&p], "iot:Publish", "topic/t", &ctx).is_allowed());
    assert_eq!(
        decide(&[&p], "iot:Subscribe", "topic/t", &ctx),
        Decision::ImplicitDeny
    );
    // Actions ignore case; `iot:*` covers every iot action.
    assert!(decide(&[&p], "IOT:publish", "topic/t", &ctx).is_allowed());
    let all = allow("*", "iot:*");
    assert!(decide(&[&all], "iot:Receive", "topic/x", &ctx).is_allowed());
    let prefix = allow("*", "iot:Pub*");
    assert!(decide(&[&prefix], "iot:Publish", "topic/x", &ctx).is_allowed());
    assert!(!decide(&[&prefix], "iot:Subscribe", "topic/x", &ctx).is_allowed());
}

#[test]
fn explicit_deny_wins_over_allow_in_any_policy() {
    let a = allow("arn:aws:iot:*:*:topic/*", "iot:Publish");
    let d = policy(
        r#"{"Version":"2012-10-17","Statement":{"Effect":"Deny","Action":"iot:Publish","Resource":"arn:aws:iot:*:*:topic/secret/*"}}"#,
    );
    let ctx = Context::default();
    assert!(decide(&[&a, &d], "iot:Publish", "topic/open", &ctx).is_allowed());
    assert_eq!(
        decide(&[&a, &d], "iot:Publish", "topic/secret/x", &ctx),
        Decision::ExplicitDeny
    );
    assert_eq!(
        decide(&[&d, &a], "iot:Publish", "topic/secret/x", &ctx),
        Decision::ExplicitDeny
    );
    assert_eq!(
        decide(&[], "iot:Publish", "topic/open", &ctx),
        Decision::ImplicitDeny
    );
}

#[test]
fn mqtt_wildcards_are_literal_in_policies() {
    let p = allow("arn:aws:iot:*:*:topicfilter/a/#", "iot:Subscribe");
    let ctx = Context::default();
    assert!(decide(&[&p], "iot:Subscribe", "topicfilter/a/#", &ctx).is_allowed());
    assert!(!decide(&[&p], "iot:Subscribe", "topicfilter/a/b", &ctx).is_allowed());
    assert!(!decide(&[&p], "iot:Subscribe", "topicfilter/a/+", &ctx).is_allowed());
    let star = allow("arn:aws:iot:*:*:topic/a/*", "iot:Publish");
    assert!(decide(&[&star], "iot:Publish", "topic/a/b/c", &ctx).is_allowed());
    let one = allow("arn:aws:iot:*:*:topic/a/?", "iot:Publish");
    assert!(decide(&[&one], "iot:Publish", "topic/a/é", &ctx).is_allowed());
    assert!(!decide(&[&one], "iot:Publish", "topic/a/bc", &ctx).is_allowed());
}

#[test]
fn variables_substitute_literally() {
    let p = allow("arn:aws:iot:*:*:topic/dev/${iot:ClientId}", "iot:Publish");
    let ctx = Context {
        client_id: Some("a*"),
        thing: None,
    };
    assert!(decide(&[&p], "iot:Publish", "topic/dev/a*", &ctx).is_allowed());
    // The client id's `*` is a character, not a wildcard.
    assert!(!decide(&[&p], "iot:Publish", "topic/dev/ab", &ctx).is_allowed());
    let q = Context {
        client_id: Some("a?"),
        thing: None,
    };
    assert!(!decide(&[&p], "iot:Publish", "topic/dev/ab", &q).is_allowed());
    // Literal characters through ${*} and friends.
    let lit = allow("arn:aws:iot:*:*:topic/x${*}${?}${$}", "iot:Publish");
    assert!(decide(&[&lit], "iot:Publish", "topic/x*?$", &ctx).is_allowed());
    assert!(!decide(&[&lit], "iot:Publish", "topic/xab$", &ctx).is_allowed());
}

#[test]
fn thing_variables_and_unresolved_ones() {
    let attrs: BTreeMap<String, String> = [("site".to_owned(), "lyon".to_owned())].into();
    let thing = ThingContext {
        name: "door-1",
        type_name: Some("Door"),
        attributes: &attrs,
    };
    let ctx = Context {
        client_id: Some("door-1"),
        thing: Some(thing),
    };
    let none = Context {
        client_id: Some("door-1"),
        thing: None,
    };
    let by_thing = allow(
        "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}",
        "iot:Connect",
    );
    assert!(decide(&[&by_thing], "iot:Connect", "client/door-1", &ctx).is_allowed());
    // Without a thing the variable has no value: the resource matches nothing.
    assert!(!decide(&[&by_thing], "iot:Connect", "client/door-1", &none).is_allowed());
    let site = allow(
        "arn:aws:iot:*:*:topic/${iot:Connection.Thing.Attributes[site]}/${iot:Connection.Thing.ThingTypeName}/*",
        "iot:Publish",
    );
    assert!(decide(&[&site], "iot:Publish", "topic/lyon/Door/x", &ctx).is_allowed());
    assert!(!decide(&[&site], "iot:Publish", "topic/paris/Door/x", &ctx).is_allowed());
    let missing = allow(
        "arn:aws:iot:*:*:topic/${iot:Connection.Thing.Attributes[floor]}",
        "iot:Publish",
    );
    assert!(!decide(&[&missing], "iot:Publish", "topic/", &ctx).is_allowed());
    let attached = allow(
        "arn:aws:iot:*:*:topic/${iot:Connection.Thing.IsAttached}",
        "iot:Publish",
    );
    assert!(decide(&[&attached], "iot:Publish", "topic/true", &ctx).is_allowed());
    assert!(decide(&[&attached], "iot:Publish", "topic/false", &none).is_allowed());
    // A Deny with an unresolved variable does not apply (as in IAM).
    let deny = policy(
        r#"{"Statement":[{"Effect":"Allow","Action":"iot:*","Resource":"*"},
            {"Effect":"Deny","Action":"iot:*","Resource":"arn:aws:iot:*:*:topic/${iot:Connection.Thing.ThingName}"}]}"#,
    );
    assert!(decide(&[&deny], "iot:Publish", "topic/door-1", &none).is_allowed());
    assert_eq!(
        decide(&[&deny], "iot:Publish", "topic/door-1", &ctx),
        Decision::ExplicitDeny
    );
}

#[test]
fn literal_allow_is_reported() {
    let ctx = Context {
        client_id: Some("c1"),
        thing: None,
    };
    let named = allow(
        "arn:aws:iot:eu-west-1:123456789012:client/c1",
        "iot:Connect",
    );
    assert_eq!(
        decide(&[&named], "iot:Connect", "client/c1", &ctx),
        Decision::Allow { literal: true }
    );
    let by_var = allow(
        "arn:aws:iot:eu-west-1:123456789012:client/${iot:ClientId}",
        "iot:Connect",
    );
    assert_eq!(
        decide(&[&by_var], "iot:Connect", "client/c1", &ctx),
        Decision::Allow { literal: true }
    );
    let any = allow("*", "iot:Connect");
    assert_eq!(
        decide(&[&any], "iot:Connect", "client/c1", &ctx),
        Decision::Allow { literal: false }
    );
    assert_eq!(
        decide(&[&any, &named], "iot:Connect", "client/c1", &ctx),
        Decision::Allow { literal: true }
    );
}

#[test]
fn conditions_never_widen_access() {
    let p = policy(
        r#"{"Statement":[{"Effect":"Allow","Action":"iot:*","Resource":"*","Condition":{"Bool":{"iot:Connection.Thing.IsAttached":"true"}}}]}"#,
    );
    assert!(!decide(&[&p], "iot:Publish", "topic/x", &Context::default()).is_allowed());
    let d = policy(
        r#"{"Statement":[{"Effect":"Allow","Action":"iot:*","Resource":"*"},{"Effect":"Deny","Action":"iot:Publish","Resource":"*","Condition":{"StringEquals":{"x":"y"}}}]}"#,
    );
    assert_eq!(
        decide(&[&d], "iot:Publish", "topic/x", &Context::default()),
        Decision::ExplicitDeny
    );
}

#[test]
fn malformed_documents_say_where() {
    let cases = [
        ("not json", "not valid JSON"),
        ("[]", "must be a JSON object"),
        (r#"{"Version":"2008-10-17","Statement":[]}"#, "Version"),
        (r#"{"Statement":[]}"#, "Statement: is empty"),
        (
            r#"{"Statement":{"Effect":"Maybe","Action":"iot:*","Resource":"*"}}"#,
            "Statement[0].Effect",
        ),
        (
            r#"{"Statement":{"Effect":"Allow","Resource":"*"}}"#,
            "Statement[0].Action: is missing",
        ),
        (
            r#"{"Statement":{"Effect":"Allow","Action":[],"Resource":"*"}}"#,
            "Statement[0].Action",
        ),
        (
            r#"{"Statement":{"Effect":"Allow","Action":"publish","Resource":"*"}}"#,
            "not an action",
        ),
        (
            r#"{"Statement":{"Effect":"Allow","NotAction":"iot:*","Resource":"*"}}"#,
            "not supported",
        ),
        (
            r#"{"Statement":{"Effect":"Allow","Action":"iot:*","Resource":"topic/${iot:ClientId"}}"#,
            "closing",
        ),
        (
            r#"{"Statement":{"Effect":"Allow","Action":"iot:*","Resource":"*","Extra":1}}"#,
            "unknown key",
        ),
    ];
    for (doc, want) in cases {
        let err = Policy::parse("p1", doc).expect_err(doc).to_string();
        assert!(err.contains(want), "{doc}: {err}");
        assert!(err.contains("\"p1\""), "{err}");
    }
}

#[test]
fn arns() {
    let a = Arns::new("eu-west-1", "123456789012");
    assert_eq!(a.client("c"), "arn:aws:iot:eu-west-1:123456789012:client/c");
    assert_eq!(
        a.topic("a/b"),
        "arn:aws:iot:eu-west-1:123456789012:topic/a/b"
    );
    assert_eq!(
        a.topic_filter("a/#"),
        "arn:aws:iot:eu-west-1:123456789012:topicfilter/a/#"
    );
}

/// Reference matcher: plain recursion over characters.
fn reference(pattern: &[char], subject: &[char]) -> bool {
    match pattern.split_first() {
        None => subject.is_empty(),
        Some(('*', rest)) => (0..=subject.len()).any(|i| reference(rest, &subject[i..])),
        Some(('?', rest)) => !subject.is_empty() && reference(rest, &subject[1..]),
        Some((c, rest)) => subject.first() == Some(c) && reference(rest, &subject[1..]),
    }
}

proptest! {
    #[test]
    fn matcher_agrees_with_reference(pattern in "[ab*?/+#]{0,10}", subject in "[ab/+#é]{0,12}") {
        let p = pattern::Pattern::parse(&pattern, true).unwrap();
        let chars: Vec<char> = pattern.chars().collect();
        let subject_chars: Vec<char> = subject.chars().collect();
        prop_assert_eq!(
            p.matches(&subject, &Context::default(), false),
            Some(reference(&chars, &subject_chars))
        );
    }

    #[test]
    fn variable_values_never_act_as_wildcards(value in "[ab*?]{1,6}", subject in "[ab*?]{1,6}") {
        let p = pattern::Pattern::parse("x/${iot:ClientId}", true).unwrap();
        let ctx = Context { client_id: Some(&value), thing: None };
        prop_assert_eq!(p.matches(&format!("x/{subject}"), &ctx, false), Some(value == subject));
    }
}

/// A long run of stars against a long subject that does not match ends quickly: the matcher
/// keeps only the last star's position, so no exponential backtracking.
#[test]
fn pathological_patterns_stay_linear_in_star_count() {
    let pattern = format!("{}b", "a*".repeat(200));
    let p = pattern::Pattern::parse(&pattern, false).unwrap();
    let subject = "a".repeat(5000);
    assert_eq!(p.matches(&subject, &Context::default(), false), Some(false));
}
