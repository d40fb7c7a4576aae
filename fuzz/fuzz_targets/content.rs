//! Content assembly (the channel's publish → header → body state machine) driven by an
//! arbitrary sequence of frames, checked against a small model of what the spec requires.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use warrenmq::channel::content::ContentAssembler;
use warrenmq::protocol::BasicProperties;

const MAX_SIZE: u64 = 1 << 16;

#[derive(Arbitrary, Debug)]
enum Frame {
    Publish(u8),
    OtherMethod(u16, u16),
    Header { class_id: u16, size: u32 },
    Body(Vec<u8>),
}

/// What the model expects the channel to be doing.
enum Model {
    Idle,
    Header(u8),
    Body {
        publish: u8,
        want: u64,
        got: Vec<u8>,
    },
}

fuzz_target!(|frames: Vec<Frame>| {
    let mut a: ContentAssembler<u8> = ContentAssembler::new();
    let mut model = Model::Idle;
    for frame in frames {
        match frame {
            Frame::Publish(p) => {
                let ok = a.check_method(1, 60, 40).is_ok();
                assert_eq!(ok, matches!(model, Model::Idle));
                if ok {
                    a.start(p);
                    model = Model::Header(p);
                } else {
                    a.reset();
                    model = Model::Idle;
                }
            }
            Frame::OtherMethod(class, method) => {
                let ok = a.check_method(1, class, method).is_ok();
                assert_eq!(ok, matches!(model, Model::Idle));
                if !ok {
                    a.reset();
                    model = Model::Idle;
                }
            }
            Frame::Header { class_id, size } => {
                let size = u64::from(size);
                let res = a.on_header(1, class_id, size, Box::default(), Bytes::new(), MAX_SIZE);
                match (std::mem::replace(&mut model, Model::Idle), res) {
                    (Model::Header(p), Ok(Some(m))) => {
                        assert!(class_id == 60 && size == 0);
                        assert_eq!(m.publish, p);
                        assert!(m.body.is_empty());
                        assert_eq!(m.properties, BasicProperties::default());
                    }
                    (Model::Header(p), Ok(None)) => {
                        assert!(class_id == 60 && size > 0 && size <= MAX_SIZE);
                        model = Model::Body {
                            publish: p,
                            want: size,
                            got: Vec::new(),
                        };
                    }
                    (Model::Header(_), Err(_)) => {
                        assert!(class_id != 60 || size > MAX_SIZE);
                        a.reset();
                    }
                    (_, Err(_)) => a.reset(),
                    (_, Ok(r)) => panic!("header accepted out of order: {r:?}"),
                }
            }
            Frame::Body(bytes) => {
                let res = a.on_body(1, Bytes::from(bytes.clone()));
                match (std::mem::replace(&mut model, Model::Idle), res) {
                    (
                        Model::Body {
                            publish,
                            want,
                            mut got,
                        },
                        Ok(r),
                    ) => {
                        got.extend_from_slice(&bytes);
                        assert!(got.len() as u64 <= want);
                        match r {
                            Some(m) => {
                                assert_eq!(got.len() as u64, want);
                                assert_eq!(m.publish, publish);
                                assert_eq!(&m.body[..], &got[..]);
                            }
                            None => {
                                assert!((got.len() as u64) < want);
                                model = Model::Body { publish, want, got };
                            }
                        }
                    }
                    (Model::Body { want, got, .. }, Err(_)) => {
                        assert!(got.len() as u64 + bytes.len() as u64 > want);
                        a.reset();
                    }
                    (_, Err(_)) => a.reset(),
                    (_, Ok(r)) => panic!("body accepted out of order: {r:?}"),
                }
            }
        }
        assert_eq!(a.is_idle(), matches!(model, Model::Idle));
    }
});
