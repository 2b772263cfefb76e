//! Request-target normalization: `http::path::normalize` on arbitrary bytes.
//!
//! Properties checked (beyond "does not panic"):
//! * the result (normal form or error) equals a naive reference written independently: split
//!   the path on `/`, decode each segment into its own buffer, resolve dot segments on a stack
//!   of segments;
//! * the normal form is a fixed point: normalizing it again succeeds and rewrites nothing;
//! * an unrewritten result is the input itself;
//! * the normal path starts with `/` (origin- and absolute-form), contains no `//`, `/./`,
//!   `/../`, does not end in `/.` or `/..`, has only visible ASCII, no `\` or `#`, and every
//!   `%` starts an uppercase escape that is neither `%2F`, `%5C`, `%00` nor an unreserved
//!   character;
//! * the query (from the first `?`) is carried over byte for byte.
#![no_main]

use certgate::http::path::{normalize, PathError};
use libfuzzer_sys::fuzz_target;

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

fn hex(b: u8) -> Option<u8> {
    if b.is_ascii_hexdigit() {
        u8::from_str_radix(std::str::from_utf8(&[b]).ok()?, 16).ok()
    } else {
        None
    }
}

fn decode(raw: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut seg = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' {
            let hi = raw.get(i + 1).copied().and_then(hex);
            let lo = raw.get(i + 2).copied().and_then(hex);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(PathError::BadEscape);
            };
            let v = hi * 16 + lo;
            if v == b'/' {
                return Err(PathError::EncodedSlash);
            }
            if v == b'\\' {
                return Err(PathError::EncodedBackslash);
            }
            if v == 0 {
                return Err(PathError::EncodedNul);
            }
            if is_unreserved(v) {
                seg.push(v);
            } else {
                seg.extend_from_slice(format!("%{v:02X}").as_bytes());
            }
            i += 3;
            continue;
        }
        if b == b'\\' {
            return Err(PathError::Backslash);
        }
        if b == b';' {
            return Err(PathError::PathParameter);
        }
        if b <= b' ' || b == 0x7f {
            return Err(PathError::ControlByte);
        }
        if b >= 0x80 {
            seg.extend_from_slice(format!("%{b:02X}").as_bytes());
        } else {
            seg.push(b);
        }
        i += 1;
    }
    Ok(seg)
}

/// The normal form by the book: (prefix, path, query).
fn reference(data: &[u8]) -> Result<(Vec<u8>, Vec<u8>, Vec<u8>), PathError> {
    if data == b"*" {
        return Ok((Vec::new(), data.to_vec(), Vec::new()));
    }
    if data.contains(&b'#') {
        return Err(PathError::Fragment);
    }
    let q = data.iter().position(|b| *b == b'?').unwrap_or(data.len());
    let (before, query) = data.split_at(q);
    let (prefix, path) = if before.first() == Some(&b'/') {
        (&before[..0], before)
    } else {
        let lower = before.to_ascii_lowercase();
        let scheme = if lower.starts_with(b"http://") {
            7
        } else if lower.starts_with(b"https://") {
            8
        } else {
            return Err(PathError::BadTarget);
        };
        let slash = before[scheme..]
            .iter()
            .position(|b| *b == b'/')
            .map_or(before.len(), |p| scheme + p);
        let authority = &before[scheme..slash];
        if authority.is_empty() || authority.contains(&b'@') || authority.contains(&b'\\') {
            return Err(PathError::BadTarget);
        }
        before.split_at(slash)
    };
    let segments: Vec<&[u8]> = if path.is_empty() {
        vec![&b""[..]]
    } else {
        path[1..].split(|b| *b == b'/').collect()
    };
    let mut stack: Vec<Vec<u8>> = Vec::new();
    let mut trailing = false;
    for (i, raw) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let seg = decode(raw)?;
        trailing = false;
        match seg.as_slice() {
            b"" | b"." => trailing = last,
            b".." => {
                if stack.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing = last;
            }
            _ => stack.push(seg),
        }
    }
    let mut normal = Vec::new();
    for seg in &stack {
        normal.push(b'/');
        normal.extend_from_slice(seg);
    }
    if trailing || stack.is_empty() {
        normal.push(b'/');
    }
    Ok((prefix.to_vec(), normal, query.to_vec()))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    let result = normalize(data, &mut out);
    let n = match (result, reference(data)) {
        (Err(e), Err(want)) => {
            assert_eq!(e, want, "different refusal");
            return;
        }
        (Ok(n), Ok((prefix, path, query))) => {
            assert_eq!(
                n.path(data, &out),
                &path[..],
                "path differs from the reference"
            );
            let whole = [prefix, path, query].concat();
            assert_eq!(n.target(data, &out), &whole[..], "target differs");
            n
        }
        (got, want) => panic!("normalize {got:?}, reference {want:?}"),
    };
    let target = n.target(data, &out);
    let path = n.path(data, &out);
    if !n.is_rewritten() {
        assert_eq!(target, data, "unrewritten but not the input");
    }

    let mut again = Vec::new();
    match normalize(target, &mut again) {
        Ok(n2) => {
            assert!(!n2.is_rewritten(), "not a fixed point: {again:?}");
            assert_eq!(n2.path(target, &again), path);
        }
        Err(e) => panic!("normal form refused: {e}"),
    }

    let q = data.iter().position(|b| *b == b'?').unwrap_or(data.len());
    if data != b"*" {
        assert!(target.ends_with(&data[q..]), "query changed");
        assert_eq!(path.first(), Some(&b'/'));
    }
    for bad in [&b"//"[..], b"/./", b"/../", b"\\", b"#"] {
        assert!(!contains(path, bad), "{bad:?} in normal path");
    }
    assert!(!path.ends_with(b"/.") && !path.ends_with(b"/.."));
    assert!(
        path.iter().all(|b| (0x21..0x7f).contains(b)),
        "not visible ASCII"
    );
    for (i, _) in path.iter().enumerate().filter(|(_, b)| **b == b'%') {
        let esc = &path[i + 1..];
        assert!(esc.len() >= 2, "truncated escape");
        let (hi, lo) = (esc[0], esc[1]);
        assert!(
            matches!(hi, b'0'..=b'9' | b'A'..=b'F') && matches!(lo, b'0'..=b'9' | b'A'..=b'F'),
            "escape not uppercase hex"
        );
        let v = hex(hi).unwrap() * 16 + hex(lo).unwrap();
        assert!(!is_unreserved(v), "decodable escape left");
        assert!(![b'/', b'\\', 0].contains(&v), "forbidden escape left");
    }
});
