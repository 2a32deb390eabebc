//! The shipped dashboard and alerting rules against real parts: Debian's Prometheus scrapes
//! the holdfast binary every second while a scripted scenario runs (relay, a compressed
//! client, a resumable client back after its connection was cut, a refused handshake, a
//! plain HTTP request, a hold that resumes, a 1008, a hold that strands its clients, a good
//! and a bad reload). Then every query of `deploy/grafana/holdfast.json` and every rule of
//! `deploy/prometheus/holdfast-rules.yaml` goes through Prometheus's HTTP API and must
//! parse and return series, and every alert must be firing. `promtool check rules` and the
//! rules' unit tests (`promtool test rules`) pass.
//!
//! Needs `prometheus` and `promtool` (Debian's `prometheus` package; CI installs it): skips
//! without them, fails without them under `TEST_REQUIRE_ALL`.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use support::binary::{signal, start, write_config};
use support::*;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn installed(tool: &str) -> bool {
    std::process::Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `promtool args…`; panics with its output unless it succeeds.
fn promtool(args: &[&str]) {
    let out = std::process::Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Prometheus server scraping one holdfast admin address every second and evaluating
/// the shipped rules every second.
struct Prometheus {
    addr: SocketAddr,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(admin: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        let rules = repo("deploy/prometheus/holdfast-rules.yaml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules:?}\n\
                 scrape_configs:\n  - job_name: holdfast\n    static_configs:\n      - targets: [\"{admin}\"]\n"
            ),
        )
        .unwrap();
        // Prometheus takes no port 0 it would tell us about: a port that was free a moment
        // ago, tried again with another if it was taken in between.
        for _ in 0..5 {
            let addr = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
            let mut child = Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--log.level=warn")
                .stdout(Stdio::null())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .expect("prometheus starts");
            let ready = within("Prometheus to be ready", async {
                loop {
                    if let Ok(Some(_)) = child.try_wait() {
                        return false;
                    }
                    if http10_get(addr, "/-/ready").await.0 == 200 {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
            .await;
            if ready {
                return Prometheus {
                    addr,
                    _child: child,
                    _dir: dir,
                };
            }
        }
        let log = std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
        panic!("Prometheus did not start:\n{log}");
    }

    /// `GET path` of the HTTP API, its JSON.
    async fn api(&self, path: &str) -> Value {
        let (status, body) = http10_get(self.addr, path).await;
        let json: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {status} {e}: {body}"));
        assert_eq!(json["status"], "success", "{path}: {json}");
        json["data"].clone()
    }

    /// An instant query's result vector (a query that does not parse fails here).
    async fn query(&self, expr: &str) -> Vec<Value> {
        let data = self
            .api(&format!("/api/v1/query?query={}", percent_encoded(expr)))
            .await;
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `expr` returns at least one series.
    async fn until_series(&self, what: &str, expr: &str) {
        within(what, async {
            while self.query(expr).await.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
    }
}

/// HTTP/1.0, so that the body ends with the connection (no chunked encoding).
async fn http10_get(addr: SocketAddr, path: &str) -> (u16, String) {
    if tokio::net::TcpStream::connect(addr).await.is_err() {
        return (0, String::new());
    }
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    status_and_body(&raw_exchange(addr, request.as_bytes()).await)
}

fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every panel of the dashboard (rows' nested panels included) with its targets' queries.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut panels: Vec<&Value> = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        panels.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            panels.extend(nested);
        }
    }
    // Laid out as Grafana shows it: 24 columns, no panel over another.
    let cells: Vec<(&str, [u64; 4])> = panels
        .iter()
        .map(|p| {
            let g = &p["gridPos"];
            let n = |k: &str| g[k].as_u64().expect("gridPos x, y, w, h");
            (
                p["title"].as_str().unwrap_or(""),
                [n("x"), n("y"), n("w"), n("h")],
            )
        })
        .collect();
    for (i, (a, [ax, ay, aw, ah])) in cells.iter().enumerate() {
        assert!(ax + aw <= 24, "{a} is wider than the dashboard");
        for (b, [bx, by, bw, bh]) in &cells[i + 1..] {
            let apart = ax + aw <= *bx || bx + bw <= *ax || ay + ah <= *by || by + bh <= *ay;
            assert!(apart, "{a} and {b} overlap");
        }
    }
    let mut queries = Vec::new();
    for panel in panels {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().expect("every panel has a title");
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{title}: the dashboard's data source variable"
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"].as_str().expect("a PromQL expr");
            queries.push((title.to_owned(), expr.to_owned()));
        }
    }
    queries
}

/// A dashboard query as Grafana would send it with `instance` and the `default` route
/// selected: a matcher on a label the series lack (a misspelt label) finds nothing.
fn as_grafana_sends(expr: &str, instance: SocketAddr) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$instance", &instance.to_string())
        .replace("$route", "default")
}

#[tokio::test]
async fn the_dashboard_and_alerts_work_against_prometheus_scraping_holdfast() {
    if !require(
        "prometheus and promtool (Debian's prometheus package)",
        installed("prometheus") && installed("promtool"),
    ) {
        return;
    }
    let rules = repo("deploy/prometheus/holdfast-rules.yaml");
    promtool(&["check", "rules", rules.to_str().unwrap()]);
    let rule_tests = repo("deploy/prometheus/holdfast-rules.test.yaml");
    promtool(&["test", "rules", rule_tests.to_str().unwrap()]);

    // holdfast (the binary) in front of a test upstream; holds give up after 6 s, and the
    // app's 4000-4099 closes are policy closes.
    let upstream = UpstreamBuilder::new().name("app").start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    let settings = "[restart]\nbackoff_initial = \"20ms\"\nbackoff_max = \"100ms\"\nmax_hold = \"6s\"\n\
                    [[rewrite]]\ndirection = \"to_client\"\nfrom = \"4000-4099\"\nto = 1008\n";
    write_config(&config, &upstream, settings);
    let running = start(&config).await;
    let proxy = running.proxy;
    let prometheus = Prometheus::start(running.admin).await;
    prometheus
        .until_series("the first scrape", "up{job=\"holdfast\"} == 1")
        .await;

    // Relay: a plain client, a compressing one, a resumable one whose connection is cut.
    let url = format!("ws://{proxy}/");
    let connect = || {
        let url = url.clone();
        async move {
            use tokio_tungstenite::tungstenite::client::IntoClientRequest;
            connect_request(proxy, url.into_client_request().unwrap())
                .await
                .unwrap()
                .0
        }
    };
    let mut plain = connect().await;
    for i in 0..5 {
        send_text(&mut plain, &format!("m{i}")).await;
        assert_eq!(
            next_message(&mut plain).await,
            Message::text(format!("m{i}"))
        );
    }
    let (mut compressed, answer) = deflate_client(proxy, Some("permessage-deflate")).await;
    assert!(answer.is_some(), "compression negotiated");
    let quote =
        r#"{"type":"quote","symbol":"ABC","bid":100.25,"exchange":"NASDAQ","flags":["live"]}"#;
    for _ in 0..5 {
        compressed.send(Message::text(quote)).await.unwrap();
        let echo = within("the compressed echo", compressed.next()).await;
        assert_eq!(echo.unwrap().unwrap(), Message::text(quote));
    }
    let relay = CuttingRelay::start(proxy).await;
    let mut resumable = holdfast::client::ResumableClient::connect(relay.addr, "/feed", &[])
        .await
        .expect("a resumable session");
    resumable
        .send(Message::text("before the cut"))
        .await
        .unwrap();
    relay.cut();
    resumable
        .send(Message::text("after the cut"))
        .await
        .unwrap();
    for _ in 0..2 {
        within("the resumable client's echoes", resumable.next())
            .await
            .unwrap();
    }
    // A refused handshake (426) and a plain HTTP request passed through.
    let version_8 = String::from_utf8(upgrade_request(""))
        .unwrap()
        .replace("Version: 13", "Version: 8");
    assert!(
        raw_exchange(proxy, version_8.as_bytes())
            .await
            .starts_with("HTTP/1.1 426")
    );
    http_get(proxy, "/plain").await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A restart the clients do not notice.
    upstream
        .go_down(Control::Close(1012, "deploying".into()))
        .await;
    upstream
        .wait_for("the proxy's close replies", |log| log.closes.len() >= 3)
        .await;
    upstream.start_again(None).await;
    send_text(&mut plain, "whoami").await;
    assert_eq!(next_message(&mut plain).await, Message::text("app 1"));

    // A policy close (4001, rewritten to 1008), and a client that closes itself.
    let mut policed = connect().await;
    send_text(&mut policed, "close 4001 quota exceeded").await;
    assert_eq!(expect_close(&mut policed).await.0, Some(1008));
    let mut leaving = connect().await;
    leaving
        .send(Message::Close(Some(CloseFrame {
            code: 1000.into(),
            reason: "bye".into(),
        })))
        .await
        .unwrap();
    assert_eq!(expect_close(&mut leaving).await.0, Some(1000));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A restart that outlasts max_hold: the held clients are stranded (give-up close).
    let closes = upstream.log.lock().unwrap().closes.len();
    upstream
        .go_down(Control::Close(1012, "deploying again".into()))
        .await;
    upstream
        .wait_for("the proxy's close replies", |log| {
            log.closes.len() >= closes + 3
        })
        .await;
    assert_eq!(
        expect_close(&mut plain).await.0,
        Some(1012),
        "the give-up close"
    );
    upstream.start_again(None).await;

    // A reload that works, then one that does not (it stays failed: the alert fires).
    let metric = |series: &'static str| async move {
        metric_sum(&http_get(running.admin, "/metrics").await.1, series)
    };
    write_config(
        &config,
        &upstream,
        &format!("{settings}[websocket]\nidle_timeout = \"1h\"\n"),
    );
    signal(&running.child, "HUP");
    within("the reload", async {
        while metric("holdfast_config_reloads_total{result=\"ok\"}").await < 1.0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    std::fs::write(&config, "[listen]\naddress = 42\n").unwrap();
    signal(&running.child, "HUP");
    within("the failed reload", async {
        while metric("holdfast_config_last_reload_successful").await != 0.0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    // Prometheus has scraped all of it once the failed reload shows in its data.
    prometheus
        .until_series(
            "the failed reload to be scraped",
            "holdfast_config_last_reload_successful == 0",
        )
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Every query of the dashboard parses and returns series.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo("deploy/grafana/holdfast.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "holdfast");
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let mut empty = Vec::new();
    for (title, expr) in &queries {
        if prometheus
            .query(&as_grafana_sends(expr, running.admin))
            .await
            .is_empty()
        {
            empty.push(format!("{title}: {expr}"));
        }
    }
    assert!(
        empty.is_empty(),
        "queries without series:\n{}",
        empty.join("\n")
    );
    // Its variables' label_values() name labels the series have.
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        let Some(definition) = variable["definition"].as_str() else {
            continue;
        };
        let (series, label) = definition
            .strip_prefix("label_values(")
            .and_then(|d| d.strip_suffix(')'))
            .and_then(|d| d.rsplit_once(", "))
            .expect("label_values(series, label)");
        let series = as_grafana_sends(series, running.admin);
        let values = prometheus
            .query(&format!("count by ({label}) ({series})"))
            .await;
        assert!(!values.is_empty(), "{definition}: no {label} values");
    }

    // Every rule is healthy, returns series now, and its alert fires.
    let groups = prometheus.api("/api/v1/rules").await;
    let mut alerts = Vec::new();
    for group in groups["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["name"].as_str().unwrap().to_owned();
            assert_eq!(rule["health"], "ok", "{name}: {rule}");
            let expr = rule["query"].as_str().unwrap();
            assert!(
                !prometheus.query(expr).await.is_empty(),
                "{name} returned no series: {expr}"
            );
            alerts.push(name);
        }
    }
    assert_eq!(alerts.len(), 3, "{alerts:?}");
    let firing = prometheus.api("/api/v1/alerts").await;
    for name in &alerts {
        assert!(
            firing["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["labels"]["alertname"] == name.as_str() && a["state"] == "firing"),
            "{name} is not firing: {firing}"
        );
    }
}
