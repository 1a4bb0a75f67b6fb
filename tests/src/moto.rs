//! A single-threaded moto server for Rust integration tests (DynamoDB, Secrets Manager).

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running moto server, killed on drop.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    /// Starts moto from the project venv on a free loopback port and waits until it answers.
    pub fn start() -> anyhow::Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(root.join(".venv/bin/python"))
            .arg(root.join("tests/stack/moto_server.py"))
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut moto = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "moto did not start on port {port}"
            );
            if let Some(status) = moto.child.try_wait()? {
                anyhow::bail!("moto exited: {status}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(moto)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An SDK configuration pointing every service at this server, with static credentials.
    pub fn sdk_config(&self) -> aws_config::SdkConfig {
        sdk_config(&self.endpoint())
    }

    /// Stops the server (the store "goes down").
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An SDK configuration pointing every service at the moto server at `endpoint`, with static
/// credentials (nothing is resolved from the environment).
pub fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::SharedCredentialsProvider::new(
            aws_sdk_dynamodb::config::Credentials::new("test", "test", None, None, "test"),
        ))
        .endpoint_url(endpoint)
        .build()
}
