//! Client identity → `X-Forwarded-Client-Cert` header bytes, byte-exact with Envoy's encoding.
//!
//! Built once per TLS connection (after the handshake) and copied into every request head
//! forwarded on that connection, so nothing here runs per request. Format: see
//! `shared/reference/xfcc.md`; `Hash=<sha256 hex>;Cert="<leaf PEM>";Chain="<PEM of every
//! presented cert>"`, the PEM percent-encoded with exactly Envoy's five substitutions.

use rustls_pki_types::CertificateDer;

pub const HEADER_NAME: &str = "X-Forwarded-Client-Cert";

const PEM_BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----\n";
const PEM_END: &[u8] = b"-----END CERTIFICATE-----\n";
/// 48 input bytes are exactly 64 base64 characters: OpenSSL's PEM line length.
const DER_BYTES_PER_LINE: usize = 48;
const BASE64_LINE: usize = 64;
const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const HEX: &[u8; 16] = b"0123456789abcdef";

/// 64 lowercase hex digits of SHA-256 over DER (ring::digest::SHA256).
pub fn sha256_hex(der: &[u8]) -> [u8; 64] {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 64];
    for (pair, byte) in out.chunks_exact_mut(2).zip(digest.as_ref()) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0x0f)];
    }
    out
}

/// Which `key=value` pairs an element carries (`xfcc_fields`); they are always written in
/// Envoy's order: By, Hash, Cert, Chain, Subject, URI, DNS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fields {
    pub by: bool,
    pub hash: bool,
    pub cert: bool,
    pub chain: bool,
    pub subject: bool,
    pub uri: bool,
    pub dns: bool,
}

impl Default for Fields {
    /// Azure Container Apps' header: Hash, Cert, Chain.
    fn default() -> Self {
        Fields {
            by: false,
            hash: true,
            cert: true,
            chain: true,
            subject: false,
            uri: false,
            dns: false,
        }
    }
}

impl Fields {
    /// Whether the leaf must be parsed (Subject, URI, DNS come from its fields).
    fn needs_leaf(&self) -> bool {
        self.subject || self.uri || self.dns
    }
}

/// What the optional fields say, taken from the certificates once per chain.
#[derive(Debug, Default)]
pub struct Names<'a> {
    /// The proxy's own URI SANs (`By`): one pair each.
    pub by: &'a [String],
    /// The leaf's subject, RFC 2253 form.
    pub subject: String,
    pub uris: Vec<String>,
    pub dns: Vec<String>,
}

/// The complete header line with the chosen fields (see [`Fields`]); `None` for an empty
/// chain. `names` supplies By, Subject, URI and DNS (see `identity::names`).
pub fn header_line_with(
    chain: &[CertificateDer<'_>],
    fields: &Fields,
    names: &Names<'_>,
) -> Option<Vec<u8>> {
    build(chain, fields, names, true)
}

fn build(
    chain: &[CertificateDer<'_>],
    fields: &Fields,
    names: &Names<'_>,
    whole_line: bool,
) -> Option<Vec<u8>> {
    let leaf = chain.first()?;
    let mut out = Vec::with_capacity(capacity(chain, whole_line));
    if whole_line {
        out.extend_from_slice(HEADER_NAME.as_bytes());
        out.extend_from_slice(b": ");
    }
    let mut sep = "";
    let mut pair = |out: &mut Vec<u8>, key: &str| {
        out.extend_from_slice(sep.as_bytes());
        out.extend_from_slice(key.as_bytes());
        out.push(b'=');
        sep = ";";
    };
    if fields.by {
        for uri in names.by {
            pair(&mut out, "By");
            push_san(&mut out, uri);
        }
    }
    if fields.hash {
        pair(&mut out, "Hash");
        out.extend_from_slice(&sha256_hex(leaf));
    }
    if fields.cert {
        pair(&mut out, "Cert");
        out.push(b'"');
        push_encoded_pem(&mut out, leaf);
        out.push(b'"');
    }
    if fields.chain {
        // Why leaf first: Envoy puts every presented certificate, leaf included, into Chain,
        // and real parsers of this header (e.g. npm client-certificate-auth's parseXfcc) take
        // Chain's first block as the leaf. Azure's docs call Chain "the intermediates", but
        // following them would break those parsers; Envoy's bytes are what Azure sends.
        pair(&mut out, "Chain");
        out.push(b'"');
        for cert in chain {
            push_encoded_pem(&mut out, cert);
        }
        out.push(b'"');
    }
    if fields.needs_leaf() {
        if fields.subject {
            // Always quoted, `Subject=""` when empty (Envoy).
            pair(&mut out, "Subject");
            out.push(b'"');
            out.extend_from_slice(names.subject.as_bytes());
            out.push(b'"');
        }
        if fields.uri {
            // Envoy keeps the key when the certificate has no URI SAN.
            if names.uris.is_empty() {
                pair(&mut out, "URI");
            }
            for uri in &names.uris {
                pair(&mut out, "URI");
                push_san(&mut out, uri);
            }
        }
        if fields.dns {
            for dns in &names.dns {
                pair(&mut out, "DNS");
                push_san(&mut out, dns);
            }
        }
    }
    if whole_line {
        out.extend_from_slice(b"\r\n");
    }
    Some(out)
}

/// A SAN value: bare like Envoy's, but quoted (with `"` and `\` escaped) when it holds a byte
/// that would split the element for a parser (`,` `;` `=` `"`), where Envoy's bytes break.
fn push_san(out: &mut Vec<u8>, value: &str) {
    if !value
        .bytes()
        .any(|b| matches!(b, b',' | b';' | b'=' | b'"' | b'\\'))
    {
        out.extend_from_slice(value.as_bytes());
        return;
    }
    out.push(b'"');
    for b in value.bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// The complete header line including name and CRLF:
/// `X-Forwarded-Client-Cert: Hash=<hex>;Cert="<enc leaf PEM>";Chain="<enc PEM, leaf first>"\r\n`.
/// `None` for an empty chain (no certificate presented: the header is omitted).
///
/// The line is roughly 2.8× the chain's DER size (leaf twice, base64, escapes); a 3 KiB chain
/// already passes nginx's 8 KiB default field limit. The caller compares it with its limits;
/// this function never truncates.
pub fn header_line(chain: &[CertificateDer<'_>]) -> Option<Vec<u8>> {
    build(chain, &Fields::default(), &Names::default(), true)
}

/// The header value alone (no name, no CRLF); `None` for an empty chain.
pub fn header_value(chain: &[CertificateDer<'_>]) -> Option<Vec<u8>> {
    build(chain, &Fields::default(), &Names::default(), false)
}

/// Bytes to reserve so that building the header normally allocates once.
fn capacity(chain: &[CertificateDer<'_>], whole_line: bool) -> usize {
    let leaf = chain.first().map_or(0, |c| encoded_pem_estimate(c.len()));
    (if whole_line { HEADER_NAME.len() + 4 } else { 0 })
        + "Hash=".len()
        + 64
        + ";Cert=\"\"".len()
        + leaf
        + ";Chain=\"\"".len()
        + chain
            .iter()
            .map(|c| encoded_pem_estimate(c.len()))
            .sum::<usize>()
}

/// Encoded PEM length for `der_len` bytes: exact for the fixed parts and newlines, plus a
/// margin for escaped `+`, `/`, `=` (about 1 in 32 base64 characters, margin 1 in 8). An
/// unusual certificate that exceeds it only makes the Vec grow; the output is the same.
fn encoded_pem_estimate(der_len: usize) -> usize {
    let b64 = der_len.div_ceil(3) * 4;
    let lines = b64.div_ceil(BASE64_LINE);
    // BEGIN/END lines: one space and one newline each, each escaped to 3 bytes.
    PEM_BEGIN.len() + PEM_END.len() + 8 + b64 + b64 / 8 + 6 + lines * 3
}

/// Appends the PEM of `der`, exactly as OpenSSL writes it, percent-encoded.
fn push_encoded_pem(out: &mut Vec<u8>, der: &[u8]) {
    push_escaped(out, PEM_BEGIN);
    let mut line = [0u8; BASE64_LINE];
    for chunk in der.chunks(DER_BYTES_PER_LINE) {
        let n = base64_encode(chunk, &mut line);
        push_escaped(out, &line[..n]);
        push_escaped(out, b"\n");
    }
    push_escaped(out, PEM_END);
}

/// Envoy's percent-encoding: exactly these five bytes are replaced, nothing else.
fn push_escaped(out: &mut Vec<u8>, text: &[u8]) {
    for &b in text {
        match b {
            b'\n' => out.extend_from_slice(b"%0A"),
            b' ' => out.extend_from_slice(b"%20"),
            b'+' => out.extend_from_slice(b"%2B"),
            b'/' => out.extend_from_slice(b"%2F"),
            b'=' => out.extend_from_slice(b"%3D"),
            _ => out.push(b),
        }
    }
}

/// Standard base64 (RFC 4648 §4, `=` padded) of `input` into `out`; returns the length written.
/// `out` must hold `input.len().div_ceil(3) * 4` bytes; callers pass at most 48 input bytes
/// into a 64-byte line buffer.
pub(crate) fn base64_encode(input: &[u8], out: &mut [u8]) -> usize {
    let mut n = 0;
    for group in input.chunks(3) {
        let b0 = group[0];
        let b1 = group.get(1).copied().unwrap_or(0);
        let b2 = group.get(2).copied().unwrap_or(0);
        let triple = u32::from(b0) << 16 | u32::from(b1) << 8 | u32::from(b2);
        let sextet = |shift: u32| BASE64_ALPHABET[((triple >> shift) & 0x3f) as usize];
        out[n] = sextet(18);
        out[n + 1] = sextet(12);
        out[n + 2] = if group.len() > 1 { sextet(6) } else { b'=' };
        out[n + 3] = if group.len() > 2 { sextet(0) } else { b'=' };
        n += 4;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(input: &[u8]) -> String {
        let mut out = vec![0u8; input.len().div_ceil(3) * 4];
        let n = base64_encode(input, &mut out);
        String::from_utf8(out[..n].to_vec()).unwrap()
    }

    fn encoded_pem(der: &[u8]) -> String {
        let mut out = Vec::new();
        push_encoded_pem(&mut out, der);
        String::from_utf8(out).unwrap()
    }

    /// The independent reference: text PEM escaped by a naive replace chain (`%` first is not
    /// needed since `%` is never escaped, which is itself part of the contract).
    fn naive_escape(pem: &str) -> String {
        pem.replace('\n', "%0A")
            .replace(' ', "%20")
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D")
    }

    #[test]
    fn sha256_hex_matches_known_digest() {
        assert_eq!(
            &sha256_hex(b"abc"),
            b"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            &sha256_hex(b""),
            b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(b64(input.as_bytes()), expected, "{input:?}");
        }
        assert_eq!(b64(&[0xfb, 0xff, 0xbf]), "+/+/");
    }

    #[test]
    fn pem_lines_wrap_at_exactly_64_characters() {
        let unescape = |s: String| s.replace("%0A", "\n").replace("%20", " ");
        // 48 bytes → exactly one full line, no empty line after it.
        let one = unescape(encoded_pem(&[0x41; 48]));
        let lines: Vec<&str> = one.lines().collect();
        assert_eq!(lines.len(), 3, "{one}");
        assert_eq!(lines[1].len(), 64);
        // 96 bytes → exactly two full lines.
        let two = unescape(encoded_pem(&[0x41; 96]));
        let lines: Vec<&str> = two.lines().collect();
        assert_eq!(lines.len(), 4, "{two}");
        assert!(lines[1..3].iter().all(|l| l.len() == 64));
        // 50 bytes → a full line then a short one.
        let short = unescape(encoded_pem(&[0x41; 50]));
        let lines: Vec<&str> = short.lines().collect();
        assert_eq!(lines.len(), 4, "{short}");
        assert_eq!(lines[1].len(), 64);
        assert_eq!(lines[2], "QUE=".replace('=', "%3D"));
        assert!(short.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(short.ends_with("\n-----END CERTIFICATE-----\n"));
    }

    #[test]
    fn escapes_exactly_envoys_five_bytes() {
        let all: Vec<u8> = (0u8..=127).collect();
        let mut out = Vec::new();
        push_escaped(&mut out, &all);
        let expected: Vec<u8> = all
            .iter()
            .flat_map(|&b| match b {
                b'\n' => b"%0A".to_vec(),
                b' ' => b"%20".to_vec(),
                b'+' => b"%2B".to_vec(),
                b'/' => b"%2F".to_vec(),
                b'=' => b"%3D".to_vec(),
                other => vec![other],
            })
            .collect();
        assert_eq!(out, expected);
        // Characters other encoders escape stay literal.
        let mut out = Vec::new();
        push_escaped(&mut out, b"%\";,\r\t-");
        assert_eq!(out, b"%\";,\r\t-");
    }

    #[test]
    fn empty_chain_has_no_header() {
        assert_eq!(header_line(&[]), None);
        assert_eq!(header_value(&[]), None);
    }

    #[test]
    fn two_cert_chain_header_matches_independent_encoding() {
        let ca = crate::pki::Ca::root("xfcc test root").unwrap();
        let inter = ca.intermediate("xfcc test intermediate").unwrap();
        let client = inter.client_cert("xfcc client").unwrap();
        let chain = [client.cert_der.clone(), inter.issued().cert_der.clone()];

        let leaf_pem = client.cert_pem.clone();
        let chain_pem = format!("{}{}", client.cert_pem, inter.issued().cert_pem);
        let hash = sha256_hex(&client.cert_der);
        let expected_value = format!(
            "Hash={};Cert=\"{}\";Chain=\"{}\"",
            std::str::from_utf8(&hash).unwrap(),
            naive_escape(&leaf_pem),
            naive_escape(&chain_pem)
        );
        let value = header_value(&chain).unwrap();
        assert_eq!(String::from_utf8(value).unwrap(), expected_value);

        let line = header_line(&chain).unwrap();
        assert_eq!(
            String::from_utf8(line).unwrap(),
            format!("X-Forwarded-Client-Cert: {expected_value}\r\n")
        );
    }

    #[test]
    fn hash_covers_the_leaf_only() {
        let ca = crate::pki::Ca::root("xfcc hash root").unwrap();
        let a = ca.client_cert("a").unwrap();
        let b = ca.client_cert("b").unwrap();
        let one = header_value(std::slice::from_ref(&a.cert_der)).unwrap();
        let two = header_value(&[a.cert_der.clone(), b.cert_der.clone()]).unwrap();
        assert_eq!(one[..69], two[..69]);
        assert_eq!(&one[5..69], &sha256_hex(&a.cert_der));
    }

    #[test]
    fn capacity_estimate_covers_real_certificates() {
        let ca = crate::pki::Ca::root("xfcc capacity root").unwrap();
        let leaf = ca.client_cert("capacity").unwrap();
        let chain = [leaf.cert_der.clone(), ca.issued().cert_der.clone()];
        let line = header_line(&chain).unwrap();
        assert!(line.len() <= capacity(&chain, true));
    }
}
