//! The accept loop: HTTP/1.1 connections (optionally TLS) served by hyper with the router, each
//! bounded in time and all bounded in number.
//!
//! | limit | what happens |
//! |---|---|
//! | `serve.max_connections` | at the limit the loop stops accepting; new connections wait in the kernel's backlog |
//! | `serve.header_timeout_ms` | a TLS handshake, and each request head (also the wait for the next request on a kept-alive connection), must complete within it, or the connection is closed |
//! | `serve.write_timeout_ms` | a client that accepts no response bytes for this long is cut ([`super::io::WriteDeadline`]) |
//! | [`MAX_HEAD_BYTES`] | a request head larger than this is answered 431 by hyper (414 for a URI over 65534 bytes) |
//!
//! On shutdown the loop stops accepting, tells every connection to finish its request in flight
//! and close, and waits for them up to `shutdown.timeout_ms`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::io::{is_write_stall, WriteDeadline};
use crate::telemetry::names;

/// Request heads (request line and headers) larger than this are refused (431).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// How connections are bounded.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub write_timeout: Duration,
    pub shutdown_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown`, then drains (see the module docs).
pub async fn run(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    limits: ConnLimits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break, // never closed
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: say so, breathe, go on.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let conn = Connection {
            app: app.clone(),
            limits,
            shutdown: shutdown.clone(),
            peer,
            _slot: permit,
        };
        connections.spawn(conn.run(tcp, tls.clone()));
    }
    connections.close();
    tracing::info!(
        open = connections.len(),
        "serve: stopped accepting; finishing requests in flight"
    );
    if tokio::time::timeout(limits.shutdown_timeout, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "serve: connections still open at shutdown.timeout_ms: closing them"
        );
    }
}

/// One accepted connection.
struct Connection {
    app: Router,
    limits: ConnLimits,
    shutdown: CancellationToken,
    peer: SocketAddr,
    /// Held while the connection lives: its place under `serve.max_connections`.
    _slot: OwnedSemaphorePermit,
}

impl Connection {
    async fn run(self, tcp: TcpStream, tls: Option<TlsAcceptor>) {
        metrics::gauge!(names::HTTP_CONNECTIONS).increment(1.0);
        let io = WriteDeadline::new(tcp, self.limits.write_timeout);
        match tls {
            None => self.http(io).await,
            Some(acceptor) => {
                match tokio::time::timeout(self.limits.header_timeout, acceptor.accept(io)).await {
                    Ok(Ok(tls_io)) => self.http(tls_io).await,
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed");
                        cut("tls_handshake");
                    }
                    Err(_) => cut("tls_handshake"),
                }
            }
        }
        metrics::gauge!(names::HTTP_CONNECTIONS).decrement(1.0);
    }

    async fn http<IO>(&self, io: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout)
            .max_buf_size(MAX_HEAD_BYTES)
            .keep_alive(true);
        let service = TowerToHyperService::new(self.app.clone());
        let conn = builder.serve_connection(TokioIo::new(io), service);
        let mut conn = std::pin::pin!(conn);
        let served = tokio::select! {
            r = conn.as_mut() => r,
            _ = self.shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = served {
            let reason = if e.is_timeout() {
                "header_timeout"
            } else if is_write_stall(&e) {
                "write_timeout"
            } else {
                "io"
            };
            tracing::debug!(peer = %self.peer, error = %e, reason, "connection closed");
            cut(reason);
        }
    }
}

fn cut(reason: &'static str) {
    metrics::counter!(names::HTTP_CONNECTIONS_CUT, "reason" => reason).increment(1);
}
