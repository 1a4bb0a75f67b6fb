//! Mutual TLS for the local stack, as an API Gateway custom domain with a truststore does it:
//! the TLS handshake verifies the client certificate against a CA (clients without one may
//! still connect and use a bearer token), and the verified certificate reaches the function in
//! `requestContext.authentication.clientCert` (PEM, subject and issuer DNs, serial number,
//! validity in API Gateway's `Jan  1 00:00:00 2026 GMT` form).
//!
//! Enabled when `TOLLGATE_DEV_TLS_CERT`, `TOLLGATE_DEV_TLS_KEY` (server certificate and key,
//! PEM) and `TOLLGATE_DEV_TLS_CLIENT_CA` (the truststore, PEM) are set.

use std::sync::Arc;

use anyhow::Context as _;
use aws_lambda_events::apigw::{
    ApiGatewayV2httpRequestContextAuthentication,
    ApiGatewayV2httpRequestContextAuthenticationClientCert,
};
use base64::Engine as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;

/// The verified client certificate of a connection, as API Gateway describes it.
#[derive(Debug, Clone)]
pub struct PeerCert(pub ApiGatewayV2httpRequestContextAuthentication);

/// Paths of the TLS material, from the environment.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Server certificate chain (PEM).
    pub cert: String,
    /// Server private key (PEM).
    pub key: String,
    /// CA that client certificates must chain to (PEM).
    pub client_ca: String,
}

impl TlsFiles {
    /// The files named by `TOLLGATE_DEV_TLS_*`, when all three are set.
    pub fn from_env() -> Option<Self> {
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
        Some(Self {
            cert: var("TOLLGATE_DEV_TLS_CERT")?,
            key: var("TOLLGATE_DEV_TLS_KEY")?,
            client_ca: var("TOLLGATE_DEV_TLS_CLIENT_CA")?,
        })
    }

    /// A server configuration that asks for (but does not require) a client certificate.
    pub fn server_config(&self) -> anyhow::Result<rustls::ServerConfig> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .with_context(|| format!("read {}", self.cert))?
            .collect::<Result<_, _>>()?;
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .with_context(|| format!("read {}", self.key))?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(&self.client_ca)
            .with_context(|| format!("read {}", self.client_ca))?
        {
            roots.add(ca?)?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .allow_unauthenticated()
            .build()?;
        Ok(rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)?)
    }
}

/// API Gateway's description of a DER certificate.
pub fn describe(der: &[u8]) -> Option<PeerCert> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).ok()?);
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    let serial = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let mut out = ApiGatewayV2httpRequestContextAuthenticationClientCert::default();
    out.client_cert_pem = Some(pem);
    out.subject_dn = Some(rfc4514(cert.subject()));
    out.issuer_dn = Some(rfc4514(cert.issuer()));
    out.serial_number = Some(serial);
    out.validity.not_before = Some(gmt(&cert.validity().not_before));
    out.validity.not_after = Some(gmt(&cert.validity().not_after));
    let mut auth = ApiGatewayV2httpRequestContextAuthentication::default();
    auth.client_cert = Some(out);
    Some(PeerCert(auth))
}

/// A DN in RFC 4514 order (most specific first), `CN=…,O=…`.
fn rfc4514(name: &x509_parser::x509::X509Name<'_>) -> String {
    let mut parts: Vec<String> = name
        .iter_attributes()
        .map(|a| {
            let key = match a.attr_type().to_id_string().as_str() {
                "2.5.4.3" => "CN".to_owned(),
                "2.5.4.10" => "O".to_owned(),
                "2.5.4.11" => "OU".to_owned(),
                "2.5.4.6" => "C".to_owned(),
                "2.5.4.7" => "L".to_owned(),
                "2.5.4.8" => "ST".to_owned(),
                other => other.to_owned(),
            };
            format!("{key}={}", a.as_str().unwrap_or("?"))
        })
        .collect();
    parts.reverse();
    parts.join(",")
}

/// `Jan  1 00:00:00 2026 GMT`.
fn gmt(t: &x509_parser::time::ASN1Time) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let d = t.to_datetime();
    format!(
        "{} {:>2} {:02}:{:02}:{:02} {} GMT",
        MONTHS[usize::from(u8::from(d.month())) - 1],
        d.day(),
        d.hour(),
        d.minute(),
        d.second(),
        d.year()
    )
}

/// Serves `app` over TLS on `listener` until ctrl-c; each connection's verified client
/// certificate is handed to the routes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    config: rustls::ServerConfig,
) -> anyhow::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let shutdown = tokio::signal::ctrl_c();
    tokio::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = &mut shutdown => return Ok(()),
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| describe(c.as_ref()));
            let app = app.layer(axum::Extension(peer));
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
    }
}
