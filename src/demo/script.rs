//! The demo's scripted clients: a plain client across two upstream restarts and a policy
//! close, then a resumable client across a cut connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::holdfasts::Holdfasts;
use super::network::Network;
use super::upstream::DemoUpstream;
use super::{Clock, DemoError};
use crate::client::{Received, ResumableClient};

pub struct Summary {
    pub sent: usize,
    pub answered: usize,
    pub instances: String,
    pub close_code: u16,
    pub close_reason: String,
}

/// The scripted client: messages flow while the upstream restarts twice, then `forbidden`.
pub async fn script(
    proxy: SocketAddr,
    upstream: &Arc<DemoUpstream>,
    clock: Clock,
) -> Result<Summary, DemoError> {
    let tcp = TcpStream::connect(proxy).await?;
    let request = format!("ws://{proxy}/demo")
        .into_client_request()
        .map_err(|e| DemoError::Unexpected(e.to_string()))?;
    let (mut ws, _) = tokio_tungstenite::client_async(request, tcp)
        .await
        .map_err(|e| DemoError::Unexpected(format!("handshake: {e}")))?;
    clock.say("client", format!("connected to ws://{proxy}/demo"));

    // The restarts run on their own schedule: each one once the previous instance has the
    // session and a few messages have flowed.
    let restarts = {
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let mut accepted = upstream.accepted.subscribe();
            for next in 2..=3 {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                upstream.restart(Duration::from_millis(700)).await?;
                // Wait until the held session is on the new instance before the next restart.
                let _ = accepted.wait_for(|newest| *newest >= next).await;
            }
            Ok::<(), DemoError>(())
        })
    };
    let (mut sent, mut answered) = (0usize, 0usize);
    let mut instances = Vec::<String>::new();
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    let mut restarts_done = false;
    let mut ticks_since_restarts = 0;
    let mut forbidden_sent = false;
    let mut restarts = Some(restarts);
    loop {
        tokio::select! {
            _ = tick.tick(), if !forbidden_sent => {
                if restarts_done {
                    ticks_since_restarts += 1;
                }
                // Once both restarts are behind us and every message has been answered (or
                // a few more ticks have passed), try the word the upstream forbids.
                if restarts_done && (answered >= sent || ticks_since_restarts > 5) {
                    clock.say("client", "→ forbidden   (the upstream's policy does not allow this word)");
                    ws.send(Message::text("forbidden")).await.map_err(|e| DemoError::Unexpected(e.to_string()))?;
                    forbidden_sent = true;
                } else {
                    sent += 1;
                    let text = format!("hello #{sent}");
                    clock.say("client", format!("→ {text}"));
                    ws.send(Message::text(text)).await.map_err(|e| DemoError::Unexpected(e.to_string()))?;
                }
            }
            done = async { restarts.as_mut().expect("polled only while running").await }, if restarts.is_some() => {
                restarts = None;
                done.map_err(|e| DemoError::Unexpected(e.to_string()))??;
                restarts_done = true;
            }
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    answered += 1;
                    if let Some((instance, _)) = text.split_once(':')
                        && instances.last().map(String::as_str) != Some(instance)
                    {
                        instances.push(instance.to_owned());
                    }
                    clock.say("client", format!("← {text}"));
                }
                Some(Ok(Message::Close(Some(frame)))) => {
                    let code = u16::from(frame.code);
                    let reason = frame.reason.to_string();
                    clock.say("client", format!("← close {code}"));
                    clock.say("", format!("  reason: {reason}"));
                    if code != 1008 || !forbidden_sent {
                        return Err(DemoError::Unexpected(format!("close {code} {reason}")));
                    }
                    if let Ok(context) = serde_json::from_str::<serde_json::Value>(&reason) {
                        for key in ["policy", "retry_ms", "ref", "detail"] {
                            if let Some(value) = context.get(key) {
                                clock.say("", format!("  {key:<8} {value}"));
                            }
                        }
                    }
                    return Ok(Summary { sent, answered, instances: instances.join(" → "), close_code: code, close_reason: reason });
                }
                Some(Ok(_)) => {}
                other => return Err(DemoError::Unexpected(format!("the connection ended: {other:?}"))),
            }
        }
    }
}

pub struct ResumableSummary {
    pub sent: usize,
    pub answered: usize,
    pub reconnects: u32,
}

/// How many numbered messages the library client sends, and when things break.
const RESUMABLE_MESSAGES: usize = 12;
const CUT_AFTER: usize = 4;
const RESTART_AFTER: usize = 8;

/// The library client (the Rust twin of `clients/js`): numbered messages through the demo's
/// network while the network cuts its connection and then holdfast itself restarts. Each
/// echo must come back once, in order.
pub async fn resumable_scene(
    network: &Arc<Network>,
    holdfasts: &Arc<Holdfasts>,
    clock: Clock,
) -> Result<ResumableSummary, DemoError> {
    let mut client = ResumableClient::connect(network.addr, "/demo", &[])
        .await
        .map_err(|e| DemoError::Unexpected(format!("the library client: {e}")))?;
    clock.say(
        "client",
        format!(
            "connected through the network to holdfast 1: resumable session {}",
            client.session.as_deref().unwrap_or("?")
        ),
    );
    let mut restart = None;
    let mut reconnects = 0;
    for n in 1..=RESUMABLE_MESSAGES {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let text = format!("resumable #{n}");
        clock.say("client", format!("→ {text}"));
        client
            .send(Message::text(text.clone()))
            .await
            .map_err(|e| DemoError::Unexpected(format!("the library client: {e}")))?;
        if n == CUT_AFTER {
            network.cut();
            clock.say(
                "network",
                "cuts the client's connection (a reset, no close frame — as a phone changing networks)",
            );
        }
        if n == RESTART_AFTER {
            clock.say(
                "holdfast",
                "restarts (a rollout): the next one starts, this one drains",
            );
            let (network, holdfasts) = (network.clone(), holdfasts.clone());
            restart = Some(tokio::spawn(async move {
                holdfasts.restart(|next| network.point_at(next)).await
            }));
        }
        let echo = tokio::time::timeout(Duration::from_secs(10), client.next())
            .await
            .map_err(|_| DemoError::Unexpected(format!("no echo of {text:?} in 10 s")))?
            .map_err(|e| DemoError::Unexpected(format!("the library client: {e}")))?;
        if client.reconnects > reconnects {
            reconnects = client.reconnects;
            clock.say(
                "client",
                "reconnected with its token; what either side missed is sent again",
            );
        }
        match echo {
            Received::Message(Message::Text(echo)) if echo.ends_with(&format!(": {text}")) => {
                clock.say("client", format!("← {echo}"));
            }
            other => {
                return Err(DemoError::Unexpected(format!(
                    "expected the echo of {text:?}, got {other:?}"
                )));
            }
        }
    }
    if let Some(restart) = restart {
        restart
            .await
            .map_err(|e| DemoError::Unexpected(e.to_string()))??;
    }
    client.close(1000, "done").await;
    Ok(ResumableSummary {
        sent: RESUMABLE_MESSAGES,
        answered: RESUMABLE_MESSAGES,
        reconnects: client.reconnects,
    })
}
