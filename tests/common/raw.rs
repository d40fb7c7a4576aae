//! A minimal raw AMQP client for sending what real clients never send (bad frames,
//! wrong headers, out-of-order content) and reading exactly what the broker answers.

use amq_protocol::frame::{gen_frame, parse_frame, AMQPFrame, WriteContext};
use amq_protocol::protocol::{basic, channel, connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable};
use bytes::{Buf, BytesMut};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Over plain TCP by default; any stream (e.g. a TLS client stream) via `Raw::over`.
pub struct Raw<S = TcpStream> {
    pub sock: S,
    buf: BytesMut,
}

pub fn encode(frame: &AMQPFrame) -> Vec<u8> {
    let res = gen_frame(frame)(WriteContext::from(Vec::new()));
    res.expect("encode").into_inner().0
}

/// basic.publish of `body` to `queue` through the default exchange on channel 1: method,
/// header and one body frame.
pub fn publish_frames(queue: &str, body: &[u8]) -> Vec<AMQPFrame> {
    vec![
        AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "".into(),
                routing_key: queue.into(),
                mandatory: false,
                immediate: false,
            })),
        ),
        AMQPFrame::Header(
            1,
            amq_protocol::frame::AMQPContentHeader {
                class_id: 60,
                body_size: body.len() as u64,
                properties: Default::default(),
            },
        ),
        AMQPFrame::Body(1, body.to_vec()),
    ]
}

impl Raw<TcpStream> {
    /// TCP connect only.
    pub async fn tcp(addr: std::net::SocketAddr) -> Raw {
        Raw {
            sock: TcpStream::connect(addr).await.expect("tcp connect"),
            buf: BytesMut::new(),
        }
    }

    /// Connect and complete the handshake with frame_max 4096 (small, to test limits).
    pub async fn open(addr: std::net::SocketAddr) -> Raw {
        Self::open_with(addr, 4096, 0).await
    }

    /// Connect as a client that advertises `capability` (e.g. `consumer_cancel_notify`).
    pub async fn open_capable(addr: std::net::SocketAddr, capability: &str) -> Raw {
        let mut caps = FieldTable::default();
        caps.insert(capability.into(), AMQPValue::Boolean(true));
        let mut props = FieldTable::default();
        props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
        let mut r = Self::tcp(addr).await;
        r.handshake_with(4096, 0, props).await;
        r
    }

    pub async fn open_with(addr: std::net::SocketAddr, frame_max: u32, heartbeat: u16) -> Raw {
        let mut r = Self::tcp(addr).await;
        r.handshake(frame_max, heartbeat).await;
        r
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    /// A client over an already connected stream.
    pub fn over(sock: S) -> Raw<S> {
        Raw {
            sock,
            buf: BytesMut::new(),
        }
    }

    /// The AMQP handshake as guest on vhost "/", advertising no capabilities.
    pub async fn handshake(&mut self, frame_max: u32, heartbeat: u16) {
        self.handshake_with(frame_max, heartbeat, FieldTable::default())
            .await
    }

    /// The handshake with these client properties (capabilities, say).
    pub async fn handshake_with(&mut self, frame_max: u32, heartbeat: u16, props: FieldTable) {
        let r = self;
        r.send_raw(b"AMQP\x00\x00\x09\x01").await;
        match r.recv().await {
            Some(AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Start(_)))) => {
            }
            other => panic!("expected connection.start, got {other:?}"),
        }
        r.send(AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: props,
                mechanism: "PLAIN".into(),
                response: "\0guest\0guest".into(),
                locale: "en_US".into(),
            })),
        ))
        .await;
        match r.recv().await {
            Some(AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Tune(_)))) => {}
            other => panic!("expected connection.tune, got {other:?}"),
        }
        r.send(AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 16,
                frame_max,
                heartbeat,
            })),
        ))
        .await;
        r.send(AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        ))
        .await;
        match r.recv().await {
            Some(AMQPFrame::Method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)),
            )) => {}
            other => panic!("expected connection.open-ok, got {other:?}"),
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.sock.write_all(bytes).await;
        // A TLS stream buffers writes until flushed.
        let _ = self.sock.flush().await;
    }

    pub async fn send(&mut self, frame: AMQPFrame) {
        let bytes = encode(&frame);
        self.send_raw(&bytes).await;
    }

    pub async fn open_channel(&mut self, id: u16) {
        self.send(AMQPFrame::Method(
            id,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        ))
        .await;
        match self.recv().await {
            Some(AMQPFrame::Method(c, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))))
                if c == id => {}
            other => panic!("expected channel.open-ok, got {other:?}"),
        }
    }

    /// Next frame (heartbeats skipped), or None when the socket closed. Bounded in time.
    pub async fn recv(&mut self) -> Option<AMQPFrame> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if !self.buf.is_empty() {
                let parsed =
                    parse_frame(&self.buf[..]).map(|(rest, f)| (self.buf.len() - rest.len(), f));
                if let Ok((used, frame)) = parsed {
                    self.buf.advance(used);
                    if matches!(frame, AMQPFrame::Heartbeat) {
                        continue;
                    }
                    return Some(frame);
                }
            }
            match tokio::time::timeout_at(deadline, self.sock.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return None,
                Err(_) => panic!("timed out waiting for a frame"),
            }
        }
    }

    /// Raw bytes until the socket closes (bounded).
    pub async fn read_to_close(&mut self) -> Vec<u8> {
        let mut out = self.buf.to_vec();
        let mut tmp = [0u8; 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(15), self.sock.read(&mut tmp)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return out,
                Ok(Ok(n)) => out.extend_from_slice(&tmp[..n]),
                Err(_) => panic!("socket not closed in time"),
            }
        }
    }

    /// Read until a connection.close; return (code, class, method) and answer close-ok.
    pub async fn expect_connection_close(&mut self) -> (u16, u16, u16) {
        let (code, _, class, method) = self.expect_connection_close_full().await;
        (code, class, method)
    }

    /// As `expect_connection_close`, with the reply text.
    pub async fn expect_connection_close_full(&mut self) -> (u16, String, u16, u16) {
        loop {
            match self.recv().await {
                Some(AMQPFrame::Method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Close(c)),
                )) => {
                    self.send(AMQPFrame::Method(
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                            connection::CloseOk {},
                        )),
                    ))
                    .await;
                    return (
                        c.reply_code,
                        c.reply_text.to_string(),
                        c.class_id,
                        c.method_id,
                    );
                }
                Some(_) => {}
                None => panic!("socket closed without connection.close"),
            }
        }
    }

    /// Read until a channel.close on `id`; return (code, class, method) and answer close-ok.
    pub async fn expect_channel_close(&mut self, id: u16) -> (u16, u16, u16) {
        loop {
            match self.recv().await {
                Some(AMQPFrame::Method(c, AMQPClass::Channel(channel::AMQPMethod::Close(cl))))
                    if c == id =>
                {
                    self.send(AMQPFrame::Method(
                        id,
                        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                    ))
                    .await;
                    return (cl.reply_code, cl.class_id, cl.method_id);
                }
                Some(AMQPFrame::Method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Close(c)),
                )) => {
                    panic!("connection closed ({}) instead of channel", c.reply_code)
                }
                Some(_) => {}
                None => panic!("socket closed without channel.close"),
            }
        }
    }
}
