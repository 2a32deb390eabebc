//! TLS on both hops with rcgen certificates: a `[listen.tls]` front end and a `wss://`
//! upstream verified against `upstream.tls.ca` with a `server_name` override.

mod support;

use futures_util::SinkExt;
use rustls::pki_types::ServerName;
use support::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

#[tokio::test]
async fn clients_connect_over_tls_and_the_transport_is_shut_down_after_the_close() {
    let cert = TestCert::new();
    let upstream = UpstreamBuilder::new().start().await;
    let extra = format!(
        "[listen.tls]\ncert = {:?}\nkey = {:?}\n",
        cert.cert_path.display().to_string(),
        cert.key_path.display().to_string()
    );
    let proxy = Proxy::start(&[upstream.url()], &extra).await;

    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let tls = cert
        .client_connector()
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with the proxy");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let request = format!("wss://localhost:{}/", proxy.addr.port())
        .into_client_request()
        .unwrap();
    let (mut client, _) = tokio_tungstenite::client_async(request, tls).await.unwrap();
    send_text(&mut client, "over tls").await;
    assert_eq!(next_message(&mut client).await, Message::text("over tls"));
    assert_eq!(
        upstream.handshake(0).headers()["x-forwarded-proto"],
        "wss",
        "the upstream learns the client used TLS"
    );

    client
        .send(Message::Close(Some(CloseFrame {
            code: 1000.into(),
            reason: "".into(),
        })))
        .await
        .unwrap();
    let (code, _) = expect_close(&mut client).await;
    assert_eq!(code, Some(1000));
    // After the close handshake the proxy shuts TLS down: close_notify, then EOF.
    let mut rest = Vec::new();
    let stream = client.get_mut();
    let read = within("TLS shutdown", stream.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok(),
        "clean TLS EOF (close_notify) expected, got {read:?}"
    );
}

#[tokio::test]
async fn wss_upstreams_are_verified_against_the_configured_ca() {
    let cert = TestCert::new();
    let upstream = UpstreamBuilder::new()
        .tls(cert.server_config())
        .start()
        .await;
    let endpoint = format!("wss://127.0.0.1:{}", upstream.addr.port());
    let extra = format!(
        "[upstream.tls]\nca = {:?}\nserver_name = \"localhost\"\n",
        cert.cert_path.display().to_string()
    );
    let proxy = Proxy::start(std::slice::from_ref(&endpoint), &extra).await;
    let mut client = connect(&proxy).await;
    send_text(&mut client, "to a wss upstream").await;
    assert_eq!(
        next_message(&mut client).await,
        Message::text("to a wss upstream")
    );

    // Without the CA the upstream's self-signed certificate is refused: 502.
    let untrusting =
        Proxy::start(&[endpoint], "[upstream.tls]\nserver_name = \"localhost\"\n").await;
    let answer = raw_exchange(untrusting.addr, &upgrade_request("")).await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
}
