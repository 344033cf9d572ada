//! OPC UA source: SiteWise Edge's OPC UA collector on the `async-opcua` client.
//!
//! `run_opcua_source` connects to one server (any of its security policies, anonymous or
//! user-name identity), browses from the Objects folder for the variables the node filter
//! rules take, subscribes to them (or polls them) and sends each value as a `Sample` whose
//! alias is `measurementDataStreamPrefix` + browse path, as SiteWise Edge names them.
//!
//! Invariant: the source is never silent. When the server is lost it sends a `Quality::Bad`
//! sample (no value) for every alias it has collected, again after every failed reconnect,
//! and reconnects with exponential backoff, browsing and subscribing afresh.

mod browse;
pub mod config;
mod convert;
mod filter;
mod pki;
mod report;
mod session;

use std::collections::BTreeSet;
use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

pub use config::OpcUaSourceConfig;
pub use convert::{alias_of, quality_of, value_of};
pub use filter::{NodeFilter, PathPattern};
pub use session::DEFAULT_APPLICATION_URI;

use crate::sample::{Quality, Sample, SampleSender};

#[derive(Debug, thiserror::Error)]
pub enum OpcUaError {
    /// The configuration is unusable; the message names the field.
    #[error("OPC UA source {source_name:?}: {message}")]
    Config {
        source_name: String,
        message: String,
    },
    #[error("{}: {message}", path.display())]
    Io { path: PathBuf, message: String },
}

/// Bad-quality, value-less samples for every alias: the outage made visible.
async fn report_outage(known: &BTreeSet<String>, out: &SampleSender) -> bool {
    let now = convert::now_nanos();
    for alias in known {
        let s = Sample {
            alias: alias.clone(),
            value: None,
            quality: Quality::Bad,
            timestamp_ns: now,
        };
        if out.send(s).await.is_err() {
            return false;
        }
    }
    true
}

/// Runs the source until `shutdown`, reconnecting on its own. Returns an error only for a
/// configuration it cannot use (checked before the first connection); server trouble is
/// logged, retried and reported as Bad samples. `pki_dir` holds this source's certificates
/// (see `pki.rs`); our certificate is generated there on first use unless configured.
pub async fn run_opcua_source(
    config: OpcUaSourceConfig,
    pki_dir: PathBuf,
    out: SampleSender,
    shutdown: CancellationToken,
) -> Result<(), OpcUaError> {
    config.validate()?;
    pki::prepare(&config, &pki_dir)?;
    let initial = config.reconnect.initial();
    let max = config.reconnect.max();
    let mut backoff = initial;
    let mut known = BTreeSet::new();
    let mut reporter = report::Reporter::default();
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        // Trust may have changed on disk (a trust directory) since the last attempt.
        if let Err(e) = pki::prepare(&config, &pki_dir) {
            tracing::warn!(source = %config.name, "{e}");
        }
        match session::run_connection(
            &config,
            &pki_dir,
            &out,
            &shutdown,
            &mut known,
            &mut reporter,
        )
        .await
        {
            Ok(session::Ended::Shutdown) => return Ok(()),
            Ok(session::Ended::Lost(why)) => {
                tracing::warn!(source = %config.name, "OPC UA server lost ({why}); reconnecting");
                backoff = initial;
            }
            Err(session::ConnectFailed(why)) => {
                tracing::warn!(source = %config.name, "OPC UA connect failed ({why}); retrying in {backoff:?}");
            }
        }
        reporter.forget();
        if !report_outage(&known, &out).await {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
        backoff = (backoff * 2).min(max);
    }
}

/// Runs OPC UA sources as tasks of this process (for embedding the collector; the core uses
/// [`crate::OpcUaWorker`]).
pub struct InProcess;

impl crate::OpcUaRunner for InProcess {
    fn spawn(
        &self,
        source: serde_json::Value,
        pki_dir: std::path::PathBuf,
        out: crate::SampleSender,
        token: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let name = source["name"].as_str().unwrap_or("?").to_string();
            let result = match OpcUaSourceConfig::from_json(&source) {
                Ok(config) => run_opcua_source(config, pki_dir, out, token).await,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracing::error!(source = name, error = %e, "OPC UA source stopped");
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config(uri: &str) -> OpcUaSourceConfig {
        OpcUaSourceConfig::from_json(&serde_json::json!({
            "name": "t",
            "endpoint": {"endpointUri": uri},
            "reconnect": {"initialMilliseconds": 50, "maxMilliseconds": 100}
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn an_unusable_configuration_is_refused_before_connecting() {
        let mut c = config("opc.tcp://127.0.0.1:1/");
        c.endpoint.security_policy = config::SecurityPolicyName::Basic256Sha256;
        let dir = tempfile::tempdir().unwrap();
        let (tx, _rx) = tokio::sync::mpsc::channel(8);
        let e = run_opcua_source(c, dir.path().into(), tx, CancellationToken::new())
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("endpoint.messageSecurityMode"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_server_is_retried_until_shutdown() {
        // A port nothing listens on: connections are refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_opcua_source(
            config(&format!("opc.tcp://127.0.0.1:{port}/")),
            dir.path().into(),
            tx,
            shutdown.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            !task.is_finished(),
            "the source gave up on an unreachable server"
        );
        // No alias was ever collected, so there is nothing to report Bad yet.
        assert!(rx.try_recv().is_err());
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(dir.path().join("trusted").is_dir() && dir.path().join("private").is_dir());
    }
}
