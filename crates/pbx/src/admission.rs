//! Who may connect to the daemon's Asterisk-facing listeners (FastAGI, AudioSocket), and how
//! many at once. Neither protocol authenticates, so peers are checked against an allowlist.
//!
//! A connection goes through two stages, each with its own budget. While it has not said
//! who it is (the FastAGI environment block, the AudioSocket UUID) it holds one of the
//! *greeting* places ([`greeting_places`]: as many as calls may be established, and
//! [`GREETING_PLACES`] at least), for a short timeout at most; when they are all
//! taken, the connection that has been silent longest gives its place up to the newcomer
//! (Asterisk speaks at once, so a real call needs its place for a moment only). Only then
//! does it take one of the `max` *established* places a call needs. Peers that connect and
//! say nothing therefore never crowd out calls. Over the calls' cap a connection waits, as
//! in mini-redis, a moment for a place before it is turned away, instead of being reset at
//! once. Repeated warnings are counted and summarised, not written one by one.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

/// Connections still greeting at most, per listener, however small its calls' cap.
pub const GREETING_PLACES: usize = 256;

/// The greeting places of a listener that establishes `max` calls at once: a burst of as
/// many calls as it may take (Asterisk connecting them all at once, faster than the daemon
/// reads their environment blocks) never makes one of them give its place to another.
pub fn greeting_places(max: usize) -> usize {
    GREETING_PLACES.max(max)
}
/// How long a greeted connection waits for an established place when all are taken.
pub const ESTABLISH_WAIT: Duration = Duration::from_secs(2);

/// Whether `ip` is in the allowlist (IPv4-mapped IPv6 addresses count as IPv4).
pub fn allowed(allow: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    allow.iter().any(|net| net.contains(&ip))
}

/// The allowlist and the two budgets of one listener, named `what` in logs.
pub struct Admission {
    allow: Vec<IpNet>,
    greeting: Arc<Mutex<Greeters>>,
    established: Arc<Semaphore>,
    max: usize,
    greeting_places: usize,
    what: &'static str,
    refusals: LogBudget,
}

/// An accepted connection that has yet to say who it is.
pub struct Greeting {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    /// Its greeting place, given back when it is dropped.
    pub place: GreetingPlace,
}

/// The connections greeting, oldest first, each with the means to tell it to give up.
#[derive(Default)]
struct Greeters {
    next_id: u64,
    waiting: VecDeque<(u64, oneshot::Sender<()>)>,
}

/// A greeting place: [`GreetingPlace::evicted`] completes when a newer connection took it.
pub struct GreetingPlace {
    id: u64,
    evicted: oneshot::Receiver<()>,
    greeters: Arc<Mutex<Greeters>>,
}

impl GreetingPlace {
    /// Completes when the place was given to a newer connection: stop greeting then.
    pub async fn evicted(&mut self) {
        // A dropped sender (the registry never drops one first) waits forever too.
        if (&mut self.evicted).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for GreetingPlace {
    fn drop(&mut self) {
        let mut greeters = self.greeters.lock().unwrap_or_else(|e| e.into_inner());
        greeters.waiting.retain(|(id, _)| *id != self.id);
    }
}

impl Admission {
    pub fn new(what: &'static str, allow: Vec<IpNet>, max: usize) -> Self {
        Self {
            allow,
            greeting: Arc::default(),
            established: Arc::new(Semaphore::new(max)),
            max,
            greeting_places: greeting_places(max),
            what,
            refusals: LogBudget::default(),
        }
    }

    /// The next allowed connection, with a greeting place (the longest-silent greeter's, if
    /// all are taken). Cancel-safe.
    pub async fn accept(&self, listener: &TcpListener) -> Greeting {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(pair) => pair,
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    if let Some(suppressed) = self.refusals.allow() {
                        tracing::error!(error = %e, listener = self.what, suppressed,
                            "accepting a connection failed");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if allowed(&self.allow, peer.ip()) {
                let place = self.greeting_place();
                return Greeting {
                    stream,
                    peer,
                    place,
                };
            }
            if let Some(suppressed) = self.refusals.allow() {
                tracing::warn!(%peer, listener = self.what, suppressed,
                    "connection refused: peer not in agi.allow");
            }
        }
    }

    fn greeting_place(&self) -> GreetingPlace {
        let mut greeters = self.greeting.lock().unwrap_or_else(|e| e.into_inner());
        if greeters.waiting.len() >= self.greeting_places {
            if let Some((_, evict)) = greeters.waiting.pop_front() {
                let _ = evict.send(());
            }
        }
        let (tell, evicted) = oneshot::channel();
        let id = greeters.next_id;
        greeters.next_id += 1;
        greeters.waiting.push_back((id, tell));
        GreetingPlace {
            id,
            evicted,
            greeters: self.greeting.clone(),
        }
    }

    /// An established place for a connection that has said who it is, waiting up to
    /// [`ESTABLISH_WAIT`] for one; `None` (logged) when none came free.
    pub async fn establish(&self, peer: SocketAddr) -> Option<OwnedSemaphorePermit> {
        let waited =
            tokio::time::timeout(ESTABLISH_WAIT, self.established.clone().acquire_owned()).await;
        match waited {
            Ok(place) => Some(place.expect("the semaphore is never closed")),
            Err(_) => {
                if let Some(suppressed) = self.refusals.allow() {
                    tracing::warn!(%peer, listener = self.what, max = self.max, suppressed,
                        "connection refused: all places taken (agi.max_sessions) for {ESTABLISH_WAIT:?}");
                }
                None
            }
        }
    }

    /// The budget of this listener's warnings about its peers (refused, silent, or saying
    /// something malformed): any allowed peer can repeat them, so they are counted and
    /// summarised, not written one by one.
    pub fn log_budget(&self) -> &LogBudget {
        &self.refusals
    }

    /// Count a connection that went away without saying who it was (logged sparingly:
    /// a flood of them must not flood the log).
    pub fn silent(&self, peer: SocketAddr, why: &'static str) {
        if let Some(suppressed) = self.refusals.allow() {
            tracing::warn!(%peer, listener = self.what, suppressed, "connection closed: {why}");
        }
    }
}

/// At most [`LogBudget::PER_WINDOW`] lines per [`LogBudget::WINDOW`]; the next line after a
/// quiet spell says how many were left out.
#[derive(Debug, Default)]
pub struct LogBudget {
    state: Mutex<Option<(Instant, u32, u64)>>,
}

impl LogBudget {
    const WINDOW: Duration = Duration::from_secs(10);
    const PER_WINDOW: u32 = 10;

    /// Whether to write this line; `Some(n)`: yes, and `n` lines were left out before it.
    pub fn allow(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let (start, written, suppressed) = state.get_or_insert((now, 0, 0));
        if now.duration_since(*start) >= Self::WINDOW {
            (*start, *written) = (now, 0);
        }
        if *written >= Self::PER_WINDOW {
            *suppressed += 1;
            return None;
        }
        *written += 1;
        Some(std::mem::take(suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_matches_networks_and_mapped_addresses() {
        let allow: Vec<IpNet> = vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        assert!(allowed(&allow, "127.0.0.1".parse().unwrap()));
        assert!(allowed(&allow, "127.9.9.9".parse().unwrap()));
        assert!(allowed(&allow, "::1".parse().unwrap()));
        assert!(allowed(&allow, "::ffff:127.0.0.1".parse().unwrap()));
        assert!(!allowed(&allow, "10.0.0.5".parse().unwrap()));
        assert!(!allowed(&allow, "::ffff:10.0.0.5".parse().unwrap()));
    }

    #[test]
    fn repeated_lines_are_counted_then_summarised() {
        let budget = LogBudget::default();
        let written: Vec<_> = (0..25).map(|_| budget.allow()).collect();
        assert!(written[..10].iter().all(|w| *w == Some(0)));
        assert!(written[10..].iter().all(Option::is_none));
        // A new window: the first line says how many were left out.
        if let Some((start, _, _)) = budget.state.lock().unwrap().as_mut() {
            *start = start.checked_sub(LogBudget::WINDOW).unwrap();
        }
        assert_eq!(budget.allow(), Some(15));
        assert_eq!(budget.allow(), Some(0));
    }

    #[tokio::test]
    async fn the_longest_silent_greeter_gives_its_place_to_a_newcomer() {
        let admission = Admission::new("test", Vec::new(), 1);
        let mut places: Vec<_> = (0..GREETING_PLACES)
            .map(|_| admission.greeting_place())
            .collect();
        let newcomer = admission.greeting_place();
        // The oldest is told to give up, the others are not.
        tokio::time::timeout(Duration::from_secs(1), places[0].evicted())
            .await
            .expect("the oldest greeter is evicted");
        let second = tokio::time::timeout(Duration::from_millis(50), places[1].evicted()).await;
        assert!(second.is_err(), "only the oldest gives its place up");
        drop(places);
        assert_eq!(admission.greeting.lock().unwrap().waiting.len(), 1);
        drop(newcomer);
        assert!(admission.greeting.lock().unwrap().waiting.is_empty());
    }

    #[tokio::test]
    async fn as_many_calls_as_the_cap_greet_at_once_without_evicting_each_other() {
        let max = 3 * GREETING_PLACES;
        let admission = Admission::new("test", Vec::new(), max);
        let mut places: Vec<_> = (0..max).map(|_| admission.greeting_place()).collect();
        let nobody = tokio::time::timeout(Duration::from_millis(50), places[0].evicted()).await;
        assert!(nobody.is_err(), "a burst within the cap evicts no one");
        let _newcomer = admission.greeting_place();
        tokio::time::timeout(Duration::from_secs(1), places[0].evicted())
            .await
            .expect("one more than the cap evicts the oldest");
    }

    #[tokio::test]
    async fn over_the_cap_a_call_waits_for_a_place() {
        let admission = Admission::new("test", Vec::new(), 1);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let first = admission.establish(peer).await.expect("a free place");
        let waiting = tokio::spawn(async move {
            let second = admission.establish(peer).await;
            (second.is_some(), admission)
        });
        tokio::time::sleep(ESTABLISH_WAIT / 4).await;
        drop(first);
        let (got_one, _) = waiting.await.unwrap();
        assert!(got_one, "the second call got the place the first gave back");
    }
}
