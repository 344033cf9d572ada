//! The protocol server over real TCP connections, with a minimal client written from the
//! protocol description (the Python SDK suite in compat/streams covers the real client).

use ciborium::value::Value;
use lichen_streams::{FileAccess, StreamManager, StreamManagerConfig};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

struct Server {
    rt: tokio::runtime::Runtime,
    sm: Option<StreamManager>,
    addr: SocketAddr,
}

impl Server {
    fn start(root: &std::path::Path, token: Option<&'static str>) -> Server {
        Server::start_with(root, token, |_| {})
    }

    /// [`Server::start`] with `adjust` applied to the configuration.
    fn start_with(
        root: &std::path::Path,
        token: Option<&'static str>,
        adjust: impl FnOnce(&mut StreamManagerConfig),
    ) -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut config = StreamManagerConfig {
            store_root: root.to_path_buf(),
            port: 0,
            authenticate_client: token.is_some(),
            token_validator: token.map(|t| Arc::new(move |s: &str| s == t) as _),
            exporters: Default::default(),
            log_level: tracing::level_filters::LevelFilter::INFO,
            flush_wait_yield: true,
            task_file_access: None,
        };
        adjust(&mut config);
        let sm = rt.block_on(StreamManager::start(config)).unwrap();
        let addr = sm.local_addr();
        Server {
            rt,
            sm: Some(sm),
            addr,
        }
    }

    fn stop(mut self) {
        let sm = self.sm.take().unwrap();
        self.rt.block_on(sm.stop());
    }
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

fn int(i: u64) -> Value {
    Value::Integer(i.into())
}

fn map(pairs: Vec<(&str, Value)>) -> Value {
    Value::Map(pairs.into_iter().map(|(k, v)| (text(k), v)).collect())
}

fn frame(op: u8, v: &Value) -> Vec<u8> {
    let mut body = Vec::new();
    ciborium::into_writer(v, &mut body).unwrap();
    let mut out = ((body.len() + 1) as i32).to_be_bytes().to_vec();
    out.push(op);
    out.extend(body);
    out
}

struct Client(TcpStream);

impl Client {
    fn connect(addr: SocketAddr, token: Option<&str>) -> (Client, Value) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut fields = vec![("requestId", text("c")), ("protocolVersion", text("1.1.0"))];
        if let Some(t) = token {
            fields.push(("authToken", text(t)));
        }
        let mut hello = vec![1u8];
        hello.extend(frame(1, &map(fields)));
        s.write_all(&hello).unwrap();
        let mut version = [0u8; 1];
        s.read_exact(&mut version).unwrap();
        assert_eq!(version[0], 1);
        let mut c = Client(s);
        let (op, resp) = c.recv().unwrap();
        assert_eq!(op, 6);
        (c, resp)
    }

    fn send(&mut self, op: u8, v: Value) {
        self.0.write_all(&frame(op, &v)).unwrap();
    }

    fn recv(&mut self) -> Option<(u8, Value)> {
        let mut head = [0u8; 5];
        self.0.read_exact(&mut head).ok()?;
        let len = i32::from_be_bytes(head[..4].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len - 1];
        self.0.read_exact(&mut body).ok()?;
        Some((head[4], ciborium::from_reader(&body[..]).unwrap()))
    }

    fn call(&mut self, op: u8, v: Value) -> (u8, Value) {
        self.send(op, v);
        self.recv().expect("a response")
    }
}

fn field<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.as_map()
        .unwrap()
        .iter()
        .find(|(k, _)| k.as_text() == Some(key))
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no {key} in {v:?}"))
}

fn status(v: &Value) -> u64 {
    u64::try_from(i128::from(field(v, "status").as_integer().unwrap())).unwrap()
}

fn create(c: &mut Client, name: &str, flush: bool) {
    let def = map(vec![
        ("name", text(name)),
        ("strategyOnFull", int(0)),
        ("flushOnWrite", Value::Bool(flush)),
    ]);
    let (op, r) = c.call(
        2,
        map(vec![("requestId", text("create")), ("definition", def)]),
    );
    assert_eq!((op, status(&r)), (7, 0), "{r:?}");
}

/// The `sequenceNumber` of an AppendMessageResponse.
fn sequence_number(r: &Value) -> u64 {
    u64::try_from(i128::from(field(r, "sequenceNumber").as_integer().unwrap())).unwrap()
}

fn append(id: &str, name: &str, payload: &[u8]) -> Value {
    map(vec![
        ("requestId", text(id)),
        ("name", text(name)),
        ("payload", Value::Bytes(payload.to_vec())),
    ])
}

fn read(id: &str, name: &str, start: u64, min: u64, timeout_ms: u64) -> Value {
    let opts = map(vec![
        ("desiredStartSequenceNumber", int(start)),
        ("minMessageCount", int(min)),
        ("maxMessageCount", int(min)),
        ("readTimeoutMillis", int(timeout_ms)),
    ]);
    map(vec![
        ("requestId", text(id)),
        ("streamName", text(name)),
        ("readMessagesOptions", opts),
    ])
}

#[test]
fn token_validator_decides_connect() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), Some("tok"));
    let (mut c, r) = Client::connect(server.addr, Some("bad"));
    assert_eq!(status(&r), 2);
    assert!(c.recv().is_none(), "a refused connection is closed");
    let (_, r) = Client::connect(server.addr, None);
    assert_eq!(status(&r), 2);
    let (mut c, r) = Client::connect(server.addr, Some("tok"));
    assert_eq!(status(&r), 0);
    let (op, r) = c.call(11, map(vec![("requestId", text("l"))]));
    assert_eq!((op, status(&r)), (12, 0));
    server.stop();
}

#[test]
fn long_poll_is_answered_out_of_order_and_woken_by_appends() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None);
    let (mut c, _) = Client::connect(server.addr, None);
    create(&mut c, "s", false);
    // A parked read, then an append on the same connection: the append is answered although
    // the read was sent first, and the read is answered with what the append stored.
    c.send(5, read("r1", "s", 0, 1, 20_000));
    c.send(4, append("a1", "s", b"wake"));
    let mut answers: Vec<(u8, Value)> = (0..2).map(|_| c.recv().unwrap()).collect();
    answers.sort_by_key(|(op, _)| *op);
    let (op, r) = &answers[0];
    assert_eq!(
        (*op, field(r, "requestId").as_text(), status(r)),
        (9, Some("a1"), 0)
    );
    let (op, r) = &answers[1];
    assert_eq!(
        (*op, field(r, "requestId").as_text(), status(r)),
        (10, Some("r1"), 0)
    );
    let msgs = field(r, "messages").as_array().unwrap();
    assert_eq!(field(&msgs[0], "payload").as_bytes().unwrap(), b"wake");
    // A read that cannot be satisfied is answered with NotEnoughMessages when it times out.
    let (op, r) = c.call(5, read("r2", "s", 1, 1, 200));
    assert_eq!((op, status(&r)), (10, 13));
    server.stop();
}

#[test]
fn deleting_a_stream_ends_its_long_polls() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None);
    let (mut c, _) = Client::connect(server.addr, None);
    create(&mut c, "gone", false);
    c.send(5, read("r", "gone", 0, 1, 20_000));
    c.send(
        3,
        map(vec![("requestId", text("d")), ("name", text("gone"))]),
    );
    // The two answers may come in either order.
    let mut got: Vec<(u8, u64)> = (0..2)
        .map(|_| c.recv().unwrap())
        .map(|(op, r)| (op, status(&r)))
        .collect();
    got.sort();
    assert_eq!(got, vec![(8, 0), (10, 5)]);
    server.stop();
}

#[test]
fn pipelined_durable_appends_keep_their_order_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None);
    let (mut c, _) = Client::connect(server.addr, None);
    create(&mut c, "p", true);
    for i in 0..100 {
        c.send(4, append(&format!("a{i}"), "p", format!("m{i}").as_bytes()));
    }
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..100 {
        let (op, r) = c.recv().unwrap();
        assert_eq!((op, status(&r)), (9, 0));
        let id = field(&r, "requestId")
            .as_text()
            .unwrap()
            .trim_start_matches('a')
            .parse::<u64>()
            .unwrap();
        seen.insert(id, sequence_number(&r));
    }
    assert!(
        seen.iter().all(|(id, seq)| id == seq),
        "appends kept the order they were sent in"
    );
    server.stop();

    let server = Server::start(dir.path(), None);
    let (mut c, _) = Client::connect(server.addr, None);
    let (_, r) = c.call(5, read("r", "p", 0, 100, 0));
    let msgs = field(&r, "messages").as_array().unwrap();
    assert_eq!(msgs.len(), 100);
    assert_eq!(field(&msgs[99], "payload").as_bytes().unwrap(), b"m99");
    server.stop();
}

#[test]
fn durable_appends_to_two_streams_on_one_connection_get_their_own_sequence_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None);
    let (mut c, _) = Client::connect(server.addr, None);
    create(&mut c, "x", true);
    create(&mut c, "y", true);
    // Interleaved, pipelined, with a buffered stream's append and an unknown stream among them.
    create(&mut c, "z", false);
    for i in 0..60 {
        let name = ["x", "y"][i % 2];
        c.send(4, append(&format!("{name}{i}"), name, b"r"));
        if i == 30 {
            c.send(4, append("z", "z", b"r"));
            c.send(4, append("nope", "missing", b"r"));
        }
    }
    let mut answers = std::collections::BTreeMap::new();
    for _ in 0..62 {
        let (op, r) = c.recv().unwrap();
        assert_eq!(op, 9, "an AppendMessageResponse");
        let id = field(&r, "requestId").as_text().unwrap().to_string();
        answers.insert(id, r);
    }
    assert_eq!(
        status(&answers["nope"]),
        5,
        "ResourceNotFound for the unknown stream"
    );
    assert_eq!(status(&answers["z"]), 0);
    for (n, name) in ["x", "y"].into_iter().enumerate() {
        let seqs: Vec<u64> = (0..60)
            .filter(|i| i % 2 == n)
            .map(|i| {
                let r = &answers[&format!("{name}{i}")];
                assert_eq!(status(r), 0, "{name}{i}: {r:?}");
                sequence_number(r)
            })
            .collect();
        assert_eq!(seqs, (0..30).collect::<Vec<_>>(), "stream {name}");
    }
    server.stop();
}

#[test]
fn a_malformed_frame_closes_only_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None);
    let (mut good, _) = Client::connect(server.addr, None);
    let (mut bad, _) = Client::connect(server.addr, None);
    bad.0.write_all(&[0x7f, 0xff, 0xff, 0xff, 4]).unwrap();
    assert!(bad.recv().is_none());
    let (op, r) = good.call(11, map(vec![("requestId", text("l"))]));
    assert_eq!((op, status(&r)), (12, 0));
    server.stop();
}

/// A stream with an S3 task export (disabled, so nothing is uploaded).
fn create_s3_tasks(c: &mut Client, name: &str) {
    let export = map(vec![
        ("identifier", text("s3")),
        ("disabled", Value::Bool(true)),
    ]);
    let def = map(vec![
        ("name", text(name)),
        ("strategyOnFull", int(0)),
        (
            "exportDefinition",
            map(vec![("s3TaskExecutor", Value::Array(vec![export]))]),
        ),
    ]);
    let (op, r) = c.call(
        2,
        map(vec![("requestId", text("create")), ("definition", def)]),
    );
    assert_eq!((op, status(&r)), (7, 0), "{r:?}");
}

/// Maps the component token `tok` to uid 1000 and any other appender to a refusal.
fn resolver(config: &mut StreamManagerConfig) {
    config.task_file_access = Some(Arc::new(|token: Option<&str>| match token {
        Some("tok") => FileAccess::User {
            uid: 1000,
            gid: 1000,
            groups: vec![1000],
        },
        other => FileAccess::Denied(format!("appender {other:?} unknown")),
    }));
}

#[test]
fn s3_tasks_remember_the_authenticated_appender_and_only_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), Some("tok"), resolver);
    let (mut c, r) = Client::connect(server.addr, Some("tok"));
    assert_eq!(status(&r), 0);
    create_s3_tasks(&mut c, "tasks");
    create(&mut c, "plain", false);
    for (stream, id) in [("tasks", "a0"), ("tasks", "a1"), ("plain", "p0")] {
        let (op, r) = c.call(4, append(id, stream, b"{}"));
        assert_eq!((op, status(&r)), (9, 0), "{r:?}");
    }
    let store = server.sm.as_ref().unwrap().store();
    let tasks = store.get("tasks").unwrap();
    let user = FileAccess::User {
        uid: 1000,
        gid: 1000,
        groups: vec![1000],
    };
    assert_eq!(tasks.appended_by(0).as_deref(), Some(&user));
    assert_eq!(tasks.appended_by(1).as_deref(), Some(&user));
    // Streams without an S3 export keep no appenders.
    assert_eq!(store.get("plain").unwrap().appended_by(0), None);
    server.stop();

    // Without authentication the token proves nothing: the appender is unknown.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), None, resolver);
    let (mut c, r) = Client::connect(server.addr, Some("tok"));
    assert_eq!(status(&r), 0);
    create_s3_tasks(&mut c, "tasks");
    let (_, r) = c.call(4, append("a0", "tasks", b"{}"));
    assert_eq!(status(&r), 0, "{r:?}");
    let store = server.sm.as_ref().unwrap().store();
    assert_eq!(
        store.get("tasks").unwrap().appended_by(0).as_deref(),
        Some(&FileAccess::Denied("appender None unknown".into()))
    );
    server.stop();
}

/// Reads until the peer closes: true on end of stream or reset, false when it is still open
/// after `wait` (the client's read timeout, not a measurement).
fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn a_connect_frame_larger_than_the_pre_auth_limit_closes_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), Some("tok"));
    let mut s = TcpStream::connect(server.addr).unwrap();
    // Version byte, then a Connect frame announcing 1 MiB: the server must not wait for (and
    // buffer) a body that large from a client that has not authenticated.
    let mut hello = vec![1u8];
    hello.extend((1i32 << 20).to_be_bytes());
    hello.push(1);
    hello.extend(vec![0xa0u8; 128 * 1024]);
    let _ = s.write_all(&hello);
    assert!(
        closed_within(&mut s, Duration::from_secs(5)),
        "an oversized Connect frame must close the connection"
    );
    // A Connect of ordinary size still works.
    let (_, r) = Client::connect(server.addr, Some("tok"));
    assert_eq!(status(&r), 0);
    server.stop();
}

#[test]
fn an_unauthenticated_connection_is_closed_after_the_connect_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), Some("tok"));
    // Silent after connecting, and a slow trickle that never completes its Connect frame.
    let mut silent = TcpStream::connect(server.addr).unwrap();
    let mut partial = TcpStream::connect(server.addr).unwrap();
    partial.write_all(&[1, 0, 0, 0, 40, 1]).unwrap();
    assert!(
        closed_within(&mut silent, Duration::from_secs(30)),
        "a connection that never sends Connect must be closed"
    );
    assert!(
        closed_within(&mut partial, Duration::from_secs(30)),
        "a connection that never completes Connect must be closed"
    );
    server.stop();
}

#[test]
fn long_polls_per_connection_are_capped_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None);
    let (mut c, _) = Client::connect(server.addr, None);
    create(&mut c, "s", false);
    // Fill every slot with reads that wait for messages that never come, then one more.
    const CAP: usize = 128;
    for i in 0..CAP {
        c.send(5, read(&format!("r{i}"), "s", 0, 1, 600_000));
    }
    let (op, r) = c.call(5, read("over", "s", 0, 1, 600_000));
    assert_eq!(op, 10, "{r:?}");
    assert_eq!(field(&r, "requestId").as_text(), Some("over"));
    assert_eq!(status(&r), 3, "{r:?}");
    let msg = field(&r, "errorMessage").as_text().unwrap_or_default();
    assert!(msg.contains("128"), "{msg}");
    // The connection still serves other requests, and the parked reads are still answered
    // (in whatever order the answers come).
    c.send(4, append("a", "s", b"wake"));
    let mut answers: Vec<(u8, u64)> = (0..=CAP)
        .map(|_| {
            let (op, r) = c.recv().expect("an answer");
            (op, status(&r))
        })
        .collect();
    answers.sort();
    assert_eq!(answers[0], (9, 0), "the append succeeds");
    assert!(answers[1..].iter().all(|a| *a == (10, 0)), "{answers:?}");
    server.stop();
}
