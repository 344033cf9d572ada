//! A real `lichen core` takes a thing-group deployment from the "cloud": mosquitto over mutual
//! TLS carries the AWS IoT Jobs messages (published here as the fleet would), and an in-test
//! HTTPS server that demands the device certificate plays the Greengrass data plane and the
//! object store (its first artifact answer breaks off mid-body, so the download must resume).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use sha2::Digest as _;
use tokio_rustls::rustls;

use crate::support::*;

const THING: &str = "e2e-thing";

struct Pki {
    dir: PathBuf,
    ca: CertificateDer<'static>,
    server: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
}

fn pki(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "e2e CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let server_cert = server.signed_by(&server_key, &ca_cert, &ca_key).unwrap();
    let device_key = KeyPair::generate().unwrap();
    let mut device = CertificateParams::new(Vec::<String>::new()).unwrap();
    device.distinguished_name.push(DnType::CommonName, THING);
    let device_cert = device.signed_by(&device_key, &ca_cert, &ca_key).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let write = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
    write("ca.pem", ca_cert.pem());
    write("server.pem", server_cert.pem());
    write("server.key", server_key.serialize_pem());
    write("device.pem", device_cert.pem());
    write("device.key", device_key.serialize_pem());
    Pki {
        dir: dir.to_path_buf(),
        ca: ca_cert.der().clone(),
        server: vec![server_cert.der().clone()],
        server_key: PrivateKeyDer::from_pem_slice(server_key.serialize_pem().as_bytes()).unwrap(),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills its process when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// mosquitto with mutual TLS on a free port.
fn mosquitto(pki: &Pki) -> (Proc, u16) {
    let port = free_port();
    (mosquitto_on(pki, port), port)
}

fn mosquitto_on(pki: &Pki, port: u16) -> Proc {
    let conf = pki.dir.join("mosquitto.conf");
    let d = pki.dir.display();
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nrequire_certificate true\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n"
        ),
    )
    .unwrap();
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto is installed");
    eventually(20, "mosquitto listening", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Proc(child)
}

fn tls_args(pki: &Pki, port: u16) -> Vec<String> {
    let d = pki.dir.display();
    vec![
        "-h".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
        "--cafile".into(),
        format!("{d}/ca.pem"),
        "--cert".into(),
        format!("{d}/device.pem"),
        "--key".into(),
        format!("{d}/device.key"),
    ]
}

/// (topic, payload) of every message seen.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// Everything published under `$aws/things/<thing>/`, as (topic, payload) lines.
fn watch(pki: &Pki, port: u16) -> (Proc, Seen) {
    let mut child = Command::new("mosquitto_sub")
        .args(tls_args(pki, port))
        .args(["-v", "-t", &format!("$aws/things/{THING}/#")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let seen: Seen = Arc::default();
    let sink = seen.clone();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some((topic, payload)) = line.split_once(' ') {
                sink.lock()
                    .unwrap()
                    .push((topic.to_string(), payload.to_string()));
            }
        }
    });
    (Proc(child), seen)
}

fn publish(pki: &Pki, port: u16, topic: &str, payload: &Value) {
    let status = Command::new("mosquitto_pub")
        .args(tls_args(pki, port))
        .args(["-q", "1", "-t", topic, "-m", &payload.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "mosquitto_pub to {topic}");
}

/// What the data plane saw: request lines, and the Range header of each object GET.
#[derive(Default)]
struct PlaneSeen {
    requests: Vec<String>,
    ranges: Vec<Option<String>>,
    /// The full document GetDeploymentConfiguration hands out (LARGE_CONFIGURATION).
    large_document: Option<Vec<u8>>,
}

fn recipe(digest: &str) -> String {
    json!({
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": "test.CloudHello",
        "ComponentVersion": "1.0.0",
        "ComponentConfiguration": {"DefaultConfiguration": {"greeting": "hello"}},
        "Manifests": [{
            "Platform": {"os": "linux"},
            "Lifecycle": {"Run": "echo \"{configuration:/greeting} $(cat {artifacts:path}/hello.txt)\" > {work:path}/out.txt"},
            "Artifacts": [{"Uri": "s3://bucket/hello.txt", "Digest": digest, "Algorithm": "SHA-256"}]
        }]
    })
    .to_string()
}

/// The Greengrass data plane and the object store, over HTTPS with client certificates.
/// `hold`: how long the first object GET waits before it answers.
fn data_plane(
    pki: &Pki,
    artifact: Vec<u8>,
    hold: std::time::Duration,
) -> (u16, Arc<Mutex<PlaneSeen>>) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(pki.server.clone(), pki.server_key.clone_key())
        .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Arc<Mutex<PlaneSeen>> = Arc::default();
    let s = seen.clone();
    let digest = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&artifact));
    let recipe_b64 = base64::engine::general_purpose::STANDARD.encode(recipe(&digest));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut tcp) = stream else { continue };
            let mut conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
            // One request per connection.
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match tls.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            let text = String::from_utf8_lossy(&head).into_owned();
            let line = text.lines().next().unwrap_or_default().to_string();
            let header = |name: &str| {
                text.lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.trim().to_string())
            };
            let len: usize = header("content-length").map_or(0, |v| v.parse().unwrap());
            let mut body = vec![0u8; len];
            let _ = tls.read_exact(&mut body);
            let path = line.split(' ').nth(1).unwrap_or_default().to_string();
            let mut send = |status: &str, headers: String, body: &[u8]| {
                let _ = tls.write_all(
                    format!("HTTP/1.1 {status}\r\nconnection: close\r\n{headers}\r\n").as_bytes(),
                );
                let _ = tls.write_all(body);
                let _ = tls.flush();
            };
            let json_answer = |v: Value| {
                let b = v.to_string().into_bytes();
                (
                    format!(
                        "content-type: application/json\r\ncontent-length: {}\r\n",
                        b.len()
                    ),
                    b,
                )
            };
            let first_object_get = {
                let mut seen = s.lock().unwrap();
                seen.requests.push(line.clone());
                if path.starts_with("/bucket/") {
                    seen.ranges.push(header("range"));
                    seen.ranges.len() == 1
                } else {
                    false
                }
            };
            if path == "/greengrass/v2/resolveComponentCandidates" {
                let request: Value = serde_json::from_slice(&body).unwrap_or_default();
                let name = request["componentCandidates"][0]["componentName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if name != "test.CloudHello" {
                    let (h, b) = json_answer(json!({"message": "no usable version"}));
                    send("404 Not Found", h, &b);
                    continue;
                }
                let (h, b) = json_answer(json!({"resolvedComponentVersions": [{
                    "arn": "arn:aws:greengrass:us-east-1:123456789012:components:test.CloudHello:versions:1.0.0",
                    "componentName": "test.CloudHello",
                    "componentVersion": "1.0.0",
                    "recipe": recipe_b64,
                    "vendorGuidance": "ACTIVE",
                }]}));
                send("200 OK", h, &b);
            } else if path.starts_with("/greengrass/v2/components/")
                && path.ends_with("/artifacts/bucket/hello.txt")
            {
                let (h, b) = json_answer(json!({
                    "preSignedUrl": format!("https://127.0.0.1:{port}/bucket/hello.txt?X-Amz-Signature=abc")
                }));
                send("200 OK", h, &b);
            } else if path.starts_with("/greengrass/v2/deployments/")
                && path.ends_with(&format!("/coreDevices/{THING}/configuration"))
            {
                let doc = s.lock().unwrap().large_document.clone().unwrap_or_default();
                let digest =
                    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&doc));
                let (h, b) = json_answer(json!({
                    "preSignedUrl": format!("https://127.0.0.1:{port}/configs/doc.json?X-Amz-Signature=c"),
                    "integrityCheck": {"algorithm": "SHA-256", "digest": digest},
                }));
                send("200 OK", h, &b);
            } else if path.starts_with("/configs/doc.json") {
                let doc = s.lock().unwrap().large_document.clone().unwrap_or_default();
                send("200 OK", format!("content-length: {}\r\n", doc.len()), &doc);
            } else if path.starts_with(&format!("/greengrass/v2/coreDevices/{THING}/thingGroups")) {
                let (h, b) = json_answer(json!({"thingGroups": [{"thingGroupName": "Fleet"}]}));
                send("200 OK", h, &b);
            } else if path.starts_with("/bucket/hello.txt") {
                let start: usize = header("range")
                    .and_then(|r| r.strip_prefix("bytes=").map(str::to_string))
                    .and_then(|r| r.trim_end_matches('-').parse().ok())
                    .unwrap_or(0);
                let rest = &artifact[start..];
                let status = if start > 0 {
                    "206 Partial Content"
                } else {
                    "200 OK"
                };
                let headers = format!("content-length: {}\r\n", rest.len());
                if first_object_get {
                    std::thread::sleep(hold);
                    // Half the body, then the connection drops.
                    send(status, headers, &rest[..rest.len() / 2]);
                } else {
                    send(status, headers, rest);
                }
            } else {
                let (h, b) = json_answer(json!({"message": "not found"}));
                send("404 Not Found", h, &b);
            }
            conn.send_close_notify();
            let _ = conn.complete_io(&mut tcp);
        }
    });
    (port, seen)
}

fn messages(seen: &Seen, topic: &str) -> Vec<Value> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| t == topic)
        .filter_map(|(_, p)| serde_json::from_str(p).ok())
        .collect()
}

/// A watcher that is known to be subscribed (it has seen its own probe).
fn watched(pki: &Pki, port: u16) -> (Proc, Seen) {
    let (sub, seen) = watch(pki, port);
    let probe = format!("$aws/things/{THING}/probe");
    eventually(20, "the fleet's subscription", || {
        let _ = Command::new("mosquitto_pub")
            .args(tls_args(pki, port))
            .args(["-t", &probe, "-m", "{}"])
            .status();
        std::thread::sleep(std::time::Duration::from_millis(200));
        !messages(&seen, &probe).is_empty()
    });
    (sub, seen)
}

/// The fleet's side and a core pointed at it.
struct Rig {
    ws: Workspace,
    pki: Pki,
    broker: Proc,
    mqtt_port: u16,
    plane_port: u16,
    plane_seen: Arc<Mutex<PlaneSeen>>,
    sub: Proc,
    seen: Seen,
}

impl Rig {
    fn new(artifact: Vec<u8>, hold: std::time::Duration) -> Rig {
        let ws = Workspace::new();
        let pki = pki(&ws.path("pki"));
        let (broker, mqtt_port) = mosquitto(&pki);
        let (plane_port, plane_seen) = data_plane(&pki, artifact, hold);
        // The watcher is connected once it sees its own probe.
        let (sub, seen) = watched(&pki, mqtt_port);
        Rig {
            ws,
            pki,
            broker,
            mqtt_port,
            plane_port,
            plane_seen,
            sub,
            seen,
        }
    }

    /// The broker goes away (the device is offline).
    fn stop_broker(&mut self) {
        let _ = self.broker.0.kill();
        let _ = self.broker.0.wait();
        let _ = self.sub.0.kill();
        let _ = self.sub.0.wait();
    }

    /// A fresh broker on the same port, with a fresh watcher.
    fn restart_broker(&mut self) {
        self.broker = mosquitto_on(&self.pki, self.mqtt_port);
        let (sub, seen) = watched(&self.pki, self.mqtt_port);
        self.sub = sub;
        self.seen = seen;
    }

    fn start_core(&self) -> Core {
        let d = self.pki.dir.display();
        let config = self.ws.path("cloud.yaml");
        std::fs::write(
            &config,
            format!(
                "system:\n  thingName: {THING}\n  rootCaPath: {d}/ca.pem\n  certificateFilePath: {d}/device.pem\n  privateKeyPath: {d}/device.key\nservices:\n  aws.greengrass.Nucleus:\n    configuration:\n      awsRegion: us-east-1\n      iotDataEndpoint: 127.0.0.1\n      greengrassDataPlaneEndpoint: 127.0.0.1\n      greengrassDataPlanePort: {}\n      mqtt:\n        port: {}\n",
                self.plane_port, self.mqtt_port
            ),
        )
        .unwrap();
        start_core_with(
            &self.ws.root(),
            &[],
            &["--config", config.to_str().unwrap()],
        )
    }

    fn publish(&self, topic: &str, payload: &Value) {
        publish(&self.pki, self.mqtt_port, topic, payload);
    }

    fn messages(&self, topic: &str) -> Vec<Value> {
        messages(&self.seen, topic)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.ws.root().join("logs/greengrass.log")).unwrap_or_default()
    }
}

fn artifact() -> Vec<u8> {
    (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect()
}

fn document(id: &str, group: &str, greeting: &str) -> Value {
    json!({
        "deploymentId": id,
        "schemaDate": "2021-05-17",
        "configurationArn": format!("arn:aws:greengrass:us-east-1:123456789012:configuration:{group}:1"),
        "creationTimestamp": 1700000000000_i64,
        "components": {"test.CloudHello": {
            "version": "1.0.0",
            "configurationUpdate": {"merge": format!("{{\"greeting\":\"{greeting}\"}}")}
        }},
        "failureHandlingPolicy": "ROLLBACK",
        "componentUpdatePolicy": {"timeout": 5, "action": "NOTIFY_COMPONENTS"},
    })
}

const NEXT_GET: &str = "$aws/things/e2e-thing/jobs/$next/namespace-aws-gg-deployment/get";

#[test]
fn thing_group_deployment_arrives_by_jobs_and_reports_success() {
    let artifact = artifact();
    let rig = Rig::new(artifact.clone(), std::time::Duration::ZERO);
    let core = rig.start_core();
    eventually(30, "the core asks for its next job", || {
        !rig.messages(NEXT_GET).is_empty()
    });
    let document = document("d-e2e-1", "thinggroup/Fleet", "hi from the cloud");
    rig.publish(
        &format!("{NEXT_GET}/accepted"),
        &json!({"execution": {
            "jobId": "job-e2e-1", "thingName": THING, "status": "QUEUED",
            "queuedAt": 1700000000, "versionNumber": 1, "executionNumber": 1,
            "jobDocument": document,
        }}),
    );

    let update = format!("$aws/things/{THING}/jobs/job-e2e-1/namespace-aws-gg-deployment/update");
    let finished = || {
        rig.messages(&update)
            .iter()
            .any(|m| m["status"] == "SUCCEEDED" || m["status"] == "FAILED")
    };
    for _ in 0..600 {
        if finished() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let updates = rig.messages(&update);
    assert!(
        finished(),
        "no terminal status; updates {updates:?}; log:\n{}",
        rig.log()
    );
    assert_eq!(updates[0]["status"], "IN_PROGRESS", "{updates:?}");
    let last = updates.last().unwrap();
    assert_eq!(last["status"], "SUCCEEDED", "{last}; log:\n{}", rig.log());
    assert_eq!(
        last["statusDetails"]["detailed-deployment-status"],
        "SUCCESSFUL"
    );

    let out = rig.ws.root().join("work/test.CloudHello/out.txt");
    eventually(20, "the component ran", || out.is_file());
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        text.trim(),
        format!("hi from the cloud {}", String::from_utf8(artifact).unwrap())
    );
    // The download broke off once and resumed where it stopped.
    let plane = rig.plane_seen.lock().unwrap();
    assert_eq!(plane.ranges.len(), 2, "{:?}", plane.requests);
    assert_eq!(plane.ranges[0], None);
    assert_eq!(plane.ranges[1].as_deref(), Some("bytes=100000-"));
    drop(plane);
    assert!(
        rig.ws
            .root()
            .join("packages/recipes/test.CloudHello@1.0.0.metadata.json")
            .is_file()
    );

    // Fleet status: COMPLETE at launch, then a PARTIAL for the deployment with its component.
    let health = format!("$aws/things/{THING}/greengrassv2/health/json");
    eventually(20, "fleet status after the deployment", || {
        rig.messages(&health)
            .iter()
            .any(|m| m["trigger"] == "THING_GROUP_DEPLOYMENT")
    });
    let reports = rig.messages(&health);
    assert_eq!(reports[0]["messageType"], "COMPLETE");
    assert_eq!(reports[0]["trigger"], "NUCLEUS_LAUNCH");
    let after = reports
        .iter()
        .find(|m| m["trigger"] == "THING_GROUP_DEPLOYMENT")
        .unwrap();
    assert_eq!(after["messageType"], "PARTIAL");
    assert_eq!(after["deploymentInformation"]["status"], "SUCCEEDED");
    assert_eq!(after["deploymentInformation"]["deploymentId"], "job-e2e-1");
    let component = after["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["componentName"] == "test.CloudHello")
        .expect("the deployed component is listed");
    assert_eq!(
        component["fleetConfigArns"],
        json!(["arn:aws:greengrass:us-east-1:123456789012:configuration:thinggroup/Fleet:1"])
    );
    let sequences: Vec<i64> = reports
        .iter()
        .filter_map(|m| m["sequenceNumber"].as_i64())
        .collect();
    assert!(sequences.windows(2).all(|w| w[1] > w[0]), "{sequences:?}");
    drop(core);
}

#[test]
fn single_thing_deployment_arrives_by_the_shadow_and_reports_under_reported() {
    let rig = Rig::new(artifact(), std::time::Duration::ZERO);
    let core = rig.start_core();
    let shadow = format!("$aws/things/{THING}/shadow/name/AWSManagedGreengrassV2Deployment");
    eventually(30, "the core reads its deployment shadow", || {
        !rig.messages(&format!("{shadow}/get")).is_empty()
    });
    let document = document(
        "d-shadow-1",
        &format!("thing/{THING}"),
        "hi from the shadow",
    );
    let arn = document["configurationArn"].clone();
    // A desired state without desiredStatus is ignored; an older version than seen is skipped.
    rig.publish(
        &format!("{shadow}/update/accepted"),
        &json!({"version": 5, "state": {"desired": {"fleetConfig": document.to_string()}}}),
    );
    rig.publish(
        &format!("{shadow}/get/accepted"),
        &json!({"version": 6, "state": {
            "desired": {"fleetConfig": document.to_string(), "desiredStatus": "ACTIVE"}
        }}),
    );
    let reported_status = || {
        rig.messages(&format!("{shadow}/update"))
            .iter()
            .filter_map(|m| {
                m["state"]["reported"]["status"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect::<Vec<_>>()
    };
    for _ in 0..600 {
        if reported_status().iter().any(|s| s != "IN_PROGRESS") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        reported_status(),
        vec!["IN_PROGRESS".to_string(), "SUCCEEDED".to_string()],
        "log:\n{}",
        rig.log()
    );
    let last = rig.messages(&format!("{shadow}/update")).pop().unwrap();
    let reported = &last["state"]["reported"];
    assert_eq!(reported["fleetConfigurationArnForStatus"], arn);
    assert_eq!(reported["statusDetails"]["detailedStatus"], "SUCCESSFUL");
    assert!(reported["ggcVersion"].is_string());
    let out = rig.ws.root().join("work/test.CloudHello/out.txt");
    eventually(20, "the component ran", || out.is_file());
    assert!(
        std::fs::read_to_string(&out)
            .unwrap()
            .starts_with("hi from the shadow ")
    );
    // The same document again (a reconnect's get) is not deployed twice.
    rig.publish(
        &format!("{shadow}/get/accepted"),
        &json!({"version": 7, "state": {
            "desired": {"fleetConfig": document.to_string(), "desiredStatus": "ACTIVE"},
            "reported": {"fleetConfigurationArnForStatus": arn, "status": "SUCCEEDED"}
        }}),
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(reported_status().len(), 2);
    drop(core);
}

#[test]
fn a_job_that_vanishes_before_the_merge_is_cancelled() {
    let rig = Rig::new(artifact(), std::time::Duration::from_secs(3));
    let core = rig.start_core();
    eventually(30, "the core asks for its next job", || {
        !rig.messages(NEXT_GET).is_empty()
    });
    let document = document("d-cancel", "thinggroup/Fleet", "never");
    rig.publish(
        &format!("{NEXT_GET}/accepted"),
        &json!({"execution": {"jobId": "job-cancel", "status": "QUEUED", "jobDocument": document}}),
    );
    eventually(30, "the download started", || {
        !rig.plane_seen.lock().unwrap().ranges.is_empty()
    });
    // The job is cancelled in the cloud: a notification, and `$next` has nothing any more.
    let asked = rig.messages(NEXT_GET).len();
    rig.publish(
        &format!("$aws/things/{THING}/jobs/notify-namespace-aws-gg-deployment"),
        &json!({"jobs": {}}),
    );
    eventually(30, "the core asks again", || {
        rig.messages(NEXT_GET).len() > asked
    });
    rig.publish(&format!("{NEXT_GET}/accepted"), &json!({"timestamp": 1}));
    let record = rig.ws.root().join("deployments/job-cancel/deployment.json");
    eventually(60, "the deployment is cancelled", || {
        std::fs::read_to_string(&record)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .is_some_and(|v| v["record"]["status"] == "Canceled")
    });
    assert!(!rig.ws.root().join("work/test.CloudHello/out.txt").exists());
    let update = format!("$aws/things/{THING}/jobs/job-cancel/namespace-aws-gg-deployment/update");
    assert!(
        rig.messages(&update)
            .iter()
            .all(|m| m["status"] == "IN_PROGRESS"),
        "{:?}",
        rig.messages(&update)
    );
    drop(core);
}

#[test]
fn a_status_reached_while_offline_is_reported_after_a_kill_and_restart() {
    let mut rig = Rig::new(artifact(), std::time::Duration::from_secs(2));
    let core = rig.start_core();
    eventually(30, "the core asks for its next job", || {
        !rig.messages(NEXT_GET).is_empty()
    });
    let document = document("d-offline", "thinggroup/Fleet", "offline");
    rig.publish(
        &format!("{NEXT_GET}/accepted"),
        &json!({"execution": {"jobId": "job-offline", "status": "QUEUED", "jobDocument": document}}),
    );
    eventually(30, "the download started", || {
        !rig.plane_seen.lock().unwrap().ranges.is_empty()
    });
    rig.stop_broker();
    let record = rig
        .ws
        .root()
        .join("deployments/job-offline/deployment.json");
    eventually(60, "the deployment succeeds offline", || {
        std::fs::read_to_string(&record)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .is_some_and(|v| v["record"]["status"] == "Succeeded")
    });
    core.kill9();
    rig.restart_broker();
    let core = rig.start_core();
    let update = format!("$aws/things/{THING}/jobs/job-offline/namespace-aws-gg-deployment/update");
    eventually(60, "the SUCCEEDED report after the restart", || {
        rig.messages(&update)
            .iter()
            .any(|m| m["status"] == "SUCCEEDED")
    });
    drop(core);
}

#[test]
fn after_a_reconnect_the_core_asks_again_and_takes_a_large_configuration() {
    let mut rig = Rig::new(artifact(), std::time::Duration::ZERO);
    let core = rig.start_core();
    eventually(30, "the core asks for its next job", || {
        !rig.messages(NEXT_GET).is_empty()
    });
    // The device drops off the network and comes back: the link restores its subscriptions
    // and the core asks for its next job again.
    rig.stop_broker();
    rig.restart_broker();
    eventually(60, "the core asks again after reconnecting", || {
        !rig.messages(NEXT_GET).is_empty()
    });
    let full = document("d-large", "thinggroup/Fleet", "large");
    rig.plane_seen.lock().unwrap().large_document = Some(full.to_string().into_bytes());
    let mut small = full.clone();
    small["components"] = json!({});
    small["requiredCapabilities"] = json!(["LARGE_CONFIGURATION"]);
    rig.publish(
        &format!("{NEXT_GET}/accepted"),
        &json!({"execution": {"jobId": "job-large", "status": "QUEUED", "jobDocument": small}}),
    );
    let update = format!("$aws/things/{THING}/jobs/job-large/namespace-aws-gg-deployment/update");
    eventually(60, "SUCCEEDED", || {
        rig.messages(&update)
            .iter()
            .any(|m| m["status"] == "SUCCEEDED")
    });
    let out = rig.ws.root().join("work/test.CloudHello/out.txt");
    eventually(20, "the component ran", || out.is_file());
    assert!(std::fs::read_to_string(&out).unwrap().starts_with("large "));
    assert!(
        rig.plane_seen
            .lock()
            .unwrap()
            .requests
            .iter()
            .any(|r| r.starts_with(
                "GET /greengrass/v2/deployments/job-large/coreDevices/e2e-thing/configuration"
            )),
        "{:?}",
        rig.plane_seen.lock().unwrap().requests
    );
    drop(core);
}

#[test]
fn a_shadow_deployment_canceled_before_its_merge_is_not_applied() {
    let rig = Rig::new(artifact(), std::time::Duration::from_secs(3));
    let core = rig.start_core();
    let shadow = format!("$aws/things/{THING}/shadow/name/AWSManagedGreengrassV2Deployment");
    eventually(30, "the core reads its deployment shadow", || {
        !rig.messages(&format!("{shadow}/get")).is_empty()
    });
    let document = document("d-shadow-cancel", &format!("thing/{THING}"), "never");
    rig.publish(
        &format!("{shadow}/update/accepted"),
        &json!({"version": 3, "state": {
            "desired": {"fleetConfig": document.to_string(), "desiredStatus": "ACTIVE"}
        }}),
    );
    eventually(30, "the download started", || {
        !rig.plane_seen.lock().unwrap().ranges.is_empty()
    });
    rig.publish(
        &format!("{shadow}/update/accepted"),
        &json!({"version": 4, "state": {
            "desired": {"fleetConfig": document.to_string(), "desiredStatus": "CANCELED"}
        }}),
    );
    let record = rig
        .ws
        .root()
        .join("deployments/d-shadow-cancel/deployment.json");
    eventually(60, "the deployment is cancelled", || {
        std::fs::read_to_string(&record)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .is_some_and(|v| v["record"]["status"] == "Canceled")
    });
    assert!(!rig.ws.root().join("work/test.CloudHello/out.txt").exists());
    drop(core);
}
