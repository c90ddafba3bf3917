//! Serving an axum router on a free local port, for the HTTP fakes.

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub async fn serve(
    router: axum::Router,
) -> std::io::Result<(std::net::SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok((addr, task))
}
