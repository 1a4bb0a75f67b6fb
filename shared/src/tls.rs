//! TLS for every outbound client of a function: the AWS SDK, the shared `reqwest` client (OAuth
//! issuers, providers, tools' own APIs) and the OTLP span exporter.
//!
//! One TLS stack (rustls) on one crypto library (`ring`, which also checks access tokens'
//! signatures: `auth::jws`), trusting the Mozilla root set compiled into the binary
//! (`webpki-roots`) plus, when an operator names one, a PEM bundle of
//! extra CAs ([`CA_BUNDLE_ENV`]). The system's certificate directory is never read: a cold start
//! opens no CA file, and a function trusts the same roots wherever it runs. Building a client
//! parses nothing: the compiled-in roots are static trust anchors, and the AWS SDK's HTTPS
//! connector is made on its first request. The AWS SDK sends through the HTTP stack `reqwest`
//! is built on (hyper-util's pool on hyper-rustls, without `reqwest`'s own layers: it costs a
//! store request about 0.1 ms of CPU less), or through `reqwest` itself when a proxy variable is
//! set ([`Trust::aws_http_client`]): one HTTP client stack in a function, HTTP/1.1 only.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

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

    /// A rustls client configuration on `ring` trusting these roots (HTTP/1.1 only, as
    /// every client here speaks).
    pub fn rustls_config(&self) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        // Validated in `with_pem_file`.
        roots.add_parsable_certificates(self.extra.iter().cloned());
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
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

    /// The AWS SDK's HTTP client: hyper-util's connection pool on hyper-rustls (the HTTP stack
    /// `reqwest` is built on, without `reqwest`'s layers: a store request is the hot path's
    /// largest cost), with this rustls configuration; through `reqwest` when a proxy variable
    /// is set ([`PROXY_ENV`]), since `reqwest` honours them. One connection pool per timeout
    /// setting the SDK asks for; nothing is built until the SDK's first request asks for a
    /// connector.
    pub fn aws_http_client(&self) -> aws_smithy_runtime_api::client::http::SharedHttpClient {
        let proxied = proxy_configured(|name| std::env::var_os(name));
        aws_smithy_runtime_api::client::http::SharedHttpClient::new(AwsHttpClient {
            trust: self.clone(),
            proxied,
            pools: Mutex::new(Vec::new()),
        })
    }
}

/// The proxy variables `reqwest` honours. When one is set, the AWS SDK sends through `reqwest`
/// (which also reads `NO_PROXY`); otherwise straight through hyper-util's pool.
pub const PROXY_ENV: [&str; 6] = [
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// Whether any of [`PROXY_ENV`] is set to something, `var` reading a variable.
fn proxy_configured(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> bool {
    PROXY_ENV
        .iter()
        .any(|name| var(name).is_some_and(|v| !v.is_empty()))
}

/// The timeouts the AWS SDK asks a connector for: connect, and time to the first response byte.
type Timeouts = (Option<Duration>, Option<Duration>);

/// hyper-util's pooled client on hyper-rustls, sending the SDK's own bodies.
type HyperPool = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    aws_smithy_types::body::SdkBody,
>;

/// The AWS SDK's HTTP client: one pooled client per [`Timeouts`] the SDK asks for (in practice
/// one per process).
#[derive(Debug)]
struct AwsHttpClient {
    trust: Trust,
    /// A proxy variable is set: send through `reqwest`.
    proxied: bool,
    pools: Mutex<Vec<(Timeouts, Sender)>>,
}

/// What sends a request, made once per [`Timeouts`].
#[derive(Debug, Clone)]
enum Sender {
    /// hyper-util's pool; the read timeout is applied around each exchange.
    Direct {
        pool: Arc<HyperPool>,
        read_timeout: Option<Duration>,
    },
    /// `reqwest` (a proxy is configured), or why it could not be built (then every request
    /// fails with it).
    Proxied(Result<reqwest::Client, Arc<reqwest::Error>>),
}

impl AwsHttpClient {
    fn sender(&self, (connect, read): Timeouts) -> Sender {
        if self.proxied {
            let mut builder = self.trust.reqwest();
            if let Some(t) = connect {
                builder = builder.connect_timeout(t);
            }
            if let Some(t) = read {
                builder = builder.read_timeout(t);
            }
            return Sender::Proxied(builder.build().map_err(Arc::new));
        }
        let mut tcp = hyper_util::client::legacy::connect::HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(connect);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(self.trust.rustls_config())
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let pool =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_timer(hyper_util::rt::TokioTimer::new())
                .build(https);
        Sender::Direct {
            pool: Arc::new(pool),
            read_timeout: read,
        }
    }
}

impl aws_smithy_runtime_api::client::http::HttpClient for AwsHttpClient {
    fn http_connector(
        &self,
        settings: &aws_smithy_runtime_api::client::http::HttpConnectorSettings,
        _components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
    ) -> aws_smithy_runtime_api::client::http::SharedHttpConnector {
        let timeouts = (settings.connect_timeout(), settings.read_timeout());
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        let sender = match pools.iter().find(|(t, _)| *t == timeouts) {
            Some((_, sender)) => sender.clone(),
            None => {
                let sender = self.sender(timeouts);
                // A `reqwest` client that could not be built is not kept: the next connector
                // tries again.
                if !matches!(sender, Sender::Proxied(Err(_))) {
                    pools.push((timeouts, sender.clone()));
                }
                sender
            }
        };
        aws_smithy_runtime_api::client::http::SharedHttpConnector::new(AwsConnector { sender })
    }
}

/// Sends one AWS SDK request, streaming both bodies.
#[derive(Debug, Clone)]
struct AwsConnector {
    sender: Sender,
}

/// No response head arrived within the SDK's read timeout.
#[derive(Debug, thiserror::Error)]
#[error("no response within {0:?}")]
struct ReadTimeout(Duration);

impl aws_smithy_runtime_api::client::http::HttpConnector for AwsConnector {
    fn call(
        &self,
        request: aws_smithy_runtime_api::client::orchestrator::HttpRequest,
    ) -> aws_smithy_runtime_api::client::http::HttpConnectorFuture {
        use aws_smithy_runtime_api::client::http::HttpConnectorFuture;
        use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
        use aws_smithy_runtime_api::client::result::ConnectorError;
        use aws_smithy_types::body::SdkBody;
        let request = match request.try_into_http1x() {
            Ok(request) => request,
            Err(e) => return HttpConnectorFuture::ready(Err(ConnectorError::user(e.into()))),
        };
        match &self.sender {
            Sender::Direct { pool, read_timeout } => {
                let exchange = pool.request(request);
                let read_timeout = *read_timeout;
                HttpConnectorFuture::new(async move {
                    let response = match read_timeout {
                        Some(limit) => tokio::time::timeout(limit, exchange)
                            .await
                            .map_err(|_| ConnectorError::timeout(Box::new(ReadTimeout(limit))))?,
                        None => exchange.await,
                    }
                    .map_err(hyper_error)?;
                    HttpResponse::try_from(response.map(SdkBody::from_body_1_x))
                        .map_err(|e| ConnectorError::other(e.into(), None))
                })
            }
            Sender::Proxied(Err(e)) => HttpConnectorFuture::ready(Err(ConnectorError::other(
                Box::new(SharedError(e.clone())),
                None,
            ))),
            Sender::Proxied(Ok(client)) => {
                let request = match reqwest::Request::try_from(request.map(reqwest::Body::wrap)) {
                    Ok(request) => request,
                    Err(e) => {
                        return HttpConnectorFuture::ready(Err(ConnectorError::user(e.into())));
                    }
                };
                let client = client.clone();
                HttpConnectorFuture::new(async move {
                    let response = client.execute(request).await.map_err(connector_error)?;
                    let response: http::Response<reqwest::Body> = response.into();
                    HttpResponse::try_from(response.map(SdkBody::from_body_1_x))
                        .map_err(|e| ConnectorError::other(e.into(), None))
                })
            }
        }
    }
}

/// How the SDK's retry strategy sees a hyper-util failure: a connect that timed out as a
/// timeout; a failed connect, a connection closed or cut before the answer, or any I/O error
/// as I/O (transient, retried on a new connection); anything else unclassified.
fn hyper_error(
    e: hyper_util::client::legacy::Error,
) -> aws_smithy_runtime_api::client::result::ConnectorError {
    use aws_smithy_runtime_api::client::result::ConnectorError;
    let mut timed_out = false;
    let mut io = e.is_connect();
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            io |= h.is_incomplete_message() || h.is_closed() || h.is_canceled();
        }
        if let Some(i) = s.downcast_ref::<std::io::Error>() {
            io = true;
            timed_out |= i.kind() == std::io::ErrorKind::TimedOut;
        }
        source = s.source();
    }
    if e.is_connect() && timed_out {
        ConnectorError::timeout(e.into())
    } else if io {
        ConnectorError::io(e.into())
    } else {
        ConnectorError::other(e.into(), None)
    }
}

/// How the SDK's retry strategy sees a `reqwest` failure: timeouts as timeouts, a failed
/// connect or an interrupted exchange as I/O (transient, retried), anything else unclassified.
fn connector_error(e: reqwest::Error) -> aws_smithy_runtime_api::client::result::ConnectorError {
    use aws_smithy_runtime_api::client::result::ConnectorError;
    if e.is_timeout() {
        ConnectorError::timeout(e.into())
    } else if e.is_connect() || e.is_request() || e.is_body() {
        ConnectorError::io(e.into())
    } else {
        ConnectorError::other(e.into(), None)
    }
}

/// A client-construction error shared by every request of its connector.
#[derive(Debug)]
struct SharedError(Arc<reqwest::Error>);

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the AWS SDK's HTTP client could not be built: {}",
            self.0
        )
    }
}

impl std::error::Error for SharedError {}

/// The process's crypto provider (`ring`), installed as the rustls default too so that any
/// client built without [`Trust`] uses the same library.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let p = Arc::new(rustls::crypto::ring::default_provider());
            // Another library may have installed one first (tests only: a function links
            // no other provider).
            let _ = rustls::crypto::ring::default_provider().install_default();
            p
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A DynamoDB client on plain HTTP to loopback, through the connector's direct path or its
    /// `reqwest` path (the one taken when a proxy variable is set).
    fn plain_dynamodb(port: u16, retries: u32, proxied: bool) -> aws_sdk_dynamodb::Client {
        let timeouts = aws_smithy_types::timeout::TimeoutConfig::builder()
            .connect_timeout(std::time::Duration::from_secs(2))
            .read_timeout(std::time::Duration::from_millis(300))
            .build();
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "test", "test", None, None, "test",
            ))
            .endpoint_url(format!("http://127.0.0.1:{port}"))
            .http_client(aws_smithy_runtime_api::client::http::SharedHttpClient::new(
                AwsHttpClient {
                    trust: Trust::compiled_in(),
                    proxied,
                    pools: Mutex::new(Vec::new()),
                },
            ))
            .timeout_config(timeouts)
            .retry_config(
                aws_smithy_types::retry::RetryConfig::standard()
                    .with_max_attempts(retries)
                    .with_initial_backoff(std::time::Duration::from_millis(1)),
            )
            .build();
        aws_sdk_dynamodb::Client::from_conf(config)
    }

    #[tokio::test]
    async fn the_sdk_connector_tells_the_retry_strategy_what_failed() {
        // hyper-util's pool, and `reqwest` (taken when a proxy variable is set; loopback is
        // not proxied here since the test process sets none).
        for proxied in [false, true] {
            the_retry_strategy_is_told_what_failed(proxied).await;
        }
    }

    async fn the_retry_strategy_is_told_what_failed(proxied: bool) {
        use aws_smithy_runtime_api::client::result::SdkError;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        // Nothing listens: a failed connect is I/O (transient).
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = closed.local_addr().expect("addr").port();
        drop(closed);
        match plain_dynamodb(port, 1, proxied).list_tables().send().await {
            Err(SdkError::DispatchFailure(f)) => assert!(f.is_io(), "{f:?}"),
            other => panic!("expected a dispatch failure, got {other:?}"),
        }
        // A server that accepts and never answers: the read timeout, reported as a timeout.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = silent.local_addr().expect("addr").port();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = silent.accept().await {
                held.push(tcp);
            }
        });
        match plain_dynamodb(port, 1, proxied).list_tables().send().await {
            Err(SdkError::DispatchFailure(f)) => assert!(f.is_timeout(), "{f:?}"),
            other => panic!("expected a dispatch failure, got {other:?}"),
        }
        hold.abort();
        // A connection dropped before the answer is retried on a new one, which answers.
        let flaky = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = flaky.local_addr().expect("addr").port();
        let served = tokio::spawn(async move {
            let mut connections = 0;
            while let Ok((mut tcp, _)) = flaky.accept().await {
                connections += 1;
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                if connections == 1 {
                    drop(tcp);
                    continue;
                }
                let body = br#"{"TableNames":["t"]}"#;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tcp.write_all(head.as_bytes()).await;
                let _ = tcp.write_all(body).await;
                return connections;
            }
            connections
        });
        let tables = plain_dynamodb(port, 3, proxied)
            .list_tables()
            .send()
            .await
            .expect("the second attempt answers");
        assert_eq!(tables.table_names(), ["t"]);
        assert_eq!(served.await.expect("server"), 2);
    }

    #[test]
    fn a_proxy_variable_sends_the_sdk_through_reqwest() {
        let env = |set: Vec<(&'static str, &'static str)>| {
            move |name: &str| {
                set.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        };
        assert!(!proxy_configured(env(vec![])));
        assert!(
            !proxy_configured(env(vec![("HTTPS_PROXY", "")])),
            "empty is unset"
        );
        assert!(!proxy_configured(env(vec![("NO_PROXY", "localhost")])));
        for name in PROXY_ENV {
            assert!(
                proxy_configured(env(vec![(name, "http://proxy.internal:3128")])),
                "{name}"
            );
        }
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
