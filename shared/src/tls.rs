//! TLS for every outbound client of a function: the AWS SDK, the shared `reqwest` client (OAuth
//! issuers, providers, tools' own APIs) and the OTLP span exporter.
//!
//! One TLS stack (rustls) on one crypto library (aws-lc-rs, the AWS SDK's default, which
//! `jsonwebtoken` uses too), trusting the Mozilla root set compiled into the binary
//! (`webpki-roots`, `webpki-root-certs`) plus, when an operator names one, a PEM bundle of
//! extra CAs ([`CA_BUNDLE_ENV`]). The system's certificate directory is never read: a cold start
//! opens no CA file, and a function trusts the same roots wherever it runs. Building a client
//! parses nothing: the compiled-in roots are static trust anchors, and the AWS SDK's HTTPS
//! connector is made on its first request.

use std::sync::{Arc, OnceLock};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

/// Names a PEM file of CA certificates trusted in addition to the compiled-in roots (a
/// corporate issuer, a provider's private CA, a TLS-inspecting egress proxy). Read once, when
/// the function starts; unset, no file is read.
pub const CA_BUNDLE_ENV: &str = "TOLLGATE_CA_BUNDLE";

/// Why the extra CA bundle was not usable. The function does not start with it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("{CA_BUNDLE_ENV}: cannot read {path}: {source}")]
    Read {
        /// The file named by the variable.
        path: String,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The file holds no certificate.
    #[error("{CA_BUNDLE_ENV}: {path} holds no PEM certificate")]
    Empty {
        /// The file named by the variable.
        path: String,
    },
    /// A certificate in the file is not valid.
    #[error("{CA_BUNDLE_ENV}: {path}: {reason}")]
    Invalid {
        /// The file named by the variable.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The roots a process trusts: the compiled-in set and the operator's extra CAs.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    extra: Arc<Vec<CertificateDer<'static>>>,
}

impl Trust {
    /// The compiled-in roots only.
    pub fn compiled_in() -> Self {
        Self::default()
    }

    /// The compiled-in roots, plus the bundle [`CA_BUNDLE_ENV`] names when it is set.
    pub fn from_env() -> Result<Self, TlsError> {
        match std::env::var(CA_BUNDLE_ENV) {
            Ok(path) if !path.is_empty() => Self::with_pem_file(&path),
            _ => Ok(Self::compiled_in()),
        }
    }

    /// The process's trust, loaded once (from [`Self::from_env`]) for every client it makes.
    pub fn process() -> Result<Self, Arc<TlsError>> {
        static TRUST: OnceLock<Result<Trust, Arc<TlsError>>> = OnceLock::new();
        TRUST
            .get_or_init(|| Self::from_env().map_err(Arc::new))
            .clone()
    }

    /// The compiled-in roots, plus every certificate of the PEM file at `path`.
    pub fn with_pem_file(path: &str) -> Result<Self, TlsError> {
        let pem = std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })?;
        let extra = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Invalid {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        if extra.is_empty() {
            return Err(TlsError::Empty {
                path: path.to_owned(),
            });
        }
        // Refuse a bundle rustls cannot use now rather than on the first handshake.
        let mut store = rustls::RootCertStore::empty();
        for cert in &extra {
            store.add(cert.clone()).map_err(|e| TlsError::Invalid {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        }
        Ok(Self {
            extra: Arc::new(extra),
        })
    }

    /// How many CAs the operator added.
    pub fn extra_cas(&self) -> usize {
        self.extra.len()
    }

    /// A rustls client configuration on aws-lc-rs trusting these roots (HTTP/1.1 only, as
    /// every client here speaks).
    pub fn rustls_config(&self) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        // Validated in `with_pem_file`.
        roots.add_parsable_certificates(self.extra.iter().cloned());
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("aws-lc-rs supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth()
    }

    /// A `reqwest` client builder using [`Self::rustls_config`].
    pub fn reqwest(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder().tls_backend_preconfigured(self.rustls_config())
    }

    /// A blocking `reqwest` client builder using [`Self::rustls_config`] (the OTLP exporter).
    pub fn reqwest_blocking(&self) -> reqwest::blocking::ClientBuilder {
        reqwest::blocking::Client::builder().tls_backend_preconfigured(self.rustls_config())
    }

    /// The AWS SDK's HTTP client: rustls on aws-lc-rs, trusting these roots, not the system's.
    /// Nothing is built until the SDK's first request asks for a connector.
    pub fn aws_http_client(&self) -> aws_smithy_runtime_api::client::http::SharedHttpClient {
        aws_smithy_runtime_api::client::http::SharedHttpClient::new(LazyAwsClient {
            trust: self.clone(),
            client: OnceLock::new(),
        })
    }

    fn build_aws_http_client(&self) -> aws_smithy_runtime_api::client::http::SharedHttpClient {
        use aws_smithy_http_client::tls;
        let mut store = tls::TrustStore::empty().with_native_roots(false);
        store.add_pem_certificate(compiled_in_pem());
        for cert in self.extra.iter() {
            store.add_pem_certificate(to_pem(cert));
        }
        let context = tls::TlsContext::builder()
            .with_trust_store(store)
            .build()
            .expect("a trust store of PEM certificates is a valid TLS context");
        aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::AwsLc,
            ))
            .tls_context(context)
            .build_https()
    }
}

/// The AWS SDK's HTTPS client, made (roots encoded, connector built) on the first request.
#[derive(Debug)]
struct LazyAwsClient {
    trust: Trust,
    client: OnceLock<aws_smithy_runtime_api::client::http::SharedHttpClient>,
}

impl aws_smithy_runtime_api::client::http::HttpClient for LazyAwsClient {
    fn http_connector(
        &self,
        settings: &aws_smithy_runtime_api::client::http::HttpConnectorSettings,
        components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
    ) -> aws_smithy_runtime_api::client::http::SharedHttpConnector {
        self.client
            .get_or_init(|| self.trust.build_aws_http_client())
            .http_connector(settings, components)
    }
}

/// The process's crypto provider (aws-lc-rs), installed as the rustls default too so that any
/// client built without [`Trust`] uses the same library.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let p = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            // Another library may have installed one first; both are aws-lc-rs here.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            p
        })
        .clone()
}

/// The compiled-in roots as one PEM bundle (the AWS SDK's trust store takes PEM).
fn compiled_in_pem() -> Vec<u8> {
    static PEM: OnceLock<Vec<u8>> = OnceLock::new();
    PEM.get_or_init(|| {
        webpki_root_certs::TLS_SERVER_ROOT_CERTS
            .iter()
            .flat_map(to_pem)
            .collect()
    })
    .clone()
}

fn to_pem(cert: &CertificateDer<'_>) -> Vec<u8> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
    let mut pem = b"-----BEGIN CERTIFICATE-----\n".to_vec();
    for line in b64.as_bytes().chunks(64) {
        pem.extend_from_slice(line);
        pem.push(b'\n');
    }
    pem.extend_from_slice(b"-----END CERTIFICATE-----\n");
    pem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiled_in_roots_round_trip_through_pem() {
        let pem = compiled_in_pem();
        let parsed: Vec<_> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .expect("pem");
        assert_eq!(parsed.len(), webpki_root_certs::TLS_SERVER_ROOT_CERTS.len());
        assert!(parsed.len() > 100);
        assert_eq!(
            parsed[0].as_ref(),
            webpki_root_certs::TLS_SERVER_ROOT_CERTS[0].as_ref()
        );
    }

    #[test]
    fn a_missing_or_empty_bundle_is_refused() {
        let dir = std::env::temp_dir().join(format!("tollgate-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let missing = dir.join("missing.pem");
        assert!(matches!(
            Trust::with_pem_file(missing.to_str().expect("utf8")),
            Err(TlsError::Read { .. })
        ));
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        assert!(matches!(
            Trust::with_pem_file(empty.to_str().expect("utf8")),
            Err(TlsError::Empty { .. })
        ));
        let garbage = dir.join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        assert!(matches!(
            Trust::with_pem_file(garbage.to_str().expect("utf8")),
            Err(TlsError::Invalid { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn compiled_in_trust_adds_nothing() {
        assert_eq!(Trust::compiled_in().extra_cas(), 0);
        let config = Trust::compiled_in().rustls_config();
        assert!(config.alpn_protocols.is_empty());
    }

    /// A private CA, a server certificate it issued for `localhost`, and a PEM file of the CA.
    struct PrivateCa {
        ca_file: std::path::PathBuf,
        server: rustls::ServerConfig,
    }

    fn private_ca(dir: &std::path::Path) -> PrivateCa {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().expect("key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tollgate test private CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().expect("key");
        let server_cert = CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .signed_by(&server_key, &issuer)
            .expect("server cert");
        let ca_file = dir.join("private-ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).expect("write");
        let key =
            rustls_pki_types::PrivateKeyDer::try_from(server_key.serialize_der()).expect("key der");
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![server_cert.der().clone()], key)
            .expect("server config");
        PrivateCa { ca_file, server }
    }

    /// An HTTPS server on loopback answering every request with an empty DynamoDB
    /// `ListTables` result (good enough for `reqwest` and the AWS SDK alike).
    async fn https_server(config: rustls::ServerConfig) -> u16 {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A client that refuses the certificate ends the handshake: nothing to serve.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let body = br#"{"TableNames":[]}"#;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = tls.write_all(head.as_bytes()).await;
                    let _ = tls.write_all(body).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        port
    }

    fn dynamodb(trust: &Trust, port: u16) -> aws_sdk_dynamodb::Client {
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "test", "test", None, None, "test",
            ))
            .endpoint_url(format!("https://localhost:{port}"))
            .http_client(trust.aws_http_client())
            .retry_config(aws_smithy_types::retry::RetryConfig::disabled())
            .build();
        aws_sdk_dynamodb::Client::from_conf(config)
    }

    #[tokio::test]
    async fn a_private_ca_named_by_the_operator_is_trusted_by_every_client() {
        let dir = std::env::temp_dir().join(format!("tollgate-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let ca = private_ca(&dir);
        let port = https_server(ca.server).await;
        let url = format!("https://localhost:{port}/");

        // The compiled-in roots alone do not know the private CA: both clients refuse it.
        let compiled_in = Trust::compiled_in();
        let refused = compiled_in
            .reqwest()
            .build()
            .expect("client")
            .get(&url)
            .send()
            .await;
        assert!(refused.is_err(), "an unknown issuer must be refused");
        let sdk_refused = dynamodb(&compiled_in, port).list_tables().send().await;
        assert!(
            sdk_refused.is_err(),
            "the SDK must refuse an unknown issuer"
        );

        // With the CA bundle: reqwest, the blocking client (OTLP) and the AWS SDK connect.
        let trust = Trust::with_pem_file(ca.ca_file.to_str().expect("utf8")).expect("bundle");
        assert_eq!(trust.extra_cas(), 1);
        let resp = trust
            .reqwest()
            .build()
            .expect("client")
            .get(&url)
            .send()
            .await
            .expect("trusted");
        assert_eq!(resp.status(), 200);
        let blocking_trust = trust.clone();
        let blocking_url = url.clone();
        // A blocking client runs its own runtime: made, used and dropped off the async one.
        let status = tokio::task::spawn_blocking(move || {
            let client = blocking_trust.reqwest_blocking().build().expect("client");
            client.get(blocking_url).send().map(|r| r.status())
        })
        .await
        .expect("join")
        .expect("trusted");
        assert_eq!(status, 200);
        let tables = dynamodb(&trust, port)
            .list_tables()
            .send()
            .await
            .expect("the SDK trusts the private CA");
        assert!(tables.table_names().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
