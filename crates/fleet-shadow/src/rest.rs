//! The `iot-data` shadow REST API (signing name `iotdata`): GetThingShadow, UpdateThingShadow,
//! DeleteThingShadow (`/things/<thing>/shadow[?name=<shadow>]`) and ListNamedShadowsForThing
//! (`/api/things/shadow/ListNamedShadowsForThing/<thing>`). Bodies are the raw shadow
//! documents; errors carry `x-amzn-ErrorType` and `{"message"}` with the shadow service's text.

use crate::{ShadowService, now};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use lichen_fleet_api::Call;
use lichen_fleet_policy::{Context, Policy, ThingContext, evaluate};
use lichen_fleet_registry::CertificateStatus;
use lichen_shadow::{ShadowError, UpdateRequest, validate_shadow_name};
use serde_json::{Value, json};

enum Op {
    Get,
    Update,
    Delete,
    List,
}

impl Op {
    fn action(&self) -> &'static str {
        match self {
            Op::Get => "iot:GetThingShadow",
            Op::Update => "iot:UpdateThingShadow",
            Op::Delete => "iot:DeleteThingShadow",
            Op::List => "iot:ListNamedShadowsForThing",
        }
    }
}

/// The operation and thing a call names, or `None` when it is not a shadow call.
fn route(call: &Call) -> Option<(Op, String)> {
    let segs = call.segs();
    let (op, thing) = match (&call.method, segs.as_slice()) {
        (&Method::GET, ["things", t, "shadow"]) => (Op::Get, *t),
        (&Method::POST, ["things", t, "shadow"]) => (Op::Update, *t),
        (&Method::DELETE, ["things", t, "shadow"]) => (Op::Delete, *t),
        (&Method::GET, ["api", "things", "shadow", "ListNamedShadowsForThing", t]) => {
            (Op::List, *t)
        }
        _ => return None,
    };
    Some((op, thing.to_string()))
}

fn error_response(e: &ShadowError) -> Response {
    let status = StatusCode::from_u16(e.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (
        status,
        [("content-type", "application/json")],
        json!({ "message": e.message }).to_string(),
    )
        .into_response();
    resp.headers_mut().insert(
        "x-amzn-ErrorType",
        HeaderValue::from_static(e.code.aws_error_type()),
    );
    resp
}

fn ok(v: Value) -> Response {
    ([("content-type", "application/json")], v.to_string()).into_response()
}

impl ShadowService {
    /// Serves `call` if it is an iot-data shadow operation, for a caller the control plane has
    /// already authenticated and authorized (SigV4); `None` otherwise.
    pub async fn handle_rest(&self, call: &Call) -> Option<Response> {
        let (op, thing) = route(call)?;
        let who = call.caller.access_key_id.clone();
        Some(match self.rest(&who, op, &thing, call).await {
            Ok(v) => ok(v),
            Err(e) => error_response(&e),
        })
    }

    /// Serves `call` if it is an iot-data shadow operation from a device on the data plane
    /// (mutual TLS, certificate `certificate_id`), after checking the certificate's IoT
    /// policies allow `iot:<Operation>` on the thing's ARN; `None` otherwise.
    pub async fn handle_device_rest(&self, certificate_id: &str, call: &Call) -> Option<Response> {
        let (op, thing) = route(call)?;
        let who = format!("certificate/{certificate_id}");
        let result = match self
            .device_allowed(certificate_id, op.action(), &thing)
            .await
        {
            Ok(()) => self.rest(&who, op, &thing, call).await,
            Err(e) => Err(e),
        };
        Some(match result {
            Ok(v) => ok(v),
            Err(e) => error_response(&e),
        })
    }

    async fn rest(
        &self,
        who: &str,
        op: Op,
        thing: &str,
        call: &Call,
    ) -> Result<Value, ShadowError> {
        let shadow = call.q("name");
        if let Some(s) = shadow {
            validate_shadow_name(s)?;
        }
        match op {
            Op::Get => self.get_with_token(thing, shadow, None).await,
            Op::Update => {
                let req = UpdateRequest::parse(&call.body, self.limits())?;
                Ok(self.apply(who, thing, shadow, req).await?.accepted)
            }
            Op::Delete => self.delete_as(who, thing, shadow, None).await,
            Op::List => {
                let size = match call.q("pageSize") {
                    None => None,
                    Some(v) => Some(v.parse::<u32>().map_err(|_| {
                        ShadowError::new(
                            lichen_shadow::ErrorCode::BadRequest,
                            format!("pageSize={v:?} must be an integer from 1 to 100"),
                        )
                    })?),
                };
                let page = self
                    .list_named(thing, call.q("nextToken").map(str::to_string), size)
                    .await?;
                let mut out = serde_json::Map::new();
                out.insert("results".into(), json!(page.names));
                if let Some(t) = page.next_token {
                    out.insert("nextToken".into(), json!(t));
                }
                out.insert("timestamp".into(), json!(now()));
                Ok(Value::Object(out))
            }
        }
    }

    /// Whether the certificate's policies allow `action` on the thing: the policy variables
    /// `${iot:Connection.Thing.*}` refer to the attached thing of that name, else to the
    /// certificate's only attached thing.
    async fn device_allowed(
        &self,
        certificate_id: &str,
        action: &str,
        thing: &str,
    ) -> Result<(), ShadowError> {
        let registry_arn = self.registry().arn(&format!("thing/{thing}"));
        let service = self.clone();
        let id = certificate_id.to_string();
        let auth = crate::blocking(move || service.registry().principal_authorization(&id))
            .await?
            .map_err(crate::registry_failure)?;
        let Some(auth) = auth.filter(|a| a.status == CertificateStatus::Active) else {
            return Err(ShadowError::forbidden());
        };
        let policies: Vec<Policy> = auth
            .policies
            .iter()
            .filter_map(|(name, doc)| match Policy::parse(name, doc) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::error!(
                        policy = name,
                        "policy ignored for shadow authorization: {e}"
                    );
                    None
                }
            })
            .collect();
        let attached = auth
            .things
            .iter()
            .find(|t| t.name == thing)
            .or(if auth.things.len() == 1 {
                auth.things.first()
            } else {
                None
            });
        let ctx = Context {
            client_id: None,
            thing: attached.map(|t| ThingContext {
                name: &t.name,
                type_name: t.thing_type.as_deref(),
                attributes: &t.attributes,
            }),
        };
        if evaluate(&policies, action, &registry_arn, &ctx).is_allowed() {
            Ok(())
        } else {
            Err(ShadowError::forbidden())
        }
    }
}
