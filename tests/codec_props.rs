//! Property tests of the wire codec against amq-protocol: what one side encodes the other
//! parses back unchanged (field tables, client methods, content headers, the hand-encoded
//! deliver/get-ok/return frames); arbitrary bytes never panic the frame reader or the
//! table checker; and feeding bytes in arbitrary chunks gives the same frames as one buffer.
//! Case counts are kept small enough for the suite to run in seconds.

use amq_protocol::frame::{gen_frame, parse_frame, AMQPContentHeader, AMQPFrame, WriteContext};
use amq_protocol::protocol::{basic, connection, exchange, queue, AMQPClass, BasicProperties};
use amq_protocol::types::generation::gen_field_table;
use amq_protocol::types::parsing::parse_field_table;
use amq_protocol::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use warrenmq::protocol::codec::{read_frame, InFrame, ReadLimits};
use warrenmq::protocol::encode::{self, ContentRef};
use warrenmq::protocol::table::{check_field_table, header_table_offset, method_table_offset};

fn cfg(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---- strategies ----

fn short() -> impl Strategy<Value = ShortString> {
    // Up to 255 bytes, multi-byte characters included.
    "\\PC{0,40}".prop_map(|s: String| ShortString::from(s))
}

fn key() -> impl Strategy<Value = ShortString> {
    "[a-zA-Z0-9_.-]{1,16}".prop_map(ShortString::from)
}

fn scalar() -> impl Strategy<Value = AMQPValue> {
    prop_oneof![
        any::<bool>().prop_map(AMQPValue::Boolean),
        any::<i8>().prop_map(AMQPValue::ShortShortInt),
        any::<u8>().prop_map(AMQPValue::ShortShortUInt),
        any::<i16>().prop_map(AMQPValue::ShortInt),
        any::<u16>().prop_map(AMQPValue::ShortUInt),
        any::<i32>().prop_map(AMQPValue::LongInt),
        any::<u32>().prop_map(AMQPValue::LongUInt),
        any::<i64>().prop_map(AMQPValue::LongLongInt),
        // Finite floats only: NaN != NaN would fail the comparison, not the codec.
        (-1e30f32..1e30f32).prop_map(AMQPValue::Float),
        (-1e300f64..1e300f64).prop_map(AMQPValue::Double),
        (any::<u8>(), any::<u32>())
            .prop_map(|(scale, value)| AMQPValue::DecimalValue(DecimalValue { scale, value })),
        "\\PC{0,30}".prop_map(|s: String| AMQPValue::LongString(LongString::from(s))),
        any::<u64>().prop_map(AMQPValue::Timestamp),
        Just(AMQPValue::Void),
        prop::collection::vec(any::<u8>(), 0..32)
            .prop_map(|v| AMQPValue::ByteArray(ByteArray::from(v))),
    ]
}

fn table_of(value: impl Strategy<Value = AMQPValue>) -> impl Strategy<Value = FieldTable> {
    prop::collection::btree_map(key(), value, 0..6).prop_map(FieldTable::from)
}

/// Values nested up to a few tables/arrays deep.
fn value() -> impl Strategy<Value = AMQPValue> {
    scalar().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6)
                .prop_map(|v| AMQPValue::FieldArray(FieldArray::from(v))),
            table_of(inner).prop_map(AMQPValue::FieldTable),
        ]
    })
}

fn table() -> impl Strategy<Value = FieldTable> {
    table_of(value())
}

/// Nesting depth as the table checker counts it: the outer table is 1.
fn table_depth(t: &FieldTable) -> usize {
    fn depth(v: &AMQPValue) -> usize {
        match v {
            AMQPValue::FieldTable(t) => table_depth(t),
            AMQPValue::FieldArray(a) => 1 + a.as_slice().iter().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }
    1 + t.inner().values().map(depth).max().unwrap_or(0)
}

fn encode_table(t: &FieldTable) -> Vec<u8> {
    gen_field_table(t)(WriteContext::from(Vec::new()))
        .expect("encode table")
        .into_inner()
        .0
}

/// Methods a client sends, with every field arbitrary.
fn client_method() -> impl Strategy<Value = (u16, AMQPClass)> {
    let channel = 1..=u16::MAX;
    prop_oneof![
        (table(), short(), "\\PC{0,40}", short()).prop_map(|(props, mechanism, resp, locale)| (
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: props,
                mechanism,
                response: LongString::from(resp),
                locale,
            }))
        )),
        (channel.clone(), short(), any::<[bool; 5]>(), table()).prop_map(|(c, q, f, args)| (
            c,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: q,
                passive: f[0],
                durable: f[1],
                exclusive: f[2],
                auto_delete: f[3],
                nowait: f[4],
                arguments: args,
            }))
        )),
        (
            channel.clone(),
            short(),
            short(),
            any::<[bool; 5]>(),
            table()
        )
            .prop_map(|(c, x, kind, f, args)| (
                c,
                AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                    exchange: x,
                    kind,
                    passive: f[0],
                    durable: f[1],
                    auto_delete: f[2],
                    internal: f[3],
                    nowait: f[4],
                    arguments: args,
                }))
            )),
        (
            channel.clone(),
            short(),
            short(),
            short(),
            any::<bool>(),
            table()
        )
            .prop_map(|(c, q, x, rk, nowait, args)| (
                c,
                AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                    queue: q,
                    exchange: x,
                    routing_key: rk,
                    nowait,
                    arguments: args,
                }))
            )),
        (
            channel.clone(),
            short(),
            short(),
            any::<[bool; 4]>(),
            table()
        )
            .prop_map(|(c, q, tag, f, args)| (
                c,
                AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                    queue: q,
                    consumer_tag: tag,
                    no_local: f[0],
                    no_ack: f[1],
                    exclusive: f[2],
                    nowait: f[3],
                    arguments: args,
                }))
            )),
        (channel.clone(), short(), short(), any::<bool>()).prop_map(|(c, x, rk, m)| (
            c,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: x,
                routing_key: rk,
                mandatory: m,
                immediate: false,
            }))
        )),
        (channel.clone(), any::<u64>(), any::<bool>()).prop_map(|(c, tag, multiple)| (
            c,
            AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: tag,
                multiple,
            }))
        )),
        (channel, any::<u16>(), any::<bool>()).prop_map(|(c, n, global)| (
            c,
            AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: n,
                global,
            }))
        )),
    ]
}

fn properties() -> impl Strategy<Value = BasicProperties> {
    (
        (
            prop::option::of(short()),
            prop::option::of(table()),
            prop::option::of(any::<u8>()),
            prop::option::of(any::<u8>()),
            prop::option::of(short()),
            prop::option::of(short()),
        ),
        (
            prop::option::of(short()),
            prop::option::of(any::<u64>()),
            prop::option::of(short()),
            prop::option::of(short()),
            prop::option::of(short()),
        ),
    )
        .prop_map(
            |((ct, headers, mode, prio, corr, reply), (mid, ts, kind, user, app))| {
                let mut p = BasicProperties::default();
                if let Some(v) = ct {
                    p = p.with_content_type(v);
                }
                if let Some(v) = headers {
                    p = p.with_headers(v);
                }
                if let Some(v) = mode {
                    p = p.with_delivery_mode(v);
                }
                if let Some(v) = prio {
                    p = p.with_priority(v);
                }
                if let Some(v) = corr {
                    p = p.with_correlation_id(v);
                }
                if let Some(v) = reply {
                    p = p.with_reply_to(v);
                }
                if let Some(v) = mid {
                    p = p.with_message_id(v);
                }
                if let Some(v) = ts {
                    p = p.with_timestamp(v);
                }
                if let Some(v) = kind {
                    p = p.with_type(v);
                }
                if let Some(v) = user {
                    p = p.with_user_id(v);
                }
                if let Some(v) = app {
                    p = p.with_app_id(v);
                }
                p
            },
        )
}

fn encode_frame(frame: &AMQPFrame) -> Vec<u8> {
    gen_frame(frame)(WriteContext::from(Vec::new()))
        .expect("encode frame")
        .into_inner()
        .0
}

/// Frames a client may send, in any order (the reader does not check the order).
fn client_frame() -> impl Strategy<Value = AMQPFrame> {
    prop_oneof![
        client_method().prop_map(|(c, m)| AMQPFrame::Method(c, m)),
        (1..=u16::MAX, any::<u64>(), properties()).prop_map(|(c, size, p)| AMQPFrame::Header(
            c,
            AMQPContentHeader {
                class_id: 60,
                body_size: size,
                properties: p,
            }
        )),
        (1..=u16::MAX, prop::collection::vec(any::<u8>(), 0..600))
            .prop_map(|(c, b)| AMQPFrame::Body(c, b)),
        Just(AMQPFrame::Heartbeat),
    ]
}

/// Frame-shaped bytes: a plausible header around arbitrary payloads, often starting with a
/// real class and method id, so the method and header parsers are reached, not just the
/// frame header checks.
fn framish() -> impl Strategy<Value = Vec<u8>> {
    let ids = prop_oneof![
        Just((10u16, 11u16)),
        Just((40, 10)),
        Just((40, 30)),
        Just((50, 10)),
        Just((50, 20)),
        Just((50, 50)),
        Just((60, 20)),
        Just((60, 40)),
        (any::<u16>(), any::<u16>()),
    ];
    (
        prop_oneof![Just(1u8), Just(2), Just(3), Just(8), any::<u8>()],
        any::<u16>(),
        ids,
        prop::collection::vec(any::<u8>(), 0..200),
        prop_oneof![9 => Just(0xCEu8), 1 => any::<u8>()],
    )
        .prop_map(|(kind, channel, (class, method), rest, end)| {
            let mut payload = Vec::new();
            payload.extend_from_slice(&class.to_be_bytes());
            payload.extend_from_slice(&method.to_be_bytes());
            payload.extend_from_slice(&rest);
            let mut f = vec![kind];
            f.extend_from_slice(&channel.to_be_bytes());
            f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            f.extend_from_slice(&payload);
            f.push(end);
            f
        })
}

fn limits() -> impl Strategy<Value = ReadLimits> {
    (prop_oneof![Just(0u32), 4096u32..200_000], 1usize..10).prop_map(|(frame_max, depth)| {
        ReadLimits {
            frame_max,
            max_table_depth: depth,
        }
    })
}

const ROOMY: ReadLimits = ReadLimits {
    frame_max: 0,
    max_table_depth: 16,
};

/// Read every frame buffered; stop at "need more" or the first error.
fn drain(buf: &mut BytesMut, limits: ReadLimits, out: &mut Vec<String>) -> Option<String> {
    // Each successful read consumes at least 8 bytes, so this terminates.
    loop {
        match read_frame(buf, limits) {
            Ok(Some(frame)) => out.push(format!("{frame:?}")),
            Ok(None) => return None,
            Err(e) => return Some(format!("{:?} on channel {}", e.error, e.channel)),
        }
    }
}

fn read_chunked(bytes: &[u8], cuts: &[usize], limits: ReadLimits) -> (Vec<String>, Option<String>) {
    let mut frames = Vec::new();
    let mut buf = BytesMut::new();
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.push(bytes.len());
    points.sort_unstable();
    let mut from = 0;
    for to in points {
        buf.extend_from_slice(&bytes[from..to]);
        from = to;
        if let Some(e) = drain(&mut buf, limits, &mut frames) {
            return (frames, Some(e));
        }
    }
    (frames, None)
}

/// Parse hand-encoded outbound frames with amq-protocol: the method, the header, the body.
fn parse_outbound(mut bytes: &[u8], frame_max: u32) -> (AMQPClass, AMQPContentHeader, Vec<u8>) {
    let mut method = None;
    let mut header = None;
    let mut body = Vec::new();
    while !bytes.is_empty() {
        let (rest, frame) = parse_frame(bytes).expect("amq-protocol parses the frame");
        let size = bytes.len() - rest.len();
        if frame_max != 0 {
            assert!(size <= frame_max as usize, "{size} > frame_max {frame_max}");
        }
        bytes = rest;
        match frame {
            AMQPFrame::Method(7, m) if method.is_none() => method = Some(m),
            AMQPFrame::Header(7, h) if header.is_none() => header = Some(h),
            AMQPFrame::Body(7, b) if header.is_some() => {
                assert!(!b.is_empty(), "empty body frame");
                body.extend_from_slice(&b);
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
    (
        method.expect("a method frame"),
        header.expect("a header frame"),
        body,
    )
}

// ---- properties ----

proptest! {
    #![proptest_config(cfg(256))]

    #[test]
    fn tables_roundtrip_and_depth_is_enforced(t in table(), max in 1usize..6) {
        let bytes = encode_table(&t);
        let (rest, parsed) = parse_field_table(&bytes[..]).expect("amq-protocol parses its own");
        prop_assert!(rest.is_empty());
        prop_assert_eq!(&parsed, &t);
        let depth = table_depth(&t);
        prop_assert!(check_field_table(&bytes, depth).is_ok());
        prop_assert_eq!(check_field_table(&bytes, max).is_ok(), depth <= max);
    }

    #[test]
    fn client_methods_roundtrip((channel, method) in client_method()) {
        let bytes = encode_frame(&AMQPFrame::Method(channel, method.clone()));
        let mut buf = BytesMut::from(&bytes[..]);
        match read_frame(&mut buf, ROOMY) {
            Ok(Some(InFrame::Method { channel: c, method: m, .. })) => {
                prop_assert_eq!(c, channel);
                prop_assert_eq!(*m, method);
            }
            other => prop_assert!(false, "unexpected {:?}", other),
        }
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn content_headers_roundtrip(channel in 1..=u16::MAX, size in any::<u64>(), props in properties()) {
        let header = AMQPContentHeader { class_id: 60, body_size: size, properties: props.clone() };
        let bytes = encode_frame(&AMQPFrame::Header(channel, header));
        let mut buf = BytesMut::from(&bytes[..]);
        match read_frame(&mut buf, ROOMY) {
            Ok(Some(InFrame::Header { channel: c, class_id, body_size, properties, raw_properties })) => {
                prop_assert_eq!((c, class_id, body_size), (channel, 60, size));
                prop_assert_eq!(&*properties, &props);
                // The bytes reused verbatim for deliveries are what the encoder makes.
                prop_assert_eq!(raw_properties, encode::properties(&props));
            }
            other => prop_assert!(false, "unexpected {:?}", other),
        }
    }

    #[test]
    fn hand_encoded_deliveries_parse_back(
        props in properties(),
        body in prop::collection::vec(any::<u8>(), 0..20_000),
        frame_max in prop_oneof![Just(0u32), 4096u32..12_000],
        (tag, dtag, redelivered, count) in (short(), any::<u64>(), any::<bool>(), any::<u32>()),
        (exchange, rk) in (short(), short()),
        code in any::<u16>(),
    ) {
        let raw = encode::properties(&props);
        let body = Bytes::from(body);
        let content = ContentRef {
            exchange: exchange.as_str(),
            routing_key: rk.as_str(),
            raw_properties: &raw,
            body: &body,
        };
        let check = |buf: BytesMut, want: AMQPClass| -> Result<(), TestCaseError> {
            let (m, h, b) = parse_outbound(&buf, frame_max);
            prop_assert_eq!(m, want);
            prop_assert_eq!((h.class_id, h.body_size), (60, body.len() as u64));
            prop_assert_eq!(&h.properties, &props);
            prop_assert_eq!(&b[..], &body[..]);
            Ok(())
        };

        let mut buf = BytesMut::new();
        encode::deliver(&mut buf, 7, frame_max, tag.as_str(), dtag, redelivered, &content);
        check(buf, AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
            consumer_tag: tag.clone(),
            delivery_tag: dtag,
            redelivered,
            exchange: exchange.clone(),
            routing_key: rk.clone(),
        })))?;

        let mut buf = BytesMut::new();
        encode::get_ok(&mut buf, 7, frame_max, dtag, redelivered, count, &content);
        check(buf, AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
            delivery_tag: dtag,
            redelivered,
            exchange: exchange.clone(),
            routing_key: rk.clone(),
            message_count: count,
        })))?;

        let mut buf = BytesMut::new();
        encode::basic_return(&mut buf, 7, frame_max, code, tag.as_str(), &content);
        check(buf, AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
            reply_code: code,
            reply_text: tag.clone(),
            exchange: exchange.clone(),
            routing_key: rk.clone(),
        })))?;
    }

    #[test]
    fn chunked_input_reads_like_one_buffer(
        frames in prop::collection::vec(client_frame(), 1..8),
        garbage in prop::collection::vec(any::<u8>(), 0..16),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
        limits in limits(),
    ) {
        let mut bytes: Vec<u8> = frames.iter().flat_map(encode_frame).collect();
        bytes.extend_from_slice(&garbage);
        let mut whole = Vec::new();
        let err = drain(&mut BytesMut::from(&bytes[..]), limits, &mut whole);
        let (chunked, chunked_err) = read_chunked(&bytes, &cuts, limits);
        prop_assert_eq!(&chunked, &whole);
        prop_assert_eq!(&chunked_err, &err);
        // With room enough, every generated frame comes back.
        if garbage.is_empty() && limits.frame_max == 0 && limits.max_table_depth >= 6 {
            prop_assert_eq!(whole.len(), frames.len());
            prop_assert!(err.is_none());
        }
    }
}

proptest! {
    #![proptest_config(cfg(1024))]

    #[test]
    fn arbitrary_bytes_never_panic_the_reader(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
        limits in limits(),
    ) {
        let mut whole = Vec::new();
        let err = drain(&mut BytesMut::from(&bytes[..]), limits, &mut whole);
        let (chunked, chunked_err) = read_chunked(&bytes, &cuts, limits);
        prop_assert_eq!(chunked, whole);
        prop_assert_eq!(chunked_err, err);
    }

    #[test]
    fn frame_shaped_bytes_never_panic_the_reader(
        frames in prop::collection::vec(framish(), 1..4),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
        limits in limits(),
    ) {
        let bytes: Vec<u8> = frames.concat();
        let mut whole = Vec::new();
        let err = drain(&mut BytesMut::from(&bytes[..]), limits, &mut whole);
        let (chunked, chunked_err) = read_chunked(&bytes, &cuts, limits);
        prop_assert_eq!(chunked, whole);
        prop_assert_eq!(chunked_err, err);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_table_checks(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        depth in 1usize..8,
        class in prop_oneof![Just(10u16), Just(40), Just(50), Just(60), any::<u16>()],
        method in prop_oneof![Just(10u16), Just(11), Just(20), Just(30), Just(40), Just(50), any::<u16>()],
    ) {
        // Whatever the checker accepts, the (recursive) codec parser must handle.
        if check_field_table(&bytes, depth).is_ok() {
            let _ = parse_field_table(&bytes[..]);
        }
        if let Some(off) = method_table_offset(&bytes, class, method) {
            prop_assert!(off <= bytes.len());
            let _ = check_field_table(&bytes[off..], depth);
        }
        let _ = header_table_offset(&bytes);
    }

    #[test]
    fn corrupted_tables_are_refused_or_parse(t in table(), at in any::<usize>(), byte in any::<u8>()) {
        let mut bytes = encode_table(&t);
        let i = at % bytes.len();
        bytes[i] = byte;
        // Accepted by the checker ⇒ within the depth limit and parsable without panicking.
        if check_field_table(&bytes, 8).is_ok() {
            let _ = parse_field_table(&bytes[..]);
        }
    }
}
