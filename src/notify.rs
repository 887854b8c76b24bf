//! Notifications: a POST to `notify.webhook_url` on every target state change, when a service
//! fails open or has no usable target (and when that ends), and on every drain and undrain.
//!
//! Two tasks, so that nothing upstream ever waits on the network. The *collector* receives
//! [`TransitionEvent`]s and [`DrainEvent`]s from the health subsystem's (unbounded) channels
//! and [`OutageEvent`]s from `crate::outage`'s watcher; it puts an [`Event`] on a bounded
//! queue ([`WEBHOOK_QUEUE_CAPACITY`]);
//! when the queue is full the event is dropped with a warning. The *sender* renders queued
//! events in `notify.format` and posts them one at a time, in order, each with
//! `notify.timeout`, retrying a failure (a transport error or a non-2xx status) up to
//! `notify.retries` times with exponential backoff ([`WEBHOOK_BACKOFF_BASE`] doubling up to
//! [`WEBHOOK_BACKOFF_MAX`]). Probes and answers never wait for either task.
//!
//! `[notify]` is read from the current snapshot for every event, so a reload can add, change or
//! remove the webhook or its format.
//!
//! # Formats
//!
//! `format = "json"` (default) posts Meridian's own documents (`Content-Type:
//! application/json`). A target state change:
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
//!
//! A service with no usable target of a family (`event`: `service_failing_open` with
//! `when_all_down = "all"`, else `service_all_down`; `service_recovered` when a target is
//! usable again):
//!
//! ```json
//! {"event": "service_failing_open", "instance": "meridian-1", "service": "api.example.net.",
//!  "family": "A", "when_all_down": "all", "active": true, "targets": 2, "down": 2,
//!  "drained": 0, "at": "2024-05-01T12:00:01.000Z"}
//! ```
//!
//! A drain (`event`: `drained` when it begins or its record changes, `undrained` when an
//! operator lifts it, `drain_expired` when its expiry passes), with the drain's record: `who`,
//! `reason`, `expires` and `since` (when it was made; null for a drain from a state file
//! without records). Every drain change is an event from the health subsystem, whatever made
//! it (an admin call, the expiry task, the fleet's store), so a drain that begins and ends
//! within a moment is notified twice, in order. In a fleet every instance notifies the
//! fleet's drains (PagerDuty deduplicates them under one `dedup_key`).
//!
//! ```json
//! {"event": "drained", "instance": "meridian-1", "subject": "regions/eu-west",
//!  "who": "alice@ops-1", "reason": "maintenance", "expires": "2024-05-01T14:00:00.000Z",
//!  "since": "2024-05-01T12:00:02.000Z", "at": "2024-05-01T12:00:02.000Z"}
//! ```
//!
//! `format = "slack"` posts a Slack incoming-webhook message: `text` (the notification's
//! fallback) and `blocks` (a `section` with the same text in mrkdwn and a `context` with the
//! instance and time).
//!
//! `format = "pagerduty"` posts PagerDuty Events API v2 events (point `webhook_url` at
//! `https://events.pagerduty.com/v2/enqueue`; the routing key comes from
//! `notify.routing_key_file`). Each problem has its own `dedup_key`, so that the recovery
//! resolves the incident its failure opened: `meridian/target/ADDRESS/CHECK` (trigger on down,
//! resolve on up), `meridian/service/NAME/FAMILY` (trigger when the service fails open or has
//! nothing usable, resolve when it recovers) and `meridian/drain/regions/NAME` or
//! `.../targets/ADDRESS` (a trigger of severity `info` on drain, class `drain`, with who, why
//! and the expiry in the summary and `custom_details`; resolve on undrain and on expiry). A
//! planned drain is not an outage: with PagerDuty's severity-based urgency (the recommended
//! service setting) an `info` alert is low urgency and does not page; it stays open, visible
//! on the service, for as long as the drain lasts.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::{Config, Notify, NotifyFormat};
use crate::health::{DrainEvent, HealthView, State, TransitionEvent, format_rfc3339, withdrawal};
use crate::outage::OutageEvent;
use crate::snapshot::SnapshotCell;

/// Notifications waiting to be posted; more are dropped (with a warning). Large enough for a
/// burst of every target of a large config changing at once (issue #17: 10,000 transitions
/// are notified exactly), small enough to bound memory while the webhook is down.
pub(crate) const WEBHOOK_QUEUE_CAPACITY: usize = 65_536;
/// Wait before the first retry of a failed POST; doubled for each further retry.
pub(crate) const WEBHOOK_BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Longest wait between two retries.
pub(crate) const WEBHOOK_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The JSON body posted for one state change.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Notification {
    /// Always `target_state_changed`.
    pub(crate) event: &'static str,
    /// This server's `server.nsid`, to tell instances apart.
    pub(crate) instance: Option<String>,
    /// Services with an endpoint on this target (address and check), in config order.
    pub(crate) services: Vec<String>,
    /// The change itself.
    #[serde(flatten)]
    pub(crate) transition: TransitionEvent,
    /// Why answers do not use the target now (`region_drained`, `target_drained`, `down`),
    /// when every endpoint listing it withdraws it; `None` when some answer may use it.
    pub(crate) withdrawn: Option<&'static str>,
}

impl Notification {
    /// Builds the notification of `transition` under `config`, with the health `view` in
    /// force after it.
    pub(crate) fn new(transition: TransitionEvent, config: &Config, view: &HealthView) -> Self {
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

/// The JSON body posted when a service loses its last usable target of a family, or gets one
/// back.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct OutageNotification {
    /// `service_failing_open`, `service_all_down` or `service_recovered`.
    pub(crate) event: &'static str,
    /// This server's `server.nsid`.
    pub(crate) instance: Option<String>,
    /// The change itself.
    #[serde(flatten)]
    pub(crate) outage: OutageEvent,
}

/// The JSON body posted when a drain begins, changes, is lifted or expires.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct DrainNotification {
    /// `drained`, `undrained` or `drain_expired`.
    pub(crate) event: &'static str,
    /// This server's `server.nsid`.
    pub(crate) instance: Option<String>,
    /// `regions/NAME` or `targets/ADDRESS`.
    pub(crate) subject: String,
    /// Who drained it, when the drain record says.
    pub(crate) who: Option<String>,
    /// Why, when the drain record says.
    pub(crate) reason: Option<String>,
    /// When the drain ends by itself, if ever.
    #[serde(serialize_with = "crate::health::serialize_opt_time")]
    pub(crate) expires: Option<SystemTime>,
    /// When the drain was made, when the drain record says.
    #[serde(serialize_with = "crate::health::serialize_opt_time")]
    pub(crate) since: Option<SystemTime>,
    /// When the change was made.
    #[serde(serialize_with = "crate::health::serialize_time")]
    pub(crate) at: SystemTime,
}

impl DrainNotification {
    /// Builds the notification of the drain change `e` for `instance`.
    pub(crate) fn new(e: DrainEvent, instance: Option<String>) -> Self {
        let record = e.record.as_ref();
        Self {
            event: e.change.as_str(),
            instance,
            who: record.and_then(|d| (!d.who.is_empty()).then(|| d.who.clone())),
            reason: record.and_then(|d| d.reason.clone()),
            expires: record.and_then(|d| d.expires),
            since: record.map(|d| d.at),
            subject: e.subject,
            at: e.at,
        }
    }
}

/// One thing to notify, rendered in `notify.format` when it is sent.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    /// A target changed state.
    Target(Notification),
    /// A service lost or regained its last usable target of a family.
    Outage(OutageNotification),
    /// A drain began, changed or ended.
    Drain(DrainNotification),
}

impl Event {
    /// Returns a short description for logs.
    fn describe(&self) -> String {
        match self {
            Event::Target(n) => format!(
                "target {} {}",
                n.transition.address,
                n.transition.to.as_str()
            ),
            Event::Outage(n) => format!(
                "{} {} {}",
                n.event,
                n.outage.service,
                n.outage.family.as_str()
            ),
            Event::Drain(n) => format!("{} {}", n.event, n.subject),
        }
    }

    /// Renders the body of the POST for `notify`'s format; `None` when the format has nothing
    /// to say about this event (Slack and PagerDuty: a target's first result of up; PagerDuty:
    /// any change that neither opens nor closes an incident).
    pub(crate) fn render(&self, notify: &Notify) -> Option<Value> {
        match notify.format {
            NotifyFormat::Json => Some(self.document()),
            // A first probe result of up is not news to a person.
            NotifyFormat::Slack => match self {
                Event::Target(n)
                    if n.transition.from == State::Unknown && n.transition.to == State::Up =>
                {
                    None
                }
                _ => Some(self.slack()),
            },
            NotifyFormat::PagerDuty => self.pagerduty(notify.routing_key.as_deref().unwrap_or("")),
        }
    }

    /// Returns the bytes to POST for `notify`'s format (the document of [`Event::render`],
    /// with the JSON format's keys in their documented order); `None` when there is nothing to
    /// send.
    pub(crate) fn body(&self, notify: &Notify) -> Option<Vec<u8>> {
        let bytes = match (notify.format, self) {
            (NotifyFormat::Json, Event::Target(n)) => serde_json::to_vec(n),
            (NotifyFormat::Json, Event::Outage(n)) => serde_json::to_vec(n),
            (NotifyFormat::Json, Event::Drain(n)) => serde_json::to_vec(n),
            _ => serde_json::to_vec(&self.render(notify)?),
        };
        match bytes {
            Ok(b) => Some(b),
            Err(error) => {
                warn!(%error, "cannot encode a webhook notification");
                None
            }
        }
    }

    /// Meridian's own JSON document of the event.
    fn document(&self) -> Value {
        let doc = match self {
            Event::Target(n) => serde_json::to_value(n),
            Event::Outage(n) => serde_json::to_value(n),
            Event::Drain(n) => serde_json::to_value(n),
        };
        // Invariant: these structs serialize to JSON objects (no maps with non-string keys).
        doc.unwrap_or(Value::Null)
    }

    fn instance(&self) -> Option<&str> {
        match self {
            Event::Target(n) => n.instance.as_deref(),
            Event::Outage(n) => n.instance.as_deref(),
            Event::Drain(n) => n.instance.as_deref(),
        }
    }

    fn at(&self) -> SystemTime {
        match self {
            Event::Target(n) => n.transition.at,
            Event::Outage(n) => n.outage.at,
            Event::Drain(n) => n.at,
        }
    }

    /// The one-line text of the event (Slack mrkdwn, PagerDuty summary without the marks).
    fn text(&self, marks: bool) -> String {
        let b = |s: &str| {
            if marks {
                format!("*{s}*")
            } else {
                s.to_string()
            }
        };
        match self {
            Event::Target(n) => {
                let t = &n.transition;
                let icon = match (marks, t.to) {
                    (false, _) => "",
                    (true, State::Down) => ":red_circle: ",
                    (true, State::Up) => ":large_green_circle: ",
                    (true, State::Unknown) => ":white_circle: ",
                };
                format!(
                    "{icon}Target {} (check {}) is {}: {}. Services: {}; regions: {}{}",
                    b(&t.address.to_string()),
                    t.check,
                    b(t.to.as_str()),
                    t.reason,
                    n.services.join(", "),
                    t.regions.join(", "),
                    n.withdrawn
                        .map(|w| format!("; withdrawn from answers ({w})"))
                        .unwrap_or_default()
                )
            }
            Event::Outage(n) => {
                let o = &n.outage;
                let what = match n.event {
                    "service_failing_open" => format!(
                        "is {}: every target is down or drained ({} down, {} drained), answering with all of them",
                        b("failing open"),
                        o.down,
                        o.drained
                    ),
                    "service_all_down" => format!(
                        "has {}: every target is down or drained ({} down, {} drained), answering {}",
                        b("no usable target"),
                        o.down,
                        o.drained,
                        if o.when_all_down == "servfail" {
                            "SERVFAIL"
                        } else {
                            "NODATA"
                        }
                    ),
                    _ => format!("has {} again", b("a usable target")),
                };
                let icon = match (marks, o.active) {
                    (false, _) => "",
                    (true, true) => ":rotating_light: ",
                    (true, false) => ":white_check_mark: ",
                };
                format!(
                    "{icon}Service {} ({}) {what}",
                    b(&o.service),
                    o.family.as_str()
                )
            }
            Event::Drain(n) => {
                let (icon, what) = match n.event {
                    "drained" => (":construction: ", "drained"),
                    "drain_expired" => (":hourglass: ", "drain expired"),
                    _ => (":white_check_mark: ", "undrained"),
                };
                let icon = if marks { icon } else { "" };
                let subject = match n.subject.split_once('/') {
                    Some(("regions", name)) => format!("Region {}", b(name)),
                    Some(("targets", name)) => format!("Target {}", b(name)),
                    _ => b(&n.subject),
                };
                // The drain's record: "by WHO: WHY (until T)", "(no expiry)" when it has none.
                let mut record = String::new();
                if let Some(who) = &n.who {
                    record.push_str(&format!("by {who}"));
                }
                if let Some(reason) = &n.reason {
                    let sep = if record.is_empty() { "" } else { ": " };
                    record.push_str(&format!("{sep}{reason}"));
                }
                let until = match n.expires {
                    Some(e) => format!("until {}", format_rfc3339(e)),
                    None => "no expiry".to_string(),
                };
                if n.event == "drained" {
                    let by = if record.is_empty() {
                        String::new()
                    } else {
                        format!(" {record}")
                    };
                    format!("{icon}{subject} {}{by} ({until})", b(what))
                } else if record.is_empty() {
                    format!("{icon}{subject} {}", b(what))
                } else {
                    format!("{icon}{subject} {} (the drain {record}, {until})", b(what))
                }
            }
        }
    }

    /// A Slack incoming-webhook message.
    fn slack(&self) -> Value {
        let text = self.text(true);
        let context = format!(
            "meridian {} · {}",
            self.instance().unwrap_or("(no nsid)"),
            format_rfc3339(self.at())
        );
        json!({
            "text": text,
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": text}},
                {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
            ],
        })
    }

    /// A PagerDuty Events API v2 event.
    fn pagerduty(&self, routing_key: &str) -> Option<Value> {
        let (dedup_key, trigger, severity, component, group, class) = match self {
            Event::Target(n) => {
                let t = &n.transition;
                let trigger = match (t.from, t.to) {
                    (_, State::Down) => true,
                    (State::Down, State::Up) => false,
                    // A first result of up (or a target forgotten by a reload) opened nothing.
                    _ => return None,
                };
                (
                    format!("meridian/target/{}/{}", t.address, t.check),
                    trigger,
                    "error",
                    t.address.to_string(),
                    t.regions.join(","),
                    "target_down",
                )
            }
            Event::Outage(n) => (
                format!(
                    "meridian/service/{}/{}",
                    n.outage.service,
                    n.outage.family.as_str()
                ),
                n.outage.active,
                "critical",
                n.outage.service.clone(),
                n.outage.family.as_str().to_string(),
                if n.outage.when_all_down == "all" {
                    "service_failing_open"
                } else {
                    "service_all_down"
                },
            ),
            Event::Drain(n) => (
                format!("meridian/drain/{}", n.subject),
                n.event == "drained",
                "info",
                n.subject.clone(),
                String::new(),
                "drain",
            ),
        };
        if !trigger {
            return Some(json!({
                "routing_key": routing_key,
                "event_action": "resolve",
                "dedup_key": dedup_key,
            }));
        }
        let details = self.document();
        let mut summary = self.text(false);
        // The API's limit on the summary.
        if summary.len() > 1024 {
            let mut cut = 1021;
            while !summary.is_char_boundary(cut) {
                cut -= 1;
            }
            summary.truncate(cut);
            summary.push_str("...");
        }
        Some(json!({
            "routing_key": routing_key,
            "event_action": "trigger",
            "dedup_key": dedup_key,
            "payload": {
                "summary": summary,
                "source": self.instance().unwrap_or("meridian"),
                "severity": severity,
                "timestamp": format_rfc3339(self.at()),
                "component": component,
                "group": group,
                "class": class,
                "custom_details": details,
            },
        }))
    }
}

/// Spawns on `tasks` the collector of health transitions from `events`, of `outages` and of
/// drain changes from `drains` (all subscribed by the caller, so none is missed), and the
/// sender; both read the live `snapshot` and health `view`, and stop when `token` is
/// cancelled (queued notifications are then dropped).
pub(crate) fn start(
    events: mpsc::UnboundedReceiver<TransitionEvent>,
    outages: broadcast::Receiver<OutageEvent>,
    drains: mpsc::UnboundedReceiver<DrainEvent>,
    snapshot: SnapshotCell,
    view: Arc<ArcSwap<HealthView>>,
    tasks: &TaskTracker,
    token: CancellationToken,
) {
    let (tx, rx) = mpsc::channel(WEBHOOK_QUEUE_CAPACITY);
    let sources = Sources {
        events,
        outages: Some(outages),
        drains: Some(drains),
    };
    tasks.spawn(collect(sources, snapshot.clone(), view, tx, token.clone()));
    tasks.spawn(send(rx, snapshot, token));
}

/// Where the collector's events come from.
struct Sources {
    events: mpsc::UnboundedReceiver<TransitionEvent>,
    /// `None` once the outage watcher is gone (shutdown).
    outages: Option<broadcast::Receiver<OutageEvent>>,
    /// `None` once the health subsystem is gone (shutdown).
    drains: Option<mpsc::UnboundedReceiver<DrainEvent>>,
}

/// Receives the next service outage change; never returns once the watcher is gone, so a
/// closed channel is not polled again and again.
async fn next_outage(outages: &mut Option<broadcast::Receiver<OutageEvent>>) -> OutageEvent {
    while let Some(rx) = outages {
        match rx.recv().await {
            Ok(outage) => return outage,
            Err(RecvError::Lagged(missed)) => {
                warn!(
                    missed,
                    "webhook fell behind service outages; some are not notified"
                );
            }
            // The watcher stopped (shutdown): transitions and drains still flow.
            Err(RecvError::Closed) => *outages = None,
        }
    }
    std::future::pending().await
}

/// Receives the next drain change; never returns once `drains` is closed.
async fn next_drain(drains: &mut Option<mpsc::UnboundedReceiver<DrainEvent>>) -> DrainEvent {
    if let Some(rx) = drains {
        if let Some(e) = rx.recv().await {
            return e;
        }
        *drains = None;
    }
    std::future::pending().await
}

async fn collect(
    mut sources: Sources,
    snapshot: SnapshotCell,
    view: Arc<ArcSwap<HealthView>>,
    queue: mpsc::Sender<Event>,
    token: CancellationToken,
) {
    loop {
        let event: Event = tokio::select! {
            _ = token.cancelled() => return,
            e = sources.events.recv() => {
                let Some(e) = e else { return };
                let snap = snapshot.load();
                // Without [notify] nothing is sent: skip building the notification, which looks
                // the target up in the config (a cost per transition in a burst of thousands).
                if snap.config.notify.is_none() {
                    continue;
                }
                // The supervisor publishes the view before it sends the event: this view has it.
                Event::Target(Notification::new(e, &snap.config, &view.load()))
            }
            outage = next_outage(&mut sources.outages) => {
                let event = match (outage.active, outage.when_all_down) {
                    (false, _) => "service_recovered",
                    (true, "all") => "service_failing_open",
                    (true, _) => "service_all_down",
                };
                let instance = snapshot.load().config.server.nsid.clone();
                Event::Outage(OutageNotification { event, instance, outage })
            }
            d = next_drain(&mut sources.drains) => {
                let instance = snapshot.load().config.server.nsid.clone();
                Event::Drain(DrainNotification::new(d, instance))
            }
        };
        if snapshot.load().config.notify.is_none() {
            continue;
        }
        if let Err(mpsc::error::TrySendError::Full(e)) = queue.try_send(event) {
            warn!(
                event = %e.describe(),
                capacity = WEBHOOK_QUEUE_CAPACITY,
                "webhook queue full, dropping notification"
            );
        }
    }
}

async fn send(mut queue: mpsc::Receiver<Event>, snapshot: SnapshotCell, token: CancellationToken) {
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
        let Some(body) = n.body(&notify) else {
            continue;
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
                    debug!(url = %notify.webhook_url, event = %n.describe(), "webhook delivered");
                    break;
                }
                Ok(r) => format!("status {}", r.status().as_u16()),
                Err(e) => e.without_url().to_string(),
            };
            if attempt >= notify.retries {
                warn!(
                    url = %notify.webhook_url,
                    event = %n.describe(),
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
    use crate::health::overrides::DrainChange;

    fn notify(format: NotifyFormat) -> Notify {
        Notify {
            webhook_url: "http://127.0.0.1:9/hook".into(),
            timeout: Duration::from_secs(1),
            retries: 0,
            format,
            routing_key: Some("R0UT1NG".into()),
        }
    }

    fn target_event(to: State) -> Event {
        Event::Target(Notification {
            event: "target_state_changed",
            instance: Some("m1".into()),
            services: vec!["api.example.net.".into()],
            transition: TransitionEvent {
                address: "192.0.2.10".parse().unwrap(),
                check: "web".into(),
                regions: vec!["us-east".into()],
                from: if to == State::Down {
                    State::Up
                } else {
                    State::Down
                },
                to,
                reason: crate::health::state::Reason::Rise { successes: 2 },
                at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            },
            withdrawn: None,
        })
    }

    #[test]
    fn pagerduty_triggers_on_down_and_resolves_on_up_under_one_dedup_key() {
        let n = notify(NotifyFormat::PagerDuty);
        let down = target_event(State::Down).render(&n).unwrap();
        assert_eq!(down["event_action"], "trigger");
        assert_eq!(down["routing_key"], "R0UT1NG");
        assert_eq!(down["dedup_key"], "meridian/target/192.0.2.10/web");
        assert_eq!(down["payload"]["severity"], "error");
        assert_eq!(down["payload"]["source"], "m1");
        assert_eq!(down["payload"]["timestamp"], "2023-11-14T22:13:20.000Z");
        let summary = down["payload"]["summary"].as_str().unwrap();
        assert!(
            summary.contains("192.0.2.10") && summary.contains("down"),
            "{summary}"
        );
        assert_eq!(
            down["payload"]["custom_details"]["services"][0],
            "api.example.net."
        );
        let up = target_event(State::Up).render(&n).unwrap();
        assert_eq!(
            up,
            json!({"routing_key": "R0UT1NG", "event_action": "resolve",
                   "dedup_key": "meridian/target/192.0.2.10/web"})
        );
        assert_eq!(target_event(State::Unknown).render(&n), None);
    }

    #[test]
    fn slack_gets_text_and_blocks_and_json_the_document() {
        let slack = target_event(State::Down)
            .render(&notify(NotifyFormat::Slack))
            .unwrap();
        let text = slack["text"].as_str().unwrap();
        assert!(
            text.starts_with(":red_circle: Target *192.0.2.10*"),
            "{text}"
        );
        assert_eq!(slack["blocks"][0]["type"], "section");
        assert_eq!(slack["blocks"][0]["text"]["text"], text);
        assert_eq!(slack["blocks"][1]["type"], "context");
        let doc = target_event(State::Down)
            .render(&notify(NotifyFormat::Json))
            .unwrap();
        assert_eq!(doc["event"], "target_state_changed");
        assert_eq!(doc["to"], "down");
    }

    fn drain_event(change: DrainChange, reason: Option<&str>) -> Event {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let record = crate::health::overrides::Drain {
            who: "alice@ops".into(),
            at,
            reason: reason.map(str::to_string),
            expires: Some(at + Duration::from_secs(3600)),
            instance: None,
        };
        let e = DrainEvent {
            subject: "regions/eu-west".into(),
            change,
            record: Some(record),
            at,
        };
        Event::Drain(DrainNotification::new(e, Some("m1".into())))
    }

    #[test]
    fn drain_notifications_carry_who_why_and_expiry_in_every_format() {
        let set = drain_event(DrainChange::Set, Some("kernel upgrade"));
        let doc = set.render(&notify(NotifyFormat::Json)).unwrap();
        assert_eq!(
            doc,
            json!({"event": "drained", "instance": "m1", "subject": "regions/eu-west",
                   "who": "alice@ops", "reason": "kernel upgrade",
                   "expires": "2023-11-14T23:13:20.000Z", "since": "2023-11-14T22:13:20.000Z",
                   "at": "2023-11-14T22:13:20.000Z"})
        );
        assert_eq!(
            set.text(false),
            "Region eu-west drained by alice@ops: kernel upgrade (until 2023-11-14T23:13:20.000Z)"
        );
        let slack = set.render(&notify(NotifyFormat::Slack)).unwrap();
        assert_eq!(
            slack["text"],
            ":construction: Region *eu-west* *drained* by alice@ops: kernel upgrade \
             (until 2023-11-14T23:13:20.000Z)"
        );
        let pd = set.render(&notify(NotifyFormat::PagerDuty)).unwrap();
        assert_eq!(pd["event_action"], "trigger");
        assert_eq!(pd["dedup_key"], "meridian/drain/regions/eu-west");
        assert_eq!(pd["payload"]["severity"], "info");
        assert_eq!(pd["payload"]["class"], "drain");
        assert_eq!(pd["payload"]["custom_details"]["who"], "alice@ops");
        assert_eq!(pd["payload"]["summary"], set.text(false));

        // Lifted and expired both resolve the drain's alert and repeat its record.
        for (change, word, icon) in [
            (DrainChange::Lifted, "undrained", ":white_check_mark:"),
            (DrainChange::Expired, "drain expired", ":hourglass:"),
        ] {
            let end = drain_event(change, Some("kernel upgrade"));
            assert_eq!(
                end.text(false),
                format!(
                    "Region eu-west {word} (the drain by alice@ops: kernel upgrade, \
                     until 2023-11-14T23:13:20.000Z)"
                )
            );
            let slack = end.render(&notify(NotifyFormat::Slack)).unwrap();
            assert!(slack["text"].as_str().unwrap().starts_with(icon), "{slack}");
            let doc = end.render(&notify(NotifyFormat::Json)).unwrap();
            assert_eq!(doc["event"], change.as_str());
            assert_eq!(doc["reason"], "kernel upgrade");
            assert_eq!(
                end.render(&notify(NotifyFormat::PagerDuty)).unwrap(),
                json!({"routing_key": "R0UT1NG", "event_action": "resolve",
                       "dedup_key": "meridian/drain/regions/eu-west"})
            );
        }
        // A drain without a record says so much and no more.
        let bare = Event::Drain(DrainNotification::new(
            DrainEvent {
                subject: "targets/192.0.2.10".into(),
                change: DrainChange::Lifted,
                record: None,
                at: SystemTime::UNIX_EPOCH,
            },
            None,
        ));
        assert_eq!(bare.text(false), "Target 192.0.2.10 undrained");
        let doc = bare.render(&notify(NotifyFormat::Json)).unwrap();
        assert_eq!((doc["who"].is_null(), doc["since"].is_null()), (true, true));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(0), Duration::from_millis(500));
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(10), WEBHOOK_BACKOFF_MAX);
        assert_eq!(backoff(40), WEBHOOK_BACKOFF_MAX);
    }
}
