//! Before a client authenticates it gets little: a small CONNECT frame and a deadline. A raw
//! Unix-socket client plays the hostile part.

mod common;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::start;
use lichen_ipc::codec::{self, Decoder, Frame, Header, HeaderValue};
use lichen_ipc::{IpcClient, ServerOptions};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

fn connect_frame(token: &str, padding: usize) -> Bytes {
    let header = |name: &str, value: HeaderValue| Header {
        name: name.into(),
        value,
    };
    codec::encode(&Frame {
        headers: vec![
            header(":version", HeaderValue::String("0.1.0".into())),
            header(":message-type", HeaderValue::Int32(4)),
            header(":message-flags", HeaderValue::Int32(0)),
            header(":stream-id", HeaderValue::Int32(0)),
        ],
        payload: Bytes::from(format!(
            "{{\"authToken\": \"{token}\", \"pad\": \"{}\"}}",
            "x".repeat(padding)
        )),
    })
    .unwrap()
}

/// What the server sent until it closed the connection, or `None` if it kept it open for
/// `patience`.
async fn frames_until_closed(s: &mut UnixStream, patience: Duration) -> Option<Vec<Frame>> {
    let mut buf = BytesMut::new();
    let decoder = Decoder::new(codec::MAX_FRAME_LIMIT);
    let mut frames = Vec::new();
    loop {
        while let Ok(Some(f)) = decoder.decode(&mut buf) {
            frames.push(f);
        }
        match tokio::time::timeout(patience, s.read_buf(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(frames),
            Ok(Ok(_)) => {}
        }
    }
}

fn is_protocol_error(frames: &[Frame]) -> bool {
    frames
        .iter()
        .any(|f| f.header_i32(":message-type") == Some(6))
}

#[tokio::test]
async fn a_client_that_does_not_authenticate_in_time_is_disconnected() {
    let fx = start(
        &["pub"],
        ServerOptions {
            connect_timeout: Duration::from_millis(300),
            ..ServerOptions::default()
        },
    )
    .await;
    // Silent, and trickling half a CONNECT: both are closed once the deadline passes.
    let mut silent = UnixStream::connect(&fx.socket).await.unwrap();
    let mut trickle = UnixStream::connect(&fx.socket).await.unwrap();
    trickle
        .write_all(&connect_frame("whatever", 0)[..20])
        .await
        .unwrap();
    for s in [&mut silent, &mut trickle] {
        assert!(
            frames_until_closed(s, Duration::from_secs(20))
                .await
                .is_some(),
            "the server kept an unauthenticated connection open"
        );
    }
    // An authenticated connection is not bound by that deadline.
    let client = IpcClient::connect(&fx.socket, &fx.tokens.mint("pub"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    client
        .call(
            "PublishToTopic",
            json!({ "topic": "t", "publishMessage": { "jsonMessage": { "message": 1 } } }),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn the_default_connect_deadline_is_ten_seconds() {
    assert_eq!(
        ServerOptions::default().connect_timeout,
        Duration::from_secs(10)
    );
    assert_eq!(ServerOptions::default().max_connect_frame, 64 * 1024);
}

#[tokio::test]
async fn a_large_frame_before_authentication_is_refused_from_its_prelude() {
    let fx = start(&["pub"], ServerOptions::default()).await;
    // Only the prelude of a 1 MiB frame: refused at once, without waiting for (or buffering)
    // the rest.
    let mut prelude = BytesMut::new();
    prelude.put_u32(1024 * 1024);
    prelude.put_u32(0);
    let crc = crc32fast::hash(&prelude);
    prelude.put_u32(crc);
    let mut s = UnixStream::connect(&fx.socket).await.unwrap();
    s.write_all(&prelude).await.unwrap();
    let frames = frames_until_closed(&mut s, Duration::from_secs(5))
        .await
        .expect("the server waited for the rest of a 1 MiB frame before authentication");
    assert!(is_protocol_error(&frames), "{frames:?}");

    // A CONNECT over 64 KiB is refused; one under it is accepted.
    let token = fx.tokens.mint("pub");
    let mut s = UnixStream::connect(&fx.socket).await.unwrap();
    s.write_all(&connect_frame(&token, 70 * 1024))
        .await
        .unwrap();
    let frames = frames_until_closed(&mut s, Duration::from_secs(5))
        .await
        .expect("an oversized CONNECT was kept open");
    assert!(is_protocol_error(&frames), "{frames:?}");
    let mut s = UnixStream::connect(&fx.socket).await.unwrap();
    s.write_all(&connect_frame(&token, 60 * 1024))
        .await
        .unwrap();
    let mut buf = BytesMut::new();
    let ack = loop {
        if let Some(f) = Decoder::default().decode(&mut buf).unwrap() {
            break f;
        }
        assert!(
            s.read_buf(&mut buf).await.unwrap() > 0,
            "closed before CONNECT_ACK"
        );
    };
    assert_eq!(ack.header_i32(":message-type"), Some(5));
    assert_eq!(ack.header_i32(":message-flags"), Some(1));

    // After authentication the full frame limit applies again.
    let client = IpcClient::connect(&fx.socket, &token).await.unwrap();
    client
        .publish_binary("big", &vec![7u8; 1024 * 1024])
        .await
        .unwrap();
}

#[tokio::test]
async fn the_socket_is_0666_and_bound_without_leftovers() {
    let fx = start(&["pub"], ServerOptions::default()).await;
    let meta = std::fs::symlink_metadata(&fx.socket).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()));
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o666
    );
    let names: Vec<_> = std::fs::read_dir(fx.socket.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("ipc.socket")]);
}
