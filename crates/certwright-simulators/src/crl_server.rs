//! A plain-HTTP server of one file that a test may change, as CAs publish their CRLs
//! (RFC 5280 CRL distribution points are usually `http://`).

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes served at every path; change them to publish a new CRL.
pub type Served = Arc<Mutex<Vec<u8>>>;

/// Serves what `body` holds at the time of each request, on 127.0.0.1, until the
/// runtime ends; the URL (`http://127.0.0.1:<port>/root.crl`).
///
/// # Panics
/// When no port can be bound (a broken test environment).
pub async fn serve(body: Served) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let url = format!(
        "http://{}/root.crl",
        listener.local_addr().expect("the bound address")
    );
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let crl = body.lock().unwrap_or_else(|p| p.into_inner()).clone();
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = conn.read(&mut request).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    crl.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(&crl).await;
            });
        }
    });
    url
}
