//! [`Store`] on DynamoDB (or any DynamoDB-protocol server via `AWS_ENDPOINT_URL_DYNAMODB`).

use std::collections::{BTreeSet, HashMap};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::ProvideErrorMetadata as _;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, Put, ScalarAttributeType, TimeToLiveSpecification,
    TransactWriteItem, Update,
};

use super::{
    AgentBudget, AgentRecord, AgentStatus, CertBinding, KeyRecord, KeyStatus, Store, StoreError,
    ToolPolicy,
};

type Item = HashMap<String, AttributeValue>;

/// DynamoDB attribute that expires idle items (budget state); enabled by [`DynamoStore::create_table`].
pub const TTL_ATTRIBUTE: &str = "expires_at_s";

/// The tollgate table on DynamoDB.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
}

impl DynamoStore {
    /// A store on `table`, sharing the given client.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// The DynamoDB client (shared with other components).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates the table with its GSI and TTL if it does not exist (local stack and admin
    /// `init`; on AWS the SAM template owns the table). Returns whether it was created.
    pub async fn create_table(&self) -> Result<bool, StoreError> {
        let attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(|e| StoreError::Unavailable(e.to_string()))
        };
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(|e| StoreError::Unavailable(e.to_string()))
        };
        let gsi = GlobalSecondaryIndex::builder()
            .index_name("gsi1")
            .key_schema(key("gsi1pk", KeyType::Hash)?)
            .key_schema(key("gsi1sk", KeyType::Range)?)
            .projection(
                Projection::builder()
                    .projection_type(ProjectionType::All)
                    .build(),
            )
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr("pk")?)
            .attribute_definitions(attr("sk")?)
            .attribute_definitions(attr("gsi1pk")?)
            .attribute_definitions(attr("gsi1sk")?)
            .key_schema(key("pk", KeyType::Hash)?)
            .key_schema(key("sk", KeyType::Range)?)
            .global_secondary_indexes(gsi)
            .send()
            .await;
        match created {
            Ok(_) => {}
            Err(e) if e.code() == Some("ResourceInUseException") => return Ok(false),
            Err(e) => return Err(unavailable("CreateTable", &e)),
        }
        self.client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .enabled(true)
                    .attribute_name(TTL_ATTRIBUTE)
                    .build()
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?,
            )
            .send()
            .await
            .map_err(|e| unavailable("UpdateTimeToLive", &e))?;
        Ok(true)
    }

    /// Writes `items` atomically; a cancelled transaction means the agent's condition failed.
    async fn transact(
        &self,
        items: Vec<TransactWriteItem>,
        agent_id: &str,
    ) -> Result<(), StoreError> {
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("TransactionCanceledException") => {
                Err(StoreError::NotFound(format!("agent {agent_id}")))
            }
            Err(e) => Err(unavailable("TransactWriteItems", &e)),
        }
    }

    async fn query_index(&self, gsi1pk: &str, prefix: &str) -> Result<Vec<Item>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let resp = self
                .client
                .query()
                .table_name(&self.table)
                .index_name("gsi1")
                .key_condition_expression("gsi1pk = :pk AND begins_with(gsi1sk, :prefix)")
                .expression_attribute_values(":pk", s(gsi1pk))
                .expression_attribute_values(":prefix", s(prefix))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| unavailable("Query", &e))?;
            out.extend(resp.items.unwrap_or_default());
            match resp.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(out),
            }
        }
    }
}

fn unavailable<E: std::fmt::Debug + aws_sdk_dynamodb::error::ProvideErrorMetadata>(
    op: &str,
    e: &E,
) -> StoreError {
    StoreError::Unavailable(format!(
        "{op}: {}",
        e.code().or(e.message()).unwrap_or("request failed")
    ))
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn scopes_value(scopes: &BTreeSet<String>) -> AttributeValue {
    AttributeValue::L(scopes.iter().map(|x| s(x.clone())).collect())
}

fn get_s<'a>(item: &'a Item, name: &str) -> Result<&'a str, StoreError> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
        .ok_or_else(|| StoreError::Corrupt(format!("attribute {name} missing or not a string")))
}

fn get_n(item: &Item, name: &str) -> Result<Option<u64>, StoreError> {
    match item.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_n()
            .ok()
            .and_then(|x| x.parse().ok())
            .map(Some)
            .ok_or_else(|| StoreError::Corrupt(format!("attribute {name} is not a number"))),
    }
}

fn get_scopes(item: &Item) -> Result<BTreeSet<String>, StoreError> {
    match item.get("scopes") {
        None => Ok(BTreeSet::new()),
        Some(AttributeValue::L(list)) => list
            .iter()
            .map(|v| {
                v.as_s()
                    .cloned()
                    .map_err(|_| StoreError::Corrupt("scope is not a string".to_owned()))
            })
            .collect(),
        Some(_) => Err(StoreError::Corrupt("scopes is not a list".to_owned())),
    }
}

fn budget_value(budget: &AgentBudget) -> AttributeValue {
    s(serde_json::to_string(budget).unwrap_or_else(|_| "{}".to_owned()))
}

fn get_budget(item: &Item) -> Result<AgentBudget, StoreError> {
    match item.get("budget") {
        None => Ok(AgentBudget::default()),
        Some(v) => v
            .as_s()
            .ok()
            .and_then(|text| serde_json::from_str(text).ok())
            .ok_or_else(|| StoreError::Corrupt("budget is not a budget document".to_owned())),
    }
}

fn agent_status(item: &Item, name: &str) -> Result<AgentStatus, StoreError> {
    AgentStatus::parse(get_s(item, name)?)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown {name}")))
}

fn agent_from_item(item: &Item) -> Result<AgentRecord, StoreError> {
    Ok(AgentRecord {
        agent_id: get_s(item, "agent_id")?.to_owned(),
        description: item
            .get("description")
            .and_then(|v| v.as_s().ok())
            .cloned()
            .unwrap_or_default(),
        status: agent_status(item, "status")?,
        scopes: get_scopes(item)?,
        budget: get_budget(item)?,
        created_at_ms: get_n(item, "created_at_ms")?.unwrap_or(0),
    })
}

fn agent_to_item(agent: &AgentRecord) -> Item {
    HashMap::from([
        ("pk".to_owned(), s(format!("AGENT#{}", agent.agent_id))),
        ("sk".to_owned(), s("AGENT")),
        ("gsi1pk".to_owned(), s("AGENTS")),
        ("gsi1sk".to_owned(), s(format!("AGENT#{}", agent.agent_id))),
        ("kind".to_owned(), s("agent")),
        ("agent_id".to_owned(), s(agent.agent_id.clone())),
        ("description".to_owned(), s(agent.description.clone())),
        ("status".to_owned(), s(agent.status.as_str())),
        ("scopes".to_owned(), scopes_value(&agent.scopes)),
        ("budget".to_owned(), budget_value(&agent.budget)),
        ("created_at_ms".to_owned(), n(agent.created_at_ms)),
    ])
}

fn key_from_item(item: &Item) -> Result<KeyRecord, StoreError> {
    Ok(KeyRecord {
        key_id: get_s(item, "key_id")?.to_owned(),
        agent_id: get_s(item, "agent_id")?.to_owned(),
        digest_hex: get_s(item, "digest")?.to_owned(),
        status: KeyStatus::parse(get_s(item, "status")?)
            .ok_or_else(|| StoreError::Corrupt("unknown key status".to_owned()))?,
        created_at_ms: get_n(item, "created_at_ms")?.unwrap_or(0),
        expires_at_ms: get_n(item, "expires_at_ms")?,
        agent_status: agent_status(item, "agent_status")?,
        scopes: get_scopes(item)?,
        budget: get_budget(item)?,
    })
}

fn key_to_item(key: &KeyRecord) -> Item {
    let mut item = HashMap::from([
        ("pk".to_owned(), s(format!("KEY#{}", key.key_id))),
        ("sk".to_owned(), s("KEY")),
        ("gsi1pk".to_owned(), s(format!("AGENT#{}", key.agent_id))),
        ("gsi1sk".to_owned(), s(format!("KEY#{}", key.key_id))),
        ("kind".to_owned(), s("key")),
        ("key_id".to_owned(), s(key.key_id.clone())),
        ("agent_id".to_owned(), s(key.agent_id.clone())),
        ("digest".to_owned(), s(key.digest_hex.clone())),
        ("status".to_owned(), s(key.status.as_str())),
        ("created_at_ms".to_owned(), n(key.created_at_ms)),
        ("agent_status".to_owned(), s(key.agent_status.as_str())),
        ("scopes".to_owned(), scopes_value(&key.scopes)),
        ("budget".to_owned(), budget_value(&key.budget)),
    ]);
    if let Some(exp) = key.expires_at_ms {
        item.insert("expires_at_ms".to_owned(), n(exp));
    }
    item
}

fn build_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

#[async_trait::async_trait]
impl Store for DynamoStore {
    async fn get_key(&self, key_id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let resp = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(format!("KEY#{key_id}")))
            .key("sk", s("KEY"))
            .send()
            .await
            .map_err(|e| unavailable("GetItem", &e))?;
        resp.item.as_ref().map(key_from_item).transpose()
    }

    async fn create_agent(&self, agent: &AgentRecord) -> Result<(), StoreError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(agent_to_item(agent)))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => Err(
                StoreError::AlreadyExists(format!("agent {}", agent.agent_id)),
            ),
            Err(e) => Err(unavailable("PutItem", &e)),
        }
    }

    async fn get_agent(&self, agent_id: &str) -> Result<Option<AgentRecord>, StoreError> {
        let resp = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(format!("AGENT#{agent_id}")))
            .key("sk", s("AGENT"))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("GetItem", &e))?;
        resp.item.as_ref().map(agent_from_item).transpose()
    }

    async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.query_index("AGENTS", "AGENT#")
            .await?
            .iter()
            .map(agent_from_item)
            .collect()
    }

    async fn update_agent(&self, agent: &AgentRecord) -> Result<(), StoreError> {
        let keys = self.list_keys(&agent.agent_id).await?;
        // DynamoDB transactions take at most 100 items: the agent plus 99 keys.
        if keys.len() > 99 {
            return Err(StoreError::Unavailable(format!(
                "agent {} has {} keys; revoke unused keys first (limit 99)",
                agent.agent_id,
                keys.len()
            )));
        }
        let mut items = vec![
            TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name(&self.table)
                        .set_item(Some(agent_to_item(agent)))
                        .condition_expression("attribute_exists(pk)")
                        .build()
                        .map_err(build_err)?,
                )
                .build(),
        ];
        for key in &keys {
            items.push(
                TransactWriteItem::builder()
                    .update(
                        Update::builder()
                            .table_name(&self.table)
                            .key("pk", s(format!("KEY#{}", key.key_id)))
                            .key("sk", s("KEY"))
                            .update_expression("SET agent_status = :st, scopes = :sc, budget = :bu")
                            .condition_expression("attribute_exists(pk)")
                            .expression_attribute_values(":st", s(agent.status.as_str()))
                            .expression_attribute_values(":sc", scopes_value(&agent.scopes))
                            .expression_attribute_values(":bu", budget_value(&agent.budget))
                            .build()
                            .map_err(build_err)?,
                    )
                    .build(),
            );
        }
        self.transact(items, &agent.agent_id).await
    }

    async fn create_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        // The key is written only if its agent exists and still has the status, scopes and
        // budget the key copies (checked in the same transaction): an `agents disable` (or a
        // scope change) landing between the agent read and this write cancels it, instead of
        // leaving a working key the disable never saw.
        let items = vec![
            TransactWriteItem::builder()
                .condition_check(
                    aws_sdk_dynamodb::types::ConditionCheck::builder()
                        .table_name(&self.table)
                        .key("pk", s(format!("AGENT#{}", key.agent_id)))
                        .key("sk", s("AGENT"))
                        .condition_expression(
                            "attribute_exists(pk) AND #st = :st AND scopes = :sc \
                             AND (budget = :bu OR attribute_not_exists(budget))",
                        )
                        .expression_attribute_names("#st", "status")
                        .expression_attribute_values(":st", s(key.agent_status.as_str()))
                        .expression_attribute_values(":sc", scopes_value(&key.scopes))
                        .expression_attribute_values(":bu", budget_value(&key.budget))
                        .build()
                        .map_err(build_err)?,
                )
                .build(),
            TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name(&self.table)
                        .set_item(Some(key_to_item(key)))
                        .condition_expression("attribute_not_exists(pk)")
                        .build()
                        .map_err(build_err)?,
                )
                .build(),
        ];
        self.transact(items, &key.agent_id).await
    }

    async fn list_keys(&self, agent_id: &str) -> Result<Vec<KeyRecord>, StoreError> {
        self.query_index(&format!("AGENT#{agent_id}"), "KEY#")
            .await?
            .iter()
            .map(key_from_item)
            .collect()
    }

    async fn revoke_key(&self, key_id: &str) -> Result<KeyRecord, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(format!("KEY#{key_id}")))
            .key("sk", s("KEY"))
            .update_expression("SET #st = :revoked")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":revoked", s(KeyStatus::Revoked.as_str()))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(resp) => key_from_item(&resp.attributes.unwrap_or_default()),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => {
                Err(StoreError::NotFound(format!("key {key_id}")))
            }
            Err(e) => Err(unavailable("UpdateItem", &e)),
        }
    }

    async fn get_tool_policy(&self, tool: &str) -> Result<Option<ToolPolicy>, StoreError> {
        let resp = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(format!("TOOL#{tool}")))
            .key("sk", s("POLICY"))
            .send()
            .await
            .map_err(|e| unavailable("GetItem", &e))?;
        let Some(item) = resp.item else {
            return Ok(None);
        };
        let num = |name: &str| -> Result<u32, StoreError> {
            get_n(&item, name)?
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| StoreError::Corrupt(format!("tool policy lacks {name}")))
        };
        Ok(Some(ToolPolicy {
            per_minute: num("per_minute")?,
            burst: num("burst")?,
            shards: num("shards")?,
            fail_open: item
                .get("fail_open")
                .and_then(|v| v.as_bool().ok())
                .copied(),
        }))
    }

    async fn put_tool_policy(
        &self,
        tool: &str,
        policy: Option<ToolPolicy>,
    ) -> Result<(), StoreError> {
        let Some(p) = policy else {
            self.client
                .delete_item()
                .table_name(&self.table)
                .key("pk", s(format!("TOOL#{tool}")))
                .key("sk", s("POLICY"))
                .send()
                .await
                .map_err(|e| unavailable("DeleteItem", &e))?;
            return Ok(());
        };
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(format!("TOOL#{tool}")))
            .item("sk", s("POLICY"))
            .item("kind", s("tool_policy"))
            .item("per_minute", n(u64::from(p.per_minute)))
            .item("burst", n(u64::from(p.burst)))
            .item("shards", n(u64::from(p.shards)));
        if let Some(open) = p.fail_open {
            put = put.item("fail_open", AttributeValue::Bool(open));
        }
        put.send().await.map_err(|e| unavailable("PutItem", &e))?;
        Ok(())
    }

    async fn bind_cert(&self, binding: &CertBinding) -> Result<(), StoreError> {
        // The agent must exist: checked in the same transaction as the write.
        let result = self
            .client
            .transact_write_items()
            .transact_items(
                TransactWriteItem::builder()
                    .condition_check(
                        aws_sdk_dynamodb::types::ConditionCheck::builder()
                            .table_name(&self.table)
                            .key("pk", s(format!("AGENT#{}", binding.agent_id)))
                            .key("sk", s("AGENT"))
                            .condition_expression("attribute_exists(pk)")
                            .build()
                            .map_err(|e| StoreError::Unavailable(e.to_string()))?,
                    )
                    .build(),
            )
            .transact_items(
                TransactWriteItem::builder()
                    .put(
                        Put::builder()
                            .table_name(&self.table)
                            .item("pk", s(format!("CERT#{}", binding.id)))
                            .item("sk", s("CERT"))
                            .item("kind", s("cert"))
                            .item("agent_id", s(&binding.agent_id))
                            .item("created_at_ms", n(binding.created_at_ms))
                            .condition_expression("attribute_not_exists(pk)")
                            .build()
                            .map_err(|e| StoreError::Unavailable(e.to_string()))?,
                    )
                    .build(),
            )
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => {
                let reasons: Vec<Option<String>> = e
                    .as_service_error()
                    .and_then(|se| match se {
                        aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(tc) => Some(tc),
                        _ => None,
                    })
                    .map(|tc| {
                        tc.cancellation_reasons()
                            .iter()
                            .map(|r| r.code().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                let failed = |i: usize| {
                    reasons.get(i).and_then(Option::as_deref) == Some("ConditionalCheckFailed")
                };
                if failed(0) {
                    Err(StoreError::NotFound(format!("agent {}", binding.agent_id)))
                } else if failed(1) {
                    Err(StoreError::AlreadyExists(format!(
                        "certificate {}",
                        binding.id
                    )))
                } else {
                    Err(unavailable("TransactWriteItems", &e))
                }
            }
        }
    }

    async fn get_cert(&self, id: &str) -> Result<Option<CertBinding>, StoreError> {
        let resp = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(format!("CERT#{id}")))
            .key("sk", s("CERT"))
            .send()
            .await
            .map_err(|e| unavailable("GetItem", &e))?;
        let Some(item) = resp.item else {
            return Ok(None);
        };
        Ok(Some(CertBinding {
            id: id.to_owned(),
            agent_id: get_s(&item, "agent_id")?.to_owned(),
            created_at_ms: get_n(&item, "created_at_ms")?.unwrap_or(0),
        }))
    }

    async fn unbind_cert(&self, id: &str) -> Result<(), StoreError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(format!("CERT#{id}")))
            .key("sk", s("CERT"))
            .condition_expression("attribute_exists(pk)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => {
                Err(StoreError::NotFound(format!("certificate {id}")))
            }
            Err(e) => Err(unavailable("DeleteItem", &e)),
        }
    }
}
