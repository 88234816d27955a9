//! Arbitrary bytes into every protocol decoder: none may panic. Whatever decodes must also
//! survive a re-encode → decode round trip unchanged (skipped when the re-encoded header would
//! exceed `MAX_HEADER_BYTES`: JSON may legitimately grow, e.g. a score `1` becomes `1.0`, and
//! `protocol::encode` refuses oversized headers).
#![no_main]

use gstcbo::protocol::{self, MAX_HEADER_BYTES, Response};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;

fn fits<T: Serialize>(value: &T) -> bool {
    serde_json::to_vec(value).is_ok_and(|v| v.len() <= MAX_HEADER_BYTES)
}

fuzz_target!(|data: &[u8]| {
    let _ = protocol::split(data);
    if let Ok((header, jpeg)) = protocol::decode_request(data)
        && fits(&header)
    {
        let again = protocol::encode_request(&header, jpeg).expect("fits");
        let (h2, j2) = protocol::decode_request(&again).expect("re-encoded request decodes");
        assert_eq!(h2, header);
        assert_eq!(j2, jpeg);
    }
    if let Ok(r) = protocol::decode_response(data)
        && fits(&r)
    {
        match (
            &r,
            protocol::decode_response(&protocol::encode_response(&r).expect("fits")),
        ) {
            // JSON has no infinities: a score like 1e39 decodes to inf and encodes as null,
            // which then does not decode. Only finite answers must survive the trip.
            (Response::Answer(a), _) if a.scores.iter().any(|s| !s.is_finite()) => {}
            // Scores are parsed through f64, so they may move by an f32 rounding step.
            (Response::Answer(a), Ok(Response::Answer(b))) => {
                assert_eq!(
                    (a.frame_id, &a.class_ids, &a.labels),
                    (b.frame_id, &b.class_ids, &b.labels)
                );
                assert_eq!(
                    (a.decode_us, a.queue_us, a.inference_us, a.batch),
                    (b.decode_us, b.queue_us, b.inference_us, b.batch)
                );
                assert_eq!(a.scores.len(), b.scores.len());
                for (x, y) in a.scores.iter().zip(&b.scores) {
                    assert!((x - y).abs() <= x.abs() * 1e-6, "{x} vs {y}");
                }
            }
            (Response::Error(a), Ok(Response::Error(b))) => assert_eq!(a, &b),
            (_, other) => panic!("{r:?} re-decoded as {other:?}"),
        }
    }
    if let Ok(h) = protocol::decode_hello(data)
        && fits(&h)
    {
        let again = protocol::decode_hello(&protocol::encode_hello(&h).expect("fits"))
            .expect("hello decodes");
        assert_eq!(again, h);
    }
    if let Ok(h) = protocol::decode_hello_reply(data)
        && fits(&h)
    {
        let again = protocol::decode_hello_reply(&protocol::encode_hello_reply(&h).expect("fits"))
            .expect("hello reply decodes");
        assert_eq!(again, h);
    }
});
