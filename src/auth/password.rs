//! Password hashes in RabbitMQ's format, so definitions move between the two brokers with
//! passwords intact: `base64(salt ++ H(salt ++ password))` with a 4-byte random salt, where
//! H is SHA-256 (`rabbit_password_hashing_sha256`, RabbitMQ's default), SHA-512
//! (`rabbit_password_hashing_sha512`) or MD5 (`rabbit_password_hashing_md5`, what RabbitMQ
//! 3.5 and older wrote; verified so their exports keep working, never used for new hashes).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use md5::Md5;
use rand::RngCore;
use sha2::{Digest, Sha256, Sha512};

pub const SHA256: &str = "rabbit_password_hashing_sha256";
pub const SHA512: &str = "rabbit_password_hashing_sha512";
pub const MD5: &str = "rabbit_password_hashing_md5";

const SALT_LEN: usize = 4;

fn digest(algorithm: &str, salt: &[u8], password: &[u8]) -> Option<Vec<u8>> {
    match algorithm {
        SHA256 => Some(
            Sha256::new()
                .chain_update(salt)
                .chain_update(password)
                .finalize()
                .to_vec(),
        ),
        SHA512 => Some(
            Sha512::new()
                .chain_update(salt)
                .chain_update(password)
                .finalize()
                .to_vec(),
        ),
        MD5 => Some(
            Md5::new()
                .chain_update(salt)
                .chain_update(password)
                .finalize()
                .to_vec(),
        ),
        _ => None,
    }
}

fn digest_len(algorithm: &str) -> Option<usize> {
    match algorithm {
        SHA256 => Some(32),
        SHA512 => Some(64),
        MD5 => Some(16),
        _ => None,
    }
}

/// The algorithm of a stored hash that came without one (exports from RabbitMQ 3.5 and
/// older have no `hashing_algorithm`): told apart by the digest's length.
pub fn infer(stored: &str) -> Option<&'static str> {
    let raw = B64.decode(stored).ok()?;
    [SHA256, SHA512, MD5]
        .into_iter()
        .find(|a| digest_len(a) == Some(raw.len().saturating_sub(SALT_LEN)))
}

/// Is this a hashing algorithm this broker can verify?
pub fn supported(algorithm: &str) -> bool {
    digest_len(algorithm).is_some()
}

/// A new salted SHA-256 hash of `password`, base64-encoded.
pub fn hash(password: &str) -> String {
    let mut salt = [0u8; SALT_LEN];
    rand::rng().fill_bytes(&mut salt);
    hash_with_salt(SHA256, &salt, password).unwrap_or_default()
}

pub fn hash_with_salt(algorithm: &str, salt: &[u8], password: &str) -> Option<String> {
    let mut out = salt.to_vec();
    out.extend(digest(algorithm, salt, password.as_bytes())?);
    Some(B64.encode(out))
}

/// Is `stored` (base64) well-formed for `algorithm`?
pub fn valid_hash(algorithm: &str, stored: &str) -> bool {
    let Some(want) = digest_len(algorithm) else {
        return false;
    };
    B64.decode(stored)
        .is_ok_and(|raw| raw.len() == SALT_LEN + want)
}

/// Check `password` against a stored hash, without an early exit on the first difference.
/// An empty stored hash never matches (a user without a password cannot log in with one).
pub fn verify(algorithm: &str, stored: &str, password: &str) -> bool {
    let Ok(raw) = B64.decode(stored) else {
        return false;
    };
    if raw.len() <= SALT_LEN {
        return false;
    }
    let (salt, want) = raw.split_at(SALT_LEN);
    match digest(algorithm, salt, password.as_bytes()) {
        Some(got) => constant_time_eq(&got, want),
        None => false,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = hash("s3cret");
        assert!(valid_hash(SHA256, &h));
        assert!(verify(SHA256, &h, "s3cret"));
        assert!(!verify(SHA256, &h, "s3cre"));
        assert!(!verify(SHA256, "", ""));
        assert!(!verify(MD5, &h, "s3cret"));
        assert_eq!(infer(&h), Some(SHA256));
    }

    #[test]
    fn md5_hashes_from_old_exports_verify() {
        // base64(salt ++ md5(salt ++ password)), as RabbitMQ 3.5 wrote them.
        let salt = [0x01, 0x02, 0x03, 0x04];
        let mut raw = salt.to_vec();
        raw.extend(
            Md5::new()
                .chain_update(salt)
                .chain_update(b"legacy")
                .finalize(),
        );
        let h = B64.encode(raw);
        assert!(valid_hash(MD5, &h));
        assert!(!valid_hash(SHA256, &h));
        assert!(verify(MD5, &h, "legacy"));
        assert!(!verify(MD5, &h, "legacz"));
        assert_eq!(infer(&h), Some(MD5));
    }

    #[test]
    fn rabbitmq_format() {
        // base64(salt ++ sha256(salt ++ password)), salt first.
        let h = hash_with_salt(SHA256, &[0x90, 0x8d, 0xc6, 0x0a], "test12").unwrap();
        let raw = B64.decode(&h).unwrap();
        assert_eq!(&raw[..4], &[0x90, 0x8d, 0xc6, 0x0a]);
        let mut d = Sha256::new();
        d.update([0x90, 0x8d, 0xc6, 0x0a]);
        d.update(b"test12");
        assert_eq!(&raw[4..], d.finalize().as_slice());
    }
}
