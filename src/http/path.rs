//! Request-target normalization for per-path routing.
//!
//! Routing on the path is a security boundary: if the proxy matched `/public/../admin/x`
//! against `/public/` while the upstream served `/admin/x`, a per-path certificate rule would
//! be bypassed. So the path is put into one normal form before matching, and that normal form
//! (not the client's spelling) is what the upstream receives.
//!
//! # Rules (the path part only; the `?query` is kept byte for byte)
//!
//! * Percent-escapes of unreserved characters (ALPHA / DIGIT / `-` `.` `_` `~`) are decoded;
//!   the remaining escapes are kept with their hex digits in uppercase (RFC 3986 §6.2.2.1), so
//!   `/%61dmin/%3a` becomes `/admin/%3A`.
//! * `%2F`, `%5C` and `%00` (any hex case) are refused: an upstream that decodes them before
//!   splitting would see a different path (a separator or a string terminator) than we matched.
//! * A raw `\` in the path is refused: IIS and other Windows stacks treat it as a separator.
//! * A malformed escape (`%zz`, a truncated `%4`) is refused, not passed on for the upstream
//!   to guess at.
//! * Raw bytes 0x80-0xFF (which `httparse` admits in a target) are percent-encoded (`%C3%A9`),
//!   so the output is ASCII and equal spellings of a non-ASCII path match alike.
//! * Runs of `/` are merged into one.
//! * Dot segments are removed (RFC 3986 §5.2.4), including ones that only appear after
//!   decoding (`/%2e%2e/`, `/.%2E/`). A `..` that would climb above the root is refused, not
//!   clamped: no honest client sends it. A final `.` or `..` leaves a trailing `/`
//!   (`/admin/.` → `/admin/`, `/admin/..` → `/`), as in RFC 3986.
//! * Control bytes, space and DEL in the path are refused (the request parser already refuses
//!   them in the whole target; this module does not rely on it).
//! * `#` anywhere in the target is refused: a fragment is not part of a request-target (RFC
//!   9112 §3.2), and an upstream that cut the path at `#` would route on a shorter path than
//!   we did. The request parser forwards `#` untouched, so this is the first place it is seen.
//!
//! A raw `;` (a path parameter) is refused: servlet containers strip `;…` from every segment
//! before routing, so `/public/..;/admin/x` would reach `/admin/x` there while matching no
//! `/admin/` rule here. `%3B` stays an escape (those containers split on the raw byte).
//!
//! # Forms of request-target
//!
//! * origin-form `/path?query`: normalized as above.
//! * absolute-form `http://authority/path?query` (`http` or `https`, any case): the path part
//!   is normalized; scheme and authority are kept as sent; an empty path becomes `/`. An
//!   authority with userinfo (`@`, RFC 9110 §4.2.4) or a `\` is refused.
//! * asterisk-form `*` (for `OPTIONS`): passed through untouched; its "path" is `*`, which
//!   matches no route prefix (prefixes start with `/`).
//! * anything else (authority-form, a relative reference) is refused.
//!
//! # Cost
//!
//! Most targets are already normal. For an origin-form target [`normalize`] checks that in
//! one pass over the path and then copies nothing: [`Normalized`] says "use the input as is".
//! Any other target is written into the caller's reusable `out` (and `out` cleared again if
//! that changed nothing).

use std::fmt;

/// Why a request-target was refused. Every variant is a 400; [`PathError::reason`] is the
/// one-line text for the response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("request target is not an absolute path or http(s) URI")]
    BadTarget,
    #[error("fragment (#) in request target")]
    Fragment,
    #[error("control character or space in path")]
    ControlByte,
    #[error("backslash in path")]
    Backslash,
    #[error("invalid percent-encoding in path")]
    BadEscape,
    #[error("encoded slash (%2F) in path")]
    EncodedSlash,
    #[error("encoded backslash (%5C) in path")]
    EncodedBackslash,
    #[error("encoded NUL (%00) in path")]
    EncodedNul,
    #[error("path climbs above the root (..)")]
    AboveRoot,
    #[error("path parameter (;) in a routed path")]
    PathParameter,
}

impl PathError {
    /// The status the proxy answers with: always 400 Bad Request.
    pub fn status(&self) -> u16 {
        400
    }

    /// The one-line reason (the same text as `Display`), without formatting or allocation.
    pub fn reason(&self) -> &'static str {
        match self {
            PathError::BadTarget => "request target is not an absolute path or http(s) URI",
            PathError::Fragment => "fragment (#) in request target",
            PathError::ControlByte => "control character or space in path",
            PathError::Backslash => "backslash in path",
            PathError::BadEscape => "invalid percent-encoding in path",
            PathError::EncodedSlash => "encoded slash (%2F) in path",
            PathError::EncodedBackslash => "encoded backslash (%5C) in path",
            PathError::EncodedNul => "encoded NUL (%00) in path",
            PathError::AboveRoot => "path climbs above the root (..)",
            PathError::PathParameter => "path parameter (;) in a routed path",
        }
    }
}

/// A successfully normalized request-target, as offsets: into the input when it was already
/// normal ([`Normalized::is_rewritten`] is false), into `out` otherwise. The accessors take
/// both and pick the right one, so the caller never has to branch.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Normalized {
    rewritten: bool,
    path_start: usize,
    path_end: usize,
    /// In the input (absolute-form only); `start == end` when there is none.
    authority_start: usize,
    authority_end: usize,
}

impl Normalized {
    /// Whether the normal form differs from the input (and lives in `out`). When false, `out`
    /// is empty and the request can be forwarded with its own target.
    pub fn is_rewritten(&self) -> bool {
        self.rewritten
    }

    /// The whole target to send upstream: scheme and authority (absolute-form), the normal
    /// path, and the query as the client sent it.
    pub fn target<'a>(&self, input: &'a [u8], out: &'a [u8]) -> &'a [u8] {
        if self.rewritten {
            out
        } else {
            input
        }
    }

    /// The normal path, the thing routes match on: starts with `/`, no query; `*` for the
    /// asterisk-form.
    pub fn path<'a>(&self, input: &'a [u8], out: &'a [u8]) -> &'a [u8] {
        let range = self.path_start..self.path_end;
        let buf = if self.rewritten { out } else { input };
        buf.get(range).unwrap_or(&[])
    }

    /// The authority of an absolute-form target (`host[:port]`, as sent), which RFC 9112
    /// §3.2.2 says takes the place of `Host`; `None` for origin- and asterisk-form.
    pub fn authority<'a>(&self, input: &'a [u8]) -> Option<&'a [u8]> {
        if self.authority_start == self.authority_end {
            None
        } else {
            input.get(self.authority_start..self.authority_end)
        }
    }
}

impl fmt::Debug for Normalized {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Normalized")
            .field("rewritten", &self.rewritten)
            .field("path", &(self.path_start..self.path_end))
            .field("authority", &(self.authority_start..self.authority_end))
            .finish()
    }
}

/// Normalizes a request-target (see the module docs for the rules). `out` is cleared and,
/// only when the target needs rewriting, receives the normal form; keep one per connection
/// so the slow path stops allocating after the first request.
pub fn normalize(target: &[u8], out: &mut Vec<u8>) -> Result<Normalized, PathError> {
    out.clear();
    // The common case in one pass over the path: origin-form, already normal.
    if let Some(query_at) = normal_origin_form(target) {
        if memchr::memchr(b'#', &target[query_at..]).is_some() {
            return Err(PathError::Fragment);
        }
        return Ok(Normalized {
            rewritten: false,
            path_start: 0,
            path_end: query_at,
            authority_start: 0,
            authority_end: 0,
        });
    }
    if target == b"*" {
        return Ok(Normalized {
            rewritten: false,
            path_start: 0,
            path_end: 1,
            authority_start: 0,
            authority_end: 0,
        });
    }
    if memchr::memchr(b'#', target).is_some() {
        return Err(PathError::Fragment);
    }
    let query_at = memchr::memchr(b'?', target).unwrap_or(target.len());
    let (path_start, authority) = if target.first() == Some(&b'/') {
        (0, (0, 0))
    } else {
        absolute_form(&target[..query_at])?
    };
    let path = &target[path_start..query_at];
    let as_is = Normalized {
        rewritten: false,
        path_start,
        path_end: query_at,
        authority_start: authority.0,
        authority_end: authority.1,
    };

    out.extend_from_slice(&target[..path_start]);
    normalize_path(path, out)?;
    let path_end = out.len();
    out.extend_from_slice(&target[query_at..]);
    if out[..] == *target {
        out.clear();
        return Ok(as_is);
    }
    Ok(Normalized {
        rewritten: true,
        path_end,
        ..as_is
    })
}

/// Splits an absolute-form target (without its query) into where its path starts and the
/// authority's range.
fn absolute_form(target: &[u8]) -> Result<(usize, (usize, usize)), PathError> {
    let scheme_len = if has_prefix_ignore_case(target, b"http://") {
        7
    } else if has_prefix_ignore_case(target, b"https://") {
        8
    } else {
        return Err(PathError::BadTarget);
    };
    let rest = &target[scheme_len..];
    let authority_len = memchr::memchr(b'/', rest).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    if authority.is_empty() || authority.iter().any(|b| matches!(b, b'@' | b'\\')) {
        return Err(PathError::BadTarget);
    }
    let end = scheme_len + authority_len;
    Ok((end, (scheme_len, end)))
}

fn has_prefix_ignore_case(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Byte classes for the fast check: plain bytes need nothing; `/` needs a look at the
/// segment after it; `?` ends the path; anything else (`%`, `\\`, `#`, controls, space, DEL,
/// non-ASCII) sends the target to the slow path, which may refuse it.
const PLAIN: u8 = 0;
const SLASH: u8 = 1;
const QUERY: u8 = 2;
const SLOW: u8 = 3;

static CLASS: [u8; 256] = {
    let mut t = [SLOW; 256];
    let mut b = 0x21;
    while b < 0x7f {
        t[b] = PLAIN;
        b += 1;
    }
    t[b'/' as usize] = SLASH;
    t[b'?' as usize] = QUERY;
    t[b'%' as usize] = SLOW;
    t[b'\\' as usize] = SLOW;
    t[b';' as usize] = SLOW;
    t[b'#' as usize] = SLOW;
    t
};

/// For an origin-form target whose path is already in normal form (no escape, no byte that
/// needs encoding or refusing, no `//`, no `.` or `..` segment), where its query starts (the
/// target's length when it has none); `None` for anything else.
fn normal_origin_form(target: &[u8]) -> Option<usize> {
    if target.first() != Some(&b'/') {
        return None;
    }
    let at = |k: usize| target.get(k).copied();
    let ends_segment = |b: Option<u8>| matches!(b, None | Some(b'/' | b'?'));
    let mut i = 0;
    while i < target.len() {
        match CLASS[usize::from(target[i])] {
            PLAIN => {}
            SLASH => match at(i + 1) {
                Some(b'/') => return None,
                Some(b'.') if ends_segment(at(i + 2)) => return None,
                Some(b'.') if at(i + 2) == Some(b'.') && ends_segment(at(i + 3)) => return None,
                _ => {}
            },
            QUERY => return Some(i),
            _ => return None,
        }
        i += 1;
    }
    Some(target.len())
}

/// Writes the normal form of `path` (empty, or starting with `/`) to `out`.
fn normalize_path(path: &[u8], out: &mut Vec<u8>) -> Result<(), PathError> {
    let base = out.len();
    if path.is_empty() {
        out.push(b'/');
        return Ok(());
    }
    if path[0] != b'/' {
        return Err(PathError::BadTarget);
    }
    let mut segments = path[1..].split(|b| *b == b'/').peekable();
    while let Some(raw) = segments.next() {
        let last = segments.peek().is_none();
        let start = out.len();
        out.push(b'/');
        decode_segment(raw, out)?;
        match &out[start + 1..] {
            // `//` merged; a final empty segment is the trailing slash and stays.
            b"" if !last => out.truncate(start),
            b"." => {
                out.truncate(start);
                if last {
                    out.push(b'/');
                }
            }
            b".." => {
                if start == base {
                    return Err(PathError::AboveRoot);
                }
                let parent = out[base..start]
                    .iter()
                    .rposition(|b| *b == b'/')
                    .unwrap_or(0);
                out.truncate(base + parent);
                if last {
                    out.push(b'/');
                }
            }
            _ => {}
        }
    }
    Ok(())
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn push_escape(b: u8, out: &mut Vec<u8>) {
    out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
}

/// Appends one path segment (no `/` in it) in normal form: unreserved escapes decoded, other
/// escapes uppercased, non-ASCII bytes encoded, forbidden bytes refused. Runs of plain bytes
/// are copied whole.
fn decode_segment(seg: &[u8], out: &mut Vec<u8>) -> Result<(), PathError> {
    let mut i = 0;
    while i < seg.len() {
        let run = seg[i..]
            .iter()
            .position(|b| CLASS[usize::from(*b)] != PLAIN)
            .unwrap_or(seg.len() - i);
        out.extend_from_slice(&seg[i..i + run]);
        i += run;
        let Some(&b) = seg.get(i) else {
            break;
        };
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    seg.get(i + 1).copied().and_then(hex_value),
                    seg.get(i + 2).copied().and_then(hex_value),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let v = hi << 4 | lo;
                match v {
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::EncodedBackslash),
                    0 => return Err(PathError::EncodedNul),
                    _ if is_unreserved(v) => out.push(v),
                    _ => push_escape(v, out),
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            // Servlet containers (Tomcat, Jetty) strip `;` parameters from every segment before
            // routing, so `/admin;x/secret` and `/public/..;/admin` reach `/admin/...` there
            // while no prefix here would match: refused, like `%2F`.
            b';' => return Err(PathError::PathParameter),
            0..=0x20 | 0x7f => return Err(PathError::ControlByte),
            0x80..=0xff => {
                push_escape(b, out);
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "path_tests.rs"]
mod tests;
