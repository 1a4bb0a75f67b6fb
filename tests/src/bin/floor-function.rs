//! The floor under a tollgate function's CPU per call: a Lambda function that does what
//! `lookup_customer` does with none of tollgate's pipeline. It takes an API Gateway v2 event
//! from the Lambda Runtime API (`lambda_runtime`, a current-thread Tokio runtime as
//! `tollgate::lambda::runtime` makes on classic Lambda), reads the JSON-RPC body's
//! `arguments.email`, makes the same `GetItem` on the app table through the same DynamoDB
//! client a function builds (`tollgate::lambda::sdk_config_from_env`, the `reqwest` connector of
//! `tollgate::tls`), and answers a `tools/call` result. No authentication, budget, validation,
//! audit record, metrics or spans.
//!
//! `tests/benches/cpu.py --floor` runs it under the same Runtime API and events as the real
//! function, so the difference between the two is what tollgate's pipeline costs per call.
//! `FLOOR_HTTP=sdk` swaps the connector for the AWS SDK's own default HTTPS client (hyper),
//! to price the connector itself; `FLOOR_HTTP=none` makes no store request at all (the customer
//! is made up), to price the runtime alone and, by difference, the store request.

use aws_sdk_dynamodb::types::AttributeValue;
use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::{Value, json};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let trust = tollgate::tls::Trust::compiled_in();
        let mut sdk = tollgate::lambda::sdk_config_from_env(&trust);
        if std::env::var("FLOOR_HTTP").as_deref() == Ok("sdk") {
            // No client given: the SDK's own default (`aws-config`'s `default-https-client`).
            let mut builder = sdk.into_builder();
            builder.set_http_client(None);
            sdk = builder.build();
        }
        let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
        let table =
            std::env::var("TOLLGATE_APP_TABLE").unwrap_or_else(|_| "tollgate-app".to_owned());
        let dynamodb = &dynamodb;
        let table = table.as_str();
        let store = std::env::var("FLOOR_HTTP").as_deref() != Ok("none");
        lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
            let body: Value = event.payload["body"]
                .as_str()
                .map(serde_json::from_str)
                .transpose()?
                .unwrap_or(Value::Null);
            let email = body["params"]["arguments"]["email"]
                .as_str()
                .unwrap_or_default()
                .trim()
                .to_lowercase();
            let item = if store {
                dynamodb
                    .get_item()
                    .table_name(table)
                    .key("pk", AttributeValue::S(format!("EMAIL#{email}")))
                    .key("sk", AttributeValue::S("CUSTOMER".to_owned()))
                    .send()
                    .await?
                    .item
                    // The bench's customer is seeded: a miss is a wrong setup, not a cheaper call.
                    .ok_or("no customer item for that email")?
            } else {
                ["customer_id", "name", "tier", "status"]
                    .into_iter()
                    .map(|k| (k.to_owned(), AttributeValue::S(format!("{k} of {email}"))))
                    .collect()
            };
            let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
            let customer = json!({
                "customer_id": text("customer_id"),
                "name": text("name"),
                "tier": text("tier"),
                "status": text("status"),
            });
            let result = json!({
                "jsonrpc": "2.0",
                "id": body["id"],
                "result": {
                    "content": [{"type": "text", "text": customer.to_string()}],
                    "structuredContent": customer,
                    "isError": false,
                },
            });
            Ok::<_, Error>(json!({
                "statusCode": 200,
                "headers": {"content-type": "application/json"},
                "body": result.to_string(),
            }))
        }))
        .await
    })
}
