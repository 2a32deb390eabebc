//! `holdfast demo --serve`'s page: a live feed through holdfast with the client library,
//! and the buttons that break things — restart the upstream, cut the browser's connection,
//! restart holdfast — served on the demo's own address next to the WebSocket relay.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};
use hyper::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::holdfasts::Holdfasts;
use super::network::Network;
use super::upstream::DemoUpstream;
use crate::http::{Body, full};

const PAGE: &str = include_str!("page.html");
/// The client library, exactly as `clients/js` publishes it.
pub const LIBRARY: &str = include_str!("../../clients/js/holdfast.mjs");

/// What the buttons act on.
pub struct Stage {
    pub upstream: Arc<DemoUpstream>,
    pub network: Arc<Network>,
    pub holdfasts: Arc<Holdfasts>,
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Ask {
    Page,
    Library,
    Metrics,
    RestartUpstream,
    Cut,
    RestartHoldfast,
    WrongMethod(&'static str),
    Unknown,
}

fn ask(method: &Method, path: &str) -> Ask {
    let (ask, allowed) = match path {
        "/" | "/index.html" => (Ask::Page, "GET"),
        "/holdfast.mjs" => (Ask::Library, "GET"),
        "/metrics" => (Ask::Metrics, "GET"),
        "/control/restart-upstream" => (Ask::RestartUpstream, "POST"),
        "/control/cut" => (Ask::Cut, "POST"),
        "/control/restart-holdfast" => (Ask::RestartHoldfast, "POST"),
        _ => return Ask::Unknown,
    };
    let ok = match allowed {
        "GET" => method == Method::GET || method == Method::HEAD,
        _ => method == Method::POST,
    };
    if ok { ask } else { Ask::WrongMethod(allowed) }
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>, kind: &'static str) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

const PLAIN: &str = "text/plain; charset=utf-8";

async fn answer(req: Request<Incoming>, stage: &Arc<Stage>) -> Response<Body> {
    match ask(req.method(), req.uri().path()) {
        Ask::Page => text(StatusCode::OK, PAGE, "text/html; charset=utf-8"),
        Ask::Library => text(StatusCode::OK, LIBRARY, "text/javascript; charset=utf-8"),
        Ask::Metrics => text(
            StatusCode::OK,
            stage.holdfasts.metrics().await,
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        Ask::RestartUpstream => match stage.upstream.restart(Duration::from_millis(700)).await {
            Ok(()) => text(
                StatusCode::OK,
                "the app restarted (1012) and is listening again\n",
                PLAIN,
            ),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"), PLAIN),
        },
        Ask::Cut => {
            stage.network.cut();
            text(
                StatusCode::OK,
                "every WebSocket connection was reset\n",
                PLAIN,
            )
        }
        Ask::RestartHoldfast => {
            let stage = stage.clone();
            tokio::spawn(async move {
                let network = stage.network.clone();
                stage.holdfasts.restart(|next| network.point_at(next)).await
            });
            text(
                StatusCode::ACCEPTED,
                "the next holdfast starts and this one drains\n",
                PLAIN,
            )
        }
        Ask::WrongMethod(allowed) => {
            let mut response = text(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{allowed} only\n"),
                PLAIN,
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allowed));
            response
        }
        Ask::Unknown => text(
            StatusCode::NOT_FOUND,
            "not found; the demo serves / and /metrics\n",
            PLAIN,
        ),
    }
}

/// Serves one HTTP connection.
pub async fn serve(tcp: TcpStream, stage: Arc<Stage>) {
    let service = service_fn(move |req| {
        let stage = stage.clone();
        async move { Ok::<_, Infallible>(answer(req, &stage).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(TokioIo::new(tcp), service)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_routed_by_path_and_method() {
        let cases = [
            (Method::GET, "/", Ask::Page),
            (Method::HEAD, "/holdfast.mjs", Ask::Library),
            (Method::GET, "/metrics", Ask::Metrics),
            (Method::POST, "/control/cut", Ask::Cut),
            (
                Method::POST,
                "/control/restart-upstream",
                Ask::RestartUpstream,
            ),
            (
                Method::POST,
                "/control/restart-holdfast",
                Ask::RestartHoldfast,
            ),
            (Method::GET, "/control/cut", Ask::WrongMethod("POST")),
            (Method::POST, "/", Ask::WrongMethod("GET")),
            (Method::GET, "/control", Ask::Unknown),
        ];
        for (method, path, expected) in cases {
            assert_eq!(ask(&method, path), expected, "{method} {path}");
        }
    }

    #[test]
    fn the_page_loads_the_library_it_is_served_with() {
        assert!(PAGE.contains(r#"from "/holdfast.mjs""#));
        assert!(LIBRARY.contains("export class HoldfastWebSocket"));
    }
}
