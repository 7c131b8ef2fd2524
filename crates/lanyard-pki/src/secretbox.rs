//! Encryption of secrets at rest (CA key, APNs key, ABM token secrets).
//!
//! Format of a sealed value: `version (1 byte) || nonce (12) || ciphertext || tag (16)`.
//! Version 1 is AES-256-GCM with a random 96-bit nonce; the additional authenticated data
//! is `version || context`, so a sealed value bound to one purpose (say `b"ca-key"`) cannot be
//! moved to another (say `b"abm-token:42"`), and the version byte cannot be altered.
//!
//! The cipher is ring's AES-256-GCM, not OpenSSL's: `lanyard serve` opens its keys at start-up,
//! and with ring that start needs no OpenSSL at all (OpenSSL is initialised, and its pages made
//! resident, only when a certificate or key is first used). The format is the standard one, so
//! values sealed by OpenSSL's AES-256-GCM open here and the other way round (tested).

use std::fmt;

use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

use crate::error::{PkiError, Result};

const VERSION_AES256GCM: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Seals and opens secrets with one 256-bit key. `Debug` never shows the key.
#[derive(Clone)]
pub struct SecretBox {
    key: [u8; 32],
}

impl fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretBox")
            .field("key", &"<redacted>")
            .finish()
    }
}

impl SecretBox {
    /// A box using `key`.
    pub fn new(key: [u8; 32]) -> SecretBox {
        SecretBox { key }
    }

    /// A fresh random 256-bit key from the operating system's CSPRNG.
    pub fn generate_key() -> [u8; 32] {
        use rand::RngCore as _;
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        key
    }

    /// Decode a 32-byte key from base64 (standard or URL-safe alphabet, padding optional;
    /// surrounding whitespace ignored).
    pub fn key_from_base64(text: &str) -> Result<[u8; 32]> {
        use base64::engine::general_purpose::{
            STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
        };
        let t = text.trim();
        let bytes = STANDARD
            .decode(t)
            .or_else(|_| STANDARD_NO_PAD.decode(t))
            .or_else(|_| URL_SAFE.decode(t))
            .or_else(|_| URL_SAFE_NO_PAD.decode(t))?;
        <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
            PkiError::InvalidInput(format!(
                "secret key must be 32 bytes, base64 decoded to {}",
                bytes.len()
            ))
        })
    }

    /// Encode a key as standard base64 (the inverse of [`SecretBox::key_from_base64`]).
    pub fn key_to_base64(key: &[u8; 32]) -> String {
        base64::engine::general_purpose::STANDARD.encode(key)
    }

    /// The key as ring uses it.
    fn cipher(&self) -> Result<LessSafeKey> {
        let key = UnboundKey::new(&AES_256_GCM, &self.key)
            .map_err(|_| PkiError::InvalidInput("an AES-256 key is 32 bytes".into()))?;
        Ok(LessSafeKey::new(key))
    }

    /// Encrypt `plaintext`, bound to `context`. Fails only if the system's random source does.
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Result<Vec<u8>> {
        use rand::RngCore as _;
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng
            .try_fill_bytes(&mut nonce)
            .map_err(|e| PkiError::InvalidInput(format!("no random nonce: {e}")))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + TAG_LEN);
        out.push(VERSION_AES256GCM);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .cipher()?
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(VERSION_AES256GCM, context)),
                &mut out[1 + NONCE_LEN..],
            )
            .map_err(|_| PkiError::InvalidInput("the value is too long to seal".into()))?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Decrypt a value made by [`SecretBox::seal`] with the same key and `context`.
    /// Any tampering, a wrong key or a wrong context gives [`PkiError::Unseal`].
    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Vec<u8>> {
        let (&version, rest) = sealed.split_first().ok_or(PkiError::Unseal)?;
        if version != VERSION_AES256GCM {
            return Err(PkiError::UnknownSealVersion(version));
        }
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(PkiError::Unseal);
        }
        let (nonce, ct_and_tag) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| PkiError::Unseal)?;
        let mut buf = ct_and_tag.to_vec();
        let plain_len = self
            .cipher()?
            .open_in_place(nonce, Aad::from(aad(version, context)), &mut buf)
            .map_err(|_| PkiError::Unseal)?
            .len();
        buf.truncate(plain_len);
        Ok(buf)
    }
}

fn aad(version: u8, context: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(1 + context.len());
    a.push(version);
    a.extend_from_slice(context);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let b = SecretBox::new(SecretBox::generate_key());
        let s = b.seal(b"top secret", b"ca-key").unwrap();
        assert_eq!(s[0], 1);
        assert_eq!(s.len(), 1 + 12 + 10 + 16);
        assert_eq!(b.open(&s, b"ca-key").unwrap(), b"top secret");
        // random nonce: two seals differ
        assert_ne!(s, b.seal(b"top secret", b"ca-key").unwrap());
        // empty plaintext works
        let e = b.seal(b"", b"x").unwrap();
        assert_eq!(b.open(&e, b"x").unwrap(), b"");
    }

    /// The format is AES-256-GCM's own: what OpenSSL seals (as Lanyard did before it used ring
    /// here, and as every database made then holds) opens, and the other way round.
    #[test]
    fn openssl_and_this_box_read_each_other() {
        use openssl::symm::{decrypt_aead, encrypt_aead, Cipher};
        let key = SecretBox::generate_key();
        let b = SecretBox::new(key);
        let nonce = [7u8; NONCE_LEN];
        let mut tag = [0u8; TAG_LEN];
        let aad = aad(VERSION_AES256GCM, b"ca-key");
        let ct = encrypt_aead(
            Cipher::aes_256_gcm(),
            &key,
            Some(&nonce),
            &aad,
            b"the CA key",
            &mut tag,
        )
        .unwrap();
        let sealed = [&[VERSION_AES256GCM][..], &nonce, &ct, &tag].concat();
        assert_eq!(b.open(&sealed, b"ca-key").unwrap(), b"the CA key");
        let ours = b.seal(b"the CA key", b"ca-key").unwrap();
        let (nonce, rest) = ours[1..].split_at(NONCE_LEN);
        let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
        let plain = decrypt_aead(Cipher::aes_256_gcm(), &key, Some(nonce), &aad, ct, tag).unwrap();
        assert_eq!(plain, b"the CA key");
    }

    #[test]
    fn wrong_context_key_or_tamper_fails() {
        let b = SecretBox::new(SecretBox::generate_key());
        let s = b.seal(b"top secret", b"ca-key").unwrap();
        assert!(matches!(b.open(&s, b"apns-key"), Err(PkiError::Unseal)));
        assert!(matches!(b.open(&s, b""), Err(PkiError::Unseal)));
        let other = SecretBox::new(SecretBox::generate_key());
        assert!(matches!(other.open(&s, b"ca-key"), Err(PkiError::Unseal)));
        for i in 1..s.len() {
            let mut t = s.clone();
            t[i] ^= 0x01;
            assert!(
                matches!(b.open(&t, b"ca-key"), Err(PkiError::Unseal)),
                "byte {i}"
            );
        }
        let mut v = s.clone();
        v[0] = 2;
        assert!(matches!(
            b.open(&v, b"ca-key"),
            Err(PkiError::UnknownSealVersion(2))
        ));
        assert!(b.open(&s[..s.len() - 1], b"ca-key").is_err());
        assert!(b.open(&s[..5], b"ca-key").is_err());
        assert!(b.open(&[], b"ca-key").is_err());
    }

    #[test]
    fn base64_keys_and_debug() {
        let k = SecretBox::generate_key();
        let text = SecretBox::key_to_base64(&k);
        assert_eq!(SecretBox::key_from_base64(&text).unwrap(), k);
        assert_eq!(
            SecretBox::key_from_base64(&format!(" {text}\n")).unwrap(),
            k
        );
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k);
        assert_eq!(SecretBox::key_from_base64(&url).unwrap(), k);
        assert!(SecretBox::key_from_base64("c2hvcnQ=").is_err());
        assert!(SecretBox::key_from_base64("not base64 !!").is_err());
        let dbg = format!("{:?}", SecretBox::new(k));
        assert!(dbg.contains("redacted"));
        assert!(!dbg.contains(&text));
        assert!(!dbg.contains(&format!("{}", k[0])) || dbg == "SecretBox { key: \"<redacted>\" }");
    }
}
