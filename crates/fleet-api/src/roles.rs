//! Roles on the control API: a request signed with a user's access key runs only if the user's
//! current [`Role`] is at least what its operation needs ([`required_role`]). Temporary
//! credentials from the credentials provider are not users: their role alias's permissions
//! policy decides instead ([`crate::credentials`]).
//!
//! Which role each operation needs is [`required_role`]'s table (in the registry, so that the
//! console consults the same one).
//!
//! A mutation this module cannot name needs admin (deny by default); a read it cannot name
//! needs viewer.

use crate::call::Call;
use crate::error::{ApiError, ApiResult};
use axum::http::{Method, StatusCode};
use lichen_fleet_registry::{AccessKey, Registry};
pub use lichen_fleet_registry::{Role, required_role};

/// The operation a verified call names (None when it names none this fleet knows).
pub(crate) fn operation_of(registry: &Registry, call: &Call) -> Option<String> {
    let segs = call.segs();
    let m = &call.method;
    let named = |s: &str| Some(s.to_string());
    match call.caller.service.as_str() {
        "secretsmanager" => crate::secretsmanager::operation(call).map(str::to_string),
        "logs" => call
            .header("x-amz-target")?
            .strip_prefix("Logs_20140328.")
            .map(str::to_string),
        "iot" => match (m, segs.as_slice()) {
            (&Method::PUT, ["jobs", _]) => named("CreateJob"),
            (&Method::GET, ["jobs", _]) => named("DescribeJob"),
            (&Method::GET, ["jobs"]) => named("ListJobs"),
            (&Method::PUT, ["jobs", _, "cancel"]) => named("CancelJob"),
            (&Method::DELETE, ["jobs", _]) => named("DeleteJob"),
            (&Method::GET, ["jobs", _, "job-document"]) => named("GetJobDocument"),
            (&Method::GET, ["jobs", _, "things"]) => named("ListJobExecutionsForJob"),
            (&Method::GET, ["things", _, "jobs"]) => named("ListJobExecutionsForThing"),
            (&Method::GET, ["things", _, "jobs", _]) => named("DescribeJobExecution"),
            (&Method::PUT, ["things", _, "jobs", _, "cancel"]) => named("CancelJobExecution"),
            (&Method::DELETE, ["things", _, "jobs", ..]) => named("DeleteJobExecution"),
            _ => iam_operation(registry, call),
        },
        "iotdata" => iam_operation(registry, call),
        "greengrass" => {
            let rest = segs.get(2..).unwrap_or_default();
            let op = match (m, rest) {
                (&Method::POST, ["createComponentVersion"]) => "CreateComponentVersion",
                (&Method::GET, ["components"]) => "ListComponents",
                (&Method::GET, ["components", _, "metadata"]) => "DescribeComponent",
                (&Method::GET, ["components", _, "versions"]) => "ListComponentVersions",
                (&Method::GET, ["components", _]) => "GetComponent",
                (&Method::GET, ["components", _, "artifacts", ..]) => "GetComponentVersionArtifact",
                (&Method::DELETE, ["components", _]) => "DeleteComponent",
                (&Method::POST, ["deployments"]) => "CreateDeployment",
                (&Method::POST, ["deployments", "preview"]) => "PreviewDeployment",
                (&Method::GET, ["deployments"]) => "ListDeployments",
                (&Method::GET, ["deployments", _]) => "GetDeployment",
                (&Method::GET, ["deployments", _, "devices"]) => "ListDeploymentDevices",
                (&Method::POST, ["deployments", _, "cancel"]) => "CancelDeployment",
                (&Method::DELETE, ["deployments", _]) => "DeleteDeployment",
                (&Method::GET, ["coreDevices"]) => "ListCoreDevices",
                (&Method::GET, ["coreDevices", _]) => "GetCoreDevice",
                (&Method::GET, ["coreDevices", _, "installedComponents"]) => {
                    "ListInstalledComponents"
                }
                (&Method::GET, ["coreDevices", _, "effectiveDeployments"]) => {
                    "ListEffectiveDeployments"
                }
                (&Method::DELETE, ["coreDevices", _]) => "DeleteCoreDevice",
                _ => return None,
            };
            named(op)
        }
        _ => None,
    }
}

/// The name [`crate::authz`] gives the call for role policies, without its service prefix.
fn iam_operation(registry: &Registry, call: &Call) -> Option<String> {
    let (action, _) = crate::authz::action_of(registry, call)?;
    action.split_once(':').map(|(_, op)| op.to_string())
}

/// The role a call needs: its operation's, or by method when it names no known operation.
pub(crate) fn needed(service: &str, operation: Option<&str>, method: &Method) -> Role {
    match operation {
        Some(op) => required_role(service, op),
        None if matches!(*method, Method::GET | Method::HEAD) => Role::Viewer,
        None => Role::Admin,
    }
}

/// Refuses (403 `AccessDeniedException`, logged) a call above the key's role.
pub(crate) fn check(
    key: &AccessKey,
    service: &str,
    operation: Option<&str>,
    method: &Method,
    path: &str,
) -> ApiResult<()> {
    let need = needed(service, operation, method);
    if key.role >= need {
        return Ok(());
    }
    let what = match operation {
        Some(op) => format!("{service}:{op}"),
        None => format!("{method} {path} ({service})"),
    };
    let who = match &key.user {
        Some(u) => format!("user {u:?} (access key {})", key.id),
        None => format!("access key {}", key.id),
    };
    tracing::warn!(access_key = %key.id, user = ?key.user, role = %key.role, operation = %what, needed = %need, "request refused by role");
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "AccessDeniedException",
        format!(
            "{who} has the role {}; {what} needs the role {need} or above",
            key.role
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_for_viewers_fleet_operations_for_operators_the_rest_for_admins() {
        for (service, op) in [
            ("iot", "ListThings"),
            ("iot", "DescribeThing"),
            ("iot", "GetPolicy"),
            ("iot", "ListAttachedPolicies"),
            ("iot", "DescribeEndpoint"),
            ("iotdata", "GetThingShadow"),
            ("greengrass", "ListDeployments"),
            ("greengrass", "PreviewDeployment"),
            ("s3", "GetObject"),
            ("s3", "ListBucket"),
            ("logs", "FilterLogEvents"),
            ("logs", "GetLogEvents"),
            ("secretsmanager", "DescribeSecret"),
            ("secretsmanager", "ListSecrets"),
        ] {
            assert_eq!(required_role(service, op), Role::Viewer, "{service}:{op}");
        }
        for (service, op) in [
            ("iot", "CreateThing"),
            ("iot", "DeleteThingGroup"),
            ("iot", "CreateKeysAndCertificate"),
            ("iot", "UpdateCertificate"),
            ("iot", "AttachPolicy"),
            ("iot", "AttachThingPrincipal"),
            ("iot", "CreateJob"),
            ("iotdata", "UpdateThingShadow"),
            ("iotdata", "Publish"),
            ("greengrass", "CreateDeployment"),
            ("greengrass", "CancelDeployment"),
            ("greengrass", "CreateComponentVersion"),
            ("s3", "PutObject"),
            ("logs", "PutLogEvents"),
        ] {
            assert_eq!(required_role(service, op), Role::Operator, "{service}:{op}");
        }
        for (service, op) in [
            ("iot", "CreatePolicy"),
            ("iot", "CreatePolicyVersion"),
            ("iot", "DeletePolicy"),
            ("iot", "CreateRoleAlias"),
            ("iot", "DeleteRoleAlias"),
            ("iot", "CreateProvisioningTemplate"),
            ("iot", "RegisterCACertificate"),
            ("secretsmanager", "GetSecretValue"),
            ("secretsmanager", "CreateSecret"),
            ("secretsmanager", "PutSecretValue"),
            ("lichen", "CreateUser"),
            ("lichen", "ListUsers"),
            ("iam", "CreateAccessKey"),
            ("somethingelse", "DoThing"),
        ] {
            assert_eq!(required_role(service, op), Role::Admin, "{service}:{op}");
        }
    }

    #[test]
    fn unnamed_calls_need_viewer_to_read_and_admin_to_change() {
        assert_eq!(needed("greengrass", None, &Method::GET), Role::Viewer);
        assert_eq!(needed("greengrass", None, &Method::HEAD), Role::Viewer);
        assert_eq!(needed("greengrass", None, &Method::POST), Role::Admin);
        assert_eq!(needed("iot", None, &Method::DELETE), Role::Admin);
    }

    #[test]
    fn a_refusal_names_the_operation_and_the_role_needed() {
        let key = AccessKey {
            id: "AKIAV".into(),
            user: Some("v".into()),
            kind: "user".into(),
            role: Role::Viewer,
            created_at: 0,
        };
        let e = check(&key, "iot", Some("CreateThing"), &Method::POST, "/things/x").unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::FORBIDDEN, "AccessDeniedException")
        );
        assert!(e.message.contains("iot:CreateThing"), "{}", e.message);
        assert!(
            e.message.contains("needs the role operator"),
            "{}",
            e.message
        );
        assert!(e.message.contains("\"v\""), "{}", e.message);
        assert!(check(&key, "iot", Some("ListThings"), &Method::GET, "/things").is_ok());
        let admin = AccessKey {
            role: Role::Admin,
            ..key
        };
        assert!(
            check(
                &admin,
                "iot",
                Some("CreatePolicy"),
                &Method::POST,
                "/policies/p"
            )
            .is_ok()
        );
    }
}
