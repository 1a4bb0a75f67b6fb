//! Signature checks of access tokens on the process's one crypto library (`ring`, the provider
//! of [`crate::tls`]), installed as `jsonwebtoken`'s crypto provider: the binaries link no
//! second library for four verifications.
//!
//! Only what the resource server accepts is here: RS256, PS256 (RSA, 2048 to 8192 bits),
//! ES256 (P-256) and EdDSA (Ed25519) verification. Any other algorithm, and signing, is an
//! error, never a panic; `oauth` refuses other algorithms before a key is even looked up.

use std::sync::Once;

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::jwk::ThumbprintHash;
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::signature::{self as sig, RsaParameters, UnparsedPublicKey, VerificationAlgorithm};

/// Installs the provider for the process (idempotent; the first call wins). Called before the
/// first token is decoded (`OAuthVerifier::new`).
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means a provider is already installed: only this module installs one.
        let _ = PROVIDER.install_default();
    });
}

static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: no_signer,
    verifier_factory: verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: |_| Err(ErrorKind::InvalidKeyFormat.into()),
        rsa_pub_components_from_public_key: |_| Err(ErrorKind::InvalidKeyFormat.into()),
        ec_pub_components_from_private_key: |_, _| Err(ErrorKind::InvalidKeyFormat.into()),
        ed_pub_components_from_private_key: |_, _| Err(ErrorKind::InvalidKeyFormat.into()),
        compute_digest: digest,
    },
};

fn no_signer(_: &Algorithm, _: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    Err(ErrorKind::InvalidAlgorithm.into())
}

fn digest(data: &[u8], hash: ThumbprintHash) -> Result<Vec<u8>, Error> {
    let algorithm = match hash {
        ThumbprintHash::SHA256 => &ring::digest::SHA256,
        ThumbprintHash::SHA384 => &ring::digest::SHA384,
        ThumbprintHash::SHA512 => &ring::digest::SHA512,
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    };
    Ok(ring::digest::digest(algorithm, data).as_ref().to_vec())
}

/// How a key of one accepted algorithm checks a signature.
enum Check {
    Rsa(&'static RsaParameters),
    Raw(&'static dyn VerificationAlgorithm),
}

struct Verifier {
    alg: Algorithm,
    check: Check,
    key: DecodingKey,
}

fn verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    let check = match alg {
        Algorithm::RS256 => Check::Rsa(&sig::RSA_PKCS1_2048_8192_SHA256),
        Algorithm::PS256 => Check::Rsa(&sig::RSA_PSS_2048_8192_SHA256),
        Algorithm::ES256 => Check::Raw(&sig::ECDSA_P256_SHA256_FIXED),
        Algorithm::EdDSA => Check::Raw(&sig::ED25519),
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    };
    if key.family() != alg.family() {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    Ok(Box::new(Verifier {
        alg: *alg,
        check,
        key: key.clone(),
    }))
}

impl signature::Verifier<Vec<u8>> for Verifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        let checked = match (&self.check, self.key.kind()) {
            (Check::Rsa(params), DecodingKeyKind::RsaModulusExponent { n, e }) => {
                sig::RsaPublicKeyComponents { n, e }.verify(params, msg, signature)
            }
            (Check::Rsa(params), DecodingKeyKind::SecretOrDer(der)) => {
                UnparsedPublicKey::new(*params, der).verify(msg, signature)
            }
            (Check::Raw(algorithm), DecodingKeyKind::SecretOrDer(bytes)) => {
                UnparsedPublicKey::new(*algorithm, bytes).verify(msg, signature)
            }
            (Check::Raw(_), DecodingKeyKind::RsaModulusExponent { .. }) => {
                return Err(signature::Error::new());
            }
        };
        checked.map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for Verifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use ring::rand::SystemRandom;
    use ring::signature::KeyPair as _;

    fn token(header: &str, claims: &str, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
        let message = format!("{}.{}", B64.encode(header), B64.encode(claims));
        let signature = sign(message.as_bytes());
        format!("{message}.{}", B64.encode(signature))
    }

    fn decode(token: &str, key: &DecodingKey, alg: Algorithm) -> Result<(), ErrorKind> {
        install();
        let mut validation = jsonwebtoken::Validation::new(alg);
        validation.set_required_spec_claims(&["exp"]);
        validation.validate_aud = false;
        jsonwebtoken::decode::<serde_json::Value>(token, key, &validation)
            .map(drop)
            .map_err(|e| e.into_kind())
    }

    const CLAIMS: &str = r#"{"sub":"u","exp":4102444800}"#;

    /// A 2048-bit RSA key made for this test only (PKCS#1 DER, base64): ring signs but cannot
    /// generate RSA keys.
    const TEST_RSA_DER: &str = concat!(
        "MIIEogIBAAKCAQEAtwV2vlvPGc5Y7VHRVPBpLYZf7pcvtG9vEY0U2hFbLTLIWXBteIhrp6rcJ63T25tcQaINX4xz",
        "D2KGOa3r0pr8D6III4p1pOPrclxozlVD1G35oVR6e4beLUMfOmLFsefXQiLccZGHEfRUnrJwZmSypYwE/00wQPhG",
        "EpqycFu9PkkeX2gM4tCUFhEUgroWrx9AOIWUQbrKQcxEjUJvzFvSt6ep+uGfe5enXmicb91/99JslIgCr/bCtINV",
        "SL50d5CcYOdc3dHo6I3Lym0sNFZ6k4cl0p9X3Z0qc/I/SaspprY3BRGFJp5P8cBpdddWnftHIacun9cy535+UhyZ",
        "K7jczQIDAQABAoIBADA/P/zRnghbBcVWDr15/PgT1uFCOMCzqY9yZh9QeP0yyG8PfMRMDjkuiQfqwpE/ZPQmYKki",
        "EMjq+6Bj8WldEvqaB9Q6sWWs8cn9g2F1R8LN1QNLDljXBmXfLnHJTP1ntS7JmtxTdUxt4QrO1mOfwxpyDXUx53kR",
        "GgPYhRaqkHpFAPDBhFZSYWeg6x+2tHL370qhO+BxrXeFSJTQ/5/NVNN/zgvbZQc0yPRWNwWrZqBpKlb/H2mnf8OV",
        "rOR2Dg+O4LOo4x2WKaatjOkstPi4xmz2xi8sJQqgz40w5wyhjG0+IRB964hweNWub8TdAXVrwVoUJRQlDIuNoWnd",
        "hsGzyC8CgYEA5MY4Dlf4uvExM6REkUNO3kU/2wlQIuoxe5ebxNH7c3kVdVIfYWlC03YvXKj0fjwdcew62RHne5lB",
        "JfAWrAOT2z4dwXoi41uDxGmP8m5RWityy0piHC7izCpZIqMs5dbZKHShxfdDaCLufC41loXdbvDHxuv27E43B115",
        "zXeYJccCgYEAzM1YyU/ORcX4Eng7xhN8mU0gkVfOrsNTka4jmu0GuOyiUcQzxVeKbcfrFG/EiwuZrHBub/QX3atH",
        "/Iiz9J2rtkJRiqNjhXm6g93upFCOOAXKO5QcXTJGfYX/BnmZ6BuLb5E29Qj2SdkCuub2t+aqlmUVUyVi1S6BvHk0",
        "U7w12MsCgYAYFvtOH1tUrBMnQfPqa/EBHL+lm+xxUMHXJtbDOe1Fcomc6gHd6wybYcWI902PgVsEZQCpXOZIMJIY",
        "oZhxkoreOkM93VORJ1DPvOHogE9WtF6JI5MDLri5EPiD2jTfGumRBf8G7ouNiqgcMW15JS11Aiu3OZ+tsGrA/snV",
        "pfNCfwKBgHQD20jm2X2zAK1NyOaTAWFCTLGo4R8k7QE4eVj47nbxLZ5OG9mtlnBL8MI58kemAZ6qbhUjXCWpMnU+",
        "51opuyza8qAroGPrKhorLVWNgJMBzKblZw/wO/g9YNNFLUdL2zgPNeem9QWuVhqUXaydkYLyrhrUseD7oGio7FiG",
        "5KXzAoGAA/CVZLZ58cAZ5cgZyiAUAr/FUGebdsiE5Rq9q838TgKoJZ9j+k4QpN+aRa/klay2IpfSO/iv2D+qjmNY",
        "khYh24jcHYXc/DjCnvEck9TsVwLLdP3m+K1tI6tnni2BhZFNt52hB5qJXACThcwZjEalCQcIOF2YerdQUq4KrtLG",
        "PXk=",
    );

    #[test]
    fn rs256_and_ps256_tokens_verify_against_the_jwk_components() {
        let der = base64::engine::general_purpose::STANDARD
            .decode(TEST_RSA_DER)
            .expect("base64");
        let pair = sig::RsaKeyPair::from_der(&der).expect("key");
        let public = sig::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
        let key = DecodingKey::from_rsa_components(&B64.encode(&public.n), &B64.encode(&public.e))
            .expect("components");
        let rng = SystemRandom::new();
        for (alg, header, padding) in [
            (
                Algorithm::RS256,
                r#"{"alg":"RS256"}"#,
                &sig::RSA_PKCS1_SHA256 as &dyn sig::RsaEncoding,
            ),
            (Algorithm::PS256, r#"{"alg":"PS256"}"#, &sig::RSA_PSS_SHA256),
        ] {
            let good = token(header, CLAIMS, |m| {
                let mut out = vec![0; pair.public().modulus_len()];
                pair.sign(padding, &rng, m, &mut out).expect("sign");
                out
            });
            assert_eq!(decode(&good, &key, alg), Ok(()), "{alg:?}");
            let claims_changed = good.replacen(
                &B64.encode(CLAIMS),
                &B64.encode(r#"{"sub":"v","exp":4102444800}"#),
                1,
            );
            assert_eq!(
                decode(&claims_changed, &key, alg),
                Err(ErrorKind::InvalidSignature),
                "{alg:?}"
            );
        }
        // A PKCS#1 v1.5 signature is not a PSS one.
        let pkcs1 = token(r#"{"alg":"PS256"}"#, CLAIMS, |m| {
            let mut out = vec![0; pair.public().modulus_len()];
            pair.sign(&sig::RSA_PKCS1_SHA256, &rng, m, &mut out)
                .expect("sign");
            out
        });
        assert_eq!(
            decode(&pkcs1, &key, Algorithm::PS256),
            Err(ErrorKind::InvalidSignature)
        );
    }

    #[test]
    fn ecdsa_and_eddsa_tokens_verify_and_a_changed_byte_does_not() {
        let rng = SystemRandom::new();
        let es = sig::EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("key");
        let es =
            sig::EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, es.as_ref(), &rng)
                .expect("key");
        let point = es.public_key().as_ref();
        let es_key =
            DecodingKey::from_ec_components(&B64.encode(&point[1..33]), &B64.encode(&point[33..]))
                .expect("components");
        let good = token(r#"{"alg":"ES256"}"#, CLAIMS, |m| {
            es.sign(&rng, m).expect("sign").as_ref().to_vec()
        });
        assert_eq!(decode(&good, &es_key, Algorithm::ES256), Ok(()));
        let mut bad = good.clone().into_bytes();
        let last = bad.len() - 3;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        let bad = String::from_utf8(bad).expect("ascii");
        assert_eq!(
            decode(&bad, &es_key, Algorithm::ES256),
            Err(ErrorKind::InvalidSignature)
        );

        let ed = sig::Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
        let ed = sig::Ed25519KeyPair::from_pkcs8(ed.as_ref()).expect("key");
        let ed_key =
            DecodingKey::from_ed_components(&B64.encode(ed.public_key().as_ref())).expect("x");
        let good = token(r#"{"alg":"EdDSA"}"#, CLAIMS, |m| {
            ed.sign(m).as_ref().to_vec()
        });
        assert_eq!(decode(&good, &ed_key, Algorithm::EdDSA), Ok(()));
        // The ES256 token's key cannot check an EdDSA signature: refused, not a panic.
        assert_eq!(
            decode(&good, &es_key, Algorithm::EdDSA),
            Err(ErrorKind::InvalidKeyFormat)
        );
    }

    #[test]
    fn hmac_and_unlisted_algorithms_are_refused_without_a_panic() {
        let secret = DecodingKey::from_secret(b"public key bytes used as an HMAC secret");
        let forged = token(r#"{"alg":"HS256"}"#, CLAIMS, |_| vec![0; 32]);
        assert_eq!(
            decode(&forged, &secret, Algorithm::HS256),
            Err(ErrorKind::InvalidAlgorithm)
        );
        let es384 = token(r#"{"alg":"ES384"}"#, CLAIMS, |_| vec![0; 96]);
        let ec = DecodingKey::from_ec_der(&[4; 97]);
        assert_eq!(
            decode(&es384, &ec, Algorithm::ES384),
            Err(ErrorKind::InvalidAlgorithm)
        );
        assert!(
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(Algorithm::ES256),
                &serde_json::json!({}),
                &EncodingKey::from_secret(b"x"),
            )
            .is_err()
        );
    }
}
