//! `meridian ctl`: the operator's command (like `gdnsdctl` or `pdns_control`), against one
//! instance (`--admin URL`) or every instance of the fleet.
//!
//! Which instances: the `--admin` URLs given; else, with `--config`, every instance whose
//! lease is alive in the `[cluster]` store, else the config's `cluster.admin_urls`, else its
//! `server.admin_listen`. The token of mutating calls comes from `MERIDIAN_ADMIN_TOKEN`, else
//! the config's `server.admin_token_file`. Each instance is asked in parallel; the output is
//! one table row (or, with `--json`, one JSON object) per instance, and the exit code is 1 when
//! any instance failed (2 for a bad config or no instance to ask).
//!
//! HTTPS admin ports (`server.admin_tls_certificate`): `--ca` trusts only the CAs of a PEM
//! bundle (else the system's roots), `--cert`/`--key` present a client certificate (for
//! `server.admin_client_ca`); a TLS failure is told in the operator's terms ([`tls_hint`]).
//!
//! In a fleet a drain is stored once for everyone, so sending it to every instance is
//! harmless (each write is the same) and tells the operator which instances took it.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

/// Time one admin call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// `meridian ctl` arguments.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Admin URL of an instance (repeat for several); default: the fleet of --config.
    #[arg(long = "admin", global = true)]
    pub admin: Vec<String>,
    /// The config file: finds the fleet (in the etcd store of its cluster table, cluster.admin_urls or
    /// server.admin_listen) and the token (server.admin_token_file).
    #[arg(long, env = "MERIDIAN_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Prints JSON (one object per instance) instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// PEM CA bundle that signed the admin ports' certificates (https:// URLs); only these CAs
    /// are trusted. Default: the system's trusted roots.
    #[arg(long, env = "MERIDIAN_ADMIN_CA", global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate presented to admin ports that require one
    /// (server.admin_client_ca); with --key.
    #[arg(
        long,
        env = "MERIDIAN_ADMIN_CERT",
        global = true,
        value_name = "FILE",
        requires = "key"
    )]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(
        long,
        env = "MERIDIAN_ADMIN_KEY",
        global = true,
        value_name = "FILE",
        requires = "cert"
    )]
    pub key: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// What `meridian ctl` does.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Shows each instance: ready, fleet connection, drains, targets down.
    Status,
    /// Withdraws a region or a target from every answer (in a fleet: on every instance).
    Drain(DrainArgs),
    /// Puts a drained region or target back.
    Undrain(DrainArgs),
    /// Reloads the config file of each instance.
    Reload,
    /// Shows how each instance would answer a client, and why.
    Explain {
        /// The client's address (or the ECS subnet address).
        #[arg(long)]
        client: String,
        /// The name asked for.
        name: String,
        /// The type asked for: A or AAAA.
        #[arg(default_value = "A")]
        qtype: String,
    },
}

/// What a drain names.
#[derive(Debug, Args)]
pub struct DrainArgs {
    /// A region of the config.
    #[arg(long, conflicts_with = "target", required_unless_present = "target")]
    pub region: Option<String>,
    /// One endpoint address.
    #[arg(long)]
    pub target: Option<String>,
    /// Why (kept with the drain, shown in /status).
    #[arg(long)]
    pub reason: Option<String>,
    /// How long the drain lasts, e.g. 30m or 2h (drain only).
    #[arg(long)]
    pub expires: Option<String>,
}

/// One instance's answer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    /// The admin URL asked.
    pub admin: String,
    /// True when the call succeeded (2xx).
    pub ok: bool,
    /// The HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// The JSON answer, when there was one.
    pub body: Option<Value>,
    /// Why it failed.
    pub error: Option<String>,
}

/// Runs `meridian ctl`; returns the process exit code.
pub fn run(args: CtlArgs) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return 1;
        }
    };
    runtime.block_on(run_async(args))
}

async fn run_async(args: CtlArgs) -> u8 {
    let config = match &args.config {
        Some(path) => match crate::config::load(path) {
            Ok(c) => Some(c),
            Err(errors) => {
                eprintln!("{errors}");
                return 2;
            }
        },
        None => None,
    };
    let admins = match instances(&args.admin, config.as_ref()).await {
        Ok(a) if !a.is_empty() => a,
        Ok(_) => {
            eprintln!("error: no instance to ask: give --admin URL or --config FILE");
            return 2;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let token = std::env::var("MERIDIAN_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .or_else(|| {
            let path = config.as_ref()?.server.admin_token_file.as_ref()?;
            std::fs::read_to_string(path).ok()
        })
        .map(|t| t.trim().to_string());
    let request = match request(&args.command) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let client = match client(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (i, admin) in admins.iter().enumerate() {
        let (client, request, token, admin) = (
            client.clone(),
            request.clone(),
            token.clone(),
            admin.clone(),
        );
        tasks.spawn(async move { (i, call(&client, &admin, &request, token.as_deref()).await) });
    }
    let mut outcomes: Vec<Option<Outcome>> = vec![None; admins.len()];
    while let Some(done) = tasks.join_next().await {
        if let Ok((i, o)) = done {
            outcomes[i] = Some(o);
        }
    }
    let outcomes: Vec<Outcome> = outcomes
        .into_iter()
        .zip(&admins)
        .map(|(o, admin)| {
            o.unwrap_or_else(|| Outcome {
                admin: admin.clone(),
                ok: false,
                status: None,
                body: None,
                error: Some("the call was lost".into()),
            })
        })
        .collect();
    if args.json {
        // Serializing strings and JSON values cannot fail.
        println!(
            "{}",
            serde_json::to_string_pretty(&outcomes).expect("outcomes serialize")
        );
    } else {
        print!("{}", table(&args.command, &outcomes));
    }
    u8::from(outcomes.iter().any(|o| !o.ok))
}

/// Returns the HTTP client of the admin calls: trusting only `--ca` when given, presenting
/// `--cert`/`--key` when given.
fn client(args: &CtlArgs) -> Result<reqwest::Client, String> {
    crate::health::probe::install_crypto_provider();
    let mut builder = reqwest::Client::builder().no_proxy().timeout(CALL_TIMEOUT);
    if let Some(ca) = &args.ca {
        let pem = std::fs::read(ca).map_err(|e| format!("--ca {}: {e}", ca.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("--ca {}: {e}", ca.display()))?;
        if certs.is_empty() {
            return Err(format!("--ca {}: holds no PEM certificate", ca.display()));
        }
        builder = builder.tls_certs_only(certs);
    }
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        let mut pem = std::fs::read(cert).map_err(|e| format!("--cert {}: {e}", cert.display()))?;
        pem.push(b'\n');
        pem.extend(std::fs::read(key).map_err(|e| format!("--key {}: {e}", key.display()))?);
        let id = reqwest::Identity::from_pem(&pem)
            .map_err(|e| format!("--cert {} / --key {}: {e}", cert.display(), key.display()))?;
        builder = builder.identity(id);
    }
    builder.build().map_err(|e| e.to_string())
}

/// Returns the admin URLs to ask.
async fn instances(
    given: &[String],
    config: Option<&crate::config::Config>,
) -> Result<Vec<String>, String> {
    if !given.is_empty() {
        return Ok(given.iter().map(|a| normalize(a)).collect());
    }
    let Some(config) = config else {
        return Ok(Vec::new());
    };
    if let Some(cluster) = &config.cluster {
        match crate::cluster::Cluster::discover(cluster).await {
            Ok(found) if !found.is_empty() => {
                return Ok(found.into_iter().map(|(_, a)| a).collect());
            }
            Ok(_) => {}
            Err(e) if cluster.admin_urls.is_empty() => {
                return Err(format!(
                    "cannot find the fleet in etcd ({e}); list it in cluster.admin_urls or give --admin"
                ));
            }
            Err(e) => {
                eprintln!("warning: cannot find the fleet in etcd ({e}); using cluster.admin_urls")
            }
        }
        if !cluster.admin_urls.is_empty() {
            return Ok(cluster.admin_urls.clone());
        }
    }
    let scheme = if config.server.admin_tls_certificate.is_some() {
        "https"
    } else {
        "http"
    };
    Ok(config
        .server
        .admin_listen
        .map(|a| format!("{scheme}://{a}"))
        .into_iter()
        .collect())
}

fn normalize(admin: &str) -> String {
    let a = admin.trim_end_matches('/');
    if a.starts_with("http://") || a.starts_with("https://") {
        a.to_string()
    } else {
        format!("http://{a}")
    }
}

/// One admin call: method, path and JSON body.
#[derive(Debug, Clone)]
struct Request {
    post: bool,
    path: String,
    body: Option<Value>,
}

fn who() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!(
        "{user}@{} (meridian ctl)",
        crate::config::cluster::hostname()
    )
}

fn request(command: &CtlCommand) -> Result<Request, String> {
    Ok(match command {
        CtlCommand::Status => Request {
            post: false,
            path: "/status".into(),
            body: None,
        },
        CtlCommand::Reload => Request {
            post: true,
            path: "/reload".into(),
            body: None,
        },
        CtlCommand::Drain(d) | CtlCommand::Undrain(d) => {
            let drain = matches!(command, CtlCommand::Drain(_));
            let (kind, name) = match (&d.region, &d.target) {
                (Some(r), None) => ("regions", r.clone()),
                (None, Some(t)) => {
                    t.parse::<std::net::IpAddr>()
                        .map_err(|_| format!("--target {t:?} is not an IP address"))?;
                    ("targets", t.clone())
                }
                _ => return Err("give exactly one of --region and --target".into()),
            };
            if let Some(e) = &d.expires {
                if !drain {
                    return Err("--expires applies to drain only".into());
                }
                crate::config::parse_duration(e).map_err(|m| format!("--expires: {m}"))?;
            }
            let mut body = json!({ "who": who() });
            if let Some(r) = &d.reason {
                body["reason"] = json!(r);
            }
            if let Some(e) = &d.expires {
                body["expires"] = json!(e);
            }
            let action = if drain { "drain" } else { "undrain" };
            Request {
                post: true,
                path: format!("/{kind}/{}/{action}", encode_path(&name)),
                body: Some(body),
            }
        }
        CtlCommand::Explain {
            client,
            name,
            qtype,
        } => Request {
            post: false,
            path: format!(
                "/explain?name={}&type={}&client={}",
                encode_path(name),
                encode_path(qtype),
                encode_path(client)
            ),
            body: None,
        },
    })
}

/// Percent-encodes everything but unreserved characters (RFC 3986 §2.3).
fn encode_path(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn call(client: &reqwest::Client, admin: &str, r: &Request, token: Option<&str>) -> Outcome {
    let url = format!("{admin}{}", r.path);
    let mut req = if r.post {
        client.post(&url)
    } else {
        client.get(&url)
    };
    if let Some(t) = token {
        req = req.header(reqwest::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if let Some(b) = &r.body {
        req = req
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(b.to_string());
    }
    let mut outcome = Outcome {
        admin: admin.to_string(),
        ok: false,
        status: None,
        body: None,
        error: None,
    };
    match req.send().await {
        Err(e) => {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg = format!("{msg}: {s}");
                source = s.source();
            }
            if let Some(h) = tls_hint(&msg) {
                msg = format!("{msg} ({h})");
            }
            outcome.error = Some(msg);
        }
        Ok(resp) => {
            let status = resp.status();
            outcome.status = Some(status.as_u16());
            let text = resp.text().await.unwrap_or_default();
            let body: Option<Value> = serde_json::from_str(&text).ok();
            outcome.ok = status.is_success();
            if !outcome.ok {
                outcome.error = Some(
                    body.as_ref()
                        .and_then(|b| b.get("error"))
                        .and_then(Value::as_str)
                        .map_or_else(|| text.trim().to_string(), str::to_string),
                );
            }
            outcome.body = body;
        }
    }
    outcome
}

/// Says in the operator's terms what a TLS failure of an admin call means (rustls names
/// the alert or the verification error only).
fn tls_hint(error: &str) -> Option<&'static str> {
    if error.contains("UnknownIssuer") || error.contains("BadSignature") {
        Some(
            "the admin port's certificate is not signed by a CA of --ca (without --ca: of the system's trusted roots)",
        )
    } else if error.contains("NotValidForName") {
        Some("the admin port's certificate does not name the host of the URL")
    } else if error.contains("Expired") || error.contains("NotValidYet") {
        Some("the admin port's certificate is outside its validity dates")
    } else if error.contains("CertificateRequired") {
        Some("the admin port requires a client certificate: give --cert and --key")
    } else if error.contains("received fatal alert: UnknownCA")
        || error.contains("received fatal alert: BadCertificate")
        || error.contains("received fatal alert: DecryptError")
    {
        Some(
            "the admin port refused the client certificate: it is not signed by its server.admin_client_ca",
        )
    } else if error.contains("InvalidContentType") || error.contains("CorruptMessage") {
        Some("the admin port does not speak TLS: try an http:// URL")
    } else {
        None
    }
}

/// Renders the outcomes as a table, one row per instance.
fn table(command: &CtlCommand, outcomes: &[Outcome]) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let header: Vec<&str> = match command {
        CtlCommand::Status => vec![
            "INSTANCE", "ADMIN", "RESULT", "READY", "FLEET", "PEERS", "DRAINED", "DOWN",
        ],
        CtlCommand::Explain { .. } => vec!["INSTANCE", "ADMIN", "RESULT", "ANSWER"],
        _ => vec!["INSTANCE", "ADMIN", "RESULT", "DETAIL"],
    };
    for o in outcomes {
        let b = o.body.as_ref().unwrap_or(&Value::Null);
        let name = b
            .pointer("/fleet/instance")
            .or_else(|| b.get("instance"))
            .and_then(Value::as_str)
            .unwrap_or("-")
            .to_string();
        let result = if o.ok {
            "ok".to_string()
        } else {
            match o.status {
                Some(s) => format!("FAILED ({s})"),
                None => "FAILED".to_string(),
            }
        };
        let mut row = vec![name, o.admin.clone(), result];
        if !o.ok {
            row.push(o.error.clone().unwrap_or_default());
            rows.push(row);
            continue;
        }
        match command {
            CtlCommand::Status => {
                let list = |k: &str| {
                    let v: Vec<String> = b
                        .get(k)
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect();
                    v
                };
                let mut drained = list("drained_regions");
                drained.extend(list("drained_targets"));
                let fleet = match b.get("fleet") {
                    Some(f) if f.get("connected") == Some(&Value::Bool(true)) => "connected",
                    Some(_) => "DISCONNECTED",
                    None => "-",
                };
                let peers = b
                    .pointer("/fleet/instances")
                    .and_then(Value::as_array)
                    .map_or("-".to_string(), |a| {
                        let fresh = a
                            .iter()
                            .filter(|i| i.get("fresh") == Some(&Value::Bool(true)))
                            .count();
                        format!("{}", fresh.saturating_sub(1))
                    });
                let mut down = Vec::new();
                for s in b
                    .get("services")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    for r in s
                        .get("regions")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        for t in r
                            .get("targets")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                        {
                            if t.get("usable") == Some(&Value::Bool(false)) {
                                let a = t.get("address").and_then(Value::as_str).unwrap_or("?");
                                if !down.iter().any(|d: &String| d == a) {
                                    down.push(a.to_string());
                                }
                            }
                        }
                    }
                }
                row.push(
                    if b.get("ready") == Some(&Value::Bool(true)) {
                        "yes"
                    } else {
                        "no"
                    }
                    .into(),
                );
                row.push(fleet.into());
                row.push(peers);
                row.push(or_dash(drained.join(",")));
                row.push(or_dash(down.join(",")));
            }
            CtlCommand::Explain { .. } => {
                let outcome = b.pointer("/decision/outcome");
                let answer = match outcome.and_then(|o| o.get("addresses")) {
                    Some(Value::Array(a)) => a
                        .iter()
                        .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                        .collect::<Vec<_>>()
                        .join(","),
                    _ => outcome
                        .and_then(|o| o.get("kind"))
                        .and_then(Value::as_str)
                        .unwrap_or("-")
                        .to_string(),
                };
                row.push(answer);
            }
            CtlCommand::Drain(_) | CtlCommand::Undrain(_) => {
                let what = b
                    .get("region")
                    .map(|r| format!("region {}", r.as_str().unwrap_or("?")))
                    .or_else(|| {
                        b.get("target")
                            .map(|t| format!("target {}", t.as_str().unwrap_or("?")))
                    })
                    .unwrap_or_default();
                let drained = b.get("drained") == Some(&Value::Bool(true));
                let changed = b.get("changed") == Some(&Value::Bool(true));
                row.push(format!(
                    "{} {what}{}",
                    if drained { "drained" } else { "undrained" },
                    if changed { "" } else { " (already)" }
                ));
            }
            CtlCommand::Reload => {
                let services = b.get("services").map_or("?".into(), Value::to_string);
                row.push(format!("reloaded ({services} services)"));
            }
        }
        rows.push(row);
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        // The last cell of a row is not padded, so it sets no width: a failed instance's error
        // (in the fourth cell) does not widen the status table's READY column.
        for (i, c) in r.iter().enumerate().take(r.len().saturating_sub(1)) {
            if i < widths.len() {
                widths[i] = widths[i].max(c.len());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                out.push_str(c);
            } else {
                out.push_str(&format!(
                    "{c:<w$}  ",
                    w = widths.get(i).copied().unwrap_or(0)
                ));
            }
        }
        out.push('\n');
    };
    line(header.clone(), &mut out);
    for r in &rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

fn or_dash(s: String) -> String {
    if s.is_empty() { "-".into() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_requests_name_the_subject_and_carry_reason_and_expiry() {
        let r = request(&CtlCommand::Drain(DrainArgs {
            region: Some("eu-west".into()),
            target: None,
            reason: Some("maintenance".into()),
            expires: Some("30m".into()),
        }))
        .unwrap();
        assert!(r.post);
        assert_eq!(r.path, "/regions/eu-west/drain");
        let body = r.body.unwrap();
        assert_eq!(body["reason"], "maintenance");
        assert_eq!(body["expires"], "30m");
        let err = request(&CtlCommand::Undrain(DrainArgs {
            region: None,
            target: Some("not-an-ip".into()),
            reason: None,
            expires: None,
        }))
        .unwrap_err();
        assert!(err.contains("not an IP address"), "{err}");
    }

    #[test]
    fn a_failed_instance_shows_its_error_in_the_table() {
        let outcomes = [
            Outcome {
                admin: "http://127.0.0.1:1".into(),
                ok: false,
                status: Some(503),
                body: None,
                error: Some("the cluster store is unreachable".into()),
            },
            Outcome {
                admin: "http://127.0.0.1:2".into(),
                ok: true,
                status: Some(200),
                body: Some(
                    json!({"region": "eu", "drained": true, "changed": true, "instance": "b"}),
                ),
                error: None,
            },
        ];
        let t = table(&CtlCommand::Reload, &outcomes[..1]);
        assert!(
            t.contains("FAILED (503)") && t.contains("unreachable"),
            "{t}"
        );
        let t = table(
            &CtlCommand::Drain(DrainArgs {
                region: Some("eu".into()),
                target: None,
                reason: None,
                expires: None,
            }),
            &outcomes[1..],
        );
        assert!(t.contains("drained region eu") && t.contains("b "), "{t}");
    }

    #[test]
    fn a_long_error_does_not_widen_the_status_columns() {
        let outcomes = [
            Outcome {
                admin: "http://127.0.0.1:1".into(),
                ok: false,
                status: None,
                body: None,
                error: Some(format!("connection refused {}", "x".repeat(80))),
            },
            Outcome {
                admin: "http://127.0.0.1:2".into(),
                ok: true,
                status: Some(200),
                body: Some(json!({"instance": "b", "ready": true})),
                error: None,
            },
        ];
        let t = table(&CtlCommand::Status, &outcomes);
        let ok = t.lines().find(|l| l.starts_with("b ")).expect(&t);
        assert!(ok.contains("  ok      yes    -  "), "{t}");
        let failed = t.lines().find(|l| l.contains("FAILED")).expect(&t);
        assert!(failed.ends_with(&"x".repeat(80)), "{t}");
    }
}
