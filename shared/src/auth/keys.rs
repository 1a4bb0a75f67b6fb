//! Per-agent bearer keys: generation, parsing, checksums and digests.
//!
//! A token reads `tg_<key id>_<secret><check>`: the prefix makes leaked tokens easy to spot by
//! secret scanners, the 12-character key id is public (logs, admin listings, the DynamoDB key),
//! the secret is 32 random bytes in base64url, and the 6-character check is a checksum of the
//! rest (30 bits of its SHA-256, in the key id's alphabet). A random, mistyped, truncated or
//! forged token fails the checksum and is refused offline, without a store read; a token with
//! a valid checksum costs at most one read per key id (then cached). Only the SHA-256 digest of
//! the whole token is stored.
//!
//! Keys issued before the checksum (`tg_<key id>_<secret>`, 59 characters: [`Shape::Key`] with
//! `checked: false`) keep working while legacy keys are accepted
//! (`TOLLGATE_ACCEPT_LEGACY_KEYS`, on by default); such a token cannot be checked offline.

use base64::Engine as _;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// Every tollgate bearer key starts with this.
pub const TOKEN_PREFIX: &str = "tg_";
const KEY_ID_LEN: usize = 12;
const SECRET_LEN: usize = 43; // 32 bytes, base64url without padding
const CHECK_LEN: usize = 6; // 30 bits, 5 per character
const KEY_ID_ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
/// Length of a legacy token (no checksum) and of the checked part of a current one.
const LEGACY_LEN: usize = TOKEN_PREFIX.len() + KEY_ID_LEN + 1 + SECRET_LEN;

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
    let body = format!(
        "{TOKEN_PREFIX}{key_id}_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    let token = format!("{body}{}", checksum(&body));
    let digest_hex = digest_hex(&token);
    IssuedKey {
        token,
        key_id,
        digest_hex,
    }
}

/// The check characters of a token's first [`LEGACY_LEN`] characters: the first 30 bits of
/// their SHA-256, 5 bits per character of the key id's alphabet.
fn checksum(body: &str) -> String {
    let digest = Sha256::digest(body.as_bytes());
    let bits = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) >> 2;
    (0..CHECK_LEN)
        .rev()
        .map(|i| char::from(KEY_ID_ALPHABET[((bits >> (5 * i)) & 31) as usize]))
        .collect()
}

/// Lowercase hex SHA-256 of a token.
pub fn digest_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// What a bearer token is, decided offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape<'t> {
    /// A well-formed tollgate key with this public id: `checked` when its checksum was
    /// verified, `false` for a legacy key (issued before the checksum).
    Key {
        /// The public key id.
        id: &'t str,
        /// Whether the token carries a checksum (and it matched).
        checked: bool,
    },
    /// Starts with [`TOKEN_PREFIX`] but is no valid key: wrong length or characters, or a
    /// checksum that does not match. Refused without a store read.
    Malformed,
    /// Not a tollgate key (it may be another kind of credential, such as a JWT).
    Foreign,
}

/// Classifies a bearer token without any I/O.
pub fn shape(token: &str) -> Shape<'_> {
    let Some(rest) = token.strip_prefix(TOKEN_PREFIX) else {
        return Shape::Foreign;
    };
    if !token.is_ascii() {
        return Shape::Malformed;
    }
    let checked = match token.len() {
        LEGACY_LEN => false,
        n if n == LEGACY_LEN + CHECK_LEN => true,
        _ => return Shape::Malformed,
    };
    let (id, tail) = rest.split_at(KEY_ID_LEN);
    let Some(secret) = tail.strip_prefix('_') else {
        return Shape::Malformed;
    };
    let (secret, check) = secret.split_at(SECRET_LEN);
    let id_ok = id.bytes().all(|b| KEY_ID_ALPHABET.contains(&b));
    let secret_ok = secret
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    // The checksum is public: comparing it in constant time protects nothing.
    let check_ok = !checked || check == checksum(&token[..LEGACY_LEN]);
    if id_ok && secret_ok && check_ok {
        Shape::Key { id, checked }
    } else {
        Shape::Malformed
    }
}

/// The public key id of a well-formed tollgate token (with a matching checksum, or legacy),
/// or `None` otherwise.
pub fn key_id(token: &str) -> Option<&str> {
    match shape(token) {
        Shape::Key { id, .. } => Some(id),
        Shape::Malformed | Shape::Foreign => None,
    }
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
    fn issued_tokens_carry_a_checksum_and_legacy_tokens_still_parse() {
        let k = issue();
        assert_eq!(k.token.len(), LEGACY_LEN + CHECK_LEN);
        assert_eq!(
            shape(&k.token),
            Shape::Key {
                id: &k.key_id,
                checked: true
            }
        );
        // A key issued before the checksum: the same token without its check characters.
        let legacy = &k.token[..LEGACY_LEN];
        assert_eq!(
            shape(legacy),
            Shape::Key {
                id: &k.key_id,
                checked: false
            }
        );
        assert_eq!(shape("eyJhbGciOiJSUzI1NiJ9.e30.sig"), Shape::Foreign);
        assert_eq!(shape("tg_short"), Shape::Malformed);
    }

    #[test]
    fn every_single_character_change_fails_the_checksum_offline() {
        let k = issue();
        let alphabet = b"abcdefghijkmnpqrstuvwxyz23456789ABCDEFGHIJKLMNOPQRSTUVWXYZ01-_";
        let mut refused = 0;
        for i in TOKEN_PREFIX.len()..k.token.len() {
            for &c in alphabet {
                let mut t = k.token.clone().into_bytes();
                if t[i] == c {
                    continue;
                }
                t[i] = c;
                let t = String::from_utf8(t).expect("ascii");
                assert_eq!(shape(&t), Shape::Malformed, "{i} {}", char::from(c));
                refused += 1;
            }
        }
        assert!(refused > 3000, "{refused}");
        // Cut or extended by a character: neither shape.
        assert_eq!(shape(&k.token[..k.token.len() - 1]), Shape::Malformed);
        assert_eq!(shape(&format!("{}a", k.token)), Shape::Malformed);
    }

    #[test]
    fn the_checksum_is_thirty_bits_of_the_bodys_digest() {
        // Pinned: tokens already issued must keep their check characters across releases.
        let body = "tg_abcdefghijkm_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert_eq!(body.len(), LEGACY_LEN);
        let digest = Sha256::digest(body.as_bytes());
        let bits = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) >> 2;
        let expected: String = (0..CHECK_LEN)
            .map(|i| KEY_ID_ALPHABET[((bits >> (5 * (CHECK_LEN - 1 - i))) & 31) as usize])
            .map(char::from)
            .collect();
        assert_eq!(checksum(body), expected);
        assert_eq!(checksum(body), "rbh56p"); // also computed with Python's hashlib
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
        fn random_tokens_of_the_current_shape_are_malformed(
            body in "tg_[a-km-np-z2-9]{12}_[A-Za-z0-9_-]{43}",
            check in "[a-km-np-z2-9]{6}",
        ) {
            prop_assume!(check != checksum(&body));
            let token = format!("{body}{check}");
            prop_assert_eq!(shape(&token), Shape::Malformed);
            // The same body with its checksum is a key.
            let fixed = format!("{body}{}", checksum(&body));
            let is_key = matches!(shape(&fixed), Shape::Key { checked: true, .. });
            prop_assert!(is_key);
        }

        #[test]
        fn digest_is_64_lowercase_hex(s in ".{0,80}") {
            let d = digest_hex(&s);
            prop_assert_eq!(d.len(), 64);
            prop_assert!(d.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        }
    }
}
