//! One connection to the server: connect, browse, subscribe or poll, forward samples until
//! the connection is lost or the source shuts down. Reconnecting is the caller's loop, so a
//! restarted server is browsed afresh (its nodes may have changed) and subscribed anew.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::opcua::client::{
    ClientBuilder, ClientEndpoint, DataChangeCallback, IdentityToken, MonitoredItem, Session,
    SessionPollResult,
};
use ::opcua::types::{
    DataChangeFilter, DataChangeTrigger as UaTrigger, DataValue, EndpointDescription,
    ExtensionObject, MessageSecurityMode, MonitoredItemCreateRequest, MonitoringMode,
    MonitoringParameters, NodeId, ReadValueId, StatusCode, TimestampsToReturn, UserTokenPolicy,
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::browse::{FoundVariable, find_variables};
use super::config::{
    DataChangeTrigger, IdentityProvider, MessageSecurityModeName, OpcUaSourceConfig, PropertyGroup,
    ScanModeType,
};
use super::convert::{alias_of, sample_of};
use super::filter::{NodeFilter, PathPattern};
use super::pki;
use super::report::{ReportRules, Reporter};
use crate::sample::{Sample, SampleSender};

/// Our application URI when the certificate is generated here (it goes into the certificate).
pub const DEFAULT_APPLICATION_URI: &str = "urn:lichen:opcua-collector";

/// How a connection ended.
pub enum Ended {
    /// Shutdown was asked for, or nobody reads our samples any more.
    Shutdown,
    /// The connection worked, then was lost.
    Lost(String),
}

/// Why a connection could not be made; the caller retries after backoff.
pub struct ConnectFailed(pub String);

/// The settings a node collects with: a configured group, or SiteWise's defaults.
struct Group {
    rules: ReportRules,
    settings: PropertyGroup,
}

fn groups_of(config: &OpcUaSourceConfig) -> (Vec<(Vec<PathPattern>, Group)>, Group) {
    let configured = config
        .property_groups
        .iter()
        .map(|g| {
            let patterns = g
                .node_filter_rule_definitions
                .iter()
                .filter_map(|d| PathPattern::parse(d.root_path()).ok())
                .collect();
            (
                patterns,
                Group {
                    rules: ReportRules {
                        quality: g.data_quality,
                        deadband: g.deadband.clone(),
                    },
                    settings: g.clone(),
                },
            )
        })
        .collect();
    let default = PropertyGroup {
        name: "default".into(),
        node_filter_rule_definitions: Vec::new(),
        deadband: None,
        scan_mode: Default::default(),
        data_quality: Default::default(),
        subscription: Default::default(),
    };
    let fallback = Group {
        rules: ReportRules {
            quality: default.data_quality,
            deadband: None,
        },
        settings: default,
    };
    (configured, fallback)
}

fn identity(config: &OpcUaSourceConfig) -> IdentityToken {
    match &config.endpoint.identity_provider {
        IdentityProvider::Anonymous => IdentityToken::Anonymous,
        IdentityProvider::Username {
            username, password, ..
        } => IdentityToken::new_user_name(
            username.clone().unwrap_or_default(),
            password.clone().unwrap_or_default(),
        ),
    }
}

fn security_mode(m: MessageSecurityModeName) -> MessageSecurityMode {
    match m {
        MessageSecurityModeName::None => MessageSecurityMode::None,
        MessageSecurityModeName::Sign => MessageSecurityMode::Sign,
        MessageSecurityModeName::SignAndEncrypt => MessageSecurityMode::SignAndEncrypt,
    }
}

/// Builds the client (generating our key pair on first use: RSA key generation is CPU
/// work, kept off the async workers) and opens a session whose event loop runs on its own
/// task, reporting when it is up and when it goes down.
async fn open(
    config: &OpcUaSourceConfig,
    pki_dir: &Path,
) -> Result<
    (
        Arc<Session>,
        mpsc::UnboundedReceiver<Option<String>>,
        tokio::task::JoinHandle<()>,
    ),
    ConnectFailed,
> {
    let verify = pki::verify_server(config);
    let mut builder = ClientBuilder::new()
        .application_name("Lichen OPC UA collector")
        .product_uri("urn:lichen")
        .pki_dir(pki_dir)
        .trust_server_certs(!verify)
        .verify_server_certs(verify)
        // The caller owns reconnecting (it re-browses and reports the gap).
        .session_retry_limit(0)
        .keep_alive_interval(Duration::from_secs(5))
        .max_failed_keep_alive_count(3)
        .request_timeout(Duration::from_secs(10))
        .session_name(format!("lichen:{}", config.name))
        // Connections go through connect_to_matching_endpoint; this entry only names the
        // server in the client's own configuration.
        .endpoint(
            "source",
            ClientEndpoint::new(config.endpoint.endpoint_uri.clone()),
        )
        .default_endpoint("source");
    builder = match pki::own_identity(config) {
        Some((cert, key, uri)) => builder
            .application_uri(uri)
            .certificate_path(cert)
            .private_key_path(key)
            .create_sample_keypair(false),
        None => builder
            .application_uri(DEFAULT_APPLICATION_URI)
            .create_sample_keypair(true),
    };
    let mut client = tokio::task::spawn_blocking(move || builder.client())
        .await
        .map_err(|e| ConnectFailed(format!("client setup panicked: {e}")))?
        .map_err(|errs| ConnectFailed(format!("client configuration: {}", errs.join("; "))))?;

    let ep = &config.endpoint;
    let endpoint: EndpointDescription = (
        ep.endpoint_uri.as_str(),
        ep.security_policy.uri(),
        security_mode(ep.message_security_mode),
        UserTokenPolicy::anonymous(),
    )
        .into();
    let (session, event_loop) = client
        .connect_to_matching_endpoint(endpoint, identity(config))
        .await
        .map_err(|e| {
            let hint = if e.status() == StatusCode::BadTcpEndpointUrlInvalid {
                format!(
                    " (the server offers no endpoint at this path with securityPolicy {:?} \
                     and messageSecurityMode {:?})",
                    ep.security_policy, ep.message_security_mode
                )
            } else {
                String::new()
            };
            ConnectFailed(format!("{}: {e}{hint}", ep.endpoint_uri))
        })?;

    // Some(reason): down; None: up.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let stream = event_loop.enter();
        tokio::pin!(stream);
        while let Some(r) = stream.next().await {
            let event = match r {
                Ok(SessionPollResult::Reconnected(_)) => None,
                Ok(SessionPollResult::ConnectionLost(code)) => {
                    Some(format!("connection lost: {code}"))
                }
                Ok(SessionPollResult::ReconnectFailed(code)) => {
                    Some(format!("connect failed: {code}"))
                }
                Ok(_) => continue,
                Err(code) => Some(format!("connect failed: {code}")),
            };
            if tx.send(event).is_err() {
                return;
            }
        }
        let _ = tx.send(Some("session ended".into()));
    });
    match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
        Ok(Some(None)) => Ok((session, rx, driver)),
        Ok(Some(Some(why))) => {
            driver.abort();
            Err(ConnectFailed(why))
        }
        Ok(None) => {
            driver.abort();
            Err(ConnectFailed("session ended".into()))
        }
        Err(_) => {
            driver.abort();
            Err(ConnectFailed("no session within 30 s".into()))
        }
    }
}

/// Aborts the session's event loop when the connection is done with, however it ends.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// One connection's life. `known` gathers every alias ever collected, so the caller can
/// report them Bad while the server is away.
pub async fn run_connection(
    config: &OpcUaSourceConfig,
    pki_dir: &Path,
    out: &SampleSender,
    shutdown: &CancellationToken,
    known: &mut BTreeSet<String>,
    reporter: &mut Reporter,
) -> Result<Ended, ConnectFailed> {
    let (session, mut events, driver) = tokio::select! {
        r = open(config, pki_dir) => r?,
        _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
    };
    let mut tasks = AbortOnDrop(vec![driver]);
    tracing::info!(source = %config.name, endpoint = %config.endpoint.endpoint_uri, "OPC UA session open");

    let filter = NodeFilter::new(&config.endpoint.node_filter_rules);
    let found = tokio::select! {
        r = find_variables(&session, &filter) => r.map_err(|e| ConnectFailed(format!("browse: {e}")))?,
        _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
        e = events.recv() => return Ok(Ended::Lost(e.flatten().unwrap_or_else(|| "session ended".into()))),
    };
    if found.is_empty() {
        tracing::warn!(source = %config.name, "no variable under the Objects folder matches endpoint.nodeFilterRules");
    } else {
        tracing::info!(source = %config.name, variables = found.len(), "OPC UA browse done");
    }

    let (configured, fallback) = groups_of(config);
    let group_of = |v: &FoundVariable| -> usize {
        let names: Vec<&str> = v.path.iter().map(String::as_str).collect();
        configured
            .iter()
            .position(|(patterns, _)| {
                patterns.is_empty() || patterns.iter().any(|p| p.matches(&names))
            })
            .unwrap_or(configured.len())
    };
    let group_at = |i: usize| {
        if i < configured.len() {
            &configured[i].1
        } else {
            &fallback
        }
    };

    // Samples from callbacks and pollers, tagged with their group.
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Sample)>();
    let mut by_group: HashMap<usize, Vec<(NodeId, String)>> = HashMap::new();
    for v in &found {
        let alias = alias_of(&config.measurement_data_stream_prefix, &v.path);
        known.insert(alias.clone());
        by_group
            .entry(group_of(v))
            .or_default()
            .push((v.node_id.clone(), alias));
    }

    for (gi, nodes) in by_group {
        let settings = &group_at(gi).settings;
        match settings.scan_mode.kind {
            ScanModeType::Exception => {
                subscribe(&session, gi, settings, nodes, tx.clone())
                    .await
                    .map_err(|e| ConnectFailed(format!("subscribe ({}): {e}", settings.name)))?
            }
            ScanModeType::Poll => {
                let period = Duration::from_millis(settings.scan_mode.rate);
                tasks.0.push(tokio::spawn(poll(
                    session.clone(),
                    gi,
                    period,
                    nodes,
                    tx.clone(),
                )));
            }
        }
    }
    drop(tx);

    let mut collecting = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                // A polite goodbye frees the server's session at once; a dead server must
                // not hold up shutdown.
                let _ = tokio::time::timeout(Duration::from_secs(2), session.disconnect()).await;
                return Ok(Ended::Shutdown);
            }
            e = events.recv() => {
                match e {
                    Some(None) => continue,
                    Some(Some(why)) => return Ok(Ended::Lost(why)),
                    None => return Ok(Ended::Lost("session ended".into())),
                }
            }
            s = rx.recv(), if collecting => {
                let Some((gi, sample)) = s else {
                    // Nothing subscribed or polled: wait for shutdown or loss.
                    collecting = false;
                    continue;
                };
                if reporter.admit(&sample, &group_at(gi).rules, Instant::now()) && out.send(sample).await.is_err() {
                    return Ok(Ended::Shutdown);
                }
            }
        }
    }
}

fn trigger(t: DataChangeTrigger) -> UaTrigger {
    match t {
        DataChangeTrigger::Status => UaTrigger::Status,
        DataChangeTrigger::StatusValue => UaTrigger::StatusValue,
        DataChangeTrigger::StatusValueTimestamp => UaTrigger::StatusValueTimestamp,
    }
}

async fn subscribe(
    session: &Session,
    group: usize,
    settings: &PropertyGroup,
    nodes: Vec<(NodeId, String)>,
    tx: mpsc::UnboundedSender<(usize, Sample)>,
) -> Result<(), ::opcua::types::Error> {
    let aliases: HashMap<NodeId, String> = nodes.iter().cloned().collect();
    let callback = DataChangeCallback::new(move |dv: DataValue, item: &MonitoredItem| {
        if let Some(alias) = aliases.get(&item.item_to_monitor().node_id) {
            let _ = tx.send((group, sample_of(alias, &dv)));
        }
    });
    let publishing = Duration::from_millis(settings.subscription.publishing_interval_milliseconds);
    // Lifetime and keep-alive counts as the OPC UA defaults suggest (lifetime ≥ 3 × keep-alive).
    let id = session
        .create_subscription(publishing, 60, 20, 0, 0, true, callback)
        .await?;
    // The deadband is applied here rather than by the server (see report.rs), so the
    // server-side filter carries only the trigger, and only when it differs from the default.
    let filter = match settings.subscription.data_change_trigger {
        DataChangeTrigger::StatusValue => ExtensionObject::null(),
        t => ExtensionObject::from_message(DataChangeFilter {
            trigger: trigger(t),
            deadband_type: 0,
            deadband_value: 0.0,
        }),
    };
    let items: Vec<MonitoredItemCreateRequest> = nodes
        .into_iter()
        .map(|(node_id, _)| {
            MonitoredItemCreateRequest::new(
                ReadValueId::from(node_id),
                MonitoringMode::Reporting,
                MonitoringParameters {
                    client_handle: 0,
                    sampling_interval: settings.scan_mode.rate as f64,
                    filter: filter.clone(),
                    queue_size: settings.subscription.queue_size.max(1),
                    discard_oldest: true,
                },
            )
        })
        .collect();
    let created = session
        .create_monitored_items(id, TimestampsToReturn::Both, items)
        .await?;
    for c in created.iter().filter(|c| !c.result.status_code.is_good()) {
        tracing::warn!(group = %settings.name, "monitored item {} refused: {}", c.item_to_monitor.node_id, c.result.status_code);
    }
    Ok(())
}

async fn poll(
    session: Arc<Session>,
    group: usize,
    period: Duration,
    nodes: Vec<(NodeId, String)>,
    tx: mpsc::UnboundedSender<(usize, Sample)>,
) {
    let reads: Vec<ReadValueId> = nodes
        .iter()
        .map(|(id, _)| ReadValueId::from(id.clone()))
        .collect();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match session.read(&reads, TimestampsToReturn::Both, 0.0).await {
            Ok(values) => {
                for ((_, alias), dv) in nodes.iter().zip(values) {
                    if tx.send((group, sample_of(alias, &dv))).is_err() {
                        return;
                    }
                }
            }
            // The session's loss is seen by the event loop; a failed read waits for the next tick.
            Err(e) => tracing::debug!("poll read failed: {e}"),
        }
    }
}
