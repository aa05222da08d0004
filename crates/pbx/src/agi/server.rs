//! The FastAGI listener: an allowlist (AGI has no authentication), a cap on concurrent
//! sessions, one task per session, and a graceful shutdown that lets calls finish.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tracing::{field, Instrument};

use super::session::{AgiError, Session, Timeouts};
use crate::admission::Admission;
use crate::redact::mask_digit_runs;

/// What runs a call once its environment block is read. The session's span has the empty
/// fields `verification` and `script` for the handler to fill.
pub trait Handler: Send + Sync + 'static {
    fn handle<S: AsyncRead + AsyncWrite + Unpin + Send>(
        &self,
        session: &mut Session<S>,
    ) -> impl Future<Output = ()> + Send;
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Peers allowed to connect; everyone else is closed on at once.
    pub allow: Vec<IpNet>,
    /// Sessions at once; a connection over the cap is closed, so that Asterisk sets
    /// `AGISTATUS=FAILURE` at once and the dialplan apologises instead of dead air.
    pub max_sessions: usize,
    pub timeouts: Timeouts,
    /// How long calls in progress may go on after a shutdown signal.
    pub grace: Duration,
}

/// Accept FastAGI sessions on `listener` until `shutdown` completes, then wait up to the
/// grace period for calls in progress, and end the rest.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    config: ServerConfig,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()>,
) {
    let gate = Admission::new("FastAGI", config.allow.clone(), config.max_sessions);
    let mut sessions = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            accepted = listener.accept() => {
                let Some((stream, peer, permit)) = gate.admit(accepted).await else {
                    continue;
                };
                let handler = handler.clone();
                let timeouts = config.timeouts;
                sessions.spawn(async move {
                    run_session(stream, peer, timeouts, &*handler).await;
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    if sessions.is_empty() {
        return;
    }
    tracing::info!(calls = sessions.len(), grace = ?config.grace,
        "shutting down: letting calls in progress finish");
    let drained = tokio::time::timeout(config.grace, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            calls = sessions.len(),
            "grace period over: ending the remaining calls (recorded as interrupted at next start)"
        );
        sessions.shutdown().await;
    }
}

async fn run_session<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    timeouts: Timeouts,
    handler: &H,
) {
    let span = tracing::info_span!(
        "call",
        %peer,
        script = field::Empty,
        channel = field::Empty,
        verification = field::Empty
    );
    async move {
        // Replies are single short lines: don't let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        let mut session = match Session::accept(stream, timeouts).await {
            Ok(session) => session,
            // A port check (monitoring, a load balancer) connects and closes: not worth a warning.
            Err(AgiError::Closed) => {
                tracing::debug!("peer closed before sending an environment block");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "FastAGI session refused: bad environment block");
                return;
            }
        };
        let span = tracing::Span::current();
        span.record("script", session.env().script());
        // A channel name can hold the dialled number (Local/+1415...@ctx): masked.
        span.record("channel", mask_digit_runs(session.env().channel()));
        tracing::debug!(variables = session.env().len(), "FastAGI session started");
        handler.handle(&mut session).await;
        session.close().await;
        tracing::debug!("FastAGI session closed");
    }
    .instrument(span)
    .await
}
