//! The `Closing` state: carries out the `plan` of what each side is sent (a faulty side is
//! closed last, after what the other side still sends), counts the closes, and lets each
//! close handshake complete within `CLOSE_TIMEOUT`.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::ClientConn;
use super::plan::{Plan, plan};
use super::{CLOSE_TIMEOUT, Ending, Report, Session};
use crate::close::Direction;
use crate::codec::{Data, WsConn};
use crate::ws::UpstreamWs;
use crate::ws::ends::wire_code;

impl<C> Session<C>
where
    C: ClientConn,
{
    /// The `Closing` state: send each side what the plan says and let both close handshakes
    /// complete, each bounded by `CLOSE_TIMEOUT`. `upstream` is `None` when the session ends
    /// from `Holding`.
    pub(crate) async fn finish(&mut self, ending: Ending, upstream: Option<UpstreamWs>) -> Report {
        let config = self.view();
        let Plan {
            to_client,
            to_upstream,
            faulty,
            client_original,
            upstream_original,
            client_close,
            upstream_close,
            policy,
            client_end,
        } = plan(&ending, &config);
        // A resumable client's messages are envelopes (its close is not).
        let enveloped = self.resume.is_some();
        let to_client: Vec<Message> = if enveloped {
            to_client.into_iter().map(as_data_envelope).collect()
        } else {
            to_client
        };
        let metrics = &self.shared.metrics;
        if let Some((id, source)) = &policy {
            metrics.policy_violation(id, *source, &self.labels.route);
            tracing::info!(session = %self.id, trace_id = %self.template.trace.id(), policy = %id, source = source.as_str(), "policy close");
        }
        if let Some(code) = to_client.last().and_then(wire_code) {
            metrics.close_sent(
                Direction::ToClient,
                code,
                client_original,
                &self.labels.route,
            );
        }
        if upstream.is_some()
            && let Some(code) = to_upstream.last().and_then(wire_code)
        {
            metrics.close_sent(
                Direction::ToUpstream,
                code,
                upstream_original,
                &self.labels.route,
            );
        }
        match (upstream, faulty) {
            (Some(mut upstream), Some(Direction::ToClient)) => {
                let (first, faulty) = ((&mut upstream, to_upstream), (&mut self.client, to_client));
                close_faulty_last(first, faulty, (Direction::ToClient, enveloped), metrics).await;
            }
            (Some(mut upstream), Some(Direction::ToUpstream)) => {
                let (first, faulty) = ((&mut self.client, to_client), (&mut upstream, to_upstream));
                close_faulty_last(first, faulty, (Direction::ToUpstream, false), metrics).await;
            }
            (Some(mut upstream), None) => {
                tokio::join!(
                    complete_close(&mut self.client, to_client),
                    complete_close(&mut upstream, to_upstream)
                );
            }
            (None, _) => complete_close(&mut self.client, to_client).await,
        }
        Report {
            stats: self.stats.clone(),
            client_close,
            upstream_close,
            holds: self.holds.clone(),
            policy,
            // A client that is away got no close at all: its session ends without it.
            end: if self.client_away {
                crate::metrics::SessionEnd::ClientGone
            } else {
                client_end
            },
        }
    }
}

/// One side broke the protocol: closes the other side (`first`, its messages with the close
/// last) and, until its close reply (at most `CLOSE_TIMEOUT`), relays the data it still
/// sends to the faulty side (`direction`), so answers to messages sent before the fault
/// arrive before the verdict; then closes the faulty side.
async fn close_faulty_last<A, B>(
    (first, first_messages): (&mut WsConn<A>, Vec<Message>),
    (faulty, faulty_messages): (&mut WsConn<B>, Vec<Message>),
    (direction, enveloped): (Direction, bool),
    metrics: &crate::metrics::Metrics,
) where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if send_all(first, first_messages).await.is_err() {
            return;
        }
        while let Some(Ok(message)) = first.next().await {
            if let Some(len) = Data::of(&message).map(|d| d.len()) {
                let message = if enveloped {
                    as_data_envelope(message)
                } else {
                    message
                };
                if faulty.send(message).await.is_err() {
                    return;
                }
                metrics.message(direction, len);
            }
        }
    })
    .await;
    shut_down(first).await;
    complete_close(faulty, faulty_messages).await;
}

/// Writes `messages` and flushes them.
async fn send_all<S>(socket: &mut WsConn<S>, messages: Vec<Message>) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    for message in messages {
        socket.feed(message).await?;
    }
    socket.flush().await
}

/// Shuts the transport down once the close handshake is over (a TLS close_notify over TLS),
/// bounded.
async fn shut_down<S>(socket: &mut WsConn<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.get_mut().shutdown()).await;
}

/// Sends `messages` (the close frame last; none: only flush a close reply tungstenite
/// queued), then reads until the peer's close reply or EOF, bounded by `CLOSE_TIMEOUT`;
/// then shuts the transport down (a TLS close_notify over TLS).
pub async fn complete_close<S>(socket: &mut WsConn<S>, messages: Vec<Message>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if send_all(socket, messages).await.is_ok() {
            while let Some(Ok(_)) = socket.next().await {}
        }
    })
    .await;
    shut_down(socket).await;
}

/// A data message as a resumable client's `d` envelope (other messages as they are).
fn as_data_envelope(message: Message) -> Message {
    match message {
        Message::Text(t) => Message::text(format!("d{}", t.as_str())),
        Message::Binary(b) => {
            let mut out = Vec::with_capacity(b.len() + 1);
            out.push(crate::resume::envelope::DATA);
            out.extend_from_slice(&b);
            Message::binary(out)
        }
        other => other,
    }
}
