//! Unit tests for the chunked decoder and encoder helpers.

use super::*;

/// Feeds `input` in pieces of the given sizes the way the proxy does (growing buffer, decode
/// the unconsumed rest until it asks for more). Returns the data and the bytes consumed.
fn feed(
    input: &[u8],
    pieces: &[usize],
    max_trailer: usize,
) -> Result<(Vec<u8>, usize, bool), ChunkError> {
    let mut dec = ChunkedDecoder::new(max_trailer);
    let mut data = Vec::new();
    let mut avail = 0usize;
    let mut pos = 0usize;
    let mut sizes = pieces.iter().copied().cycle();
    loop {
        loop {
            let rest = &input[pos..avail];
            let step = dec.decode(rest)?;
            if let Some(r) = step.data.clone() {
                data.extend_from_slice(&rest[r]);
            }
            pos += step.consumed;
            if step.done {
                return Ok((data, pos, true));
            }
            if step.consumed == 0 && step.data.is_none() {
                break;
            }
        }
        if avail == input.len() {
            return Ok((data, pos, false));
        }
        avail = (avail + sizes.next().unwrap_or(1).max(1)).min(input.len());
    }
}

fn decode_whole(input: &[u8]) -> Result<(Vec<u8>, usize, bool), ChunkError> {
    feed(input, &[input.len().max(1)], 1024)
}

const SAMPLE: &[u8] = b"5\r\nhello\r\n1A;name=val;q=\"a \\\"b\\\" c\"\r\nabcdefghijklmnopqrstuvwxyz\r\n3 ; ext\r\n!!!\r\n0\r\nX-Trailer: 1\r\nOther: two\r\n\r\nNEXT";
const SAMPLE_DATA: &[u8] = b"helloabcdefghijklmnopqrstuvwxyz!!!";

#[test]
fn decodes_sample_whole() {
    let (data, consumed, done) = decode_whole(SAMPLE).unwrap();
    assert_eq!(data, SAMPLE_DATA);
    assert!(done);
    assert_eq!(&SAMPLE[consumed..], b"NEXT");
}

#[test]
fn decodes_sample_one_byte_at_a_time() {
    let (data, consumed, done) = feed(SAMPLE, &[1], 1024).unwrap();
    assert_eq!(data, SAMPLE_DATA);
    assert!(done);
    assert_eq!(&SAMPLE[consumed..], b"NEXT");
}

#[test]
fn decodes_sample_at_every_split_point() {
    for split in 1..SAMPLE.len() {
        let (data, consumed, done) = feed(SAMPLE, &[split, SAMPLE.len()], 1024).unwrap();
        assert_eq!(data, SAMPLE_DATA, "split {split}");
        assert!(done);
        assert_eq!(&SAMPLE[consumed..], b"NEXT");
    }
}

#[test]
fn decodes_sample_in_random_splits() {
    // Small LCG: deterministic "random" piece sizes without a dependency.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..500 {
        let pieces: Vec<usize> = (0..16)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 33) as usize % 9 + 1
            })
            .collect();
        let (data, consumed, done) = feed(SAMPLE, &pieces, 1024).unwrap();
        assert_eq!(data, SAMPLE_DATA, "pieces {pieces:?}");
        assert!(done);
        assert_eq!(&SAMPLE[consumed..], b"NEXT");
    }
}

#[test]
fn empty_input_needs_more() {
    let mut dec = ChunkedDecoder::new(0);
    assert_eq!(
        dec.decode(b"").unwrap(),
        Step {
            consumed: 0,
            data: None,
            done: false
        }
    );
}

#[test]
fn last_chunk_only_is_done() {
    let (data, consumed, done) = decode_whole(LAST_CHUNK).unwrap();
    assert!(data.is_empty());
    assert!(done);
    assert_eq!(consumed, LAST_CHUNK.len());
}

#[test]
fn does_not_consume_past_the_end() {
    let mut dec = ChunkedDecoder::new(0);
    let step = dec.decode(b"0\r\n\r\nGET / HTTP/1.1").unwrap();
    assert_eq!(step.consumed, 5);
    assert!(step.done);
    assert!(dec.is_done());
    assert_eq!(dec.decode(b"GET").unwrap().consumed, 0);
}

#[test]
fn accepts_uppercase_hex_and_leading_zeros() {
    let (data, _, done) = decode_whole(b"000A\r\n0123456789\r\n0\r\n\r\n").unwrap();
    assert_eq!(data, b"0123456789");
    assert!(done);
}

#[test]
fn accepts_sixteen_hex_digits() {
    let mut dec = ChunkedDecoder::new(0);
    let step = dec.decode(b"ffffffffffffffff\r\nab").unwrap();
    assert_eq!(step.data, Some(18..20));
}

#[test]
fn rejects_more_than_sixteen_hex_digits() {
    assert_eq!(
        decode_whole(b"00000000000000001\r\nx\r\n0\r\n\r\n"),
        Err(ChunkError::SizeOverflow)
    );
}

#[test]
fn rejects_empty_size() {
    assert_eq!(decode_whole(b"\r\n"), Err(ChunkError::InvalidSize));
    assert_eq!(decode_whole(b";ext\r\n"), Err(ChunkError::InvalidSize));
}

#[test]
fn rejects_non_hex_size() {
    assert_eq!(decode_whole(b"g\r\n"), Err(ChunkError::InvalidSize));
    assert_eq!(decode_whole(b"-1\r\n"), Err(ChunkError::InvalidSize));
    assert_eq!(decode_whole(b"0x5\r\n"), Err(ChunkError::InvalidSize));
}

#[test]
fn rejects_bare_lf_after_size() {
    assert_eq!(
        decode_whole(b"5\nhello\r\n0\r\n\r\n"),
        Err(ChunkError::InvalidSize)
    );
}

#[test]
fn rejects_cr_without_lf_after_size() {
    assert_eq!(decode_whole(b"5\rhello"), Err(ChunkError::BadLineEnding));
}

#[test]
fn rejects_whitespace_after_size_without_extension() {
    assert_eq!(
        decode_whole(b"5 \r\nhello\r\n"),
        Err(ChunkError::InvalidExtension)
    );
}

#[test]
fn rejects_missing_crlf_after_data() {
    assert_eq!(
        decode_whole(b"5\r\nhelloX\r\n"),
        Err(ChunkError::MissingDataCrlf)
    );
    assert_eq!(
        decode_whole(b"5\r\nhello\rX"),
        Err(ChunkError::MissingDataCrlf)
    );
}

#[test]
fn rejects_bare_lf_after_data() {
    assert_eq!(
        decode_whole(b"5\r\nhello\n0\r\n\r\n"),
        Err(ChunkError::MissingDataCrlf)
    );
}

#[test]
fn rejects_data_longer_than_size() {
    assert_eq!(
        decode_whole(b"3\r\nhello\r\n"),
        Err(ChunkError::MissingDataCrlf)
    );
}

#[test]
fn ignores_valid_extensions() {
    let (data, _, done) = decode_whole(b"2;a;b=c ; d = \"x;y\"\r\nok\r\n0;last\r\n\r\n").unwrap();
    assert_eq!(data, b"ok");
    assert!(done);
}

#[test]
fn rejects_control_char_in_extension() {
    assert_eq!(
        decode_whole(b"2;a\x01\r\nok\r\n"),
        Err(ChunkError::InvalidExtension)
    );
}

#[test]
fn rejects_bare_lf_in_extension() {
    assert_eq!(
        decode_whole(b"2;a\nok\r\n"),
        Err(ChunkError::InvalidExtension)
    );
}

#[test]
fn rejects_cr_inside_quoted_extension() {
    assert_eq!(
        decode_whole(b"2;a=\"x\r\n"),
        Err(ChunkError::InvalidExtension)
    );
}

#[test]
fn rejects_overlong_extension() {
    let mut body = b"2;".to_vec();
    body.extend(std::iter::repeat_n(b'a', MAX_CHUNK_EXT_BYTES as usize));
    body.extend_from_slice(b"\r\nok\r\n0\r\n\r\n");
    assert_eq!(decode_whole(&body), Err(ChunkError::ExtensionTooLong));
}

#[test]
fn rejects_bare_lf_in_trailer() {
    assert_eq!(
        decode_whole(b"0\r\nA: b\n\r\n"),
        Err(ChunkError::InvalidTrailer)
    );
}

#[test]
fn rejects_bare_lf_ending_trailer_section() {
    assert_eq!(decode_whole(b"0\r\n\n"), Err(ChunkError::InvalidTrailer));
    assert_eq!(decode_whole(b"0\r\n\rX"), Err(ChunkError::BadLineEnding));
}

#[test]
fn rejects_folded_trailer_line() {
    assert_eq!(
        decode_whole(b"0\r\nA: b\r\n c\r\n\r\n"),
        Err(ChunkError::InvalidTrailer)
    );
}

#[test]
fn rejects_trailer_over_limit() {
    assert_eq!(
        feed(b"0\r\nA: bcdef\r\n\r\n", &[64], 5),
        Err(ChunkError::TrailerTooLarge)
    );
    // At the limit is fine: "A: b\r\n" is 6 bytes.
    assert!(feed(b"0\r\nA: b\r\n\r\n", &[64], 6).unwrap().2);
}

#[test]
fn incomplete_body_is_not_done() {
    let (data, _, done) = decode_whole(b"5\r\nhel").unwrap();
    assert_eq!(data, b"hel");
    assert!(!done);
    let (_, _, done) = decode_whole(b"5\r\nhello\r\n0\r\nA: b\r\n").unwrap();
    assert!(!done);
}

#[test]
fn writes_chunk_headers_in_hex() {
    let mut out = Vec::new();
    for (len, want) in [
        (1usize, &b"1\r\n"[..]),
        (10, b"a\r\n"),
        (255, b"ff\r\n"),
        (4096, b"1000\r\n"),
        (0x1234_5678, b"12345678\r\n"),
    ] {
        out.clear();
        write_chunk_header(len, &mut out);
        assert_eq!(out, want);
    }
}

#[test]
fn encoded_chunks_decode_back() {
    let mut out = Vec::new();
    for piece in [&b"abc"[..], &[b'x'; 300][..]] {
        write_chunk_header(piece.len(), &mut out);
        out.extend_from_slice(piece);
        out.extend_from_slice(CHUNK_END);
    }
    out.extend_from_slice(LAST_CHUNK);
    let (data, consumed, done) = feed(&out, &[7], 0).unwrap();
    assert!(done);
    assert_eq!(consumed, out.len());
    assert_eq!(data.len(), 303);
}
