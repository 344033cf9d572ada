//! Authorization of requests signed with temporary credentials: each request is named as the
//! IAM action AWS uses for it (`iot:DescribeThing`, `iot:Publish`, …) and the ARN of the
//! resource it names, then evaluated against the permissions policy of the role the
//! credentials were minted for. Denied by default: a request this table does not name, or a
//! role without a policy, is refused. Administrator keys are not checked here (full rights).

use crate::call::Call;
use axum::http::Method;
use lichen_fleet_registry::Registry;

/// `(action, resource ARN)` for a request; the resource is `*` when the operation names no
/// single resource (lists, creations keyed by body fields), which only a `*` resource allows.
pub(crate) fn action_of(registry: &Registry, call: &Call) -> Option<(String, String)> {
    if call.caller.service == "logs" {
        return logs_action_of(registry, call);
    }
    let segs = call.segs();
    let arn = |kind: &str, name: &str| registry.arn(&format!("{kind}/{name}"));
    if call.caller.service == "secretsmanager" {
        // The secret's ARN when the request names an existing one; `*` otherwise (creation,
        // lists, unknown secrets: only a `*` resource allows those).
        let op = crate::secretsmanager::operation(call)?;
        let resource = crate::secretsmanager::secret_id(call)
            .and_then(|id| registry.describe_secret(&id).ok())
            .map_or_else(|| "*".to_string(), |s| s.arn);
        return Some((format!("secretsmanager:{op}"), resource));
    }
    let (op, resource): (&str, String) = match call.caller.service.as_str() {
        "iot" => match (&call.method, segs.as_slice()) {
            (&Method::GET, ["things"]) => ("ListThings", "*".into()),
            (&Method::POST, ["things", n]) => ("CreateThing", arn("thing", n)),
            (&Method::GET, ["things", n]) => ("DescribeThing", arn("thing", n)),
            (&Method::PATCH, ["things", n]) => ("UpdateThing", arn("thing", n)),
            (&Method::DELETE, ["things", n]) => ("DeleteThing", arn("thing", n)),
            (&Method::GET, ["things", n, "thing-groups"]) => {
                ("ListThingGroupsForThing", arn("thing", n))
            }
            (&Method::PUT, ["things", n, "principals"]) => {
                ("AttachThingPrincipal", arn("thing", n))
            }
            (&Method::DELETE, ["things", n, "principals"]) => {
                ("DetachThingPrincipal", arn("thing", n))
            }
            (&Method::GET, ["things", n, "principals"]) => ("ListThingPrincipals", arn("thing", n)),
            (&Method::GET, ["principals", "things"]) => ("ListPrincipalThings", "*".into()),
            (&Method::POST, ["thing-types", n]) => ("CreateThingType", arn("thingtype", n)),
            (&Method::GET, ["thing-types", n]) => ("DescribeThingType", arn("thingtype", n)),
            (&Method::GET, ["thing-types"]) => ("ListThingTypes", "*".into()),
            (&Method::POST, ["thing-types", n, "deprecate"]) => {
                ("DeprecateThingType", arn("thingtype", n))
            }
            (&Method::DELETE, ["thing-types", n]) => ("DeleteThingType", arn("thingtype", n)),
            (&Method::GET, ["thing-groups"]) => ("ListThingGroups", "*".into()),
            (&Method::PUT, ["thing-groups", "addThingToThingGroup"]) => {
                ("AddThingToThingGroup", "*".into())
            }
            (&Method::PUT, ["thing-groups", "removeThingFromThingGroup"]) => {
                ("RemoveThingFromThingGroup", "*".into())
            }
            (&Method::POST, ["thing-groups", n]) => ("CreateThingGroup", arn("thinggroup", n)),
            (&Method::POST, ["dynamic-thing-groups", n]) => {
                ("CreateDynamicThingGroup", arn("thinggroup", n))
            }
            (&Method::PATCH, ["dynamic-thing-groups", n]) => {
                ("UpdateDynamicThingGroup", arn("thinggroup", n))
            }
            (&Method::DELETE, ["dynamic-thing-groups", n]) => {
                ("DeleteDynamicThingGroup", arn("thinggroup", n))
            }
            (&Method::GET, ["thing-groups", n]) => ("DescribeThingGroup", arn("thinggroup", n)),
            (&Method::PATCH, ["thing-groups", n]) => ("UpdateThingGroup", arn("thinggroup", n)),
            (&Method::DELETE, ["thing-groups", n]) => ("DeleteThingGroup", arn("thinggroup", n)),
            (&Method::GET, ["thing-groups", n, "things"]) => {
                ("ListThingsInThingGroup", arn("thinggroup", n))
            }
            (&Method::POST, ["keys-and-certificate"]) => ("CreateKeysAndCertificate", "*".into()),
            (&Method::POST, ["certificates"]) => ("CreateCertificateFromCsr", "*".into()),
            (&Method::POST, ["certificate", "register"]) => ("RegisterCertificate", "*".into()),
            (&Method::POST, ["certificate", "register-no-ca"]) => {
                ("RegisterCertificateWithoutCA", "*".into())
            }
            (&Method::GET, ["certificates"]) => ("ListCertificates", "*".into()),
            (&Method::GET, ["certificates", id]) => ("DescribeCertificate", arn("cert", id)),
            (&Method::PUT, ["certificates", id]) => ("UpdateCertificate", arn("cert", id)),
            (&Method::DELETE, ["certificates", id]) => ("DeleteCertificate", arn("cert", id)),
            (&Method::GET, ["policies"]) => ("ListPolicies", "*".into()),
            (&Method::POST, ["policies", n]) => ("CreatePolicy", arn("policy", n)),
            (&Method::POST, ["policies", n, "version"]) => {
                ("CreatePolicyVersion", arn("policy", n))
            }
            (&Method::GET, ["policies", n]) => ("GetPolicy", arn("policy", n)),
            (&Method::DELETE, ["policies", n]) => ("DeletePolicy", arn("policy", n)),
            (&Method::PUT, ["target-policies", n]) => ("AttachPolicy", arn("policy", n)),
            (&Method::POST, ["target-policies", n]) => ("DetachPolicy", arn("policy", n)),
            (&Method::POST, ["attached-policies", _]) => ("ListAttachedPolicies", "*".into()),
            (&Method::POST, ["policy-targets", n]) => ("ListTargetsForPolicy", arn("policy", n)),
            (&Method::GET, ["endpoint"]) => ("DescribeEndpoint", "*".into()),
            (&Method::POST, ["provisioning-templates"]) => {
                ("CreateProvisioningTemplate", "*".into())
            }
            (&Method::GET, ["provisioning-templates"]) => ("ListProvisioningTemplates", "*".into()),
            (&Method::GET, ["provisioning-templates", n]) => (
                "DescribeProvisioningTemplate",
                arn("provisioningtemplate", n),
            ),
            (&Method::PATCH, ["provisioning-templates", n]) => {
                ("UpdateProvisioningTemplate", arn("provisioningtemplate", n))
            }
            (&Method::DELETE, ["provisioning-templates", n]) => {
                ("DeleteProvisioningTemplate", arn("provisioningtemplate", n))
            }
            (&Method::GET, ["role-aliases"]) => ("ListRoleAliases", "*".into()),
            (&Method::POST, ["role-aliases", n]) => ("CreateRoleAlias", arn("rolealias", n)),
            (&Method::GET, ["role-aliases", n]) => ("DescribeRoleAlias", arn("rolealias", n)),
            (&Method::DELETE, ["role-aliases", n]) => ("DeleteRoleAlias", arn("rolealias", n)),
            _ => return None,
        },
        // iot-data Publish is the IAM action iot:Publish on the topic's ARN, as in AWS.
        "iotdata" => match (&call.method, segs.as_slice()) {
            (&Method::POST, ["topics", topic]) => ("Publish", arn("topic", topic)),
            // Shadow operations act on the thing's ARN, named shadows included (as in IAM).
            (&Method::GET, ["things", t, "shadow"]) => ("GetThingShadow", arn("thing", t)),
            (&Method::POST, ["things", t, "shadow"]) => ("UpdateThingShadow", arn("thing", t)),
            (&Method::DELETE, ["things", t, "shadow"]) => ("DeleteThingShadow", arn("thing", t)),
            (&Method::GET, ["api", "things", "shadow", "ListNamedShadowsForThing", t]) => {
                ("ListNamedShadowsForThing", arn("thing", t))
            }
            _ => return None,
        },
        _ => return None,
    };
    Some((format!("iot:{op}"), resource))
}

/// CloudWatch Logs: `logs:<Operation>` on the log group's ARN, or the stream's
/// (`…:log-group:<g>:log-stream:<s>`) when the request names one, as IAM matches them.
fn logs_action_of(registry: &Registry, call: &Call) -> Option<(String, String)> {
    let op = call
        .header("x-amz-target")?
        .strip_prefix("Logs_20140328.")?;
    let body: serde_json::Value = serde_json::from_slice(&call.body).unwrap_or_default();
    let resource = match (
        body["logGroupName"].as_str(),
        body["logStreamName"].as_str(),
    ) {
        (Some(g), Some(s)) => format!("{}:log-stream:{s}", registry.log_group_arn(g)),
        (Some(g), None) => registry.log_group_arn(g),
        _ => "*".into(),
    };
    Some((format!("logs:{op}"), resource))
}
