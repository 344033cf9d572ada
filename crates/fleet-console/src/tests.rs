//! Handler tests: pages render for a signed-in user, sign-in and CSRF checks, role refusals,
//! and the shadow edit's version check.

use crate::{ConsoleState, router};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use lichen_fleet_registry::Role;
use lichen_fleet_registry::{FleetStatusReport, Registry, ReportedComponent};
use std::sync::Arc;
use tower::ServiceExt;

struct Fixture {
    _dir: tempfile::TempDir,
    state: ConsoleState,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let registry = Arc::new(Registry::open(&dir.path().join("fleet.db"), "us-east-1").unwrap());
    let shadows = lichen_fleet_shadow::ShadowService::new(
        registry.clone(),
        None,
        lichen_fleet_shadow::Limits::default(),
    );
    let state = ConsoleState {
        shadows: Some(shadows),
        ..ConsoleState::new(registry)
    };
    Fixture { _dir: dir, state }
}

impl Fixture {
    /// A session for a new user with `role`: (cookie header, CSRF token).
    fn sign_in(&self, name: &str, role: Role) -> (String, String) {
        let r = &self.state.registry;
        r.create_user("test", name, "password-123", role).unwrap();
        let (token, s) = r.create_session(name, 600).unwrap();
        (format!("lichen_console={token}"), s.csrf_token)
    }

    async fn send(&self, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
        let resp = router(self.state.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    async fn get(&self, path: &str, cookie: &str) -> (StatusCode, axum::http::HeaderMap, String) {
        self.send(
            Request::get(path)
                .header(header::COOKIE, cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    async fn post(
        &self,
        path: &str,
        cookie: &str,
        form: &[(&str, &str)],
    ) -> (StatusCode, axum::http::HeaderMap, String) {
        self.send(
            Request::post(path)
                .header(header::COOKIE, cookie)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(serde_urlencoded::to_string(form).unwrap()))
                .unwrap(),
        )
        .await
    }

    fn core_device(&self, thing: &str, state: &str) {
        let r = &self.state.registry;
        r.record_fleet_status(
            thing,
            &FleetStatusReport {
                sequence_number: 1,
                complete: true,
                chunk_id: 1,
                overall_status: if state == "BROKEN" {
                    "UNHEALTHY"
                } else {
                    "HEALTHY"
                }
                .into(),
                platform: Some("linux".into()),
                architecture: Some("amd64".into()),
                core_version: Some("2.14.0".into()),
                runtime: Some("lichen".into()),
                components: vec![ReportedComponent {
                    name: "com.example.Hello".into(),
                    version: "1.0.0".into(),
                    status: state.into(),
                    is_root: true,
                    ..Default::default()
                }],
            },
        )
        .unwrap();
    }
}

fn set_cookies(h: &axum::http::HeaderMap) -> Vec<String> {
    h.get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn an_anonymous_request_is_sent_to_sign_in_with_where_it_was_going() {
    let f = fixture();
    let (status, h, _) = f.get("/console/devices", "").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        h[header::LOCATION],
        "/console/login?next=%2Fconsole%2Fdevices"
    );
    let (status, _, _) = f
        .send(
            Request::get("/console/fragments/overview")
                .header("x-console-fragment", "1")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn sign_in_sets_a_strict_secure_http_only_session_cookie() {
    let f = fixture();
    f.state
        .registry
        .create_user("test", "ada", "password-123", Role::Operator)
        .unwrap();
    let (status, h, body) = f.get("/console/login?next=/console/devices", "").await;
    assert_eq!(status, StatusCode::OK);
    for id in ["id=\"username\"", "id=\"password\"", "id=\"login\""] {
        assert!(body.contains(id), "{id} missing from the sign-in form");
    }
    let login_cookie = set_cookies(&h)
        .into_iter()
        .find(|c| c.starts_with("lichen_console_login="))
        .unwrap();
    let token = login_cookie
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_string();
    let cookie = format!("lichen_console_login={token}");

    // The wrong password, then a forged form (no matching token), then the right one.
    let form = |pw: &'static str, csrf: String| {
        vec![
            ("csrf", csrf),
            ("username", "ada".to_string()),
            ("password", pw.to_string()),
            ("next", "/console/devices".to_string()),
        ]
    };
    let post = |fields: Vec<(&'static str, String)>| {
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        serde_urlencoded::to_string(fields).unwrap()
    };
    let req = |body: String, cookie: &str| {
        Request::post("/console/login")
            .header(header::COOKIE, cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap()
    };
    let (status, _, body) = f
        .send(req(post(form("wrong-password", token.clone())), &cookie))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("Wrong user name or password"));
    let (status, h, _) = f
        .send(req(post(form("password-123", "forged".into())), &cookie))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        !set_cookies(&h)
            .iter()
            .any(|c| c.starts_with("lichen_console="))
    );
    let (status, h, _) = f
        .send(req(post(form("password-123", token.clone())), &cookie))
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(h[header::LOCATION], "/console/devices");
    let session = set_cookies(&h)
        .into_iter()
        .find(|c| c.starts_with("lichen_console="))
        .unwrap();
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/console"] {
        assert!(session.contains(attr), "{attr} missing in {session}");
    }
    let session = session.split(';').next().unwrap().to_string();
    let (status, _, body) = f.get("/console/devices", &session).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("ada"));
}

#[tokio::test]
async fn an_open_redirect_after_sign_in_is_refused() {
    assert_eq!(
        crate::pages::safe_next_for_tests(Some("//evil.example/x")),
        "/console"
    );
    assert_eq!(
        crate::pages::safe_next_for_tests(Some("https://evil.example/")),
        "/console"
    );
    assert_eq!(
        crate::pages::safe_next_for_tests(Some("/console/devices/a")),
        "/console/devices/a"
    );
}

#[tokio::test]
async fn pages_render_for_a_viewer_with_the_fleets_devices() {
    let f = fixture();
    f.core_device("core-1", "RUNNING");
    f.core_device("core-2", "BROKEN");
    let (cookie, _) = f.sign_in("val", Role::Viewer);
    let (status, h, body) = f.get("/console", &cookie).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        h[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    assert!(body.contains("data-testid=\"devices-table\""));
    assert!(body.contains("core-1") && body.contains("core-2"));
    assert!(
        body.contains("REPORTED_UNHEALTHY"),
        "core-2's broken component"
    );
    // A viewer is not shown the administrators' page in the navigation.
    assert!(!body.contains("href=\"/console/users\""));
    let (status, _, body) = f.get("/console/devices/core-1", &cookie).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("com.example.Hello") && body.contains("RUNNING"));
    assert!(!body.contains("shadow-form-"), "a viewer sees no edit form");
    for page in [
        "/console/devices",
        "/console/groups",
        "/console/certificates",
        "/console/audit",
    ] {
        let (status, _, _) = f.get(page, &cookie).await;
        assert_eq!(status, StatusCode::OK, "{page}");
    }
    let (status, _, _) = f.get("/console/devices/nothing-here", &cookie).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = f.get("/console/users", &cookie).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_form_post_without_the_sessions_csrf_token_is_refused() {
    let f = fixture();
    let (cookie, csrf) = f.sign_in("op", Role::Operator);
    let form = [("desired", "{\"color\":\"red\"}")];
    let (status, _, body) = f.post("/console/devices/t1/shadow", &cookie, &form).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("security token"));
    let (status, _, _) = f
        .post(
            "/console/devices/t1/shadow",
            &cookie,
            &[("csrf", "not-it"), ("desired", "{}")],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = f
        .post(
            "/console/devices/t1/shadow",
            &cookie,
            &[("csrf", &csrf), ("desired", "{\"color\":\"red\"}")],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    // Without a session at all: 401, nothing changed.
    let (status, _, _) = f
        .post(
            "/console/devices/t1/shadow",
            "",
            &[("csrf", &csrf), ("desired", "{}")],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_viewer_is_refused_every_change_by_the_server() {
    let f = fixture();
    let (cookie, csrf) = f.sign_in("val", Role::Viewer);
    let posts: [(&str, &[(&str, &str)]); 5] = [
        ("/console/devices/t1/shadow", &[("desired", "{\"a\":1}")]),
        ("/console/groups/g1/members", &[("thing", "t1")]),
        ("/console/certificates/abc/status", &[("status", "REVOKED")]),
        ("/console/templates/t/enabled", &[("enabled", "false")]),
        (
            "/console/users",
            &[
                ("name", "x"),
                ("password", "password-123"),
                ("role", "admin"),
            ],
        ),
    ];
    for (path, fields) in posts {
        let mut form = vec![("csrf", csrf.as_str())];
        form.extend_from_slice(fields);
        let (status, _, body) = f.post(path, &cookie, &form).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert!(body.contains("role"), "{path}: {body}");
    }
    let svc = f.state.shadows.clone().unwrap();
    assert!(svc.get("t1", None).await.is_err(), "no shadow was created");
    assert_eq!(f.state.registry.list_users().unwrap().len(), 1);
}

#[tokio::test]
async fn a_shadow_edit_replaces_desired_and_refuses_a_stale_version() {
    let f = fixture();
    f.state
        .registry
        .create_thing("test", "t1", None, Default::default())
        .unwrap();
    let svc = f.state.shadows.clone().unwrap();
    svc.update(
        "t1",
        None,
        serde_json::json!({"state": {"desired": {"color": "blue", "size": 3}}}),
        None,
    )
    .await
    .unwrap();
    let (cookie, csrf) = f.sign_in("op", Role::Operator);
    let (_, _, page) = f.get("/console/devices/t1", &cookie).await;
    assert!(page.contains("shadow-form-classic"));
    // The form was rendered at version 1; a device's update moves the shadow to 2.
    svc.update(
        "t1",
        None,
        serde_json::json!({"state": {"reported": {"color": "blue"}}}),
        None,
    )
    .await
    .unwrap();
    let (status, _, body) = f
        .post(
            "/console/devices/t1/shadow",
            &cookie,
            &[
                ("csrf", &csrf),
                ("version", "1"),
                ("desired", "{\"color\":\"red\"}"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, h, _) = f
        .post(
            "/console/devices/t1/shadow",
            &cookie,
            &[
                ("csrf", &csrf),
                ("version", "2"),
                ("desired", "{\"color\":\"red\"}"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(h[header::LOCATION], "/console/devices/t1");
    let doc = svc.get("t1", None).await.unwrap();
    assert_eq!(doc["state"]["desired"], serde_json::json!({"color": "red"}));
    assert_eq!(doc["state"]["delta"], serde_json::json!({"color": "red"}));
    let (status, _, body) = f
        .post(
            "/console/devices/t1/shadow",
            &cookie,
            &[("csrf", &csrf), ("version", "3"), ("desired", "[1, 2]")],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("must be a JSON object"));
}

#[test]
fn replace_patch_deletes_what_the_new_document_drops() {
    use serde_json::json;
    let old = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": 4});
    let new = json!({"b": {"c": 5}, "e": 4, "f": 6});
    assert_eq!(
        crate::pages::replace_patch_for_tests(&old, &new),
        json!({"a": null, "b": {"c": 5, "d": null}, "e": 4, "f": 6})
    );
}

#[test]
fn roles_are_ordered_viewer_operator_admin() {
    assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
    assert_eq!("operator".parse::<Role>().unwrap(), Role::Operator);
    assert!("root".parse::<Role>().is_err());
}

#[test]
fn charts_are_svg_without_inline_styles() {
    let now = crate::layout::now_ms();
    let m = crate::charts::time_chart(
        "c",
        "CPU",
        "percent",
        &[crate::charts::Series {
            name: "cpu",
            color: crate::charts::BLUE,
            points: vec![(now - 120_000, 3.0), (now - 60_000, 5.5), (now, 4.5)],
        }],
        now,
    )
    .into_string();
    assert!(m.contains("<svg"), "{m}");
    assert!(m.contains("cpu now 4.5"));
    // The console's CSP allows no inline style attributes.
    assert!(!m.contains("style=\""), "{m}");
}

#[test]
fn telemetry_keeps_a_bounded_ring_per_device_of_cpu_and_memory() {
    use crate::telemetry::{DEVICE_SAMPLES, Telemetry};
    let t = Telemetry::default();
    t.record("d1", 1, &serde_json::json!({"fds": 3}));
    assert!(
        t.device("d1").is_empty(),
        "a message without cpu or mem adds nothing"
    );
    for i in 0..(DEVICE_SAMPLES as i64 + 10) {
        t.record("d1", i, &serde_json::json!({"cpu": 1.5, "mem": 20}));
    }
    let s = t.device("d1");
    assert_eq!(s.len(), DEVICE_SAMPLES);
    assert_eq!(s[0].at_ms, 10, "the oldest samples went first");
    assert_eq!((s[0].cpu, s[0].mem_mib), (Some(1.5), Some(20.0)));
    assert!(t.device("d2").is_empty());
}

#[test]
fn fleet_health_is_counted_from_the_registry() {
    let f = fixture();
    f.core_device("c1", "RUNNING");
    f.core_device("c2", "BROKEN");
    let s = crate::telemetry::count_health(&f.state.registry, 5).unwrap();
    assert_eq!((s.healthy, s.unhealthy, s.connected, s.at_ms), (1, 1, 0, 5));
}

#[tokio::test]
async fn a_group_deployment_is_in_flight_until_every_member_has_an_outcome() {
    let f = fixture();
    let r = &f.state.registry;
    for t in ["m1", "m2"] {
        r.create_thing("test", t, None, Default::default()).unwrap();
    }
    let g = r
        .create_thing_group("test", "line", None, None, Default::default())
        .unwrap();
    r.add_thing_to_group("test", "line", "m1").unwrap();
    r.add_thing_to_group("test", "line", "m2").unwrap();
    r.create_deployment(
        "test",
        &lichen_fleet_registry::NewDeployment {
            id: "dep-1".into(),
            target_arn: g.arn.clone(),
            name: Some("line rollout".into()),
            spec: "{}".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let in_flight = crate::pages::in_flight_for_tests(r).unwrap();
    assert_eq!(in_flight.len(), 1);
    assert_eq!((in_flight[0].succeeded, in_flight[0].total), (0, 2));
    let (cookie, _) = f.sign_in("val", Role::Viewer);
    let (_, _, body) = f.get("/console", &cookie).await;
    assert!(
        body.contains("line rollout") && body.contains("0 / 2"),
        "{body}"
    );

    r.record_device_report("m1", "dep-1", "SUCCEEDED", None, "{}", false)
        .unwrap();
    let in_flight = crate::pages::in_flight_for_tests(r).unwrap();
    assert_eq!((in_flight[0].succeeded, in_flight[0].total), (1, 2));
    r.record_device_report("m2", "dep-1", "FAILED", Some("broken"), "{}", false)
        .unwrap();
    assert!(crate::pages::in_flight_for_tests(r).unwrap().is_empty());
}

#[tokio::test]
async fn a_devices_page_shows_its_recent_log_lines_and_no_one_elses() {
    let f = fixture();
    f.core_device("core-a", "RUNNING");
    let r = &f.state.registry;
    let now = time::OffsetDateTime::now_utc();
    let day = format!(
        "/{:04}/{:02}/{:02}/thing/",
        now.year(),
        now.month() as u8,
        now.day()
    );
    let group = "/aws/greengrass/UserComponent/us-east-1/com.example.Hello";
    r.create_log_group(group).unwrap();
    for (thing, line) in [("core-a", "hello from a <b>"), ("core-b", "hello from b")] {
        let stream = format!("{day}{thing}");
        r.create_log_stream(group, &stream).unwrap();
        let at = crate::layout::now_ms();
        r.put_log_events(group, &stream, &[(at, line.to_string())])
            .unwrap();
    }
    let (cookie, _) = f.sign_in("val", Role::Viewer);
    let (status, _, body) = f.get("/console/devices/core-a", &cookie).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("[com.example.Hello] hello from a &lt;b&gt;"),
        "{body}"
    );
    assert!(!body.contains("hello from b"));
}

#[tokio::test]
async fn repeated_failed_sign_ins_for_a_name_are_throttled() {
    use crate::pages::throttle_for_tests as throttle;
    let f = fixture();
    f.state
        .registry
        .create_user("test", "tess", "password-123", Role::Viewer)
        .unwrap();
    let (_, h, _) = f.get("/console/login", "").await;
    let token = set_cookies(&h)
        .into_iter()
        .find_map(|c| {
            c.split(';')
                .next()?
                .strip_prefix("lichen_console_login=")
                .map(str::to_string)
        })
        .unwrap();
    let attempt = |pw: &str| {
        Request::post("/console/login")
            .header(header::COOKIE, format!("lichen_console_login={token}"))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(
                serde_urlencoded::to_string([
                    ("csrf", token.as_str()),
                    ("username", "tess"),
                    ("password", pw),
                ])
                .unwrap(),
            ))
            .unwrap()
    };
    for _ in 0..throttle::LIMIT {
        let (status, _, _) = f.send(attempt("guess")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // Even the right password waits now.
    let (status, _, body) = f.send(attempt("password-123")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(body.contains("Too many failed sign-ins"));
    throttle::succeeded("tess");
    let (status, _, _) = f.send(attempt("password-123")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
}
