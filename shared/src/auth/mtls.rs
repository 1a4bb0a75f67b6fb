//! Client certificates from API Gateway mutual TLS.
//!
//! API Gateway verifies the certificate chain against the custom domain's truststore during
//! the TLS handshake and hands the function `requestContext.authentication.clientCert`:
//! the PEM, subject and issuer DNs, serial number and validity. tollgate maps a certificate to
//! an agent through a binding made with `tollgate agents bind-cert`: by the SHA-256
//! fingerprint of the certificate (`sha256:<hex>`, one certificate), else by its subject DN
//! (`subject:<DN>`, any certificate the truststore accepts with that subject). Validity is
//! checked again here, so a certificate that expired after the handshake is refused.

use aws_lambda_events::apigw::ApiGatewayV2httpRequest;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use super::AuthError;

/// The client certificate of a request, as API Gateway describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// `sha256:` and the lowercase hex SHA-256 of the DER certificate.
    pub fingerprint: String,
    /// Subject DN as API Gateway wrote it.
    pub subject: Option<String>,
    /// Validity start, Unix seconds.
    pub not_before: Option<u64>,
    /// Validity end, Unix seconds.
    pub not_after: Option<u64>,
}

impl ClientCert {
    /// The certificate of `event`, if the request came over mutual TLS. A certificate block
    /// whose PEM cannot be read is an error, not an absent certificate.
    pub fn from_event(event: &ApiGatewayV2httpRequest) -> Result<Option<Self>, AuthError> {
        let Some(cert) = event
            .request_context
            .authentication
            .as_ref()
            .and_then(|a| a.client_cert.as_ref())
        else {
            return Ok(None);
        };
        let pem = cert
            .client_cert_pem
            .as_deref()
            .ok_or(AuthError::Malformed)?;
        let der = pem_to_der(pem).ok_or(AuthError::Malformed)?;
        let validity = |v: Option<&str>| match v {
            None => Ok(None),
            Some(s) => parse_validity(s).map(Some).ok_or(AuthError::Malformed),
        };
        Ok(Some(Self {
            fingerprint: fingerprint(&der),
            subject: cert.subject_dn.clone().filter(|s| !s.is_empty()),
            not_before: validity(cert.validity.not_before.as_deref())?,
            not_after: validity(cert.validity.not_after.as_deref())?,
        }))
    }

    /// Binding ids to try, most specific first.
    pub fn binding_ids(&self) -> Vec<String> {
        let mut ids = vec![self.fingerprint.clone()];
        if let Some(s) = &self.subject {
            ids.push(subject_binding(s));
        }
        ids
    }

    /// Refuses a certificate outside its validity period at `now` (Unix seconds).
    pub fn check_validity(&self, now: u64) -> Result<(), AuthError> {
        if self.not_after.is_some_and(|t| t < now) {
            return Err(AuthError::CertificateExpired);
        }
        if self.not_before.is_some_and(|t| t > now) {
            return Err(AuthError::NotYetValid);
        }
        Ok(())
    }
}

/// The binding id of a subject DN.
pub fn subject_binding(dn: &str) -> String {
    format!("subject:{}", dn.trim())
}

/// `sha256:` and the hex SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

/// The DER bytes of the first certificate in a PEM document.
pub fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let start = pem.find(BEGIN)? + BEGIN.len();
    let end = start + pem[start..].find(END)?;
    let b64: String = pem[start..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    (!der.is_empty()).then_some(der)
}

/// Parses API Gateway's validity form, `May 28 12:30:02 2019 GMT`, to Unix seconds.
pub fn parse_validity(s: &str) -> Option<u64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [mon, day, time, year, "GMT"] = parts.as_slice() else {
        return None;
    };
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == mon)? as u64
        + 1;
    let day: u64 = day.parse().ok().filter(|d| (1..=31).contains(d))?;
    let year: u64 = year.parse().ok().filter(|y| (1970..=9999).contains(y))?;
    let hms: Vec<u64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, sec] = hms.as_slice() else {
        return None;
    };
    if *h > 23 || *m > 59 || *sec > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_dates_parse_in_api_gateway_form() {
        assert_eq!(parse_validity("Jan  1 00:00:00 1970 GMT"), Some(0));
        assert_eq!(
            parse_validity("May 28 12:30:02 2019 GMT"),
            Some(1_559_046_602)
        );
        assert_eq!(
            parse_validity("Feb 29 00:00:00 2024 GMT"),
            Some(1_709_164_800)
        );
        for bad in [
            "",
            "May 28 12:30:02 2019",
            "Foo 28 12:30:02 2019 GMT",
            "May 32 12:30:02 2019 GMT",
            "May 28 25:30:02 2019 GMT",
            "May 28 12:30 2019 GMT",
        ] {
            assert_eq!(parse_validity(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn pem_is_decoded_and_fingerprinted() {
        let pem = "-----BEGIN CERTIFICATE-----\nAAEC\nAw==\n-----END CERTIFICATE-----\n";
        let der = pem_to_der(pem).expect("der");
        assert_eq!(der, [0, 1, 2, 3]);
        assert_eq!(
            fingerprint(&der),
            "sha256:054edec1d0211f624fed0cbca9d4f9400b0e491c43742af2c5b0abebf0c990d8"
        );
        assert_eq!(pem_to_der("not a pem"), None);
        assert_eq!(
            pem_to_der("-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----"),
            None
        );
    }
}
