//! The local stack (`make dev`).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tollgate_tests::devstack::run().await
}
