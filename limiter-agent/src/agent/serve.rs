//! Serving HTTP (the API on its Unix socket, metrics on TCP) so that no client can stall the
//! agent: at most so many connections at once (more are closed at once), a deadline for a
//! request's head, and for metrics a deadline for the whole exchange.

use axum::extract::connect_info::ConnectInfo;
use axum::{Extension, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

/// What a listener allows one client.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; more are closed as they come.
    pub connections: usize,
    /// Time a client has to send a request's head.
    pub head: Duration,
    /// Time a whole connection may last; `None`: as long as it makes progress (an answer that
    /// streams a million keys may take a while; its sender has a deadline of its own).
    pub whole: Option<Duration>,
}

/// The API: a connection's caller (peer credentials) is handed to the handlers.
pub const API_LIMITS: Limits = Limits {
    connections: 64,
    head: Duration::from_secs(5),
    whole: None,
};

/// Metrics: a scrape is one short exchange.
pub const METRICS_LIMITS: Limits = Limits {
    connections: 16,
    head: Duration::from_secs(5),
    whole: Some(Duration::from_secs(30)),
};

/// Serves `app` on the API socket until `shutdown` completes.
pub async fn serve_unix<C>(
    listener: UnixListener,
    app: Router,
    limits: Limits,
    caller: impl Fn(&tokio::net::UnixStream) -> C,
    shutdown: impl Future<Output = ()>,
) where
    C: Clone + Send + Sync + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.connections));
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    warn!("accepting on the API socket: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let info = caller(&stream);
        let app = app.clone().layer(Extension(ConnectInfo(info)));
        spawn_connection(stream, app, limits, &slots, "API");
    }
}

/// Serves `app` on a TCP listener until the runtime ends.
pub async fn serve_tcp(listener: TcpListener, app: Router, limits: Limits) {
    let slots = Arc::new(Semaphore::new(limits.connections));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => spawn_connection(stream, app.clone(), limits, &slots, "metrics"),
            Err(err) => {
                warn!("accepting on the metrics listener: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn spawn_connection<IO>(
    io: IO,
    app: Router,
    limits: Limits,
    slots: &Arc<Semaphore>,
    what: &'static str,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ok(permit) = Arc::clone(slots).try_acquire_owned() else {
        debug!(
            "{what}: {} connections open already; closing a new one",
            limits.connections
        );
        return;
    };
    tokio::spawn(async move {
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.head)
            .serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
        let result = match limits.whole {
            Some(whole) => match tokio::time::timeout(whole, connection).await {
                Ok(result) => result,
                Err(_) => {
                    debug!("{what}: a connection took longer than {whole:?}; closed");
                    Ok(())
                }
            },
            None => connection.await,
        };
        if let Err(err) = result {
            debug!("{what}: connection ended: {err}");
        }
        drop(permit);
    });
}
