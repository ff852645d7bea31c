//! The daemon-wide state report is rate-limited: at most one per `ALL_STATES_INTERVAL`, the first
//! request answered at once, later ones together at the interval's end.

use super::*;

const T0: Time = Time(1_000_000);

/// An engine with one channel, so that every report has a state to date it by.
fn engine() -> Engine {
    let mut e = Engine::new(Box::new(|_| ChannelOptions::default()));
    e.handle(
        T0,
        Input::SetConcurrency {
            channel: "z".into(),
            max: 1,
        },
    );
    e
}

/// Times (relative to `T0`) of the `AllStates` reports among the pending outputs.
fn reports(e: &mut Engine) -> Vec<u64> {
    std::iter::from_fn(|| e.poll_output())
        .filter_map(|o| match o {
            Output::AllStates(all) => Some(all.first().map_or(u64::MAX, |s| s.now.0 - T0.0)),
            _ => None,
        })
        .collect()
}

fn register(e: &mut Engine, at: Time, channel: &str, uid: &str, timeout_ms: u64) {
    e.handle(
        at,
        Input::Register(Registration::new(channel, uid, Millis(timeout_ms))),
    );
}

#[test]
fn the_first_request_is_answered_at_once_the_rest_of_its_second_once_at_its_end() {
    let mut e = engine();
    register(&mut e, T0, "c", "a", 60_000);
    let _ = reports(&mut e);
    e.handle(T0, Input::InfosAll);
    assert_eq!(reports(&mut e), [0]);
    for ms in [1, 500, 999] {
        e.handle(T0 + Millis(ms), Input::InfosAll);
        assert_eq!(reports(&mut e), Vec::<u64>::new(), "held at +{ms}");
    }
    assert_eq!(e.next_deadline(), Some(T0 + ALL_STATES_INTERVAL));
    e.handle_timeout(T0 + Millis(999));
    assert!(reports(&mut e).is_empty());
    e.handle_timeout(T0 + Millis(1_000));
    assert_eq!(reports(&mut e), [1_000]);
    // Nothing waits any more: the only deadline left is the lease.
    assert_eq!(e.next_deadline(), Some(T0 + Millis(60_000)));
}

#[test]
fn a_request_in_the_millisecond_of_a_report_is_answered_by_it() {
    let mut e = engine();
    e.handle(T0, Input::InfosAll);
    e.handle(T0, Input::InfosAll);
    assert_eq!(reports(&mut e), [0]);
    assert_eq!(e.next_deadline(), None);
}

#[test]
fn a_request_a_full_interval_after_the_last_report_is_answered_at_once() {
    let mut e = engine();
    e.handle(T0, Input::InfosAll);
    e.handle(T0 + ALL_STATES_INTERVAL, Input::InfosAll);
    assert_eq!(reports(&mut e), [0, 1_000]);
    assert_eq!(e.next_deadline(), None);
}

#[test]
fn a_late_wake_up_sends_the_waiting_report_once_and_it_answers_the_new_request() {
    let mut e = engine();
    e.handle(T0, Input::InfosAll);
    e.handle(T0 + Millis(10), Input::InfosAll);
    // The driver did not wake at +1000; the next input catches up at +5000.
    e.handle(T0 + Millis(5_000), Input::InfosAll);
    assert_eq!(reports(&mut e), [0, 5_000]);
    assert_eq!(e.next_deadline(), None);
}

#[test]
fn a_held_report_shows_what_its_deadline_changed_and_shares_it_with_a_lease() {
    let mut e = engine();
    register(&mut e, T0, "c", "a", 1_000);
    register(&mut e, T0, "c", "b", 60_000);
    e.handle(T0, Input::InfosAll);
    e.handle(T0 + Millis(1), Input::InfosAll);
    let _ = reports(&mut e);
    assert_eq!(e.next_deadline(), Some(T0 + Millis(1_000)));
    e.handle_timeout(T0 + Millis(1_000));
    let out: Vec<Output> = std::iter::from_fn(|| e.poll_output()).collect();
    // a expires and b is granted before the report, which shows b running.
    assert!(matches!(&out[0], Output::Expired { uid, .. } if &**uid == "a"));
    assert!(matches!(&out[1], Output::Go { uid, .. } if &**uid == "b"));
    let Output::AllStates(all) = &out[2] else {
        panic!("expected the report third: {out:?}");
    };
    assert_eq!(all[0].running, ["b"]);
}

#[test]
fn a_steady_burst_gets_one_report_per_interval_and_every_request_an_answer_within_it() {
    let mut e = engine();
    register(&mut e, T0, "c", "a", 3_600_000);
    let _ = reports(&mut e);
    let mut now = T0;
    let mut asked = Vec::new();
    let mut answered = Vec::new();
    // A request every 7 ms for 5 s, the clock woken at every deadline as the driver does.
    while now < T0 + Millis(5_000) {
        let next = now + Millis(7);
        while let Some(d) = e.next_deadline().filter(|d| *d <= next) {
            e.handle_timeout(d);
            answered.extend(reports(&mut e));
        }
        now = next;
        e.handle(now, Input::InfosAll);
        asked.push(now.0 - T0.0);
        answered.extend(reports(&mut e));
    }
    while let Some(d) = e.next_deadline().filter(|d| *d < T0 + Millis(10_000)) {
        e.handle_timeout(d);
        answered.extend(reports(&mut e));
    }
    assert!(
        answered.len() <= 6,
        "{} reports for {} requests: {answered:?}",
        answered.len(),
        asked.len()
    );
    for pair in answered.windows(2) {
        assert!(pair[1] - pair[0] >= ALL_STATES_INTERVAL.0, "{answered:?}");
    }
    for t in asked {
        assert!(
            answered
                .iter()
                .any(|r| *r >= t && *r <= t + ALL_STATES_INTERVAL.0),
            "request at +{t} unanswered within the interval: {answered:?}"
        );
    }
}

#[test]
fn per_channel_infos_is_not_held_back() {
    let mut e = engine();
    for ms in 0..5 {
        e.handle(
            T0 + Millis(ms),
            Input::Infos {
                channel: "c".into(),
            },
        );
    }
    let states = std::iter::from_fn(|| e.poll_output())
        .filter(|o| matches!(o, Output::State(_)))
        .count();
    assert_eq!(states, 5);
}
