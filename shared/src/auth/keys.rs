//! Per-agent bearer keys: generation, parsing and digests.
//!
//! A token reads `tg_<key id>_<secret>`: the prefix makes leaked tokens easy to spot by secret
//! scanners, the 12-character key id is public (logs, admin listings, the DynamoDB key), and the
//! secret is 32 random bytes in base64url. Only the SHA-256 digest of the whole token is stored.

use base64::Engine as _;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// Every tollgate bearer key starts with this.
pub const TOKEN_PREFIX: &str = "tg_";
const KEY_ID_LEN: usize = 12;
const SECRET_LEN: usize = 43; // 32 bytes, base64url without padding
const KEY_ID_ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";

/// A newly minted key: the token is shown once and never stored.
#[derive(Debug)]
pub struct IssuedKey {
    /// The bearer token to hand to the agent.
    pub token: String,
    /// Its public id.
    pub key_id: String,
    /// Lowercase hex SHA-256 of the token, the only form that is stored.
    pub digest_hex: String,
}

/// Mints a new key from the operating system's random source.
pub fn issue() -> IssuedKey {
    let mut rng = rand::rng();
    let mut id_bytes = [0u8; KEY_ID_LEN];
    rng.fill_bytes(&mut id_bytes);
    let key_id: String = id_bytes
        .iter()
        .map(|b| char::from(KEY_ID_ALPHABET[usize::from(*b) % KEY_ID_ALPHABET.len()]))
        .collect();
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    let token = format!(
        "{TOKEN_PREFIX}{key_id}_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    let digest_hex = digest_hex(&token);
    IssuedKey {
        token,
        key_id,
        digest_hex,
    }
}

/// Lowercase hex SHA-256 of a token.
pub fn digest_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The public key id of a well-formed tollgate token, or `None` when the token does not have
/// the tollgate shape (it may then be another kind of credential, such as a JWT).
pub fn key_id(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    if rest.len() != KEY_ID_LEN + 1 + SECRET_LEN {
        return None;
    }
    let (id, tail) = rest.split_at(KEY_ID_LEN);
    let secret = tail.strip_prefix('_')?;
    let id_ok = id.bytes().all(|b| KEY_ID_ALPHABET.contains(&b));
    let secret_ok = secret
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (id_ok && secret_ok).then_some(id)
}

/// Whether `token` hashes to `stored_digest_hex`, compared in constant time.
pub fn digest_matches(token: &str, stored_digest_hex: &str) -> bool {
    let computed = Sha256::digest(token.as_bytes());
    match hex::decode(stored_digest_hex) {
        Ok(stored) if stored.len() == computed.len() => computed.as_slice().ct_eq(&stored).into(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn issued_tokens_parse_and_match_their_digest() {
        let k = issue();
        assert!(k.token.starts_with("tg_"));
        assert_eq!(key_id(&k.token), Some(k.key_id.as_str()));
        assert!(digest_matches(&k.token, &k.digest_hex));
        assert_eq!(k.digest_hex, digest_hex(&k.token));
    }

    #[test]
    fn two_keys_differ() {
        let (a, b) = (issue(), issue());
        assert_ne!(a.token, b.token);
        assert_ne!(a.key_id, b.key_id);
    }

    #[test]
    fn one_changed_character_fails_the_digest() {
        let k = issue();
        let mut changed = k.token.clone().into_bytes();
        let last = changed.len() - 1;
        changed[last] = if changed[last] == b'A' { b'B' } else { b'A' };
        let changed = String::from_utf8(changed).expect("ascii");
        assert!(!digest_matches(&changed, &k.digest_hex));
    }

    #[test]
    fn malformed_tokens_have_no_key_id() {
        assert_eq!(key_id(""), None);
        assert_eq!(key_id("tg_"), None);
        assert_eq!(key_id("eyJhbGciOiJSUzI1NiJ9.e30.sig"), None);
        let k = issue();
        assert_eq!(key_id(&k.token[..k.token.len() - 1]), None);
        assert_eq!(key_id(&format!("{}!", &k.token[..k.token.len() - 1])), None);
    }

    #[test]
    fn corrupt_stored_digest_never_matches() {
        let k = issue();
        assert!(!digest_matches(&k.token, "zz"));
        assert!(!digest_matches(&k.token, ""));
    }

    proptest! {
        #[test]
        fn key_id_never_panics_on_arbitrary_input(s in ".{0,120}") {
            let _ = key_id(&s);
        }

        #[test]
        fn digest_is_64_lowercase_hex(s in ".{0,80}") {
            let d = digest_hex(&s);
            prop_assert_eq!(d.len(), 64);
            prop_assert!(d.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        }
    }
}
