//! The load a probe reads from its health response (issue 16): a header or a JSON pointer,
//! a number or a raw figure over a capacity; anything else unknown, never a failure.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::tests::http_check;
use super::*;
use crate::config::{LoadSignal, LoadSource};

#[test]
fn figures_are_numbers_or_percentages() {
    assert_eq!(parse_figure(" 0.93 "), Some(0.93));
    assert_eq!(parse_figure("93%"), Some(0.93));
    assert_eq!(parse_figure("93 %"), Some(0.93));
    assert_eq!(parse_figure("1200"), Some(1200.0));
    assert_eq!(parse_figure("high"), None);
    assert_eq!(parse_figure("NaN"), None);
    assert_eq!(parse_figure(""), None);
}

#[test]
fn json_pointers_find_numbers_and_numeric_strings() {
    let body = br#"{"load": 0.5, "stats": {"active": 412, "pct": "40%"}, "list": [1, 0.25]}"#;
    assert_eq!(json_figure(body, "/load"), Some(0.5));
    assert_eq!(json_figure(body, "/stats/active"), Some(412.0));
    assert_eq!(json_figure(body, "/stats/pct"), Some(0.4));
    assert_eq!(json_figure(body, "/list/1"), Some(0.25));
    assert_eq!(json_figure(body, "/stats"), None);
    assert_eq!(json_figure(body, "/missing"), None);
    assert_eq!(json_figure(b"not json", "/load"), None);
}

#[test]
fn header_figures_are_matched_case_insensitively() {
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nx-load: 0.7\r\n\r\n";
    assert_eq!(header_figure(head, "X-Load"), Some(0.7));
    assert_eq!(header_figure(head, "X-Other"), None);
}

/// Serves each connection one response with `headers` and `body`, then closes it.
async fn serve(status: u16, headers: &'static str, body: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                let _ = sock.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    addr
}

async fn probe_load(
    addr: SocketAddr,
    load: LoadSignal,
    body_contains: Option<&str>,
) -> (bool, Option<f64>) {
    let mut check = http_check(addr.port());
    check.load = Some(load);
    check.body_contains = body_contains.map(str::to_string);
    let mut prober = Prober::new(addr.ip(), &check);
    let outcome = prober.probe().await;
    (outcome.result.is_ok(), prober.take_load())
}

fn header(name: &str, capacity: Option<f64>) -> LoadSignal {
    LoadSignal {
        source: LoadSource::Header(name.into()),
        capacity,
    }
}

fn json(pointer: &str, capacity: Option<f64>) -> LoadSignal {
    LoadSignal {
        source: LoadSource::Json(pointer.into()),
        capacity,
    }
}

#[tokio::test]
async fn issue_16_the_probe_reads_load_from_a_header_of_the_health_response() {
    let addr = serve(200, "X-Load: 0.93\r\n", "ok").await;
    assert_eq!(
        probe_load(addr, header("x-load", None), None).await,
        (true, Some(0.93))
    );
    let addr = serve(200, "X-Conns: 450\r\n", "ok").await;
    assert_eq!(
        probe_load(addr, header("X-Conns", Some(500.0)), None).await,
        (true, Some(0.9))
    );
}

#[tokio::test]
async fn issue_16_the_probe_reads_load_from_a_json_body_and_still_checks_body_contains() {
    let addr = serve(200, "", r#"{"status": "ok", "load": 0.42}"#).await;
    assert_eq!(
        probe_load(addr, json("/load", None), Some("ok")).await,
        (true, Some(0.42))
    );
    let addr = serve(200, "", r#"{"status": "degraded", "load": 0.42}"#).await;
    assert_eq!(
        probe_load(addr, json("/load", None), Some("\"ok\"")).await,
        (false, None),
        "body_contains still decides health"
    );
}

#[tokio::test]
async fn issue_16_missing_or_bad_load_is_unknown_never_a_failure() {
    let addr = serve(200, "", "ok").await;
    assert_eq!(
        probe_load(addr, header("X-Load", None), None).await,
        (true, None)
    );
    let addr = serve(200, "X-Load: lots\r\n", "ok").await;
    assert_eq!(
        probe_load(addr, header("X-Load", None), None).await,
        (true, None)
    );
    let addr = serve(200, "X-Load: -3\r\n", "ok").await;
    assert_eq!(
        probe_load(addr, header("X-Load", None), None).await,
        (true, None)
    );
    let addr = serve(200, "", "<html>ok</html>").await;
    assert_eq!(
        probe_load(addr, json("/load", None), None).await,
        (true, None)
    );
    // A failing probe reports no load (its target's state, not its load, decides).
    let addr = serve(503, "X-Load: 0.99\r\n", "busy").await;
    assert_eq!(
        probe_load(addr, header("X-Load", None), None).await,
        (false, None)
    );
}
