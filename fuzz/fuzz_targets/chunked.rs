//! Chunked body decoding: `ChunkedDecoder` must give the same result however its input is
//! split, and what it decodes must survive the proxy's re-encoding.
//!
//! Input layout: byte 0 = number of split-size bytes that follow (0..=7, taken mod 8); those
//! bytes are the piece sizes (each 1..=32, cycled); byte after them selects the trailer limit;
//! the rest is the chunked body.
//!
//! Properties:
//! * whole-buffer decoding and piecewise decoding agree on error / success, the concatenated
//!   data, `done`, and (on success) the total consumed;
//! * decoding stops exactly at the end of the last chunk and its trailers;
//! * once done, re-encoding every data range as its own chunk (`write_chunk_header` + data +
//!   `CHUNK_END`, then `LAST_CHUNK`) decodes back to the same data, in one go and byte by byte.
#![no_main]

use certgate::http::chunked::{write_chunk_header, CHUNK_END, LAST_CHUNK};
use certgate::http::{ChunkError, ChunkedDecoder};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    error: Option<ChunkError>,
    data: Vec<u8>,
    /// Data ranges as returned, in order (only compared for the whole-buffer run).
    pieces: Vec<Vec<u8>>,
    done: bool,
    consumed: usize,
}

/// Feeds `input` to a fresh decoder, making `sizes` (cycled) more bytes available each time the
/// decoder asks for more. `sizes` empty means "everything at once".
fn run(input: &[u8], sizes: &[usize], max_trailer: usize) -> Outcome {
    let mut dec = ChunkedDecoder::new(max_trailer);
    let mut out = Outcome {
        error: None,
        data: Vec::new(),
        pieces: Vec::new(),
        done: false,
        consumed: 0,
    };
    let mut avail = if sizes.is_empty() { input.len() } else { 0 };
    let mut next_size = 0;
    loop {
        let window = &input[out.consumed..avail];
        let step = match dec.decode(window) {
            Ok(step) => step,
            Err(e) => {
                out.error = Some(e);
                break;
            }
        };
        assert!(step.consumed <= window.len(), "consumed past the input");
        if let Some(r) = &step.data {
            assert!(
                r.end <= step.consumed && r.start <= r.end,
                "data range {r:?} outside consumed {}",
                step.consumed
            );
            assert!(!r.is_empty(), "empty data range");
            out.data.extend_from_slice(&window[r.clone()]);
            out.pieces.push(window[r.clone()].to_vec());
        }
        out.consumed += step.consumed;
        assert_eq!(step.done, dec.is_done());
        if step.done {
            out.done = true;
            // Done is sticky and consumes nothing more.
            let again = dec
                .decode(&input[out.consumed..])
                .expect("decode after done");
            assert_eq!((again.consumed, again.data, again.done), (0, None, true));
            break;
        }
        if step.consumed == 0 && step.data.is_none() {
            // Needs more bytes.
            if avail == input.len() {
                break;
            }
            let add = sizes[next_size % sizes.len()];
            next_size += 1;
            avail = (avail + add).min(input.len());
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 8).min(rest.len());
    let (size_bytes, rest) = rest.split_at(n);
    let Some((&trailer_sel, body)) = rest.split_first() else {
        return;
    };
    let mut sizes: Vec<usize> = size_bytes.iter().map(|b| usize::from(b % 32) + 1).collect();
    if sizes.is_empty() {
        sizes.push(1);
    }
    let max_trailer = usize::from(trailer_sel) * 4;

    let whole = run(body, &[], max_trailer);
    let split = run(body, &sizes, max_trailer);
    assert_eq!(whole.error, split.error, "error differs by split {sizes:?}");
    assert_eq!(whole.data, split.data, "data differs by split {sizes:?}");
    assert_eq!(whole.done, split.done, "done differs by split {sizes:?}");
    if whole.error.is_none() {
        assert_eq!(
            whole.consumed, split.consumed,
            "consumed differs by split {sizes:?}"
        );
    }
    if whole.error.is_some() {
        assert!(!whole.done);
    }
    if !whole.done {
        return;
    }
    // The end of the body is a CRLF CRLF, or `0 CRLF CRLF` style (final CRLF of the empty line).
    assert!(body[..whole.consumed].ends_with(b"\r\n"));

    // Re-encode as the proxy does: each data range becomes one chunk.
    let mut enc = Vec::new();
    for piece in &whole.pieces {
        write_chunk_header(piece.len(), &mut enc);
        enc.extend_from_slice(piece);
        enc.extend_from_slice(CHUNK_END);
    }
    enc.extend_from_slice(LAST_CHUNK);
    for sizes in [&[][..], &[1][..]] {
        let again = run(&enc, sizes, 0);
        assert_eq!(again.error, None, "re-encoded body rejected");
        assert!(again.done, "re-encoded body not done");
        assert_eq!(again.consumed, enc.len());
        assert_eq!(
            again.data, whole.data,
            "re-encoded body decodes differently"
        );
    }
});
