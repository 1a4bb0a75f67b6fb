//! `tollgate`: the admin CLI. Agents, keys and scopes in the tollgate table (local or AWS).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::json;
use tollgate::admin::{self, ScopeChange};
use tollgate::store::{AgentRecord, AgentStatus, DynamoStore, KeyRecord, Store};

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Administer tollgate agents, keys and scopes"
)]
struct Cli {
    /// DynamoDB table.
    #[arg(
        long,
        env = "TOLLGATE_TABLE",
        default_value = "tollgate",
        global = true
    )]
    table: String,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the table (local stacks; on AWS the SAM template owns it).
    Init,
    /// Agents: programs that call tools.
    #[command(subcommand)]
    Agents(AgentsCmd),
    /// Bearer keys of an agent.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// An agent's scopes.
    #[command(subcommand)]
    Scopes(ScopesCmd),
    /// Budgets of agents and tools (data: no redeploy needed).
    #[command(subcommand)]
    Budgets(BudgetsCmd),
    /// Users' connections to third-party providers (tokens are never shown).
    #[command(subcommand)]
    Connections(ConnectionsCmd),
}

#[derive(Subcommand)]
enum ConnectionsCmd {
    /// List a user's connections: provider, status, version, access-token expiry.
    List {
        /// The user: `agent:<agent id>` (bearer keys, certificates) or
        /// `oauth:<issuer>:<sub>` (OAuth end users).
        user: String,
    },
    /// Delete a user's connection: its tokens are gone and the next call gets a connect link.
    Revoke {
        /// The user: `agent:<agent id>` or `oauth:<issuer>:<sub>`.
        user: String,
        /// The provider.
        provider: String,
    },
}

#[derive(Subcommand)]
enum BudgetsCmd {
    /// Show an agent's or a tool's configured budget.
    Show {
        #[command(subcommand)]
        target: Target,
    },
    /// Show what is left right now.
    Status {
        #[command(subcommand)]
        target: Target,
    },
    /// Set an agent's budgets.
    SetAgent {
        /// Agent id.
        agent_id: String,
        /// Calls per minute across every tool.
        #[arg(long)]
        per_minute: Option<u32>,
        /// Calls per day across every tool.
        #[arg(long)]
        per_day: Option<u32>,
        /// Cap this agent's calls to one tool (with --tool-per-minute), or remove the cap.
        #[arg(long)]
        tool: Option<String>,
        /// Calls per minute to --tool; omit to remove the cap.
        #[arg(long, requires = "tool")]
        tool_per_minute: Option<u32>,
    },
    /// Override a tool's budget (or --clear to return to the tool's built-in default).
    SetTool {
        /// Tool name.
        tool: String,
        /// Calls per minute across every agent.
        #[arg(long, required_unless_present = "clear")]
        per_minute: Option<u32>,
        /// Calls at once on an idle bucket (default: per minute).
        #[arg(long)]
        burst: Option<u32>,
        /// Buckets to split the rate over, for tools hotter than ~1000 calls/s.
        #[arg(long, default_value_t = 1)]
        shards: u32,
        /// Admit on a per-instance local bucket when the store fails.
        #[arg(long, conflicts_with = "fail_closed")]
        fail_open: bool,
        /// Refuse with 503 when the store fails. Without either flag the tool's own default
        /// applies.
        #[arg(long)]
        fail_closed: bool,
        /// Remove the override.
        #[arg(long, conflicts_with_all = ["per_minute", "burst", "fail_open", "fail_closed"])]
        clear: bool,
    },
}

#[derive(Subcommand, Clone)]
enum Target {
    /// An agent.
    Agent {
        /// Agent id.
        agent_id: String,
    },
    /// A tool.
    Tool {
        /// Tool name.
        tool: String,
    },
}

#[derive(Subcommand)]
enum AgentsCmd {
    /// Create an agent.
    Create {
        /// Agent id (a-z, 0-9, '.', '_', '-').
        agent_id: String,
        /// What the agent is, for operators.
        #[arg(long, default_value = "")]
        description: String,
        /// Scopes to grant (repeatable).
        #[arg(long = "scope")]
        scopes: Vec<String>,
    },
    /// List agents.
    List,
    /// Show an agent and its keys.
    Show {
        /// Agent id.
        agent_id: String,
    },
    /// Disable an agent: every key is refused permanently until enabled.
    Disable {
        /// Agent id.
        agent_id: String,
    },
    /// Enable a disabled agent.
    Enable {
        /// Agent id.
        agent_id: String,
    },
    /// Bind a client certificate (mTLS) to an agent: one certificate by its PEM file
    /// (fingerprint), or every certificate with a subject DN.
    BindCert {
        /// Agent id.
        agent_id: String,
        #[command(flatten)]
        cert: CertArgs,
    },
    /// Remove a certificate binding.
    UnbindCert {
        #[command(flatten)]
        cert: CertArgs,
    },
    /// Bind an OAuth client to a pre-created agent: tokens whose identity claim (e.g.
    /// `client_id`) is CLIENT act as AGENT_ID. Without a binding a client gets its own
    /// `oauth-…` agent, whatever its name.
    BindOauth {
        /// Agent id.
        agent_id: String,
        /// The identity claim's value in the client's tokens.
        #[arg(long)]
        client: String,
        /// The issuer of the tokens.
        #[arg(long, env = "TOLLGATE_OAUTH_ISSUER")]
        issuer: String,
    },
    /// Remove an OAuth client binding.
    UnbindOauth {
        /// The identity claim's value in the client's tokens.
        #[arg(long)]
        client: String,
        /// The issuer of the tokens.
        #[arg(long, env = "TOLLGATE_OAUTH_ISSUER")]
        issuer: String,
    },
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct CertArgs {
    /// PEM file of the client certificate.
    #[arg(long)]
    pem: Option<std::path::PathBuf>,
    /// Subject DN as API Gateway reports it (e.g. `CN=agent,O=Example`).
    #[arg(long)]
    subject: Option<String>,
}

impl CertArgs {
    fn selector(self) -> Result<admin::CertSelector, admin::AdminError> {
        match (self.pem, self.subject) {
            (Some(path), _) => std::fs::read_to_string(&path)
                .map(admin::CertSelector::Pem)
                .map_err(|e| {
                    admin::AdminError::Invalid(format!("cannot read {}: {e}", path.display()))
                }),
            (None, Some(dn)) => Ok(admin::CertSelector::Subject(dn)),
            (None, None) => Err(admin::AdminError::Invalid(
                "give --pem FILE or --subject DN".to_owned(),
            )),
        }
    }
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Create a key; the token is printed once and never stored.
    Create {
        /// Agent id.
        agent_id: String,
        /// Expire after this long (e.g. 90d, 12h).
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// List an agent's keys.
    List {
        /// Agent id.
        agent_id: String,
    },
    /// Revoke a key by id.
    Revoke {
        /// Key id, as listed.
        key_id: String,
    },
}

#[derive(Subcommand)]
enum ScopesCmd {
    /// Grant scopes.
    Add {
        /// Agent id.
        agent_id: String,
        /// Scopes.
        #[arg(required = true)]
        scopes: Vec<String>,
    },
    /// Withdraw scopes.
    Remove {
        /// Agent id.
        agent_id: String,
        /// Scopes.
        #[arg(required = true)]
        scopes: Vec<String>,
    },
    /// Replace all scopes.
    Set {
        /// Agent id.
        agent_id: String,
        /// Scopes (none to clear).
        scopes: Vec<String>,
    },
}

fn agent_json(a: &AgentRecord) -> serde_json::Value {
    json!({"agent_id": a.agent_id, "description": a.description, "status": a.status,
           "scopes": a.scopes, "created_at_ms": a.created_at_ms})
}

fn key_json(k: &KeyRecord) -> serde_json::Value {
    json!({"key_id": k.key_id, "agent_id": k.agent_id, "status": k.status,
           "created_at_ms": k.created_at_ms, "expires_at_ms": k.expires_at_ms})
}

fn print_agent(a: &AgentRecord) {
    let scopes: Vec<&str> = a.scopes.iter().map(String::as_str).collect();
    println!(
        "{}\t{}\t{}\t{}",
        a.agent_id,
        a.status.as_str(),
        scopes.join(" "),
        a.description
    );
}

fn print_key(k: &KeyRecord) {
    let expiry = k.expires_at_ms.map_or_else(
        || "never".to_owned(),
        |e| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(e),
            )
            .to_string()
        },
    );
    println!(
        "{}\t{}\t{}\texpires {}",
        k.key_id,
        k.agent_id,
        k.status.as_str(),
        expiry
    );
}

async fn run(cli: Cli) -> Result<(), admin::AdminError> {
    let sdk = aws_config::load_from_env().await;
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), cli.table.clone());
    let out = |v: serde_json::Value| println!("{v}");
    match cli.command {
        Command::Init => {
            let created = store.create_table().await?;
            if cli.json {
                out(json!({"table": cli.table, "created": created}));
            } else if created {
                println!("created table {}", cli.table);
            } else {
                println!("table {} already exists", cli.table);
            }
        }
        Command::Agents(AgentsCmd::Create {
            agent_id,
            description,
            scopes,
        }) => {
            let a = admin::create_agent(&store, &agent_id, &description, &scopes).await?;
            if cli.json {
                out(agent_json(&a))
            } else {
                print_agent(&a)
            }
        }
        Command::Agents(AgentsCmd::List) => {
            let agents = store.list_agents().await.map_err(admin::AdminError::from)?;
            if cli.json {
                out(json!(agents.iter().map(agent_json).collect::<Vec<_>>()));
            } else {
                agents.iter().for_each(print_agent);
            }
        }
        Command::Agents(AgentsCmd::Show { agent_id }) => {
            let (a, keys) = admin::show_agent(&store, &agent_id).await?;
            if cli.json {
                let mut v = agent_json(&a);
                v["keys"] = json!(keys.iter().map(key_json).collect::<Vec<_>>());
                out(v);
            } else {
                print_agent(&a);
                keys.iter().for_each(print_key);
            }
        }
        Command::Agents(AgentsCmd::Disable { agent_id }) => {
            let a = admin::set_agent_status(&store, &agent_id, AgentStatus::Disabled).await?;
            if cli.json {
                out(agent_json(&a))
            } else {
                print_agent(&a)
            }
        }
        Command::Agents(AgentsCmd::BindCert { agent_id, cert }) => {
            let b = admin::bind_cert(&store, &agent_id, &cert.selector()?).await?;
            if cli.json {
                out(serde_json::json!({"binding": b.id, "agent_id": b.agent_id}))
            } else {
                println!("bound {} to agent {}", b.id, b.agent_id);
            }
        }
        Command::Agents(AgentsCmd::UnbindCert { cert }) => {
            let id = admin::unbind_cert(&store, &cert.selector()?).await?;
            if cli.json {
                out(serde_json::json!({"unbound": id}))
            } else {
                println!("unbound {id}");
            }
        }
        Command::Agents(AgentsCmd::BindOauth {
            agent_id,
            client,
            issuer,
        }) => {
            let b = admin::bind_oauth(&store, &agent_id, &issuer, &client).await?;
            if cli.json {
                out(serde_json::json!({"binding": b.id, "agent_id": b.agent_id}))
            } else {
                println!("bound OAuth client {client} to agent {}", b.agent_id);
            }
        }
        Command::Agents(AgentsCmd::UnbindOauth { client, issuer }) => {
            let id = admin::unbind_oauth(&store, &issuer, &client).await?;
            if cli.json {
                out(serde_json::json!({"unbound": id}))
            } else {
                println!("unbound OAuth client {client}");
            }
        }
        Command::Agents(AgentsCmd::Enable { agent_id }) => {
            let a = admin::set_agent_status(&store, &agent_id, AgentStatus::Active).await?;
            if cli.json {
                out(agent_json(&a))
            } else {
                print_agent(&a)
            }
        }
        Command::Keys(KeysCmd::Create {
            agent_id,
            expires_in,
        }) => {
            let ttl = expires_in.as_deref().map(admin::parse_ttl).transpose()?;
            let created = admin::create_key(&store, &agent_id, ttl).await?;
            if cli.json {
                let mut v = key_json(&created.record);
                v["token"] = json!(created.token);
                out(v);
            } else {
                print_key(&created.record);
                println!("token (shown once, store it now): {}", created.token);
            }
        }
        Command::Keys(KeysCmd::List { agent_id }) => {
            let (_, keys) = admin::show_agent(&store, &agent_id).await?;
            if cli.json {
                out(json!(keys.iter().map(key_json).collect::<Vec<_>>()));
            } else {
                keys.iter().for_each(print_key);
            }
        }
        Command::Keys(KeysCmd::Revoke { key_id }) => {
            let k = admin::revoke_key(&store, &key_id).await?;
            if cli.json {
                out(key_json(&k))
            } else {
                print_key(&k)
            }
        }
        Command::Budgets(cmd) => budgets(&store, cmd, cli.json).await?,
        Command::Connections(ConnectionsCmd::List { user }) => {
            let list = tollgate::connect::list(store.client(), store.table(), &user).await?;
            if cli.json {
                out(json!(list));
            } else if list.is_empty() {
                println!("no connections for {user}");
            } else {
                for c in &list {
                    println!(
                        "{}\t{}\tversion {}\taccess token expires {}",
                        c.provider,
                        c.status,
                        c.version,
                        humantime::format_rfc3339_seconds(
                            std::time::UNIX_EPOCH
                                + std::time::Duration::from_millis(c.access_expires_at_ms)
                        )
                    );
                }
            }
        }
        Command::Connections(ConnectionsCmd::Revoke { user, provider }) => {
            tollgate::connect::revoke(store.client(), store.table(), &user, &provider).await?;
            if cli.json {
                out(json!({"revoked": {"user": user, "provider": provider}}));
            } else {
                println!("revoked {user}'s connection to {provider}");
            }
        }
        Command::Scopes(cmd) => {
            let (agent_id, change, scopes) = match cmd {
                ScopesCmd::Add { agent_id, scopes } => (agent_id, ScopeChange::Add, scopes),
                ScopesCmd::Remove { agent_id, scopes } => (agent_id, ScopeChange::Remove, scopes),
                ScopesCmd::Set { agent_id, scopes } => (agent_id, ScopeChange::Set, scopes),
            };
            let a = admin::change_scopes(&store, &agent_id, change, &scopes).await?;
            if cli.json {
                out(agent_json(&a))
            } else {
                print_agent(&a)
            }
        }
    }
    Ok(())
}

async fn budgets(
    store: &DynamoStore,
    cmd: BudgetsCmd,
    as_json: bool,
) -> Result<(), admin::AdminError> {
    use admin::budgets as b;
    let defaults = tollgate::Config::from_env()
        .map(|c| tollgate::budget::AgentDefaults {
            per_minute: c.agent_per_minute,
            per_day: c.agent_per_day,
        })
        .map_err(|e| admin::AdminError::Invalid(e.to_string()))?;
    match cmd {
        BudgetsCmd::Show {
            target: Target::Agent { agent_id },
        } => {
            let (a, _) = admin::show_agent(store, &agent_id).await?;
            let v = json!({"agent_id": a.agent_id, "budget": a.budget,
                           "defaults": {"per_minute": defaults.per_minute, "per_day": defaults.per_day}});
            println!(
                "{}",
                if as_json {
                    v.to_string()
                } else {
                    serde_json::to_string_pretty(&v).unwrap_or_default()
                }
            );
        }
        BudgetsCmd::Show {
            target: Target::Tool { tool },
        } => {
            let p = store
                .get_tool_policy(&tool)
                .await
                .map_err(admin::AdminError::from)?;
            let v = json!({"tool": tool, "override": p});
            if as_json {
                println!("{v}");
            } else if p.is_none() {
                println!("{tool}: no override; the tool's built-in default budget applies");
            } else {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            }
        }
        BudgetsCmd::Status { target } => {
            let rows = match target {
                Target::Agent { agent_id } => {
                    b::agent_status(store, store, &agent_id, defaults).await?
                }
                Target::Tool { tool } => b::tool_status(store, store, &tool, None)
                    .await?
                    .into_iter()
                    .collect(),
            };
            let rows: Vec<_> = rows
                .iter()
                .map(|(p, limit, window_s, remaining, until_full_ms)| {
                    json!({"policy": p.as_str(), "limit": limit,
                    "window_s": window_s, "remaining": remaining, "full_in_ms": until_full_ms})
                })
                .collect();
            if as_json {
                println!("{}", json!(rows));
            } else if rows.is_empty() {
                println!(
                    "no override stored: the tool's built-in default applies (see its README)"
                );
            } else {
                for r in rows {
                    println!(
                        "{}\t{} of {} per {} s left\tfull in {} ms",
                        r["policy"].as_str().unwrap_or(""),
                        r["remaining"],
                        r["limit"],
                        r["window_s"],
                        r["full_in_ms"]
                    );
                }
            }
        }
        BudgetsCmd::SetAgent {
            agent_id,
            per_minute,
            per_day,
            tool,
            tool_per_minute,
        } => {
            let cap = tool.as_deref().map(|t| (t, tool_per_minute));
            let a = b::set_agent(store, &agent_id, per_minute, per_day, cap).await?;
            let v = json!({"agent_id": a.agent_id, "budget": a.budget});
            println!("{v}");
        }
        BudgetsCmd::SetTool {
            tool,
            per_minute,
            burst,
            shards,
            fail_open,
            fail_closed,
            clear,
        } => {
            let policy = if clear {
                None
            } else {
                let per_minute = per_minute.unwrap_or(0);
                Some(tollgate::store::ToolPolicy {
                    per_minute,
                    burst: burst.unwrap_or(per_minute),
                    shards,
                    fail_open: (fail_open || fail_closed).then_some(fail_open),
                })
            };
            b::set_tool(store, &tool, policy).await?;
            println!("{}", json!({"tool": tool, "override": policy}));
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
