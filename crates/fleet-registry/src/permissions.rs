//! Which role each control operation needs: the one table the control API enforces and the
//! console consults (so that it offers only what the API will allow).
//!
//! - viewer: reads, i.e. operations named `Describe*`, `Get*`, `List*`, `Head*`, `Filter*`,
//!   and the deployment preview, on every service, except reading a secret's value;
//! - operator: fleet operations: things, groups, types, certificates and their attachments
//!   (principals and policies), jobs, shadows and iot-data publishes, components and their
//!   artifacts (S3 writes), deployments, core devices, logs;
//! - admin: users and access keys (`lichen`/`iam`), policy documents, role aliases, CA
//!   certificates, provisioning templates, and every secretsmanager operation beyond listing
//!   and describing (secrets hold credentials for systems outside the fleet, as access keys
//!   do; devices read them with their own certificate, so no operator needs their values).

use crate::Role;

/// iot operations on what only administrators manage.
const IOT_ADMIN: &[&str] = &[
    "CreatePolicy",
    "CreatePolicyVersion",
    "DeletePolicy",
    "DeletePolicyVersion",
    "SetDefaultPolicyVersion",
    "CreateRoleAlias",
    "UpdateRoleAlias",
    "DeleteRoleAlias",
    "RegisterCACertificate",
    "UpdateCACertificate",
    "DeleteCACertificate",
    "CreateProvisioningTemplate",
    "UpdateProvisioningTemplate",
    "DeleteProvisioningTemplate",
    "CreateProvisioningTemplateVersion",
    "DeleteProvisioningTemplateVersion",
    "CreateProvisioningClaim",
    "CreateAuthorizer",
    "UpdateAuthorizer",
    "DeleteAuthorizer",
];

/// Services whose every mutation is a fleet operation.
const OPERATOR_SERVICES: &[&str] = &["iot", "iotdata", "greengrass", "s3", "logs", "lambda"];

fn is_read(operation: &str) -> bool {
    ["Describe", "Get", "List", "Head", "Filter"]
        .iter()
        .any(|p| operation.starts_with(p))
        || operation == "PreviewDeployment"
}

/// The least role that may call `operation` (the AWS operation name, e.g. `CreateThing`,
/// `CreateDeployment`, `PutObject`) of `service` (its SigV4 signing name: `iot`, `iotdata`,
/// `greengrass`, `s3`, `secretsmanager`, `logs`; `lichen` for user and access-key management).
/// The console asks this before it offers an action, so that it shows what the API allows.
///
/// ```
/// use lichen_fleet_registry::{Role, required_role};
/// assert_eq!(required_role("iot", "ListThings"), Role::Viewer);
/// assert_eq!(required_role("greengrass", "CreateDeployment"), Role::Operator);
/// assert_eq!(required_role("iot", "CreatePolicy"), Role::Admin);
/// assert_eq!(required_role("secretsmanager", "GetSecretValue"), Role::Admin);
/// assert_eq!(required_role("lichen", "CreateUser"), Role::Admin);
/// assert!(Role::Operator.may("iot", "CreateThing") && !Role::Viewer.may("iot", "CreateThing"));
/// ```
pub fn required_role(service: &str, operation: &str) -> Role {
    match service {
        "lichen" | "iam" => Role::Admin,
        "secretsmanager" => match operation {
            "GetSecretValue" | "BatchGetSecretValue" => Role::Admin,
            op if is_read(op) => Role::Viewer,
            _ => Role::Admin,
        },
        "iot" if IOT_ADMIN.contains(&operation) => Role::Admin,
        _ if is_read(operation) => Role::Viewer,
        s if OPERATOR_SERVICES.contains(&s) => Role::Operator,
        _ => Role::Admin,
    }
}

impl Role {
    /// Whether this role may call `operation` of `service` (see [`required_role`]).
    pub fn may(self, service: &str, operation: &str) -> bool {
        self >= required_role(service, operation)
    }
}
