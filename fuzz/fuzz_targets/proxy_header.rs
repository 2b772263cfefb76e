//! Received PROXY headers: `proxy_header::inbound::parse` is fed a connection's first bytes
//! as they arrive, so its verdict must not depend on where the arrival was cut.
//!
//! Input layout: byte 0 picks the mode (low 2 bits: v1, v2, any, any) and, in its high 6 bits,
//! where the input is cut (scaled to its length); the rest is what the connection sent.
//!
//! Properties, for the whole input and for the prefix up to the cut:
//! * `Complete(r, len)`: `len` is at most the input and the mode's limit; the header alone
//!   parses to the same; every shorter prefix of it is `Incomplete`; any longer input parses to
//!   the same (the bytes after a header are never looked at as header);
//! * `Incomplete`: the input is shorter than the mode's limit (the limit is always decided);
//! * `Invalid`: any longer input is `Invalid` too (more bytes never repair a header).
#![no_main]

use certgate::proxy_header::inbound::{parse, Parsed, ProxyAccept};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    let accept = match control & 3 {
        0 => ProxyAccept::V1,
        1 => ProxyAccept::V2,
        _ => ProxyAccept::Any,
    };
    let max = accept.max_len();
    let cut = input.len() * usize::from(control >> 2) / 63;
    let whole = parse(accept, input);
    let part = parse(accept, &input[..cut]);

    for (bytes, verdict) in [(input, &whole), (&input[..cut], &part)] {
        match verdict {
            Parsed::Complete(received, len) => {
                assert!(
                    *len <= bytes.len() && *len <= max,
                    "{len} of {}",
                    bytes.len()
                );
                assert_eq!(
                    parse(accept, &bytes[..*len]),
                    Parsed::Complete(*received, *len)
                );
                for n in [0, len / 2, len.saturating_sub(1)] {
                    if n < *len {
                        assert_eq!(parse(accept, &bytes[..n]), Parsed::Incomplete, "{n}");
                    }
                }
            }
            Parsed::Incomplete => assert!(bytes.len() < max, "undecided at {}", bytes.len()),
            Parsed::Invalid(_) => {}
        }
    }
    match part {
        Parsed::Complete(received, len) => {
            assert_eq!(
                whole,
                Parsed::Complete(received, len),
                "more bytes changed it"
            )
        }
        Parsed::Invalid(e) => {
            assert!(
                matches!(whole, Parsed::Invalid(_)),
                "{e} repaired: {whole:?}"
            )
        }
        Parsed::Incomplete => {}
    }
});
