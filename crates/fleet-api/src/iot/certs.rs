//! Handlers for certificates and provisioning templates.

use super::*;

pub(super) fn initial_status(c: &Call, body_status: Option<&str>) -> ApiResult<CertificateStatus> {
    if let Some(st) = body_status {
        return Ok(CertificateStatus::parse(st)?);
    }
    Ok(if c.q_bool("setAsActive")?.unwrap_or(false) {
        CertificateStatus::Active
    } else {
        CertificateStatus::Inactive
    })
}

pub(super) fn record(
    s: &ApiState,
    c: &Call,
    op: &str,
    issued: &lichen_fleet_pki::IssuedCertificate,
    status: CertificateStatus,
) -> ApiResult<lichen_fleet_registry::Certificate> {
    Ok(s.registry.insert_certificate(
        who(c),
        op,
        &NewCertificate {
            id: issued.id.clone(),
            pem: issued.pem.clone(),
            status,
            ca_id: issued.ca_id.clone(),
            not_before: issued.not_before,
            not_after: issued.not_after,
        },
    )?)
}

pub(super) fn create_keys_and_certificate(s: &ApiState, c: &Call) -> ApiResult<Response> {
    let status = initial_status(c, None)?;
    let k = s.ca.create_keys_and_certificate()?;
    let cert = record(s, c, "CreateKeysAndCertificate", &k.certificate, status)?;
    Ok(json(json!({
        "certificateArn": cert.arn,
        "certificateId": cert.id,
        "certificatePem": cert.pem,
        "keyPair": { "PublicKey": k.public_key_pem, "PrivateKey": k.private_key_pem },
    })))
}

pub(super) fn create_certificate_from_csr(s: &ApiState, c: &Call) -> ApiResult<Response> {
    let body = c.json()?;
    let csr = required(
        str_field(&body, "certificateSigningRequest")?,
        "certificateSigningRequest",
    )?;
    let status = initial_status(c, None)?;
    let issued = s.ca.sign_csr(csr)?;
    let cert = record(s, c, "CreateCertificateFromCsr", &issued, status)?;
    Ok(json(json!({
        "certificateArn": cert.arn,
        "certificateId": cert.id,
        "certificatePem": cert.pem,
    })))
}

pub(super) fn register_certificate(
    s: &ApiState,
    c: &Call,
    without_ca: bool,
) -> ApiResult<Response> {
    let body = c.json()?;
    let pem = required(str_field(&body, "certificatePem")?, "certificatePem")?;
    if let Some(ca) = str_field(&body, "caCertificatePem")?
        && lichen_fleet_pki::certificate_id_of_pem(ca)? != s.ca.ca_id()
    {
        return Err(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "CertificateValidationException",
            "caCertificatePem is not a CA registered with this fleet (only the fleet's own CA \
             is registered)",
        ));
    }
    let status = initial_status(c, str_field(&body, "status")?)?;
    let issued = s.ca.register(pem, without_ca).map_err(|e| match e {
        lichen_fleet_pki::PkiError::Invalid(m) => ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "CertificateValidationException",
            m,
        ),
        e => e.into(),
    })?;
    let op = if without_ca {
        "RegisterCertificateWithoutCA"
    } else {
        "RegisterCertificate"
    };
    let cert = record(s, c, op, &issued, status)?;
    Ok(json(json!({
        "certificateArn": cert.arn,
        "certificateId": cert.id,
    })))
}

pub(super) fn create_provisioning_template(s: &ApiState, c: &Call) -> ApiResult<Response> {
    let body = c.json()?;
    let hook = match body.get("preProvisioningHook") {
        None | Some(Value::Null) => None,
        Some(h @ Value::Object(o)) if o.get("targetArn").is_some_and(Value::is_string) => {
            Some(h.to_string())
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "preProvisioningHook must be an object with a targetArn",
            ));
        }
    };
    let t = s.registry.create_provisioning_template(
        who(c),
        &lichen_fleet_registry::ProvisioningTemplate {
            name: required(str_field(&body, "templateName")?, "templateName")?.into(),
            arn: String::new(),
            description: str_field(&body, "description")?.map(str::to_string),
            body: required(str_field(&body, "templateBody")?, "templateBody")?.into(),
            enabled: body
                .get("enabled")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            provisioning_role_arn: required(
                str_field(&body, "provisioningRoleArn")?,
                "provisioningRoleArn",
            )?
            .into(),
            pre_provisioning_hook: hook,
            kind: str_field(&body, "type")?
                .unwrap_or("FLEET_PROVISIONING")
                .into(),
            created_ms: 0,
            updated_ms: 0,
        },
    )?;
    Ok(json(json!({
        "templateArn": t.arn,
        "templateName": t.name,
        "defaultVersionId": 1,
    })))
}

pub(super) fn describe_certificate(s: &ApiState, id: &str) -> ApiResult<Response> {
    let cert = s.registry.describe_certificate(id)?;
    let mut d = json!({
        "certificateArn": cert.arn,
        "certificateId": cert.id,
        "status": cert.status.as_str(),
        "certificatePem": cert.pem,
        "ownedBy": s.registry.account(),
        "creationDate": seconds(cert.created_ms),
        "lastModifiedDate": seconds(cert.updated_ms),
        "customerVersion": 1,
        "generationId": cert.updated_ms.to_string(),
        "validity": {
            "notBefore": cert.not_before,
            "notAfter": cert.not_after,
        },
        "certificateMode": "DEFAULT",
    });
    if let Some(ca) = &cert.ca_id {
        d["caCertificateId"] = json!(ca);
    }
    Ok(json(json!({ "certificateDescription": d })))
}
