//! `aws.greengrass.ShadowManager`: device shadows on the core (classic and named, for the
//! core's thing and for client devices), served over IPC ([`ipc`]) and the `$aws/things/…/shadow`
//! topics of local pub/sub ([`topics`]), kept in sync with the cloud's shadow service over the
//! cloud link ([`sync`]).
//!
//! Storage: SQLite (`<dir>/shadow.db`, WAL, `synchronous=FULL`; [`store`]), the engine the fleet
//! registry already links: Greengrass keeps the same two tables in an embedded SQL database, a
//! shadow change is a read-modify-write of one row plus a queue entry, and SQLite gives that
//! atomically and durably with no format of our own to get right. A change is acknowledged
//! (IPC response, `/accepted`) only after its transaction commits, so it survives kill -9 and
//! power loss; the change and its sync-queue entry commit together.
//!
//! Conflicts (both sides changed the same field while apart): the last synced document is the
//! common ancestor of a three-way, field-level merge ([`merge`]). A field changed on one side
//! only takes that side's value; a field both sides changed to different values takes, in
//! `reported`, the device's value, and in `desired`, the cloud's (as Greengrass: the device owns
//! what it reports, the cloud what it asks for). Nested objects merge field by field; arrays are
//! single values. The deployment shadow (`AWSManagedGreengrassV2Deployment`) is never synced.
//!
//! Architecture invariant: an acknowledged local change is committed together with its sync
//! queue entry, and leaves the queue only once the cloud holds it (or refused it for good).
//! Architecture invariant: the service meets the rest of the core only through the IPC router
//! and the `bus` / `iot_core` buses; it never opens a socket.

pub mod config;
pub mod ipc;
pub mod manager;
pub mod merge;
pub mod ratelimit;
pub mod rules;
pub mod store;
pub mod sync;
pub mod topics;

pub use config::{ConfigError, Direction, RateLimits, ShadowConfig, Strategy, SyncConfig};
pub use manager::{Origin, Shadows};
pub use rules::ShadowError;

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::watch;

pub const SERVICE_NAME: &str = "aws.greengrass.ShadowManager";
/// The named shadow Greengrass deployments use; never synced by this service.
pub const DEPLOYMENT_SHADOW: &str = lichen_shadow::DEPLOYMENT_SHADOW;

struct Running {
    shadows: Shadows,
    topics: tokio::task::JoinHandle<()>,
    sync: Option<sync::SyncHandle>,
}

/// The service as the core runs it: started, reconfigured and stopped by [`ShadowManager::apply`].
pub struct ShadowManager {
    dir: PathBuf,
    router: Arc<lichen_ipc::Router>,
    bus: lichen_bus::Bus,
    iot_core: lichen_bus::Bus,
    connected: watch::Receiver<bool>,
    running: tokio::sync::Mutex<Option<Running>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Bus(#[from] lichen_bus::BusError),
}

impl ShadowManager {
    /// `dir`: where `shadow.db` lives; `connected`: whether the cloud link is up.
    pub fn new(
        dir: PathBuf,
        router: Arc<lichen_ipc::Router>,
        bus: lichen_bus::Bus,
        iot_core: lichen_bus::Bus,
        connected: watch::Receiver<bool>,
    ) -> ShadowManager {
        ShadowManager {
            dir,
            router,
            bus,
            iot_core,
            connected,
            running: tokio::sync::Mutex::new(None),
        }
    }

    /// Starts or reconfigures (`Some`) or stops (`None`). A refused configuration leaves the
    /// previous one in force.
    pub async fn apply(
        &self,
        configuration: Option<&Value>,
        core_thing: &str,
    ) -> Result<(), ApplyError> {
        let mut running = self.running.lock().await;
        let Some(c) = configuration else {
            if let Some(r) = running.take() {
                ipc::unregister(&self.router);
                r.topics.abort();
            }
            return Ok(());
        };
        let config = ShadowConfig::from_component_config(c, core_thing)?;
        if running.is_none() {
            let shadows = Shadows::open(&self.dir, self.bus.clone())?;
            let topics = topics::spawn(shadows.clone())?;
            ipc::register(&self.router, shadows.clone());
            *running = Some(Running {
                shadows,
                topics,
                sync: None,
            });
        }
        let r = running.as_mut().expect("running");
        r.shadows.set_config(config.clone());
        match (&r.sync, config.sync.is_some()) {
            (Some(s), true) => s.reconfigure(config),
            (None, true) => {
                r.sync = Some(sync::spawn(
                    r.shadows.clone(),
                    self.iot_core.clone(),
                    self.connected.clone(),
                    config,
                ))
            }
            (_, false) => r.sync = None,
        }
        Ok(())
    }

    /// The running service's shadows (for tests and diagnostics).
    pub async fn shadows(&self) -> Option<Shadows> {
        self.running
            .lock()
            .await
            .as_ref()
            .map(|r| r.shadows.clone())
    }
}
