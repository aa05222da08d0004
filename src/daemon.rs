//! Wiring: the store, the verification rules and the FastAGI server, from a [`Config`].

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::codes::{server_key, CodeHasher};
use crate::config::{Config, ConfigError};
use crate::flow::Router;
use crate::store::{Store, StoreError};
use crate::verifications::{Verifications, VerifyError};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("cannot read or create the secret key file {path}: {source}")]
    Key {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen for FastAGI on {addr}: {source} (is another callverify running? set agi.listen)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Open the store (applying migrations) and build the verification rules on it.
pub async fn open(config: &Config) -> Result<Arc<Verifications>, DaemonError> {
    let store = Store::connect(&config.database.url, config.database.max_connections).await?;
    store.migrate().await?;
    let path = PathBuf::from(&config.security.secret_file);
    let key = server_key(&config.security.secret, &path)
        .map_err(|source| DaemonError::Key { path, source })?;
    Ok(Arc::new(Verifications::new(
        store,
        CodeHasher::new(key),
        config.phone_policy(),
        config.policy(),
        daemon_name(config),
    )))
}

/// This daemon's name on its call attempts: one daemon per host and FastAGI address can run,
/// so at its start none of its earlier attempts can still be live.
fn daemon_name(config: &Config) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}/{}", config.agi.listen)
}

/// Bind the FastAGI listener (separately, so that a caller can learn the port when it asked
/// for port 0).
pub async fn bind(config: &Config) -> Result<TcpListener, DaemonError> {
    let addr = config.agi_listen()?;
    TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Bind { addr, source })
}

/// Run the daemon on `listener` until `shutdown` completes and calls in progress are done.
pub async fn run(
    config: &Config,
    service: Arc<Verifications>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let recovered = service.recover_interrupted().await?;
    if recovered.attempts > 0 || recovered.verifications > 0 {
        tracing::warn!(
            attempts = recovered.attempts,
            verifications = recovered.verifications,
            "closed call attempts left open by an earlier run as interrupted"
        );
    }
    let router = Arc::new(Router::new(service.clone(), config.flow_settings()));
    tracing::info!(
        agi = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        database = ?service.store().backend(),
        "callverify serving FastAGI"
    );
    crate::agi::serve(listener, config.agi_server()?, router, shutdown).await;
    tracing::info!("callverify stopped");
    Ok(())
}
