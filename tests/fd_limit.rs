//! File descriptor exhaustion: the real binary runs with a low RLIMIT_NOFILE; clients open
//! connections until the broker can accept no more. The accept loop must back off and go
//! on: an established connection keeps working, and once the extra connections are gone
//! new ones are accepted again.

mod common;
use common::process::{broker_command, free_port, BrokerProcess};
use common::within;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Descriptors the broker may hold: enough to start, far fewer than the clients below.
const NOFILE: libc::rlim_t = 64;
/// Connections opened against it.
const EXTRA: usize = 150;

fn spawn_broker(dir: &std::path::Path, port: u16) -> BrokerProcess {
    let mut cmd = broker_command(dir, port, "error");
    cmd.stderr(Stdio::null());
    // SAFETY: only setrlimit (async-signal-safe) runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: NOFILE,
                rlim_max: NOFILE,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    BrokerProcess(cmd.spawn().expect("start broker"))
}

async fn connect(port: u16) -> Connection {
    let uri = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_secs(5),
            Connection::connect(&uri, ConnectionProperties::default()),
        )
        .await;
        if let Ok(Ok(c)) = attempt {
            return c;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "broker did not accept a connection on {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The connection answers: publish to a queue and get the message back.
async fn round_trip(conn: &Connection, body: &[u8]) {
    let ch = within("channel", conn.create_channel())
        .await
        .expect("channel");
    within(
        "declare",
        ch.queue_declare(
            "alive".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("declare");
    within(
        "publish",
        ch.basic_publish(
            "".into(),
            "alive".into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        ),
    )
    .await
    .expect("publish");
    let mut got = None;
    for _ in 0..1000 {
        got = within(
            "basic.get",
            ch.basic_get("alive".into(), BasicGetOptions { no_ack: true }),
        )
        .await
        .expect("basic.get");
        if got.is_some() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(got.expect("message back").delivery.data, body);
    within("channel close", ch.close(200, "bye".into()))
        .await
        .expect("channel close");
}

/// Did this socket get connection.start (the broker accepted it) within `wait`?
async fn answered(sock: &mut TcpStream, wait: Duration) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(wait, sock.read(&mut b)).await,
        Ok(Ok(n)) if n > 0
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_loop_survives_fd_exhaustion() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let _broker = spawn_broker(dir.path(), port);
    let first = connect(port).await;
    round_trip(&first, b"before").await;

    // Far more connections than descriptors: the tail waits in the listen backlog while
    // accept fails with EMFILE.
    let mut extra = Vec::with_capacity(EXTRA);
    for _ in 0..EXTRA {
        let mut s = within("tcp connect", TcpStream::connect(("127.0.0.1", port)))
            .await
            .expect("tcp connect");
        s.write_all(b"AMQP\x00\x00\x09\x01")
            .await
            .expect("protocol header");
        extra.push(s);
    }
    // All at once, each bounded: the accepted ones answer with connection.start.
    let tasks: Vec<_> = extra
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let a = answered(&mut s, Duration::from_secs(3)).await;
                (s, a)
            })
        })
        .collect();
    let mut extra = Vec::with_capacity(EXTRA);
    let mut n_answered = 0;
    for t in tasks {
        let (s, a) = within("answer", t).await.expect("answer task");
        n_answered += a as usize;
        extra.push(s);
    }
    assert!(
        n_answered < EXTRA,
        "every connection was accepted: the descriptor limit was not reached"
    );

    // The broker is alive and the established connection still works.
    round_trip(&first, b"during").await;

    // Once the extra connections go, new ones are accepted again.
    drop(extra);
    let second = connect(port).await;
    round_trip(&second, b"after").await;
    round_trip(&first, b"still").await;
}
