//! Every metric of SPEC §4: names as constants, labels from closed sets, and small typed
//! helpers called where each outcome happens. Each `App` owns its own Prometheus recorder
//! (no process-global state), so in-process tests see only their own proxy's numbers.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use metrics::{
    Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::close::Direction;

pub const SESSIONS_ACTIVE: &str = "holdfast_sessions_active";
pub const SESSIONS_TOTAL: &str = "holdfast_sessions_total";
pub const HANDSHAKES_REJECTED_TOTAL: &str = "holdfast_handshakes_rejected_total";
pub const MESSAGES_TOTAL: &str = "holdfast_messages_total";
pub const BYTES_TOTAL: &str = "holdfast_bytes_total";
pub const COMPRESSED_BYTES_TOTAL: &str = "holdfast_compressed_bytes_total";
pub const UNCOMPRESSED_BYTES_TOTAL: &str = "holdfast_uncompressed_bytes_total";
pub const CLOSE_CODES_TOTAL: &str = "holdfast_close_codes_total";
pub const HOLDS_TOTAL: &str = "holdfast_holds_total";
pub const HOLD_DURATION_SECONDS: &str = "holdfast_hold_duration_seconds";
pub const SESSION_DURATION_SECONDS: &str = "holdfast_session_duration_seconds";
pub const CLIENT_DISRUPTION_SECONDS: &str = "holdfast_client_disruption_seconds";
pub const HELD_MESSAGES: &str = "holdfast_held_messages";
pub const RECONNECTS_WAITING: &str = "holdfast_reconnects_waiting";
pub const CLIENT_RESUMES_TOTAL: &str = "holdfast_client_resumes_total";
pub const CLIENTS_AWAY: &str = "holdfast_clients_away";
pub const IO_URING_WORKERS: &str = "holdfast_io_uring_workers";
pub const UPSTREAM_CONNECTS_TOTAL: &str = "holdfast_upstream_connects_total";
pub const POLICY_VIOLATIONS_TOTAL: &str = "holdfast_policy_violations_total";
pub const HTTP_REQUESTS_TOTAL: &str = "holdfast_http_requests_total";
pub const CONFIG_RELOADS_TOTAL: &str = "holdfast_config_reloads_total";
pub const CONFIG_LAST_RELOAD_SUCCESSFUL: &str = "holdfast_config_last_reload_successful";

const HOLD_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0];
/// Session lifetimes: under a second is a session that failed at once, minutes to hours is
/// the ordinary range, and a day is where load balancers, token lifetimes and deploy
/// cadences cut sessions anyway.
const SESSION_BUCKETS: &[f64] = &[
    1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0,
];
/// How long a client's traffic was paused: a resume that works is a re-dial and a delivery
/// (milliseconds to a few hundred on a cluster network), backoff puts a struggling upstream
/// in the seconds, and `restart.max_hold` (default 30 s) bounds a hold.
const DISRUPTION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A value of a bounded label, named by the type that owns it (a hold's outcome, a policy's
/// source): metrics takes any such value without knowing the layers that define them.
pub trait LabelValue: Copy {
    fn label(self) -> &'static str;
}

/// How a session ended, for `holdfast_sessions_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionOutcome {
    /// Established, then closed (whoever closed it).
    Closed,
    /// The handshake was refused with an HTTP status.
    Rejected,
    /// Accepted with a 101, but the client's upgrade never completed.
    Error,
}

impl SessionOutcome {
    fn as_str(self) -> &'static str {
        match self {
            SessionOutcome::Closed => "closed",
            SessionOutcome::Rejected => "rejected",
            SessionOutcome::Error => "error",
        }
    }
}

/// How a session ended for its client, for `holdfast_session_duration_seconds{end}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The close code the client's connection ended with: the one holdfast sent, or the
    /// client's own when it closed first (holdfast answers with it); 1005 for a close
    /// without a code, 1006 for a connection that ended without a close.
    Code(u16),
    /// holdfast drained and told its resumable client to move: the session goes on at
    /// another holdfast.
    Moved,
    /// A resumable client went away and did not come back here in time (or what it missed
    /// outgrew its buffer).
    ClientGone,
}

impl SessionEnd {
    /// Codes 1000-1015 as numbers; the registered and private ranges by class (`3xxx`,
    /// `4xxx`): a client that closes first picks its own code, and each value here is a
    /// whole histogram of series (`holdfast_close_codes_total` has the exact codes).
    fn label(self) -> Cow<'static, str> {
        match self {
            SessionEnd::Code(code @ 1000..=1015) => code_label(code),
            SessionEnd::Code(3000..=3999) => Cow::Borrowed("3xxx"),
            SessionEnd::Code(4000..=4999) => Cow::Borrowed("4xxx"),
            SessionEnd::Code(_) => Cow::Borrowed("other"),
            SessionEnd::Moved => Cow::Borrowed("moved"),
            SessionEnd::ClientGone => Cow::Borrowed("client_gone"),
        }
    }
}

impl std::fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionEnd::Code(code) => write!(f, "{code}"),
            SessionEnd::Moved => f.write_str("moved"),
            SessionEnd::ClientGone => f.write_str("client_gone"),
        }
    }
}

/// What paused a client's traffic, for `holdfast_client_disruption_seconds{cause}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disruption {
    /// A hold across an upstream restart: from the upstream's end to the delivery of what
    /// the client sent meanwhile (or to the hold's end, whatever it was).
    Hold,
    /// A resumable client that was away came back to this holdfast: from the loss of its
    /// connection to its return.
    Reattach,
    /// A resumable client moved here from a draining holdfast: from the moment it was told
    /// to move to the new upstream connection's answer.
    Move,
}

impl Disruption {
    fn as_str(self) -> &'static str {
        match self {
            Disruption::Hold => "hold",
            Disruption::Reattach => "reattach",
            Disruption::Move => "move",
        }
    }
}

/// Who a close code came from, for the `original` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Original {
    /// Received from the peer (pseudo-codes 1005/1006 included).
    Received(u16),
    /// holdfast's own close (idle, shutdown, give-up, a policy, a verdict on a faulty peer).
    Proxy,
}

/// A close code as a bounded label: assigned codes 1000-1015 and the registered/private
/// ranges 3000-4999 as numbers, anything else `other`.
pub fn code_label(code: u16) -> Cow<'static, str> {
    match code {
        1000..=1015 | 3000..=4999 => Cow::Owned(code.to_string()),
        _ => Cow::Borrowed("other"),
    }
}

fn metadata() -> Metadata<'static> {
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()))
}

/// The route label of what happened before a route was chosen (or when none matched).
pub const NO_ROUTE: &str = "none";

/// What labels a session's series: its route's name and the protocol it arrived on.
#[derive(Debug, Clone)]
pub struct SessionLabels {
    pub route: std::sync::Arc<str>,
    pub protocol: &'static str,
}

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    pub held_messages: Gauge,
    pub reconnects_waiting: Gauge,
    pub clients_away: Gauge,
    pub io_uring_workers: Gauge,
    last_reload_successful: Gauge,
    hold_duration: Histogram,
    /// `holdfast_messages_total` and `holdfast_bytes_total` by direction, in `Traffic`'s
    /// slot order; `render` writes the traffic sums into them.
    traffic_series: [Counter; 4],
    traffic: Traffic,
    /// permessage-deflate's byte counts on the client hop and on the upstream hop.
    deflate: [crate::deflate::Counters; 2],
}

/// A hop of a session, for the compression metrics' `hop` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    Client,
    Upstream,
}

/// The per-message counters, striped: every worker thread adds to its own cache line, so
/// the hot path never contends with another core for the same counter (two shared atomic
/// counters bounced between the cores on every message). The sums are only needed when the
/// metrics are rendered.
struct Traffic {
    stripes: Box<[Stripe]>,
}

/// One thread's counters: messages to client, bytes to client, messages to upstream, bytes
/// to upstream. Aligned so two stripes never share a cache line (or an adjacent-line
/// prefetch pair).
#[repr(align(128))]
#[derive(Default)]
struct Stripe([AtomicU64; 4]);

const STRIPES: usize = 16;

impl Traffic {
    fn new() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
        }
    }

    fn add(&self, direction: Direction, bytes: usize) {
        let first = match direction {
            Direction::ToClient => 0,
            Direction::ToUpstream => 2,
        };
        let stripe = &self.stripes[stripe_index()].0;
        stripe[first].fetch_add(1, Ordering::Relaxed);
        stripe[first + 1].fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn sums(&self) -> [u64; 4] {
        let mut sums = [0u64; 4];
        for stripe in &self.stripes {
            for (sum, value) in sums.iter_mut().zip(&stripe.0) {
                *sum += value.load(Ordering::Relaxed);
            }
        }
        sums
    }
}

/// This thread's stripe: threads are numbered in the order they first count a message.
/// More threads than stripes share stripes, which stays correct (the adds are atomic).
fn stripe_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    INDEX.with(|index| *index)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(HOLD_DURATION_SECONDS.into()), HOLD_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(SESSION_DURATION_SECONDS.into()),
                    SESSION_BUCKETS,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(CLIENT_DISRUPTION_SECONDS.into()),
                    DISRUPTION_BUCKETS,
                )
            })
            .expect("the bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        describe(&recorder);
        let counter = |name: &'static str, labels: &[(&'static str, &'static str)]| {
            recorder.register_counter(&key(name, labels), &metadata())
        };
        let metrics = Self {
            held_messages: recorder.register_gauge(&key(HELD_MESSAGES, &[]), &metadata()),
            reconnects_waiting: recorder.register_gauge(&key(RECONNECTS_WAITING, &[]), &metadata()),
            clients_away: recorder.register_gauge(&key(CLIENTS_AWAY, &[]), &metadata()),
            io_uring_workers: recorder.register_gauge(&key(IO_URING_WORKERS, &[]), &metadata()),
            last_reload_successful: recorder
                .register_gauge(&key(CONFIG_LAST_RELOAD_SUCCESSFUL, &[]), &metadata()),
            hold_duration: recorder
                .register_histogram(&key(HOLD_DURATION_SECONDS, &[]), &metadata()),
            traffic_series: [
                counter(MESSAGES_TOTAL, &[("direction", "to_client")]),
                counter(BYTES_TOTAL, &[("direction", "to_client")]),
                counter(MESSAGES_TOTAL, &[("direction", "to_upstream")]),
                counter(BYTES_TOTAL, &[("direction", "to_upstream")]),
            ],
            traffic: Traffic::new(),
            deflate: [Hop::Client, Hop::Upstream].map(|hop| {
                // What holdfast sends on a hop goes to that hop's peer.
                let (hop_label, sent, received) = match hop {
                    Hop::Client => ("client", "to_client", "to_upstream"),
                    Hop::Upstream => ("upstream", "to_upstream", "to_client"),
                };
                let bytes = |name, direction| {
                    counter(name, &[("direction", direction), ("hop", hop_label)])
                };
                crate::deflate::Counters {
                    sent_compressed: bytes(COMPRESSED_BYTES_TOTAL, sent),
                    sent_uncompressed: bytes(UNCOMPRESSED_BYTES_TOTAL, sent),
                    received_compressed: bytes(COMPRESSED_BYTES_TOTAL, received),
                    received_uncompressed: bytes(UNCOMPRESSED_BYTES_TOTAL, received),
                }
            }),
            recorder,
            handle,
        };
        // Series every dashboard expects to exist from the start, at zero.
        let zero = |name: &'static str, label: &'static str, values: &[&'static str]| {
            for value in values {
                metrics
                    .counter(name, vec![(label, (*value).into())])
                    .increment(0);
            }
        };
        zero(
            UPSTREAM_CONNECTS_TOTAL,
            "result",
            &["ok", "refused", "timeout", "error"],
        );
        zero(CONFIG_RELOADS_TOTAL, "result", &["ok", "error"]);
        // The configuration loaded at start-up is the file's.
        metrics.last_reload_successful.set(1.0);
        zero(
            CLIENT_RESUMES_TOTAL,
            "outcome",
            &["reattached", "moved", "rejected", "expired", "overflow"],
        );
        metrics
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        for (series, sum) in self.traffic_series.iter().zip(self.traffic.sums()) {
            series.absolute(sum);
        }
        self.handle.render()
    }

    /// Drains histogram buffers; call every few seconds.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }

    fn counter(
        &self,
        name: &'static str,
        labels: Vec<(&'static str, Cow<'static, str>)>,
    ) -> Counter {
        let labels: Vec<Label> = labels.into_iter().map(|(k, v)| Label::new(k, v)).collect();
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &metadata())
    }

    /// The series a route's sessions and holds count in, at zero, so that dashboards see
    /// each route from the start (called for every route at start-up and on reload).
    pub fn prepare_route(&self, route: &str) {
        for protocol in PROTOCOLS {
            for outcome in ["closed", "rejected", "error"] {
                self.counter(SESSIONS_TOTAL, session_labels(outcome, route, protocol))
                    .increment(0);
            }
        }
        for outcome in ["resumed", "timeout", "overflow", "client_closed", "refused"] {
            let labels = vec![
                ("outcome", outcome.into()),
                ("route", Cow::Owned(route.to_owned())),
            ];
            self.counter(HOLDS_TOTAL, labels).increment(0);
        }
    }

    pub fn session_ended(&self, outcome: SessionOutcome, labels: &SessionLabels) {
        let labels = session_labels(outcome.as_str(), &labels.route, labels.protocol);
        self.counter(SESSIONS_TOTAL, labels).increment(1);
    }

    /// `holdfast_sessions_active` of one route and protocol.
    pub fn sessions_active(&self, labels: &SessionLabels) -> Gauge {
        let labels = [
            Label::new("route", labels.route.to_string()),
            Label::new("protocol", labels.protocol),
        ];
        self.recorder.register_gauge(
            &Key::from_parts(SESSIONS_ACTIVE, labels.to_vec()),
            &metadata(),
        )
    }

    pub fn handshake_rejected(&self, status: u16, labels: &SessionLabels) {
        self.counter(
            HANDSHAKES_REJECTED_TOTAL,
            vec![
                ("status", status.to_string().into()),
                ("route", Cow::Owned(labels.route.to_string())),
            ],
        )
        .increment(1);
        self.session_ended(SessionOutcome::Rejected, labels);
    }

    /// The compression counters of a hop, for its connections' contexts.
    pub fn deflate_counters(&self, hop: Hop) -> crate::deflate::Counters {
        self.deflate[hop as usize].clone()
    }

    /// One relayed (or delivered) data message.
    pub fn message(&self, direction: Direction, bytes: usize) {
        self.traffic.add(direction, bytes);
    }

    /// A close sent in `direction`: `sent` is the code on the wire (`None`: an empty close).
    pub fn close_sent(
        &self,
        direction: Direction,
        sent: Option<u16>,
        original: Original,
        route: &str,
    ) {
        let code = sent.map_or(Cow::Borrowed("1005"), code_label);
        let original = match original {
            Original::Received(c) => code_label(c),
            Original::Proxy => Cow::Borrowed("proxy"),
        };
        let labels = vec![
            ("direction", direction.as_str().into()),
            ("code", code),
            ("original", original),
            ("route", Cow::Owned(route.to_owned())),
        ];
        self.counter(CLOSE_CODES_TOTAL, labels).increment(1);
    }

    /// A hold ended with `outcome` (`resumed`, `timeout`, …) after `held`.
    pub fn hold_ended(&self, outcome: impl LabelValue, held: Duration, route: &str) {
        let labels = vec![
            ("outcome", outcome.label().into()),
            ("route", Cow::Owned(route.to_owned())),
        ];
        self.counter(HOLDS_TOTAL, labels).increment(1);
        self.hold_duration.record(held.as_secs_f64());
    }

    /// A session that ran (`SessionOutcome::Closed`) ended `end` after `lasted`.
    pub fn session_duration(&self, end: SessionEnd, lasted: Duration, route: &str) {
        let labels = [
            ("end", end.label()),
            ("route", Cow::Owned(route.to_owned())),
        ];
        self.observe(SESSION_DURATION_SECONDS, labels, lasted);
    }

    /// A client's traffic was paused for `paused` by `cause`.
    pub fn client_disruption(&self, cause: Disruption, paused: Duration, route: &str) {
        let labels = [
            ("cause", cause.as_str().into()),
            ("route", Cow::Owned(route.to_owned())),
        ];
        self.observe(CLIENT_DISRUPTION_SECONDS, labels, paused);
    }

    /// Records `value` in the histogram `name` of `labels`.
    fn observe<const N: usize>(
        &self,
        name: &'static str,
        labels: [(&'static str, Cow<'static, str>); N],
        value: Duration,
    ) {
        let labels: Vec<Label> = labels.into_iter().map(|(k, v)| Label::new(k, v)).collect();
        self.recorder
            .register_histogram(&Key::from_parts(name, labels), &metadata())
            .record(value.as_secs_f64());
    }

    /// `result`: `ok`, `refused`, `timeout` or `error`.
    pub fn upstream_connect(&self, result: &'static str) {
        self.counter(UPSTREAM_CONNECTS_TOTAL, vec![("result", result.into())])
            .increment(1);
    }

    /// `policy` comes from the catalog (operator-configured ids), holdfast's own policies or
    /// `unspecified`: a closed set per configuration.
    pub fn policy_violation(&self, policy: &str, source: impl LabelValue, route: &str) {
        let labels = vec![
            ("policy", Cow::Owned(policy.to_owned())),
            ("source", source.label().into()),
            ("route", Cow::Owned(route.to_owned())),
        ];
        self.counter(POLICY_VIOLATIONS_TOTAL, labels).increment(1);
    }

    pub fn http_request(&self, status: u16, labels: &SessionLabels) {
        self.counter(
            HTTP_REQUESTS_TOTAL,
            vec![
                ("status", status.to_string().into()),
                ("route", Cow::Owned(labels.route.to_string())),
                ("protocol", labels.protocol.into()),
            ],
        )
        .increment(1);
    }

    /// A resumable client came back (`reattached`, `moved`), was refused (`rejected`), or
    /// its session ended while it was away (`expired`, `overflow`).
    pub fn client_resume(&self, outcome: &'static str) {
        self.counter(CLIENT_RESUMES_TOTAL, vec![("outcome", outcome.into())])
            .increment(1);
    }

    pub fn config_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.counter(CONFIG_RELOADS_TOTAL, vec![("result", result.into())])
            .increment(1);
        self.last_reload_successful.set(if ok { 1.0 } else { 0.0 });
    }
}

/// The protocols a client arrives on, for the `protocol` label.
pub const PROTOCOLS: [&str; 2] = ["http1", "h2"];

fn session_labels(
    outcome: &'static str,
    route: &str,
    protocol: &'static str,
) -> Vec<(&'static str, Cow<'static, str>)> {
    vec![
        ("outcome", outcome.into()),
        ("route", Cow::Owned(route.to_owned())),
        ("protocol", protocol.into()),
    ]
}

fn key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
    let labels: Vec<Label> = labels.iter().map(|(k, v)| Label::new(*k, *v)).collect();
    Key::from_parts(name, labels)
}

fn describe(recorder: &PrometheusRecorder) {
    let help: &[(&'static str, Option<Unit>, &'static str)] = &[
        (
            SESSIONS_ACTIVE,
            None,
            "WebSocket sessions currently open (relaying or held).",
        ),
        (
            SESSIONS_TOTAL,
            None,
            "WebSocket sessions by how they ended.",
        ),
        (
            HANDSHAKES_REJECTED_TOTAL,
            None,
            "WebSocket handshakes refused, by HTTP status.",
        ),
        (MESSAGES_TOTAL, None, "Data messages relayed, by direction."),
        (
            BYTES_TOTAL,
            Some(Unit::Bytes),
            "Payload bytes relayed, by direction.",
        ),
        (
            COMPRESSED_BYTES_TOTAL,
            Some(Unit::Bytes),
            "Payload bytes of permessage-deflate messages on the wire, by direction and hop.",
        ),
        (
            UNCOMPRESSED_BYTES_TOTAL,
            Some(Unit::Bytes),
            "The same messages' bytes before compression or after inflating, by direction and hop.",
        ),
        (
            CLOSE_CODES_TOTAL,
            None,
            "Close frames sent, by direction, code sent and code received.",
        ),
        (
            HOLDS_TOTAL,
            None,
            "Holds across upstream restarts, by outcome.",
        ),
        (
            HOLD_DURATION_SECONDS,
            Some(Unit::Seconds),
            "How long clients were held.",
        ),
        (
            SESSION_DURATION_SECONDS,
            Some(Unit::Seconds),
            "How long sessions lasted, by how they ended for the client (the close code sent, moved, client_gone).",
        ),
        (
            CLIENT_DISRUPTION_SECONDS,
            Some(Unit::Seconds),
            "How long a client's traffic was paused, by cause (hold, reattach, move).",
        ),
        (
            HELD_MESSAGES,
            None,
            "Client messages buffered in holds right now.",
        ),
        (
            RECONNECTS_WAITING,
            None,
            "Reconnect tries of held sessions waiting for a turn (restart.max_reconnecting).",
        ),
        (
            CLIENT_RESUMES_TOTAL,
            None,
            "Resumable clients that came back (reattached, moved), were refused (rejected), or whose session ended while they were away (expired, overflow).",
        ),
        (
            CLIENTS_AWAY,
            None,
            "Resumable sessions whose client is away right now (kept for resume.client_hold).",
        ),
        (
            IO_URING_WORKERS,
            None,
            "Worker threads whose plain TCP sockets use io_uring (the rest use epoll).",
        ),
        (
            UPSTREAM_CONNECTS_TOTAL,
            None,
            "Upstream WebSocket connection attempts, by result.",
        ),
        (
            POLICY_VIOLATIONS_TOTAL,
            None,
            "1008 policy closes sent to clients, by policy and source.",
        ),
        (
            HTTP_REQUESTS_TOTAL,
            None,
            "Plain HTTP requests passed through, by status.",
        ),
        (
            CONFIG_RELOADS_TOTAL,
            None,
            "Configuration reloads (SIGHUP), by result.",
        ),
        (
            CONFIG_LAST_RELOAD_SUCCESSFUL,
            None,
            "1 when the running configuration is the file's (the last reload, or the start, succeeded); 0 after a failed reload.",
        ),
    ];
    for (name, unit, text) in help {
        let key_name = metrics::KeyName::from(*name);
        let text = SharedString::from(*text);
        if [
            HOLD_DURATION_SECONDS,
            SESSION_DURATION_SECONDS,
            CLIENT_DISRUPTION_SECONDS,
        ]
        .contains(name)
        {
            recorder.describe_histogram(key_name, *unit, text);
        } else if [
            SESSIONS_ACTIVE,
            HELD_MESSAGES,
            RECONNECTS_WAITING,
            IO_URING_WORKERS,
            CLIENTS_AWAY,
            CONFIG_LAST_RELOAD_SUCCESSFUL,
        ]
        .contains(name)
        {
            recorder.describe_gauge(key_name, *unit, text);
        } else {
            recorder.describe_counter(key_name, *unit, text);
        }
    }
}

#[cfg(test)]
mod tests;
