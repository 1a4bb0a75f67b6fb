//! The MCP conformance fixture server (`tests/conformance/run.sh`): `conformance-server [PORT]`
//! (or `PORT`; 0 or unset picks a free port) serves `http://127.0.0.1:PORT/mcp`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port = tollgate_tests::conformance::port(std::env::args(), std::env::var("PORT").ok())?;
    tollgate_tests::conformance::run(port).await
}
