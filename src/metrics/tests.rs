//! Labels stay bounded, striped counters add up, and series render with their labels.
use super::*;

#[test]
fn code_labels_are_bounded() {
    let table = [
        (1000, "1000"),
        (1006, "1006"),
        (1015, "1015"),
        (1016, "other"),
        (2999, "other"),
        (3000, "3000"),
        (4999, "4999"),
        (5000, "other"),
        (999, "other"),
    ];
    for (code, label) in table {
        assert_eq!(code_label(code), label, "{code}");
    }
}

#[test]
fn session_ends_are_bounded_labels() {
    let table = [
        (SessionEnd::Code(1000), "1000"),
        (SessionEnd::Code(1006), "1006"),
        (SessionEnd::Code(1016), "other"),
        (SessionEnd::Code(3001), "3xxx"),
        (SessionEnd::Code(4000), "4xxx"),
        (SessionEnd::Code(4999), "4xxx"),
        (SessionEnd::Code(5000), "other"),
        (SessionEnd::Moved, "moved"),
        (SessionEnd::ClientGone, "client_gone"),
    ];
    for (end, label) in table {
        assert_eq!(end.label(), label, "{end:?}");
    }
}

#[test]
fn traffic_counted_on_many_threads_renders_as_one_sum() {
    let m = Metrics::new();
    // More threads than stripes: some share a stripe.
    std::thread::scope(|scope| {
        for thread in 0..(STRIPES + 4) {
            let m = &m;
            scope.spawn(move || {
                for _ in 0..1000 {
                    m.message(Direction::ToUpstream, thread);
                }
                m.message(Direction::ToClient, 1);
            });
        }
    });
    let threads = (STRIPES + 4) as u64;
    let text = m.render();
    for line in [
        format!(
            "holdfast_messages_total{{direction=\"to_upstream\"}} {}",
            threads * 1000
        ),
        format!(
            "holdfast_bytes_total{{direction=\"to_upstream\"}} {}",
            (0..threads).sum::<u64>() * 1000
        ),
        format!("holdfast_messages_total{{direction=\"to_client\"}} {threads}"),
        format!("holdfast_bytes_total{{direction=\"to_client\"}} {threads}"),
    ] {
        assert!(text.contains(&line), "{line} missing from\n{text}");
    }
    // Rendering again (more traffic in between) gives the new sums, not double counts.
    m.message(Direction::ToClient, 1);
    let text = m.render();
    let line = format!(
        "holdfast_messages_total{{direction=\"to_client\"}} {}",
        threads + 1
    );
    assert!(text.contains(&line), "{line} missing from\n{text}");
}

#[test]
fn counters_render_with_their_labels() {
    let m = Metrics::new();
    m.message(Direction::ToClient, 10);
    m.message(Direction::ToClient, 5);
    m.close_sent(
        Direction::ToClient,
        Some(1011),
        Original::Received(1006),
        "chat",
    );
    m.close_sent(Direction::ToClient, None, Original::Received(1005), "chat");
    #[derive(Clone, Copy)]
    struct Resumed;
    impl LabelValue for Resumed {
        fn label(self) -> &'static str {
            "resumed"
        }
    }
    m.prepare_route("chat");
    m.hold_ended(Resumed, Duration::from_millis(1500), "chat");
    m.run_upkeep();
    let text = m.render();
    for line in [
        "holdfast_messages_total{direction=\"to_client\"} 2",
        "holdfast_bytes_total{direction=\"to_client\"} 15",
        "holdfast_close_codes_total{direction=\"to_client\",code=\"1011\",original=\"1006\",route=\"chat\"} 1",
        "holdfast_close_codes_total{direction=\"to_client\",code=\"1005\",original=\"1005\",route=\"chat\"} 1",
        "holdfast_holds_total{outcome=\"resumed\",route=\"chat\"} 1",
        "holdfast_hold_duration_seconds_bucket{le=\"2\"} 1",
        "holdfast_sessions_total{outcome=\"rejected\",route=\"chat\",protocol=\"h2\"} 0",
        "holdfast_holds_total{outcome=\"timeout\",route=\"chat\"} 0",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
}
