//! A CloudWatch Logs client for the log manager: JSON 1.1 requests signed with SigV4, with
//! temporary credentials from the AWS IoT credentials provider (`GET
//! https://<iotCredEndpoint>/role-aliases/<iotRoleAlias>/credentials`, authenticated by the
//! device certificate), as the Greengrass token exchange service gets them. Works against AWS
//! (`https://logs.<region>.amazonaws.com`) and `lichen fleet` (its control-plane URL).

use lichen_cloud::dataplane::DataPlane;
use lichen_sigv4::Credentials;
use serde_json::{Value, json};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MAX_ANSWER: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    /// The service answered with an error shape (`__type`).
    #[error("CloudWatch Logs {op}: {code}: {message}")]
    Service {
        op: &'static str,
        code: String,
        message: String,
    },
    /// No answer, or not one we understand; try again later.
    #[error("CloudWatch Logs {op}: {message}")]
    Transport { op: &'static str, message: String },
    #[error("credentials provider: {0}")]
    Credentials(String),
}

pub struct Client {
    http: DataPlane,
    /// `https://host[:port]` of the logs endpoint, without a trailing slash.
    endpoint: String,
    host: String,
    region: String,
    /// `https://<iotCredEndpoint>/role-aliases/<alias>/credentials`.
    credentials_url: String,
    thing: String,
    cached: Mutex<Option<(Credentials, Instant)>>,
}

impl Client {
    pub fn new(
        http: DataPlane,
        endpoint: &str,
        region: &str,
        cred_endpoint: &str,
        role_alias: &str,
        thing: &str,
    ) -> Client {
        let endpoint = endpoint.trim_end_matches('/').to_string();
        let host = endpoint
            .split_once("://")
            .map_or(endpoint.as_str(), |(_, h)| h)
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let cred = cred_endpoint
            .trim_start_matches("https://")
            .trim_end_matches('/');
        Client {
            http,
            endpoint,
            host,
            region: region.to_string(),
            credentials_url: format!(
                "https://{cred}/role-aliases/{}/credentials",
                lichen_cloud::dataplane::encode_segment(role_alias)
            ),
            thing: thing.to_string(),
            cached: Mutex::new(None),
        }
    }

    /// Forgets cached credentials (after the service refused them).
    pub fn forget_credentials(&self) {
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    async fn credentials(&self) -> Result<Credentials, LogsError> {
        if let Some((c, until)) = self
            .cached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            && Instant::now() < until
        {
            return Ok(c);
        }
        let bad = |m: String| LogsError::Credentials(format!("{}: {m}", self.credentials_url));
        let (status, body) = self
            .http
            .request(
                &self.credentials_url,
                "GET",
                None,
                &[("x-amzn-iot-thingname", &self.thing)],
                MAX_ANSWER,
            )
            .await
            .map_err(|e| bad(e.to_string()))?;
        if status != 200 {
            return Err(bad(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(300)
                    .collect::<String>()
            )));
        }
        let v: Value = serde_json::from_slice(&body).map_err(|e| bad(e.to_string()))?;
        let c = &v["credentials"];
        let field = |k: &str| c[k].as_str().map(str::to_string);
        let (Some(a), Some(s)) = (field("accessKeyId"), field("secretAccessKey")) else {
            return Err(bad("no accessKeyId/secretAccessKey in the answer".into()));
        };
        let left = field("expiration")
            .and_then(|e| {
                time::OffsetDateTime::parse(&e, &time::format_description::well_known::Rfc3339).ok()
            })
            .map_or(600, |exp| {
                (exp - time::OffsetDateTime::now_utc()).whole_seconds() - 300
            });
        let creds = Credentials {
            access_key_id: a,
            secret_access_key: s,
            session_token: field("sessionToken"),
        };
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = Some((
            creds.clone(),
            Instant::now() + Duration::from_secs(left.max(0) as u64),
        ));
        Ok(creds)
    }

    /// One operation (`Logs_20140328.<op>`).
    pub async fn call(&self, op: &'static str, body: &Value) -> Result<Value, LogsError> {
        let creds = self.credentials().await?;
        let payload = body.to_string().into_bytes();
        let target = format!("Logs_20140328.{op}");
        let signed_headers = vec![
            (
                "content-type".to_string(),
                "application/x-amz-json-1.1".to_string(),
            ),
            ("x-amz-target".to_string(), target.clone()),
        ];
        let amz_date = lichen_sigv4::amz_date_now();
        let (_, auth) = lichen_sigv4::sign(
            &lichen_sigv4::SignInput {
                method: "POST",
                host: &self.host,
                path: "/",
                query: &[],
                headers: &signed_headers,
                payload_sha256: &lichen_sigv4::hex_sha256(&payload),
                region: &self.region,
                service: "logs",
                amz_date: &amz_date,
                content_sha256_header: false,
            },
            &creds,
        );
        let mut headers: Vec<(&str, &str)> = signed_headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        headers.extend(auth.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let url = format!("{}/", self.endpoint);
        let (status, answer) = self
            .http
            .request(&url, "POST", Some(payload), &headers, MAX_ANSWER)
            .await
            .map_err(|e| LogsError::Transport {
                op,
                message: e.to_string(),
            })?;
        let v: Value = if answer.is_empty() {
            json!({})
        } else {
            serde_json::from_slice(&answer).map_err(|e| LogsError::Transport {
                op,
                message: format!("HTTP {status}, answer not JSON: {e}"),
            })?
        };
        if (200..300).contains(&status) {
            return Ok(v);
        }
        if status == 403 {
            // Expired or revoked: fetch new ones next time.
            self.forget_credentials();
        }
        let code = v["__type"]
            .as_str()
            .map(|t| t.rsplit('#').next().unwrap_or(t).to_string());
        match code {
            Some(code) => Err(LogsError::Service {
                op,
                code,
                message: v["message"]
                    .as_str()
                    .or(v["Message"].as_str())
                    .unwrap_or_default()
                    .to_string(),
            }),
            None => Err(LogsError::Transport {
                op,
                message: format!("HTTP {status}"),
            }),
        }
    }
}
