//! Whether the broker took the daemon's subscriptions, and when to ask again.
//!
//! The daemon subscribes to all its filters in one SUBSCRIBE on every ConnAck, so every SubAck
//! carries one code per filter, in the same order, whichever SUBSCRIBE it answers. A broker may
//! refuse a filter (code 0x80) and keep the connection: an ACL that denies it, or nats-server's
//! MQTT listener when it cannot create the subscription's JetStream consumer in time (while
//! the cluster elects leaders after losing a node). A refused filter means no request on it
//! ever arrives, so the filters are asked for again, with a backoff, until all are taken (a
//! SUBSCRIBE of a filter already held is harmless). Pure: the MQTT task passes the time in and
//! schedules the retry it is told to.

use std::time::{Duration, Instant};

use rumqttc::SubscribeReasonCode;

/// The first wait before subscribing again after a refusal.
pub const RETRY_MIN: Duration = Duration::from_millis(250);
/// The longest wait between two attempts.
pub const RETRY_MAX: Duration = Duration::from_secs(5);

/// The subscriptions' state between SubAcks.
#[derive(Debug)]
pub struct Subscriptions {
    /// The wait before the next retry.
    backoff: Duration,
    /// When the retry already scheduled goes out, if one is.
    retry_at: Option<Instant>,
}

impl Default for Subscriptions {
    fn default() -> Subscriptions {
        Subscriptions {
            backoff: RETRY_MIN,
            retry_at: None,
        }
    }
}

impl Subscriptions {
    /// A new connection: its ConnAck's SUBSCRIBE asks for every filter; a refusal of that one
    /// is retried from the shortest wait again.
    pub fn handle_connack(&mut self) {
        self.backoff = RETRY_MIN;
        self.retry_at = None;
    }

    /// A SubAck at `now` (one code per filter). `Some(wait)`: some filter was refused and no
    /// retry is scheduled yet; subscribe to every filter again after `wait`.
    pub fn handle_suback(
        &mut self,
        now: Instant,
        codes: &[SubscribeReasonCode],
    ) -> Option<Duration> {
        if !codes.contains(&SubscribeReasonCode::Failure) {
            self.backoff = RETRY_MIN;
            return None;
        }
        if self.retry_at.is_some_and(|at| at > now) {
            return None;
        }
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(RETRY_MAX);
        self.retry_at = Some(now + wait);
        Some(wait)
    }
}

/// The filters a SubAck refused: `filters[i]` for each failure code `codes[i]`.
pub fn refused<'a>(filters: &'a [String], codes: &[SubscribeReasonCode]) -> Vec<&'a str> {
    filters
        .iter()
        .zip(codes)
        .filter(|(_, c)| **c == SubscribeReasonCode::Failure)
        .map(|(f, _)| f.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::QoS;

    const OK: SubscribeReasonCode = SubscribeReasonCode::Success(QoS::AtLeastOnce);
    const NO: SubscribeReasonCode = SubscribeReasonCode::Failure;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn all_taken_schedules_nothing() {
        let mut s = Subscriptions::default();
        assert_eq!(s.handle_suback(Instant::now(), &[OK, OK, OK]), None);
    }

    #[test]
    fn a_refusal_is_retried_with_a_doubling_wait_up_to_the_cap() {
        let mut s = Subscriptions::default();
        let mut now = Instant::now();
        let mut waits = Vec::new();
        for _ in 0..8 {
            let wait = s.handle_suback(now, &[OK, NO, OK]).expect("a retry");
            waits.push(wait);
            now += wait;
        }
        assert_eq!(
            waits,
            [250, 500, 1000, 2000, 4000, 5000, 5000, 5000].map(ms),
            "the retry's own refusal schedules the next"
        );
    }

    #[test]
    fn one_retry_at_a_time() {
        let mut s = Subscriptions::default();
        let now = Instant::now();
        assert_eq!(s.handle_suback(now, &[NO, OK, OK]), Some(RETRY_MIN));
        // Another refusal (an earlier SUBSCRIBE's answer) before the retry went out.
        assert_eq!(s.handle_suback(now + ms(100), &[NO, NO, OK]), None);
        // The retry's own answer, refused again: the next, longer wait.
        assert_eq!(s.handle_suback(now + ms(260), &[NO, OK, OK]), Some(ms(500)));
    }

    #[test]
    fn success_and_reconnects_reset_the_wait() {
        let mut s = Subscriptions::default();
        let mut now = Instant::now();
        for _ in 0..3 {
            now += s.handle_suback(now, &[NO, OK, OK]).expect("a retry");
        }
        assert_eq!(s.handle_suback(now, &[OK, OK, OK]), None);
        assert_eq!(s.handle_suback(now + ms(1), &[NO, OK, OK]), Some(RETRY_MIN));

        let later = now + ms(10);
        assert_eq!(
            s.handle_suback(later, &[NO, OK, OK]),
            None,
            "one is scheduled"
        );
        s.handle_connack();
        assert_eq!(
            s.handle_suback(later, &[NO, OK, OK]),
            Some(RETRY_MIN),
            "the new connection's refusal is retried at once, not behind the old schedule"
        );
    }

    #[test]
    fn refused_names_the_failed_filters() {
        let filters = ["a/+/+", "a/+/set", "a/infos"].map(String::from);
        assert_eq!(refused(&filters, &[OK, NO, NO]), ["a/+/set", "a/infos"]);
        assert!(refused(&filters, &[OK, OK, OK]).is_empty());
    }
}
