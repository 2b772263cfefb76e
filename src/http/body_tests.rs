use super::*;

/// Runs a framer over `input` made available `piece` bytes at a time (the way reads arrive),
/// as an exchange loop would: returns the bytes it would send, the bytes consumed, and
/// whether the body completed (or the error).
fn drive(
    mut framer: BodyFramer,
    input: &[u8],
    piece: usize,
) -> Result<(Vec<u8>, usize, bool), ChunkError> {
    let mut sent = Vec::new();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut avail = piece.min(input.len());
    loop {
        out.clear();
        let adv = framer.advance(&input[pos..avail], &mut out)?;
        assert!(adv.consumed <= avail - pos, "consumed past the input");
        assert!(adv.forward.end <= adv.consumed, "forward outside consumed");
        sent.extend_from_slice(&out);
        sent.extend_from_slice(&input[pos..avail][adv.forward.clone()]);
        pos += adv.consumed;
        if adv.done {
            return Ok((sent, pos, true));
        }
        if adv.needs_input() {
            if avail == input.len() {
                return Ok((sent, pos, false));
            }
            avail = (avail + piece).min(input.len());
        }
    }
}

fn all_splits(framer: BodyFramer, input: &[u8]) -> Result<(Vec<u8>, usize, bool), ChunkError> {
    let whole = drive(framer, input, input.len().max(1));
    for piece in 1..input.len().max(1) {
        assert_eq!(
            drive(framer, input, piece),
            whole,
            "split every {piece} bytes"
        );
    }
    whole
}

#[test]
fn length_body_stops_at_its_end() {
    let f = BodyFramer::request(RequestBody::Length(5));
    let (sent, consumed, done) = all_splits(f, b"helloGET / HTTP/1.1\r\n").unwrap();
    assert_eq!(sent, b"hello");
    assert_eq!(consumed, 5);
    assert!(done);
}

#[test]
fn length_body_short_input_needs_more() {
    let f = BodyFramer::request(RequestBody::Length(10));
    let (sent, consumed, done) = all_splits(f, b"hello").unwrap();
    assert_eq!((sent.as_slice(), consumed, done), (&b"hello"[..], 5, false));
}

#[test]
fn empty_bodies_are_done_at_once() {
    for f in [
        BodyFramer::request(RequestBody::None),
        BodyFramer::request(RequestBody::Length(0)),
        BodyFramer::response(ResponseBody::None, false),
        BodyFramer::response(ResponseBody::Length(0), true),
    ] {
        assert!(f.is_done());
        let mut f = f;
        let adv = f.advance(b"next", &mut Vec::new()).unwrap();
        assert_eq!((adv.consumed, adv.done), (0, true));
    }
}

/// Decodes a complete chunked body (strictly, no trailers allowed) into its data.
fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut dec = ChunkedDecoder::new(0);
    let mut data = Vec::new();
    loop {
        let step = dec.decode(rest).expect("canonical chunks");
        if let Some(r) = step.data {
            data.extend_from_slice(&rest[r]);
        }
        rest = &rest[step.consumed..];
        if step.done {
            assert!(rest.is_empty(), "bytes after the last chunk");
            return data;
        }
        assert!(step.consumed > 0, "incomplete chunked body");
    }
}

#[test]
fn request_chunks_are_reencoded_canonically() {
    let input = b"5;ext=1\r\nhello\r\n0A\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT";
    let f = BodyFramer::request(RequestBody::Chunked);
    // Re-encoding depends on how reads split the data, but always decodes to the same body
    // with canonical lines and no extensions or trailers, and stops before the next message.
    for piece in 1..=input.len() {
        let (sent, consumed, done) = drive(f, input, piece).unwrap();
        assert!(done, "split {piece}");
        assert_eq!(consumed, input.len() - 4, "split {piece}");
        assert_eq!(dechunk(&sent), b"hello0123456789", "split {piece}");
        assert!(!sent.windows(3).any(|w| w == b"ext" || w == b"X-T"));
    }
    let whole = drive(f, input, input.len()).unwrap().0;
    assert_eq!(whole, b"5\r\nhello\r\na\r\n0123456789\r\n0\r\n\r\n");
}

#[test]
fn response_chunks_go_verbatim_to_http11_clients() {
    let input = b"5\r\nhello\r\n0\r\n\r\nHTTP/1.1 200";
    let f = BodyFramer::response(ResponseBody::Chunked, false);
    let (sent, consumed, done) = all_splits(f, input).unwrap();
    assert_eq!(sent, &input[..consumed]);
    assert_eq!(consumed, input.len() - 12);
    assert!(done);
}

#[test]
fn response_chunks_are_dechunked_for_http10_clients() {
    let input = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let f = BodyFramer::response(ResponseBody::Chunked, true);
    let (sent, consumed, done) = all_splits(f, input).unwrap();
    assert_eq!(sent, b"hello world");
    assert_eq!(consumed, input.len());
    assert!(done);
}

#[test]
fn bad_chunk_framing_is_an_error_however_split() {
    for input in [&b"5\r\nhelloXX"[..], b"g\r\n", b"5\nhello"] {
        for f in [
            BodyFramer::request(RequestBody::Chunked),
            BodyFramer::response(ResponseBody::Chunked, false),
            BodyFramer::response(ResponseBody::Chunked, true),
        ] {
            for piece in 1..=input.len() {
                assert!(drive(f, input, piece).is_err(), "{input:?} split {piece}");
            }
        }
    }
}

#[test]
fn until_close_takes_everything_and_ends_at_eof() {
    let mut f = BodyFramer::response(ResponseBody::UntilClose, false);
    let adv = f.advance(b"abc", &mut Vec::new()).unwrap();
    assert_eq!((adv.consumed, adv.forward, adv.done), (3, 0..3, false));
    assert_eq!(f.eof(), Ok(()));
    assert!(f.is_done());
}

#[test]
fn eof_truncates_framed_bodies() {
    let mut f = BodyFramer::response(ResponseBody::Length(4), false);
    f.advance(b"ab", &mut Vec::new()).unwrap();
    assert_eq!(f.eof(), Err(Truncated));
    let mut f = BodyFramer::request(RequestBody::Chunked);
    f.advance(b"5\r\nhel", &mut Vec::new()).unwrap();
    assert_eq!(f.eof(), Err(Truncated));
    let mut f = BodyFramer::request(RequestBody::Length(2));
    f.advance(b"ab", &mut Vec::new()).unwrap();
    assert_eq!(f.eof(), Ok(()));
}

#[test]
fn read_hint_never_passes_a_known_end() {
    let f = BodyFramer::request(RequestBody::Length(10));
    assert_eq!(f.read_hint(4096), 10);
    let f = BodyFramer::request(RequestBody::Length(1 << 40));
    assert_eq!(f.read_hint(4096), 4096);
    let f = BodyFramer::request(RequestBody::Chunked);
    assert_eq!(f.read_hint(4096), 4096);
}
