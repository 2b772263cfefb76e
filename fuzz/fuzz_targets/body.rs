//! Body framing: `BodyFramer` must decide the same however its input is split, in every
//! framing and direction.
//!
//! Input layout: byte 0 selects the framing (request Length / Chunked, response Length /
//! Chunked verbatim / Chunked de-chunked / until close); bytes 1..9 are a little-endian length
//! (Length framings, taken modulo 2^16 so that bodies end inside the input); byte 9 = number of
//! split-size bytes that follow (mod 8), each a piece size (1..=32, cycled); the rest is input.
//!
//! Properties:
//! * whole-input and piecewise runs agree on error / success, `done` and bytes consumed;
//! * they send the same bytes, except when re-chunking, whose chunk lines follow the pieces:
//!   there the sent bytes must decode (strictly) to the same data;
//! * nothing is consumed past the input, nothing forwarded outside what was consumed, and a
//!   Length body never consumes past its length.
#![no_main]

use certgate::http::{BodyFramer, ChunkError, ChunkedDecoder, RequestBody, ResponseBody};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    error: Option<ChunkError>,
    sent: Vec<u8>,
    consumed: usize,
    done: bool,
}

fn run(mut framer: BodyFramer, input: &[u8], sizes: &[usize]) -> Outcome {
    let mut out = Vec::new();
    let mut o = Outcome {
        error: None,
        sent: Vec::new(),
        consumed: 0,
        done: false,
    };
    let mut avail = if sizes.is_empty() { input.len() } else { 0 };
    let mut next = 0;
    loop {
        out.clear();
        let window = &input[o.consumed..avail];
        let adv = match framer.advance(window, &mut out) {
            Ok(a) => a,
            Err(e) => {
                o.error = Some(e);
                return o;
            }
        };
        assert!(adv.consumed <= window.len(), "consumed past the input");
        assert!(
            adv.forward.start <= adv.forward.end && adv.forward.end <= adv.consumed,
            "forward {:?} outside consumed {}",
            adv.forward,
            adv.consumed
        );
        o.sent.extend_from_slice(&out);
        o.sent.extend_from_slice(&window[adv.forward.clone()]);
        o.consumed += adv.consumed;
        if adv.done {
            assert!(framer.is_done());
            o.done = true;
            return o;
        }
        if adv.needs_input() {
            if avail == input.len() {
                return o;
            }
            avail = (avail + sizes[next % sizes.len()]).min(input.len());
            next += 1;
        }
    }
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut dec = ChunkedDecoder::new(0);
    let mut data = Vec::new();
    while !rest.is_empty() {
        let step = dec.decode(rest).expect("re-chunked output must be canonical");
        if let Some(r) = step.data {
            data.extend_from_slice(&rest[r]);
        }
        rest = &rest[step.consumed..];
        if step.done {
            assert!(rest.is_empty(), "bytes after the last chunk");
            break;
        }
        assert!(step.consumed > 0, "stuck");
    }
    data
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 10 {
        return;
    }
    let len = u64::from_le_bytes(data[1..9].try_into().unwrap()) % (1 << 16);
    let (framer, rechunk) = match data[0] % 6 {
        0 => (BodyFramer::request(RequestBody::Length(len)), false),
        1 => (BodyFramer::request(RequestBody::Chunked), true),
        2 => (BodyFramer::response(ResponseBody::Length(len), false), false),
        3 => (BodyFramer::response(ResponseBody::Chunked, false), false),
        4 => (BodyFramer::response(ResponseBody::Chunked, true), false),
        _ => (BodyFramer::response(ResponseBody::UntilClose, false), false),
    };
    let n_sizes = usize::from(data[9] % 8);
    let rest = &data[10..];
    let n_sizes = n_sizes.min(rest.len());
    let sizes: Vec<usize> = rest[..n_sizes]
        .iter()
        .map(|b| usize::from(b % 32) + 1)
        .collect();
    let input = &rest[n_sizes..];

    let whole = run(framer, input, &[]);
    if data[0] % 6 == 0 || data[0] % 6 == 2 {
        assert!(whole.consumed as u64 <= len, "consumed past the length");
        assert_eq!(whole.done, input.len() as u64 >= len);
    }
    for pieces in [sizes.clone(), vec![1]] {
        if pieces.is_empty() {
            continue;
        }
        let split = run(framer, input, &pieces);
        assert_eq!(split.error, whole.error, "error differs when split");
        assert_eq!(split.done, whole.done, "done differs when split");
        if whole.error.is_none() {
            assert_eq!(split.consumed, whole.consumed, "consumed differs when split");
        }
        if rechunk {
            if whole.done {
                assert_eq!(dechunk(&split.sent), dechunk(&whole.sent), "data differs");
            }
        } else if whole.error.is_none() {
            assert_eq!(split.sent, whole.sent, "sent bytes differ when split");
        }
    }
});
