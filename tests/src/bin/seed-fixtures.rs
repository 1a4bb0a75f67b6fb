//! `seed-fixtures`: prepares a local DynamoDB-protocol server for `make invoke`: the tollgate
//! table, the app table with the demo customers, and the TEST-ONLY fixture agents and keys the
//! `events/` fixtures authenticate with. Configured from the environment like the functions
//! (`AWS_ENDPOINT_URL_DYNAMODB`, `TOLLGATE_TABLE`, `TOLLGATE_APP_TABLE`). Never run it against
//! AWS: the fixture tokens are public.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tollgate_tests::fixtures::seed_local().await
}
