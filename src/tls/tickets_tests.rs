//! Unit tests of `tickets`: the file format, the ticketer's round trip and rejections, and
//! rotation order.
use super::*;

const TRUST: [u8; 32] = [7u8; 32];

fn key(fill: u8) -> FileKey {
    let mut bytes = [fill; KEY_LEN];
    // Distinct names even for neighbouring fills.
    bytes[0] = fill;
    bytes[1] = fill.wrapping_add(1);
    FileKey::from_bytes(&bytes)
}

fn ticketer(keys: &[FileKey], listener: &str, trust: &[u8; 32]) -> SharedTicketer {
    SharedTicketer::derive(keys, listener, trust)
}

fn temp_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "certgate-tickets-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_mode(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn round_trip_and_layout() {
    let keys = [key(1)];
    let t = ticketer(&keys, "public", &TRUST);
    let plain = b"session state".to_vec();
    let ticket = t.encrypt(&plain).unwrap();
    assert_eq!(ticket.len(), NAME_LEN + NONCE_LEN + plain.len() + TAG_LEN);
    assert_eq!(&ticket[..NAME_LEN], keys[0].name.as_bytes());
    assert_eq!(t.decrypt(&ticket), Some(plain.clone()));
    // A fresh nonce every time: the same state never gives the same ticket.
    assert_ne!(t.encrypt(&plain).unwrap(), ticket);
    assert_eq!(t.decrypt(&t.encrypt(b"").unwrap()), Some(vec![]));
    assert!(t.enabled());
    assert_eq!(t.lifetime(), 12 * 3600);
}

#[test]
fn same_file_name_and_trust_give_the_same_keys() {
    let keys = [key(1), key(2)];
    let ticket = ticketer(&keys, "public", &TRUST).encrypt(b"x").unwrap();
    // Another worker or replica derives the same keys from the same inputs.
    assert_eq!(
        ticketer(&keys, "public", &TRUST).decrypt(&ticket),
        Some(b"x".to_vec())
    );
}

#[test]
fn another_listener_or_trust_cannot_decrypt() {
    let keys = [key(1)];
    let ticket = ticketer(&keys, "public", &TRUST).encrypt(b"x").unwrap();
    assert_eq!(ticketer(&keys, "internal", &TRUST).decrypt(&ticket), None);
    assert_eq!(ticketer(&keys, "public", &[8u8; 32]).decrypt(&ticket), None);
    // The name's length is part of the derivation: no shifting bytes between name and trust.
    let mut shifted = [7u8; 32];
    shifted[0] = b'c';
    assert_eq!(ticketer(&keys, "publi", &shifted).decrypt(&ticket), None);
}

#[test]
fn unknown_key_name_is_refused() {
    let ticket = ticketer(&[key(1)], "l", &TRUST).encrypt(b"x").unwrap();
    assert_eq!(ticketer(&[key(2)], "l", &TRUST).decrypt(&ticket), None);
    // Same name, different secret: the name is found but the AEAD tag fails.
    let mut other = key(1);
    other.secret[5] ^= 1;
    assert_eq!(ticketer(&[other], "l", &TRUST).decrypt(&ticket), None);
}

#[test]
fn truncated_or_tampered_tickets_are_none() {
    let t = ticketer(&[key(1)], "l", &TRUST);
    let ticket = t.encrypt(b"some session state").unwrap();
    for len in 0..ticket.len() {
        assert_eq!(t.decrypt(&ticket[..len]), None, "truncated to {len}");
    }
    for i in 0..ticket.len() {
        for bit in [0x01, 0x80] {
            let mut bad = ticket.clone();
            bad[i] ^= bit;
            assert_eq!(t.decrypt(&bad), None, "byte {i} flipped");
        }
    }
    let mut longer = ticket.clone();
    longer.push(0);
    assert_eq!(t.decrypt(&longer), None);
    assert_eq!(t.decrypt(&[0u8; 4096]), None);
}

#[test]
fn first_key_encrypts_and_every_key_decrypts() {
    let (new, old) = (key(2), key(1));
    let before = ticketer(std::slice::from_ref(&old), "l", &TRUST);
    let old_ticket = before.encrypt(b"old").unwrap();
    let after = ticketer(&[new.clone(), old.clone()], "l", &TRUST);
    let new_ticket = after.encrypt(b"new").unwrap();
    assert_eq!(&new_ticket[..NAME_LEN], new.name.as_bytes());
    assert_eq!(after.decrypt(&old_ticket), Some(b"old".to_vec()));
    assert_eq!(after.decrypt(&new_ticket), Some(b"new".to_vec()));
    // Only the new key decrypts the new ticket.
    assert_eq!(before.decrypt(&new_ticket), None);
    let only_new = ticketer(&[new], "l", &TRUST);
    assert_eq!(only_new.decrypt(&new_ticket), Some(b"new".to_vec()));
    assert_eq!(only_new.decrypt(&old_ticket), None);
}

#[test]
fn parse_accepts_hex_lines_and_rejects_the_rest() {
    let a = key(1).line();
    let b = key(2).line().to_uppercase();
    let keys = parse(&format!("\n{a}\r\n  {b}  \n\n")).unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].name, key(1).name);
    assert_eq!(keys[1].secret, key(2).secret);

    let err = |text: &str| parse(text).err().unwrap();
    assert!(err("").contains("no key"), "{}", err(""));
    assert!(err("\n \n").contains("no key"));
    assert!(err(&a[..158]).contains("line 1: expected 160 hex digits"));
    assert!(err(&format!("{a}\n{a}00")).contains("line 2"));
    let mut bad = a.clone();
    bad.replace_range(10..11, "g");
    assert!(err(&bad).contains("not hexadecimal"), "{}", err(&bad));
    let e = err(&format!("{a}\n{a}"));
    assert!(e.contains("line 2") && e.contains("already used"), "{e}");
    // Non-ASCII of the right byte length is rejected without panicking on a char boundary.
    let wide = "é".repeat(80);
    assert!(err(&wide).contains("not hexadecimal"));
}

#[test]
fn load_checks_the_mode() {
    let dir = temp_dir("mode");
    let path = dir.join("tickets.key");
    write_mode(&path, &format!("{}\n", key(1).line()), 0o640);
    let e = TicketKeys::load(&path).unwrap_err().to_string();
    assert!(e.contains("tickets.key") && e.contains("0640"), "{e}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
    let keys = TicketKeys::load(&path).unwrap();
    assert_eq!(keys.names(), vec![key(1).name]);
    let e = TicketKeys::load(&dir.join("missing.key"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("missing.key") && e.contains("cannot open"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn create_then_rotate_keeps_the_newest() {
    let dir = temp_dir("rotate");
    let path = dir.join("tickets.key");
    let first = create(&path).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    let e = create(&path).unwrap_err().to_string();
    assert!(e.contains("already exists"), "{e}");
    assert_eq!(TicketKeys::load(&path).unwrap().names(), vec![first]);

    let r1 = rotate(&path, 3).unwrap();
    assert_eq!((r1.kept.clone(), r1.dropped), (vec![first], 0));
    let r2 = rotate(&path, 3).unwrap();
    assert_eq!((r2.kept.clone(), r2.dropped), (vec![r1.new, first], 0));
    let r3 = rotate(&path, 3).unwrap();
    assert_eq!((r3.kept.clone(), r3.dropped), (vec![r2.new, r1.new], 1));
    assert_eq!(
        TicketKeys::load(&path).unwrap().names(),
        vec![r3.new, r2.new, r1.new]
    );
    let r4 = rotate(&path, 2).unwrap();
    assert_eq!((r4.kept.clone(), r4.dropped), (vec![r3.new], 2));
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    assert!(rotate(&path, 1).is_err());
    // Nothing but the key file is left in the folder: the temporary file was renamed.
    let entries: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(entries.len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn rotate_refuses_a_file_that_load_refuses() {
    let dir = temp_dir("rotate-bad");
    let path = dir.join("tickets.key");
    write_mode(&path, "not a key\n", 0o600);
    let e = rotate(&path, 3).unwrap_err().to_string();
    assert!(e.contains("line 1"), "{e}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a key\n");
    std::fs::remove_dir_all(&dir).unwrap();
}
