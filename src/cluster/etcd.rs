//! A small etcd v3 client over etcd's JSON gateway (`/v3/kv/range`, `/v3/kv/put`,
//! `/v3/kv/deleterange`, `/v3/lease/grant|keepalive|revoke`, `/v3/watch`), on the reqwest
//! client already in the tree.
//!
//! Why not the `etcd-client` crate (tonic/gRPC): it pulls tonic, prost, h2 and a build step
//! that needs `protoc`, minutes of extra compile time on a small CI machine, for the six calls
//! Meridian makes. The gateway is part of etcd since 3.3 (served under `/v3/` from 3.4), speaks
//! the same protobuf messages as JSON (bytes as base64, 64-bit integers as strings), and a watch
//! is one long HTTP response of newline-separated JSON messages.
//!
//! Every call tries the endpoints in order, starting at the last one that answered.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use crate::config::Cluster;

/// Time one unary call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Operations per transaction (etcd's default `--max-txn-ops` is 128).
pub(crate) const MAX_TXN_OPS: usize = 128;
/// Time to open a connection to an endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A failed call to the store.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum EtcdError {
    /// No endpoint answered.
    #[error("etcd unreachable ({0})")]
    Unreachable(String),
    /// The store answered with an error.
    #[error("etcd refused the call: {0}")]
    Refused(String),
    /// The answer was not what the gateway sends.
    #[error("unexpected answer from etcd: {0}")]
    Malformed(String),
    /// A watch asked for history that was compacted away: read everything again.
    #[error("etcd compacted the history to revision {0}")]
    Compacted(i64),
}

/// One key and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// The key was written.
    Put(KeyValue),
    /// The key was deleted (or its lease expired).
    Delete(String),
}

/// The store client.
#[derive(Debug)]
pub(crate) struct Etcd {
    client: reqwest::Client,
    endpoints: Vec<String>,
    current: AtomicUsize,
}

/// Returns the end of the range of every key starting with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

fn field_int(v: &Value, name: &str) -> i64 {
    v.get(name).and_then(int).unwrap_or(0)
}

fn decode_kv(kv: &Value) -> Result<KeyValue, EtcdError> {
    let b64 = |name: &str| -> Result<Vec<u8>, EtcdError> {
        match kv.get(name).and_then(Value::as_str) {
            None => Ok(Vec::new()),
            Some(s) => B64
                .decode(s)
                .map_err(|e| EtcdError::Malformed(format!("{name}: {e}"))),
        }
    };
    let key = String::from_utf8(b64("key")?)
        .map_err(|_| EtcdError::Malformed("a key is not UTF-8".into()))?;
    Ok(KeyValue {
        key,
        value: b64("value")?,
    })
}

impl Etcd {
    /// Returns a client of the endpoints of `cluster` (with its TLS files, when set).
    pub(crate) fn new(cluster: &Cluster) -> Result<Etcd, String> {
        crate::health::probe::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if let Some(tls) = &cluster.tls {
            if let Some(ca) = &tls.ca_file {
                let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
                for cert in reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| format!("{}: {e}", ca.display()))?
                {
                    builder = builder.add_root_certificate(cert);
                }
            }
            if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
                let mut pem =
                    std::fs::read(cert).map_err(|e| format!("{}: {e}", cert.display()))?;
                pem.push(b'\n');
                pem.extend(std::fs::read(key).map_err(|e| format!("{}: {e}", key.display()))?);
                let id = reqwest::Identity::from_pem(&pem)
                    .map_err(|e| format!("client certificate {}: {e}", cert.display()))?;
                builder = builder.identity(id);
            }
        }
        let client = builder.build().map_err(|e| e.to_string())?;
        Ok(Etcd {
            client,
            endpoints: cluster
                .endpoints
                .iter()
                .map(|e| e.trim_end_matches('/').to_string())
                .collect(),
            current: AtomicUsize::new(0),
        })
    }

    /// Sends `body` to `path` on the first endpoint that answers; returns the response.
    async fn send(
        &self,
        path: &str,
        body: &Value,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, EtcdError> {
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = String::from("no endpoints");
        for i in 0..n {
            let idx = (start + i) % n;
            let url = format!("{}{path}", self.endpoints[idx]);
            let mut req = self
                .client
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            match req.send().await {
                Ok(resp) if resp.status().is_success() => {
                    self.current.store(idx, Ordering::Relaxed);
                    return Ok(resp);
                }
                Ok(resp) => {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    // The gateway answers 503 while the member has no leader: try the next.
                    if status.is_server_error() {
                        last = format!("{url}: {status} {}", text.trim());
                        continue;
                    }
                    return Err(EtcdError::Refused(format!("{status} {}", text.trim())));
                }
                Err(e) => last = format!("{url}: {}", error_chain(&e)),
            }
        }
        Err(EtcdError::Unreachable(last))
    }

    async fn call(&self, path: &str, body: Value) -> Result<Value, EtcdError> {
        let resp = self.send(path, &body, Some(CALL_TIMEOUT)).await?;
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| EtcdError::Unreachable(e.to_string()))?;
        let v: Value =
            serde_json::from_slice(&bytes).map_err(|e| EtcdError::Malformed(e.to_string()))?;
        // A streaming call (keepalive) wraps its single message in {"result": ...}.
        if let Some(err) = v.get("error") {
            return Err(EtcdError::Refused(err.to_string()));
        }
        Ok(v.get("result").cloned().unwrap_or(v))
    }

    /// Reads every key under `prefix`; returns the store's revision and the keys.
    pub(crate) async fn range_prefix(
        &self,
        prefix: &str,
    ) -> Result<(i64, Vec<KeyValue>), EtcdError> {
        let v = self
            .call(
                "/v3/kv/range",
                json!({ "key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix)) }),
            )
            .await?;
        let revision = v.get("header").map_or(0, |h| field_int(h, "revision"));
        let kvs = match v.get("kvs").and_then(Value::as_array) {
            Some(a) => a.iter().map(decode_kv).collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        Ok((revision, kvs))
    }

    /// Writes `key` = `value`, attached to `lease` when given; returns true when the key
    /// did not exist before.
    pub(crate) async fn put(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<i64>,
    ) -> Result<bool, EtcdError> {
        let mut body = json!({
            "key": B64.encode(key),
            "value": B64.encode(value),
            "prev_kv": true,
        });
        if let Some(l) = lease {
            body["lease"] = Value::String(l.to_string());
        }
        let v = self.call("/v3/kv/put", body).await?;
        Ok(v.get("prev_kv").is_none())
    }

    /// Applies `ops` (`Some(value)`: put under `lease`; `None`: delete) in transactions of at
    /// most [`MAX_TXN_OPS`] operations each: one request and one disk sync per batch instead of
    /// one per key (a thousand votes at once would otherwise outlast the lease).
    pub(crate) async fn put_many(
        &self,
        ops: &[(String, Option<Vec<u8>>)],
        lease: Option<i64>,
    ) -> Result<(), EtcdError> {
        for chunk in ops.chunks(MAX_TXN_OPS) {
            let success: Vec<Value> = chunk
                .iter()
                .map(|(key, value)| match value {
                    Some(v) => {
                        let mut put = json!({ "key": B64.encode(key), "value": B64.encode(v) });
                        if let Some(l) = lease {
                            put["lease"] = Value::String(l.to_string());
                        }
                        json!({ "request_put": put })
                    }
                    None => json!({ "request_delete_range": { "key": B64.encode(key) } }),
                })
                .collect();
            self.call("/v3/kv/txn", json!({ "success": success }))
                .await?;
        }
        Ok(())
    }

    /// Deletes `key`; returns how many keys were deleted.
    pub(crate) async fn delete(&self, key: &str) -> Result<i64, EtcdError> {
        let v = self
            .call("/v3/kv/deleterange", json!({ "key": B64.encode(key) }))
            .await?;
        Ok(field_int(&v, "deleted"))
    }

    /// Grants a lease of `ttl` seconds; returns its id.
    pub(crate) async fn grant(&self, ttl: u64) -> Result<i64, EtcdError> {
        let v = self
            .call("/v3/lease/grant", json!({ "TTL": ttl.to_string() }))
            .await?;
        match field_int(&v, "ID") {
            0 => Err(EtcdError::Malformed(format!(
                "lease grant without an ID: {v}"
            ))),
            id => Ok(id),
        }
    }

    /// Renews lease `id` once; returns false when the lease is gone (expired or revoked).
    pub(crate) async fn keepalive(&self, id: i64) -> Result<bool, EtcdError> {
        let v = self
            .call("/v3/lease/keepalive", json!({ "ID": id.to_string() }))
            .await?;
        Ok(field_int(&v, "TTL") > 0)
    }

    /// Revokes lease `id`: every key attached to it is deleted at once.
    pub(crate) async fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        self.call("/v3/lease/revoke", json!({ "ID": id.to_string() }))
            .await
            .map(|_| ())
    }

    /// Starts watching every key under `prefix` from `start_revision`.
    pub(crate) async fn watch(
        &self,
        prefix: &str,
        start_revision: i64,
    ) -> Result<Watch, EtcdError> {
        let body = json!({ "create_request": {
            "key": B64.encode(prefix),
            "range_end": B64.encode(prefix_end(prefix)),
            "start_revision": start_revision.to_string(),
        }});
        let response = self.send("/v3/watch", &body, None).await?;
        Ok(Watch {
            response,
            buf: Vec::new(),
        })
    }
}

/// A running watch: one long response of newline-separated JSON messages.
#[derive(Debug)]
pub(crate) struct Watch {
    response: reqwest::Response,
    buf: Vec<u8>,
}

/// One message of a watch: the events and the revision they bring the reader to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WatchBatch {
    /// The store's revision after these events.
    pub revision: i64,
    /// The changes, in order.
    pub events: Vec<Event>,
}

impl Watch {
    /// Returns the next message; an error when the stream ends, breaks or was compacted.
    pub(crate) async fn next(&mut self) -> Result<WatchBatch, EtcdError> {
        loop {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return parse_watch_message(&line);
            }
            match self.response.chunk().await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk),
                Ok(None) => {
                    if !self.buf.iter().all(u8::is_ascii_whitespace) {
                        let line = std::mem::take(&mut self.buf);
                        return parse_watch_message(&line);
                    }
                    return Err(EtcdError::Unreachable("the watch stream ended".into()));
                }
                Err(e) => {
                    return Err(EtcdError::Unreachable(format!(
                        "the watch stream broke: {}",
                        error_chain(&e)
                    )));
                }
            }
        }
    }
}

/// Returns an error with its causes, `outer: inner: innermost`.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn parse_watch_message(line: &[u8]) -> Result<WatchBatch, EtcdError> {
    let v: Value = serde_json::from_slice(line)
        .map_err(|e| EtcdError::Malformed(format!("watch message: {e}")))?;
    if let Some(err) = v.get("error") {
        return Err(EtcdError::Refused(err.to_string()));
    }
    let r = v.get("result").unwrap_or(&v);
    let compact = field_int(r, "compact_revision");
    if compact > 0 {
        return Err(EtcdError::Compacted(compact));
    }
    if r.get("canceled").and_then(Value::as_bool) == Some(true) {
        return Err(EtcdError::Refused(format!("watch canceled: {r}")));
    }
    let revision = r.get("header").map_or(0, |h| field_int(h, "revision"));
    let mut events = Vec::new();
    for e in r
        .get("events")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let kv = decode_kv(e.get("kv").unwrap_or(&Value::Null))?;
        // The gateway omits the type of a PUT (the protobuf default).
        if e.get("type").and_then(Value::as_str) == Some("DELETE") {
            events.push(Event::Delete(kv.key));
        } else {
            events.push(Event::Put(kv));
        }
    }
    Ok(WatchBatch { revision, events })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_every_key_with_the_prefix() {
        assert_eq!(prefix_end("/m/"), b"/m0");
        assert_eq!(prefix_end("ab"), b"ac");
    }

    #[test]
    fn watch_messages_decode_puts_deletes_and_compaction() {
        let put = br#"{"result":{"header":{"revision":"7"},"events":[{"kv":{"key":"L20veA==","value":"aGk=","mod_revision":"7"}},{"type":"DELETE","kv":{"key":"L20veQ==","mod_revision":"7"}}]}}"#;
        let b = parse_watch_message(put).unwrap();
        assert_eq!(b.revision, 7);
        assert_eq!(
            b.events,
            [
                Event::Put(KeyValue {
                    key: "/m/x".into(),
                    value: b"hi".to_vec()
                }),
                Event::Delete("/m/y".into())
            ]
        );
        let compacted =
            br#"{"result":{"header":{"raft_term":"2"},"canceled":true,"compact_revision":"3"}}"#;
        assert!(matches!(
            parse_watch_message(compacted),
            Err(EtcdError::Compacted(3))
        ));
        let created = br#"{"result":{"header":{"revision":"2"},"created":true}}"#;
        assert_eq!(parse_watch_message(created).unwrap().events, []);
    }
}
