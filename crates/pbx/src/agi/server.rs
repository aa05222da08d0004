//! The FastAGI listener: an allowlist (AGI has no authentication), a short greeting stage
//! for the environment block apart from the calls' cap (see [`crate::admission`]), one task
//! per session, and a graceful shutdown that lets calls finish.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{field, Instrument};

use super::session::{AgiError, Session, Timeouts};
use crate::admission::{Admission, Greeting};
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
    /// Sessions at once. A call over the cap waits a moment for a place, then is closed
    /// without a command; the shipped dialplan apologises for any session that ends with
    /// the channel still up (Asterisk sets `AGISTATUS=SUCCESS` for it, not `FAILURE`).
    pub max_sessions: usize,
    pub timeouts: Timeouts,
    /// How long calls in progress may go on after a shutdown signal.
    pub grace: Duration,
}

/// Accept FastAGI sessions on `listener` until `shutdown` completes, then close the listener
/// at once (a call Asterisk connects from then on is refused, and its dialplan goes on
/// without the daemon), wait up to the grace period for the calls in progress, and end the
/// rest. Returns how many calls were ended so, their work cut off wherever it was: the
/// application closes what they left open.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    config: ServerConfig,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()>,
) -> usize {
    let admission = Arc::new(Admission::new(
        "FastAGI",
        config.allow.clone(),
        config.max_sessions,
    ));
    let mut sessions = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            greeting = admission.accept(&listener) => {
                let (handler, admission) = (handler.clone(), admission.clone());
                let timeouts = config.timeouts;
                // Boxed: a call's future is kilobytes, which the task would otherwise copy
                // several times on its way into the runtime.
                sessions.spawn(Box::pin(async move {
                    run_session(greeting, &admission, timeouts, &*handler).await;
                }));
            }
        }
    }
    // Closed now, not once the calls are done: a connection waiting in the backlog of a
    // socket nobody accepts on would hear silence until Asterisk gives up on it.
    drop(listener);
    if sessions.is_empty() {
        return 0;
    }
    tracing::info!(calls = sessions.len(), grace = ?config.grace,
        "shutting down: letting calls in progress finish");
    let drained = tokio::time::timeout(config.grace, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    if drained.is_ok() {
        return 0;
    }
    let cut_off = sessions.len();
    tracing::warn!(
        calls = cut_off,
        "grace period over: ending the remaining calls (closed as interrupted)"
    );
    sessions.shutdown().await;
    cut_off
}

async fn run_session<H: Handler>(
    greeting: Greeting,
    admission: &Admission,
    timeouts: Timeouts,
    handler: &H,
) {
    let span = tracing::info_span!(
        "call",
        peer = %greeting.peer,
        script = field::Empty,
        channel = field::Empty,
        verification = field::Empty
    );
    async move {
        let Greeting {
            stream,
            peer,
            mut place,
        } = greeting;
        // Replies are single short lines: don't let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        // The block first: a connection whose block waits in its socket is not silent, even
        // if newer ones took its place before this task first ran (a burst of calls).
        let greeted = tokio::select! {
            biased;
            greeted = Session::accept(stream, timeouts) => greeted,
            () = place.evicted() => {
                admission.silent(peer, "silent while newer connections needed its place");
                return;
            }
        };
        let mut session = match greeted {
            Ok(session) => session,
            // A port check (monitoring, a load balancer) connects and closes: not worth a warning.
            Err(AgiError::Closed) => {
                tracing::debug!("peer closed before sending an environment block");
                return;
            }
            Err(AgiError::Timeout(_)) => {
                admission.silent(peer, "no environment block in time");
                return;
            }
            // Any allowed peer can send one, as often as it likes: counted, as refusals are.
            Err(e) => {
                if let Some(suppressed) = admission.log_budget().allow() {
                    tracing::warn!(error = %e, suppressed,
                        "FastAGI session refused: bad environment block");
                }
                return;
            }
        };
        // It said who it is: from the greeting places to a call's.
        drop(place);
        let Some(_call) = admission.establish(peer).await else {
            return;
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

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    use super::*;

    struct Nothing;

    impl Handler for Nothing {
        async fn handle<S: AsyncRead + AsyncWrite + Unpin + Send>(
            &self,
            _session: &mut Session<S>,
        ) {
        }
    }

    /// An allowed local process sending malformed blocks in a loop: its warnings spend the
    /// listener's log budget, as refusals do, instead of one line each.
    #[tokio::test]
    async fn bad_environment_blocks_are_logged_within_the_budget() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admission = Admission::new("FastAGI", vec!["127.0.0.1/32".parse().unwrap()], 4);
        let timeouts = Timeouts {
            env: Duration::from_secs(2),
            reply: Duration::from_secs(2),
        };
        for _ in 0..12 {
            let mut peer = TcpStream::connect(addr).await.unwrap();
            peer.write_all(b"not an agi variable\n\n").await.unwrap();
            let greeting = admission.accept(&listener).await;
            run_session(greeting, &admission, timeouts, &Nothing).await;
        }
        assert_eq!(admission.log_budget().allow(), None, "budget not spent");
    }
}
