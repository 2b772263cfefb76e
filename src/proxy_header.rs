//! The PROXY protocol header certgate sends first on an upstream connection of a `tcp`
//! listener (`upstream_proxy_protocol = "v1" | "v2"`), so the app learns who connected: the
//! client's address, and in v2 the TLS facts of the client connection. Encoded with the `ppp`
//! crate (HAProxy's spec), built once per connection.
//!
//! v2 TLVs sent (HAProxy's `proxy-v2-options ssl,cert-cn,ssl-cipher,authority,alpn` set):
//! * `PP2_TYPE_ALPN` (0x01): the negotiated ALPN protocol, if any;
//! * `PP2_TYPE_AUTHORITY` (0x02): the SNI the client sent, if any;
//! * `PP2_TYPE_SSL` (0x20): `client` flags (`PP2_CLIENT_SSL` always; `PP2_CLIENT_CERT_CONN`
//!   and `PP2_CLIENT_CERT_SESS` when a client certificate was presented), `verify` = 0 when a
//!   presented certificate was verified against `client_ca` (1 otherwise, as HAProxy does for
//!   "not verified"), then the sub-TLVs `PP2_SUBTYPE_SSL_VERSION` (0x21, e.g. `TLSv1.3`),
//!   `PP2_SUBTYPE_SSL_CN` (0x22, the leaf's subject CN) and `PP2_SUBTYPE_SSL_CIPHER` (0x23);
//! * [`TLV_CLIENT_CERT_DER`] (0xE0, in the range the spec leaves to applications; ghostunnel
//!   uses the same number): the client's leaf certificate, DER.
//!
//! The receiving side, a header a load balancer puts in front of a listener's TLS
//! (`proxy_protocol`), is [`inbound`].

pub mod inbound;

use std::net::SocketAddr;

use ppp::v2::{self, Builder, Command, Protocol, Type, Version, WriteToHeader, Writer};

/// The custom TLV carrying the client's leaf certificate (DER).
pub const TLV_CLIENT_CERT_DER: u8 = 0xE0;

/// `PP2_CLIENT_SSL`, `PP2_CLIENT_CERT_CONN`, `PP2_CLIENT_CERT_SESS` (HAProxy's spec, 2.2.5).
const CLIENT_SSL: u8 = 0x01;
const CLIENT_CERT_CONN: u8 = 0x02;
const CLIENT_CERT_SESS: u8 = 0x04;

/// Which header to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyVersion {
    #[default]
    Off,
    V1,
    V2,
}

/// What the header says about the client connection.
#[derive(Debug, Clone, Default)]
pub struct ClientFacts<'a> {
    pub client: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    pub alpn: Option<&'a [u8]>,
    pub sni: Option<&'a str>,
    /// `TLSv1.3` / `TLSv1.2`.
    pub tls_version: &'a str,
    /// The cipher suite's IANA-style name.
    pub cipher: &'a str,
    /// The leaf's DER and subject CN, when the client presented a certificate.
    pub leaf: Option<&'a [u8]>,
    pub cn: Option<&'a str>,
    /// The presented certificate chained to `client_ca`.
    pub verified: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot encode the PROXY header: {0}")]
pub struct EncodeError(#[from] std::io::Error);

/// The header bytes, or none for [`ProxyVersion::Off`].
pub fn encode(version: ProxyVersion, facts: &ClientFacts<'_>) -> Result<Vec<u8>, EncodeError> {
    let addresses = facts.client.zip(facts.local);
    match version {
        ProxyVersion::Off => Ok(Vec::new()),
        ProxyVersion::V1 => {
            let line = match addresses.map(ppp::v1::Addresses::from) {
                // Both sides of one connection are of one family; anything else is UNKNOWN.
                Some(a @ (ppp::v1::Addresses::Tcp4(_) | ppp::v1::Addresses::Tcp6(_))) => {
                    a.to_string()
                }
                _ => ppp::v1::Addresses::Unknown.to_string(),
            };
            Ok(line.into_bytes())
        }
        ProxyVersion::V2 => {
            let addresses = addresses.map_or(v2::Addresses::Unspecified, v2::Addresses::from);
            let mut builder =
                Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, addresses);
            if let Some(alpn) = facts.alpn {
                builder = builder.write_tlv(Type::ALPN, alpn)?;
            }
            if let Some(sni) = facts.sni {
                builder = builder.write_tlv(Type::Authority, sni.as_bytes())?;
            }
            builder = builder.write_tlv(Type::SSL, ssl_value(facts)?.as_slice())?;
            if let Some(leaf) = facts.leaf {
                builder = builder.write_tlv(TLV_CLIENT_CERT_DER, leaf)?;
            }
            Ok(builder.build()?)
        }
    }
}

/// The value of `PP2_TYPE_SSL`: client flags, verify result, then its sub-TLVs.
fn ssl_value(facts: &ClientFacts<'_>) -> Result<Vec<u8>, std::io::Error> {
    let mut client = CLIENT_SSL;
    if facts.leaf.is_some() {
        client |= CLIENT_CERT_CONN | CLIENT_CERT_SESS;
    }
    let verify: u32 = if facts.leaf.is_some() && facts.verified {
        0
    } else {
        1
    };
    let mut w = Writer::default();
    client.write_to(&mut w)?;
    verify.write_to(&mut w)?;
    (Type::SSLVersion, facts.tls_version.as_bytes()).write_to(&mut w)?;
    if let Some(cn) = facts.cn {
        (Type::SSLCommonName, cn.as_bytes()).write_to(&mut w)?;
    }
    (Type::SSLCipher, facts.cipher.as_bytes()).write_to(&mut w)?;
    Ok(w.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> ClientFacts<'static> {
        ClientFacts {
            client: Some("203.0.113.7:50000".parse().unwrap()),
            local: Some("10.0.0.1:5433".parse().unwrap()),
            alpn: Some(b"postgresql"),
            sni: Some("db.example.com"),
            tls_version: "TLSv1.3",
            cipher: "TLS13_AES_256_GCM_SHA384",
            leaf: Some(b"\x30\x03\x02\x01\x00"),
            cn: Some("billing"),
            verified: true,
        }
    }

    #[test]
    fn v1_is_one_line_with_both_addresses() {
        let bytes = encode(ProxyVersion::V1, &facts()).unwrap();
        assert_eq!(bytes, b"PROXY TCP4 203.0.113.7 10.0.0.1 50000 5433\r\n");
        let mut six = facts();
        six.client = Some("[2001:db8::7]:50000".parse().unwrap());
        six.local = Some("[2001:db8::1]:5433".parse().unwrap());
        let bytes = encode(ProxyVersion::V1, &six).unwrap();
        assert_eq!(bytes, b"PROXY TCP6 2001:db8::7 2001:db8::1 50000 5433\r\n");
    }

    #[test]
    fn v2_parses_back_with_every_tlv() {
        let bytes = encode(ProxyVersion::V2, &facts()).unwrap();
        let header = v2::Header::try_from(bytes.as_slice()).unwrap();
        assert_eq!(header.command, Command::Proxy);
        let tlvs: Vec<(u8, Vec<u8>)> = header
            .tlvs()
            .map(|t| {
                let t = t.unwrap();
                (t.kind, t.value.to_vec())
            })
            .collect();
        assert_eq!(tlvs[0], (0x01, b"postgresql".to_vec()));
        assert_eq!(tlvs[1], (0x02, b"db.example.com".to_vec()));
        assert_eq!(tlvs[2].0, 0x20);
        let ssl = &tlvs[2].1;
        assert_eq!(ssl[0], CLIENT_SSL | CLIENT_CERT_CONN | CLIENT_CERT_SESS);
        assert_eq!(&ssl[1..5], &[0, 0, 0, 0], "verified");
        let subs = v2::TypeLengthValues::from(&ssl[5..]);
        let subs: Vec<(u8, Vec<u8>)> = subs
            .map(|t| {
                let t = t.unwrap();
                (t.kind, t.value.to_vec())
            })
            .collect();
        assert_eq!(
            subs,
            vec![
                (0x21, b"TLSv1.3".to_vec()),
                (0x22, b"billing".to_vec()),
                (0x23, b"TLS13_AES_256_GCM_SHA384".to_vec()),
            ]
        );
        assert_eq!(
            tlvs[3],
            (TLV_CLIENT_CERT_DER, b"\x30\x03\x02\x01\x00".to_vec())
        );
    }

    #[test]
    fn v2_without_a_certificate_says_not_verified() {
        let mut f = facts();
        f.leaf = None;
        f.cn = None;
        f.alpn = None;
        f.sni = None;
        let bytes = encode(ProxyVersion::V2, &f).unwrap();
        let header = v2::Header::try_from(bytes.as_slice()).unwrap();
        let ssl: Vec<_> = header.tlvs().map(|t| t.unwrap()).collect();
        assert_eq!(ssl.len(), 1);
        assert_eq!(ssl[0].value[0], CLIENT_SSL);
        assert_eq!(&ssl[0].value[1..5], &[0, 0, 0, 1]);
    }

    #[test]
    fn off_sends_nothing() {
        assert!(encode(ProxyVersion::Off, &facts()).unwrap().is_empty());
    }
}
