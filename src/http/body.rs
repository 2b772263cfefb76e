//! Message body framing for both directions, as one byte-driven state machine: given the bytes
//! that have arrived, it says how many belong to the body, which to forward and whether the
//! message is complete. No I/O: the exchange loops only move the bytes it points at, so every
//! framing decision (how long, where it ends, how it is re-encoded) is made here and tested on
//! byte strings.
//!
//! The contract of [`BodyFramer::advance`]: send whatever it appended to `out`, then
//! `input[forward]`; drop `consumed` bytes from the input; call again with the rest. A call
//! that consumes nothing and is not done needs more input. At the peer's EOF,
//! [`BodyFramer::eof`] says whether that ended the body (close-delimited) or truncated it.
//!
//! Shapes, after hyper's `proto/h1/decode.rs` and pingora's `protocols/http/v1/body.rs`:
//! * `Length`: forwarded as it is, never a byte past its end (the next pipelined message
//!   stays in the input).
//! * `Chunked` toward the app: decoded and re-encoded with our own chunk lines, so the app
//!   sees canonical framing and no trailers or extensions.
//! * `Chunked` toward an HTTP/1.1 client: validated and forwarded verbatim.
//! * `Chunked` toward an HTTP/1.0 client: de-chunked (data only; the close ends the body).
//! * `UntilClose`: everything until EOF.

use std::ops::Range;

use super::chunked::{self, ChunkError, ChunkedDecoder};
use super::request::RequestBody;
use super::response::ResponseBody;

/// Trailer bytes a chunked body may carry (read and dropped).
pub const MAX_TRAILER_BYTES: usize = 8 * 1024;

/// What one [`BodyFramer::advance`] call decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advance {
    /// Input bytes that belong to the body and were dealt with (forwarded or dropped).
    pub consumed: usize,
    /// Input bytes to send as they are, after the bytes appended to `out`.
    pub forward: Range<usize>,
    /// The body is complete: input after `consumed` belongs to the next message.
    pub done: bool,
}

impl Advance {
    /// Nothing consumed and not done: the framer needs more input.
    pub fn needs_input(&self) -> bool {
        self.consumed == 0 && !self.done
    }
}

/// The body ended before its framing said it would.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("message body truncated by the peer's close")]
pub struct Truncated;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunks {
    /// Decode and write canonical chunks into `out` (request bodies toward the app).
    Rechunk,
    /// Validate and forward the input as it is (responses to HTTP/1.1 clients).
    Verbatim,
    /// Forward the data only (responses to HTTP/1.0 clients).
    Dechunk,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Done,
    Length(u64),
    Chunked(ChunkedDecoder, Chunks),
    UntilClose,
}

/// The framing of one message body in flight; small and `Copy`.
#[derive(Debug, Clone, Copy)]
pub struct BodyFramer {
    state: State,
}

impl BodyFramer {
    /// A request body on its way to the app.
    pub fn request(body: RequestBody) -> Self {
        let state = match body {
            RequestBody::None | RequestBody::Length(0) => State::Done,
            RequestBody::Length(n) => State::Length(n),
            RequestBody::Chunked => {
                State::Chunked(ChunkedDecoder::new(MAX_TRAILER_BYTES), Chunks::Rechunk)
            }
        };
        Self { state }
    }

    /// A request body whose data alone goes on (to an HTTP/2 upstream, which frames it in DATA
    /// frames): a chunked body is de-chunked, its trailers dropped.
    pub fn request_data(body: RequestBody) -> Self {
        let state = match body {
            RequestBody::None | RequestBody::Length(0) => State::Done,
            RequestBody::Length(n) => State::Length(n),
            RequestBody::Chunked => {
                State::Chunked(ChunkedDecoder::new(MAX_TRAILER_BYTES), Chunks::Dechunk)
            }
        };
        Self { state }
    }

    /// A response body on its way to the client; `client_http10` clients get chunked bodies
    /// de-chunked.
    pub fn response(body: ResponseBody, client_http10: bool) -> Self {
        let state = match body {
            ResponseBody::None | ResponseBody::Length(0) => State::Done,
            ResponseBody::Length(n) => State::Length(n),
            ResponseBody::Chunked => {
                let how = if client_http10 {
                    Chunks::Dechunk
                } else {
                    Chunks::Verbatim
                };
                State::Chunked(ChunkedDecoder::new(MAX_TRAILER_BYTES), how)
            }
            ResponseBody::UntilClose => State::UntilClose,
        };
        Self { state }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// How many bytes are worth reading next, at most `cap`: never past the end of a body of
    /// known length, so a read does not pull the next message's bytes out of the kernel early.
    pub fn read_hint(&self, cap: usize) -> usize {
        match self.state {
            State::Length(n) => n.min(cap as u64) as usize,
            _ => cap,
        }
    }

    /// Takes what it can from `input` (see the module docs for the contract).
    pub fn advance(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Advance, ChunkError> {
        match &mut self.state {
            State::Done => Ok(Advance {
                consumed: 0,
                forward: 0..0,
                done: true,
            }),
            State::Length(remaining) => {
                // `take` <= input.len(), a usize, so the cast back is lossless.
                let take = (*remaining).min(input.len() as u64) as usize;
                *remaining -= take as u64;
                let done = *remaining == 0;
                if done {
                    self.state = State::Done;
                }
                Ok(Advance {
                    consumed: take,
                    forward: 0..take,
                    done,
                })
            }
            State::UntilClose => Ok(Advance {
                consumed: input.len(),
                forward: 0..input.len(),
                done: false,
            }),
            State::Chunked(decoder, how) => {
                let how = *how;
                let adv = chunked_advance(decoder, how, input, out)?;
                if adv.done {
                    self.state = State::Done;
                }
                Ok(adv)
            }
        }
    }

    /// The peer closed. A close-delimited body is then complete; any other unfinished body
    /// was truncated.
    pub fn eof(&mut self) -> Result<(), Truncated> {
        match self.state {
            State::Done => Ok(()),
            State::UntilClose => {
                self.state = State::Done;
                Ok(())
            }
            State::Length(_) | State::Chunked(..) => Err(Truncated),
        }
    }
}

fn chunked_advance(
    decoder: &mut ChunkedDecoder,
    how: Chunks,
    input: &[u8],
    out: &mut Vec<u8>,
) -> Result<Advance, ChunkError> {
    let mut pos = 0;
    loop {
        let step = decoder.decode(&input[pos..])?;
        if let Some(data) = &step.data {
            let data = pos + data.start..pos + data.end;
            match how {
                Chunks::Rechunk => {
                    chunked::write_chunk_header(data.len(), out);
                    out.extend_from_slice(&input[data]);
                    out.extend_from_slice(chunked::CHUNK_END);
                }
                // One data range per call: the caller forwards it and calls again.
                Chunks::Dechunk => {
                    return Ok(Advance {
                        consumed: pos + step.consumed,
                        forward: data,
                        done: false,
                    })
                }
                Chunks::Verbatim => {}
            }
        }
        pos += step.consumed;
        if step.done && how == Chunks::Rechunk {
            out.extend_from_slice(chunked::LAST_CHUNK);
        }
        if step.done || step.consumed == 0 {
            let forward = if how == Chunks::Verbatim {
                0..pos
            } else {
                0..0
            };
            return Ok(Advance {
                consumed: pos,
                forward,
                done: step.done,
            });
        }
    }
}

#[cfg(test)]
#[path = "body_tests.rs"]
mod tests;
