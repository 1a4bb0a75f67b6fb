//! `carrier-api [ADDR]`: the local carrier tracking API `track_shipment` calls (see
//! `tollgate_tests::carrier`), on `ADDR` (default `127.0.0.1:9001`). Used by `make invoke`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("carrier API on http://{}", listener.local_addr()?);
    axum::serve(listener, tollgate_tests::carrier::app()).await?;
    Ok(())
}
