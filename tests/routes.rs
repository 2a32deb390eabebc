//! Routes over real sockets: one holdfast in front of three applications. Sessions and
//! plain HTTP requests land on the pool of the first route that matches their host and
//! path; each route holds, limits and rewrites by its own settings; a reload adds, changes
//! and removes routes under live sessions.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The three applications: `chat` and `feed` behind routes, `app` the default.
struct Apps {
    chat: TestUpstream,
    feed: TestUpstream,
    app: TestUpstream,
}

impl Apps {
    async fn start() -> Apps {
        Apps {
            chat: UpstreamBuilder::new().name("chat").start().await,
            feed: UpstreamBuilder::new().name("feed").start().await,
            app: UpstreamBuilder::new().name("app").start().await,
        }
    }

    /// The routes: `chat` by host and path, without holds, with a rate limit and a
    /// rewrite of its own; `feed` by path; the top-level sections are the default.
    fn routes(&self) -> String {
        format!(
            r#"
[[route]]
name = "chat"
host = "chat.example.com"
path_prefix = "/ws/chat"
[route.upstream]
endpoints = ["{}"]
[route.restart]
hold = false
[route.policy.rate_limit]
messages_per_second = 1
burst = 3
[[route.rewrite]]
direction = "to_client"
from = 4000
to = 4100
reason = "chat rule"

[[route]]
name = "feed"
path_prefix = "/ws/feed"
[route.upstream]
endpoints = ["{}"]
[[route.rewrite]]
direction = "to_client"
from = 4000
to = 4200
reason = "feed rule"
"#,
            self.chat.url(),
            self.feed.url()
        )
    }
}

/// A session through `proxy` for `host` and `path` (the `Host` header says the host).
async fn open(proxy: &Proxy, host: &str, path: &str) -> Client {
    let url = format!("ws://{host}:{}{path}", proxy.addr.port());
    let request = url.into_client_request().unwrap();
    connect_request(proxy.addr, request)
        .await
        .unwrap_or_else(|e| panic!("{host}{path}: {e}"))
        .0
}

async fn whoami(client: &mut Client) -> String {
    send_text(client, "whoami").await;
    match next_message(client).await {
        Message::Text(t) => t.split(' ').next().unwrap().to_owned(),
        other => panic!("client saw {other:?}"),
    }
}

#[tokio::test]
async fn sessions_land_on_the_pool_of_the_first_route_that_matches() {
    let apps = Apps::start().await;
    let proxy = Proxy::start(&[apps.app.url()], &apps.routes()).await;
    let table = [
        ("chat.example.com", "/ws/chat", "chat"),
        ("Chat.Example.com", "/ws/chat/room/7?x=1", "chat"),
        // Prefixes match on segment boundaries.
        ("chat.example.com", "/ws/chatx", "app"),
        // The chat route wants its host too.
        ("other.example.org", "/ws/chat", "app"),
        ("other.example.org", "/ws/feed", "feed"),
        ("chat.example.com", "/ws/feed/live", "feed"),
        ("other.example.org", "/", "app"),
    ];
    let mut clients = Vec::new();
    for (host, path, expected) in table {
        let mut client = open(&proxy, host, path).await;
        assert_eq!(whoami(&mut client).await, expected, "{host}{path}");
        clients.push(client);
    }
    // The metrics say which route each session took, and how it arrived.
    for (route, sessions) in [("chat", 2.0), ("feed", 2.0), ("default", 3.0)] {
        let series = format!("holdfast_sessions_active{{route=\"{route}\",protocol=\"http1\"}}");
        assert_eq!(proxy.metric(&series).await, sessions, "{series}");
    }
}

#[tokio::test]
async fn holds_policies_and_rewrites_follow_each_route() {
    let apps = Apps::start().await;
    let proxy = Proxy::start(&[apps.app.url()], &apps.routes()).await;

    // The chat route does not hold: its client hears the upstream's 1012.
    let mut chat = open(&proxy, "chat.example.com", "/ws/chat").await;
    assert_eq!(whoami(&mut chat).await, "chat");
    apps.chat
        .go_down(Control::Close(1012, "deploying".into()))
        .await;
    assert_eq!(expect_close(&mut chat).await.0, Some(1012));

    // The feed route holds (the top-level setting): its client is resumed.
    let mut feed = [open(&proxy, "any", "/ws/feed").await];
    restart_under(&apps.feed, &mut feed, "sent while held").await;
    apps.feed.start_again(None).await;
    assert_eq!(
        next_message(&mut feed[0]).await,
        Message::text("sent while held")
    );
    within("the feed route's hold counted", async {
        while proxy
            .metric("holdfast_holds_total{outcome=\"resumed\",route=\"feed\"}")
            .await
            != 1.0
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;

    // The chat route's rate limit: a burst of 3, then 1008.
    apps.chat.start_again(None).await;
    let mut chat = open(&proxy, "chat.example.com", "/ws/chat").await;
    for i in 0..6 {
        send_text(&mut chat, &format!("m{i}")).await;
    }
    // The fourth closes the session (echoes of the first three may still be on the way).
    let mut echoed = 0;
    let (code, reason) = loop {
        match next_message(&mut chat).await {
            Message::Text(_) => echoed += 1,
            Message::Close(Some(f)) => break (Some(u16::from(f.code)), f.reason.to_string()),
            other => panic!("chat client saw {other:?}"),
        }
    };
    assert!(echoed <= 3, "{echoed} echoed");
    assert_eq!(code, Some(1008));
    assert!(reason.contains("rate-limit"), "{reason}");
    // The default route has no limit: the same burst is relayed.
    let mut app = open(&proxy, "any", "/").await;
    for i in 0..6 {
        send_text(&mut app, &format!("m{i}")).await;
        assert_eq!(next_message(&mut app).await, Message::text(format!("m{i}")));
    }

    // Each route rewrites by its own list; the default has none.
    let mut feed = open(&proxy, "any", "/ws/feed").await;
    send_text(&mut feed, "close 4000 app rule").await;
    assert_eq!(
        expect_close(&mut feed).await,
        (Some(4200), "feed rule".into())
    );
    send_text(&mut app, "close 4000 app rule").await;
    assert_eq!(
        expect_close(&mut app).await,
        (Some(4000), "app rule".into())
    );
}

#[tokio::test]
async fn a_reload_adds_changes_and_removes_routes_under_live_sessions() {
    let apps = Apps::start().await;
    let news = UpstreamBuilder::new().name("news").start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let head = format!(
        "[listen]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n[upstream]\nendpoints = [\"{}\"]\n",
        apps.app.url()
    );
    let proxy = Proxy::start(&[apps.app.url()], &apps.routes()).await;
    let mut chat = open(&proxy, "chat.example.com", "/ws/chat").await;
    let mut feed = open(&proxy, "any", "/ws/feed").await;
    assert_eq!(whoami(&mut chat).await, "chat");
    assert_eq!(whoami(&mut feed).await, "feed");

    // The new file: chat's rewrite changes, feed is gone, news is new.
    let routes = apps.routes();
    let chat_only = &routes[..routes.find("[[route]]\nname = \"feed\"").unwrap()];
    let changed = chat_only.replace(
        "to = 4100\nreason = \"chat rule\"",
        "to = 4101\nreason = \"chat rule, reloaded\"",
    );
    let added = format!(
        "[[route]]\nname = \"news\"\npath_prefix = \"/ws/news\"\n[route.upstream]\nendpoints = [\"{}\"]\n",
        news.url()
    );
    std::fs::write(&path, format!("{head}{changed}{added}")).unwrap();
    proxy.handle.reload_file(&path).expect("valid config");

    // New sessions take the new routes: news is there, feed's path falls to the default.
    let mut client = open(&proxy, "any", "/ws/news").await;
    assert_eq!(whoami(&mut client).await, "news");
    let mut client = open(&proxy, "any", "/ws/feed").await;
    assert_eq!(whoami(&mut client).await, "app");

    // The live chat session keeps its route and picks up its changed rule.
    send_text(&mut chat, "close 4000 x").await;
    assert_eq!(
        expect_close(&mut chat).await,
        (Some(4101), "chat rule, reloaded".into())
    );
    // The live feed session keeps the removed route's last settings (its own rewrite),
    // not the default's.
    assert_eq!(whoami(&mut feed).await, "feed");
    send_text(&mut feed, "close 4000 x").await;
    assert_eq!(
        expect_close(&mut feed).await,
        (Some(4200), "feed rule".into())
    );
}

/// A plain HTTP upstream answering `<name> <path>`.
async fn http_app(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let body = format!("{name} {}", req.uri().path());
                    async move {
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

async fn get(proxy: &Proxy, host: &str, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    raw_exchange(proxy.addr, request.as_bytes()).await
}

#[tokio::test]
async fn plain_http_follows_the_routes_and_no_route_is_a_404() {
    let (site, api) = (http_app("site").await, http_app("api").await);
    let routes = format!(
        "[[route]]\nname = \"api\"\nhost = \"*.example.com\"\npath_prefix = \"/api\"\n[route.upstream]\nendpoints = [\"ws://{api}\"]\n"
    );
    let proxy = Proxy::start(&[format!("ws://{site}")], &routes).await;
    let answer = get(&proxy, "www.example.com", "/api/v1/items").await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("api /api/v1/items"),
        "{answer}"
    );
    let answer = get(&proxy, "www.example.com", "/apix").await;
    assert!(answer.ends_with("site /apix"), "{answer}");
    let answer = get(&proxy, "example.com", "/api").await;
    assert!(answer.ends_with("site /api"), "{answer}");

    // Without a default route, what no route matches is a 404, WebSocket or not.
    let proxy = Proxy::start(&[], &routes).await;
    let answer = get(&proxy, "www.example.com", "/api/v1").await;
    assert!(answer.ends_with("api /api/v1"), "{answer}");
    let answer = get(&proxy, "www.example.com", "/other").await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    let upgrade = String::from_utf8(upgrade_request("")).unwrap();
    let answer = raw_exchange(proxy.addr, upgrade.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert_eq!(
        proxy
            .metric("holdfast_http_requests_total{status=\"404\",route=\"none\"}")
            .await,
        1.0
    );
    assert_eq!(
        proxy
            .metric("holdfast_handshakes_rejected_total{status=\"404\",route=\"none\"}")
            .await,
        1.0
    );
    assert_eq!(
        proxy
            .metric("holdfast_http_requests_total{status=\"200\",route=\"api\"}")
            .await,
        1.0
    );
}
