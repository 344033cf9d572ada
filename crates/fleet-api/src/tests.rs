use super::*;
use lichen_fleet_registry::{CertificateStatus, Change};
use lichen_sigv4::{Credentials, SignInput, amz_date_now, hex_sha256, sign};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Fleet {
    _dir: tempfile::TempDir,
    addr: std::net::SocketAddr,
    registry: Arc<Registry>,
    creds: Credentials,
}

/// A stand-in for another service (as `iotdata` Publish will be): echoes who called what.
struct Echo;

impl ServiceHandler for Echo {
    fn handle(&self, call: Call) -> Pin<Box<dyn Future<Output = Response> + Send + '_>> {
        Box::pin(async move {
            json(serde_json::json!({
                "who": call.caller.access_key_id,
                "service": call.caller.service,
                "segments": call.segments,
                "body": String::from_utf8_lossy(&call.body),
            }))
        })
    }
}

async fn start() -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let registry = Arc::new(Registry::open(&dir.path().join("fleet.db"), "us-east-1").unwrap());
    let ca = Arc::new(FleetCa::open_or_create(&dir.path().join("ca")).unwrap());
    let (akid, secret) = registry
        .ensure_access_key("admin", || {
            ("AKIATESTADMIN0000001".into(), "s3cret/key".into())
        })
        .unwrap();
    let state = Arc::new(ApiState {
        registry: registry.clone(),
        ca,
        endpoints: EndpointHosts {
            data: "localhost".into(),
            credentials: "localhost".into(),
        },
        services: HashMap::from([(
            "iotdata".to_string(),
            Arc::new(Echo) as Arc<dyn ServiceHandler>,
        )]),
        deployments: None,
        jobs: Some(lichen_fleet_jobs::JobsService::new(registry.clone())),
        objects: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, state, std::future::pending()));
    Fleet {
        _dir: dir,
        addr,
        registry,
        creds: Credentials {
            access_key_id: akid,
            secret_access_key: secret,
            session_token: None,
        },
    }
}

struct Answer {
    status: u16,
    error_type: Option<String>,
    body: serde_json::Value,
}

/// Sends one signed HTTP/1.1 request (`path` already encoded; `query` raw pairs).
async fn send(
    f: &Fleet,
    creds: &Credentials,
    service: &str,
    method: &str,
    path: &str,
    query: &[(&str, &str)],
    body: &str,
) -> Answer {
    let host = f.addr.to_string();
    let query: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let (canonical_query, headers) = sign(
        &SignInput {
            method,
            host: &host,
            // Every service but S3 signs the path encoded once more (as botocore does).
            path: &lichen_sigv4::uri_encode(path, true),
            query: &query,
            headers: &[],
            payload_sha256: &hex_sha256(body.as_bytes()),
            region: "us-east-1",
            service,
            amz_date: &amz_date_now(),
            content_sha256_header: false,
        },
        creds,
    );
    let target = if canonical_query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{canonical_query}")
    };
    let mut req = format!("{method} {target} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    let mut s = tokio::net::TcpStream::connect(f.addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let error_type = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("x-amzn-errortype: ")
            .map(|_| l[18..].to_string())
    });
    Answer {
        status,
        error_type,
        body: serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    }
}

#[tokio::test]
async fn bad_signatures_are_refused_before_any_handler_runs() {
    let f = start().await;
    let wrong = Credentials {
        secret_access_key: "wrong".into(),
        ..f.creds.clone()
    };
    let a = send(&f, &wrong, "iot", "POST", "/things/t1", &[], "{}").await;
    assert_eq!(a.status, 403);
    assert_eq!(a.error_type.as_deref(), Some("InvalidSignatureException"));
    let unknown = Credentials {
        access_key_id: "AKIANOBODY0000000000".into(),
        ..f.creds.clone()
    };
    let a = send(&f, &unknown, "iot", "POST", "/things/t1", &[], "{}").await;
    assert_eq!(a.error_type.as_deref(), Some("UnrecognizedClientException"));
    // Nothing was created and nothing audited besides the key itself.
    assert!(f.registry.describe_thing("t1").is_err());
    assert_eq!(f.registry.audit_log(0, 10, None).unwrap().len(), 1);

    let mut s = tokio::net::TcpStream::connect(f.addr).await.unwrap();
    s.write_all(b"GET /things HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("x-amzn-errortype: missingauthenticationtokenexception")
    );
}

#[tokio::test]
async fn things_round_trip_with_aws_errors() {
    let f = start().await;
    let c = f.creds.clone();
    let a = send(
        &f,
        &c,
        "iot",
        "POST",
        "/things/dev%3A1",
        &[],
        r#"{"attributePayload":{"attributes":{"a":"1"}}}"#,
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["thingName"], "dev:1");
    let a = send(&f, &c, "iot", "GET", "/things/dev%3A1", &[], "").await;
    assert_eq!(a.body["attributes"]["a"], "1");
    assert_eq!(a.body["version"], 1);
    let a = send(
        &f,
        &c,
        "iot",
        "POST",
        "/things/dev%3A1",
        &[],
        r#"{"attributePayload":{"attributes":{"a":"2"}}}"#,
    )
    .await;
    assert_eq!(a.status, 409);
    assert_eq!(
        a.error_type.as_deref(),
        Some("ResourceAlreadyExistsException")
    );
    assert_eq!(a.body["resourceId"], "dev:1");
    let a = send(&f, &c, "iot", "GET", "/things/nope", &[], "").await;
    assert_eq!(a.status, 404);
    assert_eq!(a.error_type.as_deref(), Some("ResourceNotFoundException"));
    let audit = f.registry.audit_log(0, 10, Some("dev:1")).unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].who, c.access_key_id);
}

#[tokio::test]
async fn the_signing_name_routes_the_request() {
    let f = start().await;
    let c = f.creds.clone();
    send(&f, &c, "iot", "POST", "/things/t", &[], "{}").await;
    // Same path, signed for another service: that service's handler answers, not iot.
    let a = send(&f, &c, "iotdata", "POST", "/topics/a%2Fb", &[], "hi").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body["who"], c.access_key_id.as_str());
    assert_eq!(a.body["service"], "iotdata");
    assert_eq!(a.body["segments"], serde_json::json!(["topics", "a/b"]));
    assert_eq!(a.body["body"], "hi");
    // A service nobody serves.
    let a = send(&f, &c, "greengrass", "GET", "/things/t", &[], "").await;
    assert_eq!(a.status, 404);
    assert_eq!(a.error_type.as_deref(), Some("UnknownOperationException"));
    let a = send(&f, &c, "iot", "GET", "/things/t", &[], "").await;
    assert_eq!(a.status, 200);
}

#[tokio::test]
async fn certificate_revocation_is_announced_to_subscribers() {
    let f = start().await;
    let c = f.creds.clone();
    let mut changes = f.registry.subscribe();
    let a = send(
        &f,
        &c,
        "iot",
        "POST",
        "/keys-and-certificate",
        &[("setAsActive", "true")],
        "",
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let id = a.body["certificateId"].as_str().unwrap().to_string();
    assert!(
        a.body["keyPair"]["PrivateKey"]
            .as_str()
            .unwrap()
            .contains("RSA PRIVATE KEY")
    );
    let a = send(
        &f,
        &c,
        "iot",
        "PUT",
        &format!("/certificates/{id}"),
        &[("newStatus", "REVOKED")],
        "",
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(
        changes.recv().await.unwrap(),
        Change::CertificateStatus {
            certificate_id: id.clone(),
            status: Some(CertificateStatus::Revoked)
        }
    );
    let a = send(
        &f,
        &c,
        "iot",
        "PUT",
        &format!("/certificates/{id}"),
        &[("newStatus", "ACTIVE")],
        "",
    )
    .await;
    assert_eq!(a.status, 406);
    assert_eq!(a.error_type.as_deref(), Some("CertificateStateException"));
}

/// Temporary credentials as the credentials provider records them, expiring at `expires_ms`.
fn temporary(f: &Fleet, id: &str, expires_ms: i64) -> Credentials {
    f.registry
        .insert_temporary_credentials(&lichen_fleet_registry::TemporaryCredentials {
            access_key_id: id.into(),
            secret_access_key: "temp/secret".into(),
            token_sha256: hex_sha256(b"the-token"),
            role_arn: "arn:aws:iam::123456789012:role/reader".into(),
            role_alias: "reader".into(),
            thing_name: "t1".into(),
            certificate_id: "ab".repeat(32),
            expires_ms,
        })
        .unwrap();
    Credentials {
        access_key_id: id.into(),
        secret_access_key: "temp/secret".into(),
        session_token: Some("the-token".into()),
    }
}

#[tokio::test]
async fn temporary_credentials_do_what_their_role_allows_until_they_expire() {
    let f = start().await;
    f.registry
        .put_role_policy(
            "admin",
            "arn:aws:iam::123456789012:role/reader",
            r#"{"Version":"2012-10-17","Statement":[
                {"Effect":"Allow","Action":"iot:DescribeThing","Resource":"*"}]}"#,
        )
        .unwrap();
    let a = send(&f, &f.creds, "iot", "POST", "/things/t1", &[], "{}").await;
    assert_eq!(a.status, 200, "{}", a.body);
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;

    let live = temporary(&f, "ASIALIVE000000000000", now_ms + 3_600_000);
    let a = send(&f, &live, "iot", "GET", "/things/t1", &[], "").await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = send(&f, &live, "iot", "DELETE", "/things/t1", &[], "").await;
    assert_eq!(a.status, 403);
    assert_eq!(a.error_type.as_deref(), Some("AccessDeniedException"));
    assert!(f.registry.describe_thing("t1").is_ok());

    let expired = temporary(&f, "ASIAEXPIRED000000000", now_ms - 1);
    let a = send(&f, &expired, "iot", "GET", "/things/t1", &[], "").await;
    assert_eq!(a.status, 403);
    assert_eq!(a.error_type.as_deref(), Some("ExpiredTokenException"));
}

fn user_key(f: &Fleet, user: &str, role: lichen_fleet_registry::Role) -> Credentials {
    f.registry
        .create_user("admin", user, "a-long-password", role)
        .unwrap();
    let (id, secret) = f
        .registry
        .create_access_key("admin", user, || {
            (
                format!("AKIA{:0>16}", user.to_uppercase()),
                format!("{user}/secret"),
            )
        })
        .unwrap();
    Credentials {
        access_key_id: id,
        secret_access_key: secret,
        session_token: None,
    }
}

#[tokio::test]
async fn access_keys_act_with_their_users_current_role() {
    use lichen_fleet_registry::Role;
    let f = start().await;
    let viewer = user_key(&f, "viewer", Role::Viewer);
    let operator = user_key(&f, "operator", Role::Operator);
    let policy = r#"{"policyDocument":"{\"Version\":\"2012-10-17\",\"Statement\":[{\"Effect\":\"Allow\",\"Action\":\"iot:Connect\",\"Resource\":\"*\"}]}"}"#;

    // A viewer reads, and is refused a change, which is not made.
    let a = send(&f, &viewer, "iot", "GET", "/things", &[], "").await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = send(&f, &viewer, "iot", "POST", "/things/t1", &[], "{}").await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert_eq!(a.error_type.as_deref(), Some("AccessDeniedException"));
    let m = a.body["message"].as_str().unwrap();
    assert!(
        m.contains("iot:CreateThing") && m.contains("operator"),
        "{m}"
    );
    assert!(f.registry.describe_thing("t1").is_err());
    // Jobs and other services are classified too.
    let a = send(&f, &viewer, "iot", "PUT", "/jobs/j1", &[], "{}").await;
    assert_eq!(a.status, 403, "{}", a.body);
    let a = send(&f, &viewer, "iotdata", "POST", "/topics/t", &[], "x").await;
    assert_eq!(a.status, 403, "{}", a.body);

    // An operator changes things but not policies.
    let a = send(&f, &operator, "iot", "POST", "/things/t1", &[], "{}").await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = send(&f, &operator, "iotdata", "POST", "/topics/t", &[], "x").await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = send(&f, &operator, "iot", "POST", "/policies/p", &[], policy).await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(
        a.body["message"]
            .as_str()
            .unwrap()
            .contains("needs the role admin")
    );
    let a = send(&f, &f.creds, "iot", "POST", "/policies/p", &[], policy).await;
    assert_eq!(a.status, 200, "{}", a.body);

    // A role change applies to the next request; a deleted user's key is unknown.
    f.registry
        .set_user_role("admin", "viewer", Role::Operator)
        .unwrap();
    let a = send(&f, &viewer, "iot", "POST", "/things/t2", &[], "{}").await;
    assert_eq!(a.status, 200, "{}", a.body);
    f.registry.delete_user("admin", "viewer").unwrap();
    let a = send(&f, &viewer, "iot", "GET", "/things", &[], "").await;
    assert_eq!(a.status, 403);
    assert_eq!(a.error_type.as_deref(), Some("UnrecognizedClientException"));
}
