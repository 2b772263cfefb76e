//! `X-Forwarded-Client-Cert` encoding against an independent, naive reference.
//!
//! Input: byte 0 picks the chain shape (even: one blob; odd: two blobs, split point scaled from
//! byte 0 >> 1); the rest is the "DER" (xfcc never parses it, so any bytes will do).
//!
//! Properties: `header_line` equals `X-Forwarded-Client-Cert: Hash=<sha256 hex of the leaf>;
//! Cert="<esc PEM leaf>";Chain="<esc PEM of each blob>"` CRLF, where PEM is built with the
//! `base64` crate in 64-char lines and escaped by a replace chain of Envoy's five substitutions;
//! the value is visible ASCII only (no CR, LF, SP, controls), so the line is one header field;
//! `header_value` is the line without name and CRLF; an empty chain gives no header.
#![no_main]

use base64::Engine as _;
use certgate::xfcc::{header_line, header_value};
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateDer;

fn naive_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    let mut rest = b64.as_str();
    while !rest.is_empty() {
        let (line, tail) = rest.split_at(rest.len().min(64));
        pem.push_str(line);
        pem.push('\n');
        rest = tail;
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

fn naive_escape(s: &str) -> String {
    s.replace('\n', "%0A")
        .replace(' ', "%20")
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

fn naive_sha256_hex(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, der)) = data.split_first() else {
        assert_eq!(header_line(&[]), None);
        assert_eq!(header_value(&[]), None);
        return;
    };
    let blobs: Vec<&[u8]> = if mode & 1 == 0 {
        vec![der]
    } else {
        let at = der.len() * usize::from(mode >> 1) / 127;
        let (a, b) = der.split_at(at);
        vec![a, b]
    };
    let chain: Vec<CertificateDer<'_>> = blobs.iter().map(|b| CertificateDer::from(*b)).collect();

    let line = header_line(&chain).expect("non-empty chain gives a header");
    let value = header_value(&chain).expect("non-empty chain gives a value");

    let chain_pem: String = blobs.iter().map(|b| naive_pem(b)).collect();
    let expected_value = format!(
        "Hash={};Cert=\"{}\";Chain=\"{}\"",
        naive_sha256_hex(blobs[0]),
        naive_escape(&naive_pem(blobs[0])),
        naive_escape(&chain_pem)
    );
    assert_eq!(String::from_utf8_lossy(&value), expected_value);
    assert_eq!(
        String::from_utf8_lossy(&line),
        format!("X-Forwarded-Client-Cert: {expected_value}\r\n")
    );

    // One header field: no CR/LF except the final CRLF, and nothing but visible ASCII in the
    // value (no SP either: it is escaped, so no OWS trimming can alter the value).
    let body = &line[..line.len() - 2];
    assert!(
        !body.contains(&b'\r') && !body.contains(&b'\n'),
        "raw CR/LF inside the line"
    );
    assert!(
        value.iter().all(|b| (0x21..=0x7e).contains(b)),
        "non-visible byte in the value"
    );
});
