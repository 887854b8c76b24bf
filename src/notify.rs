//! Webhook notifications: a JSON POST to `notify.webhook_url` on every target state change.
//!
//! Two tasks, so that nothing upstream ever waits on the network. The *collector* receives
//! [`TransitionEvent`]s from the health subsystem's (unbounded) channel, adds the services the
//! target serves, and puts a [`Notification`] on a bounded queue ([`WEBHOOK_QUEUE_CAPACITY`]);
//! when the queue is full the notification is dropped with a warning. The *sender* posts queued
//! notifications one at a time, in order, each with `notify.timeout`, retrying a failure
//! (a transport error or a non-2xx status) up to `notify.retries` times with exponential backoff
//! ([`WEBHOOK_BACKOFF_BASE`] doubling up to [`WEBHOOK_BACKOFF_MAX`]). Probes and answers never
//! wait for either task.
//!
//! `[notify]` is read from the current snapshot for every event, so a reload can add, change or
//! remove the webhook.
//!
//! Body of each POST (`Content-Type: application/json`):
//!
//! ```json
//! {
//!   "event": "target_state_changed",
//!   "instance": "meridian-1",
//!   "services": ["api.example.net."],
//!   "address": "192.0.2.10",
//!   "check": "web",
//!   "regions": ["us-east"],
//!   "from": "up",
//!   "to": "down",
//!   "reason": "3 consecutive failures, last: connection refused",
//!   "at": "2024-05-01T12:00:00.123Z",
//!   "withdrawn": "down"
//! }
//! ```
//! `instance` is `server.nsid` (null when unset). `withdrawn` says why answers do not use the
//! target now (`region_drained`, `target_drained`, `down`; the rule is
//! [`crate::health::withdrawal`]), null when some endpoint still answers with it.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::health::{HealthView, TransitionEvent, withdrawal};
use crate::snapshot::SnapshotCell;

/// Notifications waiting to be posted; more are dropped (with a warning).
pub const WEBHOOK_QUEUE_CAPACITY: usize = 256;
/// Wait before the first retry of a failed POST; doubled for each further retry.
pub const WEBHOOK_BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Longest wait between two retries.
pub const WEBHOOK_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The JSON body posted for one state change.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Notification {
    /// Always `target_state_changed`.
    pub event: &'static str,
    /// This server's `server.nsid`, to tell instances apart.
    pub instance: Option<String>,
    /// Services with an endpoint on this target (address and check), in config order.
    pub services: Vec<String>,
    /// The change itself.
    #[serde(flatten)]
    pub transition: TransitionEvent,
    /// Why answers do not use the target now (`region_drained`, `target_drained`, `down`),
    /// when every endpoint listing it withdraws it; `None` when some answer may use it.
    pub withdrawn: Option<&'static str>,
}

impl Notification {
    /// Builds the notification of `transition` under `config`, with the health `view` in
    /// force after it.
    pub fn new(transition: TransitionEvent, config: &Config, view: &HealthView) -> Self {
        let mut services = Vec::new();
        // The first reason found, unless some endpoint still answers with the target.
        let mut withdrawn = None;
        let mut usable = false;
        for s in &config.services {
            let mut listed = false;
            for e in &s.endpoints {
                if e.check_name() == Some(transition.check.as_str())
                    && e.addresses.contains(&transition.address)
                {
                    listed = true;
                    let check = e.check_name();
                    let w = withdrawal(view, &e.region.name, transition.address, check);
                    usable |= !w.is_withdrawn();
                    withdrawn = withdrawn.or(w.reason());
                }
            }
            if listed {
                services.push(s.name.clone());
            }
        }
        Self {
            event: "target_state_changed",
            instance: config.server.nsid.clone(),
            services,
            withdrawn: if usable { None } else { withdrawn },
            transition,
        }
    }
}

/// Spawns on `tasks` the collector of health transitions from `events` (subscribed by the
/// caller, so none is missed) and the sender; both read the live `snapshot` and health `view`,
/// and stop when `token` is cancelled (queued notifications are then dropped).
pub fn start(
    events: mpsc::UnboundedReceiver<TransitionEvent>,
    snapshot: SnapshotCell,
    view: Arc<ArcSwap<HealthView>>,
    tasks: &TaskTracker,
    token: CancellationToken,
) {
    let (tx, rx) = mpsc::channel(WEBHOOK_QUEUE_CAPACITY);
    tasks.spawn(collect(events, snapshot.clone(), view, tx, token.clone()));
    tasks.spawn(send(rx, snapshot, token));
}

async fn collect(
    mut events: mpsc::UnboundedReceiver<TransitionEvent>,
    snapshot: SnapshotCell,
    view: Arc<ArcSwap<HealthView>>,
    queue: mpsc::Sender<Notification>,
    token: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            _ = token.cancelled() => return,
            e = events.recv() => e,
        };
        let Some(event) = event else {
            return;
        };
        let snap = snapshot.load();
        if snap.config.notify.is_none() {
            continue;
        }
        // The supervisor publishes the view before it sends the event: this view has it.
        let n = Notification::new(event, &snap.config, &view.load());
        if let Err(mpsc::error::TrySendError::Full(n)) = queue.try_send(n) {
            warn!(
                address = %n.transition.address,
                to = n.transition.to.as_str(),
                capacity = WEBHOOK_QUEUE_CAPACITY,
                "webhook queue full, dropping notification"
            );
        }
    }
}

async fn send(
    mut queue: mpsc::Receiver<Notification>,
    snapshot: SnapshotCell,
    token: CancellationToken,
) {
    crate::health::probe::install_crypto_provider();
    let client = match reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("meridian/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(error) => {
            warn!(%error, "cannot build the webhook client; webhooks are disabled");
            return;
        }
    };
    loop {
        let n = tokio::select! {
            _ = token.cancelled() => return,
            n = queue.recv() => match n {
                Some(n) => n,
                None => return,
            },
        };
        // The webhook of the config in force now (a reload may have changed or removed it).
        let Some(notify) = snapshot.load().config.notify.clone() else {
            continue;
        };
        let body = match serde_json::to_vec(&n) {
            Ok(b) => b,
            Err(error) => {
                warn!(%error, "cannot encode a webhook notification");
                continue;
            }
        };
        let mut attempt = 0;
        loop {
            let result = client
                .post(&notify.webhook_url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .timeout(notify.timeout)
                .body(body.clone())
                .send()
                .await;
            let error = match result {
                Ok(r) if r.status().is_success() => {
                    debug!(url = %notify.webhook_url, address = %n.transition.address, "webhook delivered");
                    break;
                }
                Ok(r) => format!("status {}", r.status().as_u16()),
                Err(e) => e.without_url().to_string(),
            };
            if attempt >= notify.retries {
                warn!(
                    url = %notify.webhook_url,
                    address = %n.transition.address,
                    attempts = attempt + 1,
                    %error,
                    "webhook failed, giving up on this notification"
                );
                break;
            }
            let wait = backoff(attempt);
            info!(url = %notify.webhook_url, %error, retry_in_ms = wait.as_millis() as u64, "webhook failed, retrying");
            attempt += 1;
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// Returns the wait before retry number `attempt + 1`.
fn backoff(attempt: u32) -> Duration {
    WEBHOOK_BACKOFF_BASE
        .saturating_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
        .min(WEBHOOK_BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(0), Duration::from_millis(500));
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(10), WEBHOOK_BACKOFF_MAX);
        assert_eq!(backoff(40), WEBHOOK_BACKOFF_MAX);
    }
}
