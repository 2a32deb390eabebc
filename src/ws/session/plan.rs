//! What each side is sent when a session ends, as a pure function of how it ended and the
//! configuration: `plan(ending, &config)`. `closing.rs` carries the plan out; the table tests
//! here are the whole close pipeline (rewrites, restart codes when not holding, policy
//! context, codes that must not reach the wire, verdicts for a faulty peer) without a socket.

use tokio_tungstenite::tungstenite::Message;

use super::Ending;
use crate::close::{
    self, ABNORMAL, Close, Direction, GOING_AWAY, NO_STATUS, POLICY_VIOLATION, SERVICE_RESTART,
};
use crate::config::Config;
use crate::metrics::{Original, SessionEnd};
use crate::policy::{self, Source};
use crate::ws::ends::{self, CloseRules, UpstreamDecision, close_message};

/// What the closing state sends, and what it reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Messages for the client, the close frame last (a 1008's context message before it).
    pub to_client: Vec<Message>,
    /// Messages for the upstream; empty: only complete a handshake the upstream began.
    pub to_upstream: Vec<Message>,
    /// The side that broke the protocol, if one did: the other side is closed first, and
    /// what it still sends is relayed before the verdict reaches the faulty side.
    pub faulty: Option<Direction>,
    /// Where each side's close comes from (the `original` label of the close metric).
    pub client_original: Original,
    pub upstream_original: Original,
    /// Close code as received from the client (pseudo-codes included) and as sent upstream.
    pub client_close: Option<(u16, Option<u16>)>,
    /// Close code as received from the upstream and as sent to the client.
    pub upstream_close: Option<(u16, Option<u16>)>,
    /// The policy of a 1008 close sent to the client, and who closed.
    pub policy: Option<(String, Source)>,
    /// How the session ends for the client (`holdfast_session_duration_seconds{end}`).
    pub client_end: SessionEnd,
}

impl Plan {
    fn new(to_client: Vec<Message>, to_upstream: Vec<Message>) -> Self {
        Self {
            to_client,
            to_upstream,
            faulty: None,
            client_original: Original::Proxy,
            upstream_original: Original::Proxy,
            client_close: None,
            upstream_close: None,
            policy: None,
            client_end: SessionEnd::Code(ABNORMAL),
        }
    }
}

/// holdfast's own close with `code` and `reason`, as the one message to send.
fn own(close: Close) -> Vec<Message> {
    vec![close_message(close::to_wire(close))]
}

/// What each side is sent when the session ends with `ending`. Holding was decided (and
/// declined) before: an upstream end here is always passed on.
pub fn plan(ending: &Ending, config: &Config) -> Plan {
    let mut plan = sends(ending, config);
    plan.client_end = client_end(ending, &plan);
    plan
}

/// How the session ends for the client, as its duration is labelled: the code of the close
/// it is sent; the client's own code when it closed first (its close is answered with it)
/// or 1006 when its connection ended without one; or, for a resumable client, `Moved` or
/// `ClientGone`.
fn client_end(ending: &Ending, plan: &Plan) -> SessionEnd {
    match ending {
        Ending::Moved => SessionEnd::Moved,
        Ending::ClientAway | Ending::ClientGone => SessionEnd::ClientGone,
        _ => match plan.to_client.last().and_then(ends::wire_code) {
            Some(sent) => SessionEnd::Code(sent.unwrap_or(NO_STATUS)),
            None => SessionEnd::Code(plan.client_close.map_or(ABNORMAL, |(received, _)| received)),
        },
    }
}

fn sends(ending: &Ending, config: &Config) -> Plan {
    match ending {
        Ending::Client(end) => {
            let decision = ends::on_client_end(end, &config.rewrites);
            let to_client: Vec<Message> = decision
                .to_client
                .clone()
                .map(close_message)
                .into_iter()
                .collect();
            let mut plan = Plan::new(to_client, vec![close_message(decision.to_upstream.clone())]);
            plan.upstream_original = Original::Received(decision.original);
            plan.client_close = Some((
                decision.original,
                decision.to_upstream.as_ref().map(|c| c.code),
            ));
            if decision.to_client.is_some() {
                plan.faulty = Some(Direction::ToClient);
            }
            plan
        }
        Ending::Upstream(end) => {
            let rules = CloseRules {
                hold: false,
                restart_codes: &config.restart.codes,
                on_disconnect: config.restart.on_disconnect,
                rewrites: &config.rewrites,
            };
            let UpstreamDecision::Forward { original, close } = ends::on_upstream_end(end, &rules)
            else {
                unreachable!("hold: false never decides Hold")
            };
            let mut to_client = Vec::new();
            let mut policy_of = None;
            // A 1008 (as received or as rewritten) gets policy context.
            let close = if close.code == POLICY_VIOLATION {
                let context = policy::upstream_context(&close.reason, &config.policy);
                policy_of = Some((context.policy.clone(), context.source));
                let (close, message) = policy::apply(&context, close, config.policy.context);
                to_client.extend(message.map(Message::text));
                close
            } else {
                close
            };
            let wire = close::to_wire(close);
            let sent = wire.as_ref().map(|c| c.code);
            to_client.push(close_message(wire));
            let verdict = end.verdict_for_upstream();
            let mut plan = Plan::new(to_client, own_opt(verdict.clone()));
            plan.client_original = Original::Received(original);
            plan.upstream_close = Some((original, sent));
            plan.policy = policy_of;
            if verdict.is_some() {
                plan.faulty = Some(Direction::ToUpstream);
            }
            plan
        }
        Ending::Policy(fired) => {
            let context = fired.context(&config.policy);
            let (close, message) =
                policy::apply(&context, fired.plain_close(), config.policy.context);
            let mut to_client: Vec<Message> = message.map(Message::text).into_iter().collect();
            to_client.push(close_message(close::to_wire(close)));
            let reason = format!("client closed by proxy policy {}", fired.id());
            let mut plan = Plan::new(to_client, own(Close::new(GOING_AWAY, reason)));
            plan.policy = Some((context.policy.clone(), context.source));
            plan
        }
        Ending::Idle => Plan::new(
            own(Close::new(GOING_AWAY, "idle timeout")),
            own(Close::new(GOING_AWAY, "idle timeout")),
        ),
        Ending::Shutdown => Plan::new(
            own(config.shutdown.client.clone()),
            own(Close::new(GOING_AWAY, "proxy shutting down")),
        ),
        Ending::GaveUp => Plan::new(own(config.restart.give_up.clone()), Vec::new()),
        // The upstream's close is done; the client, told to move, gets the drain's close.
        Ending::Moved => Plan::new(
            own(Close::new(SERVICE_RESTART, "moving to another holdfast")),
            Vec::new(),
        ),
        // The client's connection is gone: only the upstream is told.
        Ending::ClientAway | Ending::ClientGone => Plan::new(
            Vec::new(),
            own(Close::new(GOING_AWAY, "client did not come back")),
        ),
    }
}

fn own_opt(close: Option<Close>) -> Vec<Message> {
    close.map(own).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_toml_str;
    use crate::policy::ProxyPolicy;
    use crate::ws::ends::{ClientEnd, UpstreamEnd, wire_code};
    use std::time::Duration;

    /// A close as (code, reason): code `None` is an empty close frame.
    type Sent = Option<(Option<u16>, String)>;

    /// A plan's closes per side (`None`: that side is sent no close).
    fn closes(plan: &Plan) -> (Sent, Sent) {
        let close = |messages: &[Message]| {
            messages.last().and_then(|m| match m {
                Message::Close(frame) => Some((
                    wire_code(m).flatten(),
                    frame
                        .as_ref()
                        .map_or(String::new(), |f| f.reason.to_string()),
                )),
                _ => None,
            })
        };
        (close(&plan.to_client), close(&plan.to_upstream))
    }

    fn c(code: u16, reason: &str) -> Sent {
        Some((Some(code), reason.to_owned()))
    }

    #[test]
    fn every_ending_sends_each_side_what_the_pipeline_says() {
        let config = from_toml_str(
            r#"
[restart]
give_up_code = 4000
give_up_reason = "try later"
[shutdown]
client_code = 1012
client_reason = "proxy restarting"
[[rewrite]]
direction = "to_client"
from = "4000-4099"
to = 1008
[[rewrite]]
direction = "to_upstream"
from = "4500"
to = 1000
reason = "bye"
[[policy.catalog]]
id = "quota"
match = "quota"
"#,
        )
        .expect("valid");
        let up =
            |code, reason: &str| Ending::Upstream(UpstreamEnd::Closed(Close::new(code, reason)));
        let client =
            |code, reason: &str| Ending::Client(ClientEnd::Closed(Close::new(code, reason)));
        type Row = (Ending, Sent, Sent, Option<Direction>);
        let table: Vec<Row> = vec![
            // The client's close is rewritten for the upstream; the client only completes its handshake.
            (client(1000, "done"), None, c(1000, "done"), None),
            (client(4500, "x"), None, c(1000, "bye"), None),
            (client(1005, ""), None, Some((None, String::new())), None),
            (
                Ending::Client(ClientEnd::Vanished),
                None,
                c(1001, "client went away"),
                None,
            ),
            (
                Ending::Client(ClientEnd::Stalled),
                None,
                c(1001, "client stopped reading"),
                None,
            ),
            // A faulty client gets a verdict and is closed last.
            (
                Ending::Client(ClientEnd::TooBig),
                c(1009, "message too big"),
                c(1001, "client message too big"),
                Some(Direction::ToClient),
            ),
            (
                Ending::Client(ClientEnd::InvalidUtf8),
                c(1007, "invalid UTF-8"),
                c(1001, "client sent invalid UTF-8"),
                Some(Direction::ToClient),
            ),
            (
                Ending::Client(ClientEnd::ProtocolError),
                c(1002, "protocol error"),
                c(1001, "client protocol error"),
                Some(Direction::ToClient),
            ),
            // The upstream's close: rewritten, policy context on 1008, never an unsendable code.
            (up(1000, "bye"), c(1000, "bye"), None, None),
            (
                up(4001, "quota exceeded"),
                c(1008, r#"{"policy":"quota","detail":"quota exceeded"}"#),
                None,
                None,
            ),
            (
                up(1012, "not holding here"),
                c(1012, "not holding here"),
                None,
                None,
            ),
            (up(1005, ""), Some((None, String::new())), None, None),
            (
                Ending::Upstream(UpstreamEnd::Vanished),
                c(1011, ""),
                None,
                None,
            ),
            (
                Ending::Upstream(UpstreamEnd::Stalled),
                c(1011, "upstream stopped reading"),
                None,
                None,
            ),
            (
                Ending::Upstream(UpstreamEnd::TooBig),
                c(1011, "upstream message too big"),
                c(1009, "message too big"),
                Some(Direction::ToUpstream),
            ),
            (
                Ending::Upstream(UpstreamEnd::ProtocolError),
                c(1011, "upstream protocol error"),
                c(1002, "protocol error"),
                Some(Direction::ToUpstream),
            ),
            // holdfast's own ends.
            (
                Ending::Idle,
                c(1001, "idle timeout"),
                c(1001, "idle timeout"),
                None,
            ),
            (
                Ending::Shutdown,
                c(1012, "proxy restarting"),
                c(1001, "proxy shutting down"),
                None,
            ),
            (Ending::GaveUp, c(4000, "try later"), None, None),
            (
                Ending::ClientGone,
                None,
                c(1001, "client did not come back"),
                None,
            ),
            (
                Ending::Policy(ProxyPolicy::TokenExpired),
                c(
                    1008,
                    r#"{"policy":"token-expired","detail":"access token expired"}"#,
                ),
                c(1001, "client closed by proxy policy token-expired"),
                None,
            ),
            (
                Ending::Policy(ProxyPolicy::RateLimit {
                    retry: Duration::from_millis(250),
                }),
                c(
                    1008,
                    r#"{"policy":"rate-limit","retry_ms":250,"detail":"message rate limit exceeded"}"#,
                ),
                c(1001, "client closed by proxy policy rate-limit"),
                None,
            ),
        ];
        for (ending, to_client, to_upstream, faulty) in table {
            let plan = plan(&ending, &config);
            assert_eq!(closes(&plan), (to_client, to_upstream), "{ending:?}");
            assert_eq!(plan.faulty, faulty, "{ending:?}");
        }
    }

    #[test]
    fn reports_say_what_came_in_and_what_went_out() {
        let config = from_toml_str("").expect("defaults");
        let p = plan(&Ending::Upstream(UpstreamEnd::Vanished), &config);
        assert_eq!(p.upstream_close, Some((1006, Some(1011))));
        assert_eq!(p.client_original, Original::Received(1006));
        assert_eq!(p.upstream_original, Original::Proxy);
        let p = plan(
            &Ending::Client(ClientEnd::Closed(Close::new(1005, ""))),
            &config,
        );
        assert_eq!(p.client_close, Some((1005, None)));
        assert_eq!(p.upstream_original, Original::Received(1005));
        let p = plan(
            &Ending::Upstream(UpstreamEnd::Closed(Close::new(1008, "banned"))),
            &config,
        );
        assert_eq!(p.policy, Some(("unspecified".to_owned(), Source::Upstream)));
        assert_eq!(plan(&Ending::Shutdown, &config).policy, None);
    }

    #[test]
    fn context_as_a_message_comes_before_the_close() {
        let config = from_toml_str("[policy]\ncontext = \"both\"\n").expect("valid");
        let p = plan(&Ending::Policy(ProxyPolicy::TokenExpired), &config);
        assert_eq!(p.to_client.len(), 2);
        let Message::Text(context) = &p.to_client[0] else {
            panic!("a context message first: {:?}", p.to_client);
        };
        assert!(context.contains(r#""type":"close_context""#), "{context}");
        assert!(matches!(p.to_client[1], Message::Close(Some(_))));
    }

    #[test]
    fn a_session_ends_for_its_client_with_the_code_it_saw() {
        let config = from_toml_str(
            "[restart]\ngive_up_code = 4000\n[[rewrite]]\ndirection = \"to_client\"\nfrom = \"4000-4099\"\nto = 1008\n",
        )
        .expect("valid");
        let up =
            |code, reason: &str| Ending::Upstream(UpstreamEnd::Closed(Close::new(code, reason)));
        let client =
            |code, reason: &str| Ending::Client(ClientEnd::Closed(Close::new(code, reason)));
        let table = [
            // What holdfast sent: the upstream's code as rewritten, holdfast's own closes.
            (up(1000, "bye"), SessionEnd::Code(1000)),
            (up(4001, "quota"), SessionEnd::Code(1008)),
            (up(1005, ""), SessionEnd::Code(1005)),
            (
                Ending::Upstream(UpstreamEnd::Vanished),
                SessionEnd::Code(1011),
            ),
            (Ending::GaveUp, SessionEnd::Code(4000)),
            (Ending::Shutdown, SessionEnd::Code(1012)),
            (Ending::Idle, SessionEnd::Code(1001)),
            (
                Ending::Policy(ProxyPolicy::TokenExpired),
                SessionEnd::Code(1008),
            ),
            (Ending::Client(ClientEnd::TooBig), SessionEnd::Code(1009)),
            // The client closed first: its own code; it vanished: 1006.
            (client(1001, "tab closed"), SessionEnd::Code(1001)),
            (client(1005, ""), SessionEnd::Code(1005)),
            (Ending::Client(ClientEnd::Vanished), SessionEnd::Code(1006)),
            // A resumable client's session ends without a close of its own.
            (Ending::Moved, SessionEnd::Moved),
            (Ending::ClientGone, SessionEnd::ClientGone),
        ];
        for (ending, end) in table {
            assert_eq!(plan(&ending, &config).client_end, end, "{ending:?}");
        }
    }
}
