//! Strict, streaming decoder for the chunked transfer coding (RFC 9112 §7.1), used for both
//! request and response bodies, plus the small helpers the proxy uses to re-encode chunks.
//!
//! The decoder never buffers: it walks the input byte by byte through a small `Copy` state
//! machine and hands back the data as index ranges into the caller's input, so input may be
//! split anywhere (even inside a size line or a CRLF). Trailer fields are validated only far
//! enough to find their end and are then discarded: the proxy re-emits [`LAST_CHUNK`], so
//! trailers never reach the other side.

/// The last chunk with an empty trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// The CRLF that must follow each chunk's data.
pub const CHUNK_END: &[u8] = b"\r\n";

/// Longest size-line tail (whitespace and extensions after the digits) accepted.
///
/// Why: extensions are ignored, so without a bound a peer could stream an endless size line
/// and hold the connection while looking busy.
pub const MAX_CHUNK_EXT_BYTES: u32 = 4096;

/// Why a chunked body was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum ChunkError {
    #[error("invalid chunk size")]
    InvalidSize,
    #[error("chunk size too large")]
    SizeOverflow,
    #[error("invalid chunk extension")]
    InvalidExtension,
    #[error("chunk extensions too long")]
    ExtensionTooLong,
    #[error("chunk line not terminated by CRLF")]
    BadLineEnding,
    #[error("chunk data not followed by CRLF")]
    MissingDataCrlf,
    #[error("invalid trailer field")]
    InvalidTrailer,
    #[error("trailer section too large")]
    TrailerTooLarge,
}

/// Result of one [`ChunkedDecoder::decode`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Bytes of the input consumed (including any data range).
    pub consumed: usize,
    /// Body data found, as indices into the input passed to this call.
    pub data: Option<std::ops::Range<usize>>,
    /// The last chunk and the trailer section are complete; bytes after `consumed` belong to
    /// the next message.
    pub done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting the first hex digit of a size line.
    SizeStart,
    /// Inside the hex digits.
    Size,
    /// Whitespace after the digits: only legal before `;` (BWS).
    SizeBws,
    /// Inside chunk extensions.
    Ext,
    /// Inside a quoted-string in an extension.
    ExtQuoted,
    /// After a backslash inside a quoted-string.
    ExtEscape,
    /// Saw the CR ending the size line.
    SizeLf,
    /// Inside chunk data; `size` holds the bytes remaining.
    Data,
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer field line.
    TrailerLine,
    /// Saw the CR ending a trailer field line.
    TrailerLf,
    /// Saw the CR of the final empty line.
    FinalLf,
    Done,
}

/// Streaming chunked decoder; small and `Copy`.
#[derive(Debug, Clone, Copy)]
pub struct ChunkedDecoder {
    state: State,
    /// Chunk size being parsed, then data bytes remaining in the chunk.
    size: u64,
    digits: u8,
    ext_bytes: u32,
    trailer_bytes: usize,
    max_trailer_bytes: usize,
}

fn hex_value(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    }
}

/// Bytes allowed inside a quoted-string (qdtext / quoted-pair payload): HTAB, SP, VCHAR,
/// obs-text. Excludes CR, LF and other controls.
fn is_qtext(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

impl ChunkedDecoder {
    /// A decoder at the start of a chunked body. `max_trailer_bytes` bounds the trailer
    /// fields (not counting the final CRLF).
    pub fn new(max_trailer_bytes: usize) -> Self {
        ChunkedDecoder {
            state: State::SizeStart,
            size: 0,
            digits: 0,
            ext_bytes: 0,
            trailer_bytes: 0,
            max_trailer_bytes,
        }
    }

    /// Whether the whole body (last chunk and trailers) has been decoded.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes bytes from `input` (which may end anywhere, even mid size-line); returns how
    /// many were consumed, at most one data range (indices into `input`) and whether the
    /// final chunk and the trailer section are complete. Call repeatedly with the unconsumed
    /// rest; `consumed == 0 && data.is_none() && !done` means "need more bytes".
    pub fn decode(&mut self, input: &[u8]) -> Result<Step, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::Data {
                let available = (input.len() - i) as u64;
                // `take` <= available, which is a usize, so the cast back is lossless.
                let take = self.size.min(available) as usize;
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                return Ok(Step {
                    consumed: i + take,
                    data: Some(i..i + take),
                    done: false,
                });
            }
            if self.state == State::Done {
                break;
            }
            self.step_byte(input[i])?;
            i += 1;
            if self.state == State::Done {
                break;
            }
        }
        Ok(Step {
            consumed: i,
            data: None,
            done: self.state == State::Done,
        })
    }

    /// Advances the framing state machine by one byte (never called in `Data` or `Done`).
    fn step_byte(&mut self, b: u8) -> Result<(), ChunkError> {
        self.state = match self.state {
            State::SizeStart => {
                let v = hex_value(b).ok_or(ChunkError::InvalidSize)?;
                self.size = v;
                self.digits = 1;
                self.ext_bytes = 0;
                State::Size
            }
            State::Size => {
                if let Some(v) = hex_value(b) {
                    // Why: 16 hex digits fill a u64; refusing more (even leading zeros)
                    // avoids any wrap-around that would desync our framing from the peer's.
                    self.digits += 1;
                    if self.digits > 16 {
                        return Err(ChunkError::SizeOverflow);
                    }
                    self.size = (self.size << 4) | v;
                    State::Size
                } else {
                    match b {
                        b'\r' => State::SizeLf,
                        b';' => self.ext_byte(State::Ext)?,
                        b' ' | b'\t' => self.ext_byte(State::SizeBws)?,
                        _ => return Err(ChunkError::InvalidSize),
                    }
                }
            }
            State::SizeBws => match b {
                b' ' | b'\t' => self.ext_byte(State::SizeBws)?,
                b';' => self.ext_byte(State::Ext)?,
                _ => return Err(ChunkError::InvalidExtension),
            },
            State::Ext => match b {
                b'\r' => State::SizeLf,
                b'"' => self.ext_byte(State::ExtQuoted)?,
                b'=' | b';' | b' ' | b'\t' => self.ext_byte(State::Ext)?,
                _ if super::is_tchar(b) => self.ext_byte(State::Ext)?,
                _ => return Err(ChunkError::InvalidExtension),
            },
            State::ExtQuoted => match b {
                b'"' => self.ext_byte(State::Ext)?,
                b'\\' => self.ext_byte(State::ExtEscape)?,
                _ if is_qtext(b) => self.ext_byte(State::ExtQuoted)?,
                _ => return Err(ChunkError::InvalidExtension),
            },
            State::ExtEscape => {
                if !is_qtext(b) {
                    return Err(ChunkError::InvalidExtension);
                }
                self.ext_byte(State::ExtQuoted)?
            }
            State::SizeLf => {
                if b != b'\n' {
                    return Err(ChunkError::BadLineEnding);
                }
                if self.size == 0 {
                    State::TrailerStart
                } else {
                    State::Data
                }
            }
            State::DataCr => {
                if b != b'\r' {
                    return Err(ChunkError::MissingDataCrlf);
                }
                State::DataLf
            }
            State::DataLf => {
                if b != b'\n' {
                    return Err(ChunkError::MissingDataCrlf);
                }
                State::SizeStart
            }
            State::TrailerStart => {
                if b == b'\r' {
                    State::FinalLf
                } else if super::is_tchar(b) {
                    // A field line must start with a name: a leading SP/HTAB would be
                    // obsolete folding, anything else is not a field.
                    self.trailer_byte()?;
                    State::TrailerLine
                } else {
                    return Err(ChunkError::InvalidTrailer);
                }
            }
            State::TrailerLine => {
                self.trailer_byte()?;
                match b {
                    b'\r' => State::TrailerLf,
                    b'\t' => State::TrailerLine,
                    0x00..=0x1f | 0x7f => return Err(ChunkError::InvalidTrailer),
                    _ => State::TrailerLine,
                }
            }
            State::TrailerLf => {
                self.trailer_byte()?;
                if b != b'\n' {
                    return Err(ChunkError::BadLineEnding);
                }
                State::TrailerStart
            }
            State::FinalLf => {
                if b != b'\n' {
                    return Err(ChunkError::BadLineEnding);
                }
                State::Done
            }
            // Not reached: `decode` handles these states before calling.
            State::Data | State::Done => self.state,
        };
        Ok(())
    }

    fn ext_byte(&mut self, next: State) -> Result<State, ChunkError> {
        self.ext_bytes += 1;
        if self.ext_bytes > MAX_CHUNK_EXT_BYTES {
            return Err(ChunkError::ExtensionTooLong);
        }
        Ok(next)
    }

    fn trailer_byte(&mut self) -> Result<(), ChunkError> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > self.max_trailer_bytes {
            return Err(ChunkError::TrailerTooLarge);
        }
        Ok(())
    }
}

/// Appends a chunk-size line, `<hex>\r\n`, for a chunk of `len` bytes (no `format!`). The
/// caller follows it with the data and [`CHUNK_END`]; a zero-length chunk must not be written
/// this way (use [`LAST_CHUNK`] to end the body).
pub fn write_chunk_header(len: usize, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = len as u64;
    loop {
        i -= 1;
        digits[i] = HEX[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
#[path = "chunked_tests.rs"]
mod tests;
