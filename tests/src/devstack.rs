//! `make dev`: tables, demo data, the demo agent and its token, the carrier API, and every
//! route of the API on loopback. Configuration comes from the environment (README table);
//! `tests/stack/dev.sh` supplies local defaults and a DynamoDB-protocol server.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use aws_sdk_dynamodb::types::AttributeValue;
use tollgate::audit::StdoutSink;
use tollgate::lambda::{build_clients, build_server};
use tollgate::server::Dispatch;
use tollgate::store::{DynamoStore, Store as _};
use tollgate::{Catalog, Config, admin};

use crate::http_front::{Routes, app};

/// The demo agent `make dev` seeds.
pub const DEMO_AGENT: &str = "demo-agent";

/// Demo customers: (customer id, email, name, tier, status).
pub const DEMO_CUSTOMERS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "C-1001",
        "ada@example.com",
        "Ada Lovelace",
        "premium",
        "active",
    ),
    (
        "C-1002",
        "grace@example.com",
        "Grace Hopper",
        "enterprise",
        "active",
    ),
    (
        "C-1003",
        "linus@example.com",
        "Linus Pauling",
        "standard",
        "suspended",
    ),
];

/// Every server of the local stack, sharing one set of clients.
pub fn routes(
    catalog: &Catalog,
    clients: Arc<tollgate::tool::Clients>,
    timeout: Duration,
) -> anyhow::Result<Routes> {
    let mut tools = HashMap::new();
    // Task runs: a background task of this process on the tool's server (Lambda: an `Event`
    // invoke of the tool's function), with the same records.
    let starter = tollgate::server::in_process::InProcessStarter::new(task_run_timeout(timeout));
    for t in catalog.iter() {
        let name = t.spec().name;
        let own = catalog.only(name).context("tool vanished from catalog")?;
        let mut server = build_server(
            own,
            Dispatch::Local,
            clients.clone(),
            Arc::new(StdoutSink),
            name,
        );
        if t.task_support() != tollgate::task::TaskSupport::Forbidden {
            server = server.with_task_starter(starter.clone());
        }
        tools.insert(name.to_owned(), Arc::new(server));
    }
    starter.set_servers(&tools);
    let invoker = tollgate::server::in_process::InProcessInvoker::new(tools.clone());
    let gateway = build_server(
        catalog.clone(),
        Dispatch::Forward(Arc::new(invoker)),
        clients,
        Arc::new(StdoutSink),
        "gateway",
    );
    Ok(Routes {
        gateway: Arc::new(gateway),
        tools,
        timeout,
    })
}

/// How long a background task run may take: `TOLLGATE_DEV_TASK_TIMEOUT_MS`, default 900 s (a
/// Lambda function's longest timeout), never below the request timeout.
fn task_run_timeout(request_timeout: Duration) -> Duration {
    std::env::var("TOLLGATE_DEV_TASK_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(900), Duration::from_millis)
        .max(request_timeout)
}

/// Creates the app table the example tools use (idempotent).
pub async fn create_app_table(db: &aws_sdk_dynamodb::Client, table: &str) -> anyhow::Result<()> {
    use aws_sdk_dynamodb::error::ProvideErrorMetadata as _;
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    let attr = |n: &str| {
        AttributeDefinition::builder()
            .attribute_name(n)
            .attribute_type(ScalarAttributeType::S)
            .build()
    };
    let key = |n: &str, k| {
        KeySchemaElement::builder()
            .attribute_name(n)
            .key_type(k)
            .build()
    };
    let result = db
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr("pk")?)
        .attribute_definitions(attr("sk")?)
        .key_schema(key("pk", KeyType::Hash)?)
        .key_schema(key("sk", KeyType::Range)?)
        .send()
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some("ResourceInUseException") => Ok(()),
        Err(e) => Err(anyhow::anyhow!(
            "create table {table}: {}",
            e.code().unwrap_or("error")
        )),
    }
}

/// Writes the demo customers.
pub async fn seed_customers(db: &aws_sdk_dynamodb::Client, table: &str) -> anyhow::Result<()> {
    for (id, email, name, tier, status) in DEMO_CUSTOMERS {
        let s = |v: &str| AttributeValue::S(v.to_owned());
        for (pk, sk) in [
            (format!("EMAIL#{email}"), "CUSTOMER"),
            (format!("CUSTOMER#{id}"), "PROFILE"),
        ] {
            db.put_item()
                .table_name(table)
                .item("pk", AttributeValue::S(pk))
                .item("sk", s(sk))
                .item("customer_id", s(id))
                .item("name", s(name))
                .item("tier", s(tier))
                .item("status", s(status))
                .send()
                .await
                .context("seed customer")?;
        }
    }
    // Tickets under the customer's partition, which export_tickets reads.
    for (customer, ticket, subject, priority, status) in DEMO_TICKETS {
        let s = |v: &str| AttributeValue::S(v.to_owned());
        db.put_item()
            .table_name(table)
            .item("pk", AttributeValue::S(format!("CUSTOMER#{customer}")))
            .item("sk", AttributeValue::S(format!("TICKET#{ticket}")))
            .item("ticket_id", s(ticket))
            .item("subject", s(subject))
            .item("priority", s(priority))
            .item("status", s(status))
            .send()
            .await
            .context("seed ticket")?;
    }
    Ok(())
}

/// Demo tickets: (customer id, ticket id, subject, priority, status).
pub const DEMO_TICKETS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "C-1001",
        "T-DEMO0001",
        "Invoice shows the wrong address",
        "normal",
        "closed",
    ),
    (
        "C-1001",
        "T-DEMO0002",
        "Export of last year's orders",
        "low",
        "open",
    ),
];

/// How long a demo key minted by `make dev` works.
pub const DEMO_KEY_TTL: Duration = Duration::from_secs(7 * 86_400);

/// Ensures the demo agent exists with every tool's scope and returns its key: `previous` (the
/// token the last start wrote to `target/dev/demo-token`) when it is still an active, unexpired
/// key of the demo agent, else a new key expiring after [`DEMO_KEY_TTL`], and the key the
/// previous token named (expired, altered or otherwise unusable) is revoked. Keys this working
/// directory never wrote (another instance's on a shared store) are left alone.
pub async fn seed_demo_agent(
    store: &DynamoStore,
    catalog: &Catalog,
    previous: Option<&str>,
) -> anyhow::Result<String> {
    use tollgate::auth::keys;
    use tollgate::store::{KeyStatus, now_ms};
    let scopes: Vec<String> = catalog.scopes().into_iter().map(str::to_owned).collect();
    match store.get_agent(DEMO_AGENT).await? {
        None => {
            admin::create_agent(store, DEMO_AGENT, "Demo agent seeded by make dev", &scopes)
                .await?;
        }
        Some(_) => {
            admin::change_scopes(store, DEMO_AGENT, admin::ScopeChange::Add, &scopes).await?;
        }
    }
    // The key id the token file names, even when the token was altered (its checksum then
    // fails): that key is revoked below unless the token still works.
    let named_id = previous
        .and_then(|t| t.strip_prefix(keys::TOKEN_PREFIX))
        .and_then(|rest| rest.get(..12))
        .filter(|id| id.bytes().all(|b| b.is_ascii_alphanumeric()));
    let named = match named_id {
        Some(key_id) => store
            .get_key(key_id)
            .await?
            .filter(|k| k.agent_id == DEMO_AGENT && k.status == KeyStatus::Active),
        None => None,
    };
    if let (Some(token), Some(record)) = (previous, &named)
        && keys::key_id(token).is_some()
        && record.digest_hex == keys::digest_hex(token)
        && record.expires_at_ms.is_some_and(|at| at > now_ms())
    {
        return Ok(token.to_owned());
    }
    let created = admin::create_key(store, DEMO_AGENT, Some(DEMO_KEY_TTL)).await?;
    if let Some(stale) = named {
        admin::revoke_key(store, &stale.key_id).await?;
    }
    Ok(created.token)
}

/// Creates the tollgate table and the app table (`TOLLGATE_APP_TABLE`) with the demo
/// customers, on a local DynamoDB-protocol server. Idempotent.
pub async fn prepare_tables(
    db: &aws_sdk_dynamodb::Client,
    config: &Config,
) -> anyhow::Result<DynamoStore> {
    let store = DynamoStore::new(db.clone(), config.table.clone());
    store
        .create_table()
        .await
        .context("create the tollgate table (is the DynamoDB endpoint up?)")?;
    let app_table =
        std::env::var("TOLLGATE_APP_TABLE").unwrap_or_else(|_| "tollgate-app".to_owned());
    create_app_table(db, &app_table).await?;
    seed_customers(db, &app_table).await?;
    Ok(store)
}

/// Creates the argument-hashing key secret if it does not exist (local stacks only: on AWS
/// the SAM template creates it).
pub async fn ensure_hash_key_secret(
    client: &tollgate::deps::aws_sdk_secretsmanager::Client,
    secret_id: &str,
) -> anyhow::Result<()> {
    use base64::Engine as _;
    if client
        .describe_secret()
        .secret_id(secret_id)
        .send()
        .await
        .is_ok()
    {
        return Ok(());
    }
    let key: [u8; 32] = rand_key();
    client
        .create_secret()
        .name(secret_id)
        .secret_string(base64::engine::general_purpose::STANDARD.encode(key))
        .send()
        .await
        .context("create the hashing-key secret")?;
    Ok(())
}

/// Creates the connection vault's KMS key under `alias` if the alias does not exist (local
/// stacks only: on AWS the SAM template owns the key).
pub async fn ensure_vault_key(
    kms: &tollgate::deps::aws_sdk_kms::Client,
    alias: &str,
) -> anyhow::Result<()> {
    if !alias.starts_with("alias/") {
        return Ok(());
    }
    let aliases = kms
        .list_aliases()
        .send()
        .await
        .context("list KMS aliases")?;
    if aliases
        .aliases()
        .iter()
        .any(|a| a.alias_name() == Some(alias))
    {
        return Ok(());
    }
    let key = kms
        .create_key()
        .description("tollgate local connection vault")
        .send()
        .await
        .context("create the vault key")?;
    let key_id = key
        .key_metadata()
        .map(|m| m.key_id().to_owned())
        .context("vault key id")?;
    match kms
        .create_alias()
        .alias_name(alias)
        .target_key_id(key_id)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        // Another local instance created it meanwhile.
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_already_exists_exception()) =>
        {
            Ok(())
        }
        Err(e) => Err(anyhow::Error::new(e).context("alias the vault key")),
    }
}

fn rand_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    for chunk in key.chunks_mut(16) {
        chunk.copy_from_slice(&uuid::Uuid::new_v4().into_bytes());
    }
    key
}

/// Runs the local stack until interrupted.
pub async fn run() -> anyhow::Result<()> {
    tollgate::telemetry::install(
        &tollgate::telemetry::TelemetryConfig::from_env(),
        "tollgate-dev",
    );
    tollgate::lambda::install_panic_hook();
    let port: u16 = std::env::var("PORT")
        .ok()
        .map_or(Ok(9000), |p| p.parse())
        .context("PORT")?;
    let config = Arc::new(Config::from_env()?);
    let sdk = tollgate::lambda::sdk_config_from_env(&tollgate::tls::Trust::process()?);
    let clients = Arc::new(build_clients(&sdk, config.clone())?);
    let catalog = gateway::catalog()?;

    let store = prepare_tables(&clients.dynamodb, &config).await?;
    let token_path = std::path::Path::new("target/dev/demo-token");
    let previous = std::fs::read_to_string(token_path).ok();
    let token = seed_demo_agent(&store, &catalog, previous.as_deref().map(str::trim)).await?;
    if let Some(secret) = &config.hash_key_secret {
        ensure_hash_key_secret(clients.secretsmanager.get(), secret).await?;
    }
    if let Some(alias) = config.connect.kms_key.as_deref() {
        ensure_vault_key(clients.kms.get(), alias).await?;
    }
    std::fs::create_dir_all("target/dev")?;
    std::fs::write(token_path, format!("{token}\n"))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(token_path, std::fs::Permissions::from_mode(0o600))?;
    }

    if let Some(addr) = carrier_addr() {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("bind carrier API on {addr}"))?;
        tokio::spawn(async move { axum::serve(listener, crate::carrier::app()).await });
    }

    let timeout = Duration::from_millis(
        std::env::var("TOLLGATE_DEV_TIMEOUT_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(29_000),
    );
    let routes = routes(&catalog, clients, timeout)?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("bind 127.0.0.1:{port} (set PORT to use another)"))?;
    let tls = crate::tls_front::TlsFiles::from_env();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://127.0.0.1:{port}/mcp");
    eprintln!(
        "\ntollgate local stack ready on {url}\n\
         tools: {}\n\
         demo agent token (also in target/dev/demo-token):\n  {token}\n\
         try it with the official MCP Python SDK:\n  \
         .venv/bin/python tests/stack/mcp_client.py --url {url} --token \"$(cat target/dev/demo-token)\" list\n  \
         .venv/bin/python tests/stack/mcp_client.py --url {url} --token \"$(cat target/dev/demo-token)\" call lookup_customer '{{\"email\":\"ada@example.com\"}}'\n",
        catalog
            .iter()
            .map(|t| t.spec().name)
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(files) = tls {
        return crate::tls_front::serve(listener, app(routes), files.server_config()?).await;
    }
    axum::serve(listener, app(routes))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    tollgate::telemetry::shutdown();
    Ok(())
}

/// The carrier API's address when `TRACK_SHIPMENT_API_URL` points at loopback and
/// `TOLLGATE_DEV_CARRIER` is not `0`.
fn carrier_addr() -> Option<String> {
    if std::env::var("TOLLGATE_DEV_CARRIER").is_ok_and(|v| v == "0") {
        return None;
    }
    let url = std::env::var("TRACK_SHIPMENT_API_URL").ok()?;
    let authority = url.strip_prefix("http://")?.split('/').next()?.to_owned();
    (authority.starts_with("127.0.0.1:") || authority.starts_with("localhost:"))
        .then_some(authority)
}
