//! Keeps rumqttd's report of an ordinary disconnect out of the daemon's log.
//!
//! When a client sends DISCONNECT and closes its socket (as `mosquitto_pub` and `coordinosaur
//! run` do), rumqttd 0.20's router drops the connection, and its link task for that socket races
//! it. Whichever notices first, rumqttd logs an `error`:
//! - the link saw the closed socket first and sends the router a second disconnect, which the
//!   router logs as "no-connection id N is already gone" (`src/router/routing.rs`, line 416,
//!   `handle_disconnection`; the comment above it says it is the double disconnect);
//! - the router dropped the connection first, and the link logs `router-drop` with
//!   `error=Recv(Disconnected)`: its channel from the router closed (`src/server/broker.rs`);
//! - the client published just before it left, and the router handled the disconnect before
//!   the notice of that data: "no-connection id N is already gone" from line 539
//!   (`handle_device_payload`). Seen under load, 1 full-suite run in 3; the data was already
//!   routed or belongs to a client that is gone.
//!
//! None is an error, and `rumqttd=warn` cannot hide them without hiding real errors too.
//! [`BenignDisconnects`] drops exactly these events and nothing else:
//! - the first and third by target, level, line and message: the same message from any other
//!   line (436, a reason code for a connection already gone) stays visible;
//! - the second by target, level, message and the `error` field: a `router-drop` for any other
//!   cause (the router itself gone) stays visible. When the router drops a client on purpose
//!   (duplicate client id, bad publish, bad subscription) it logs that cause itself, so the
//!   link's `Recv(Disconnected)` adds nothing.
//!
//! Should a rumqttd upgrade move or reword these events, they simply show again (nothing else
//! is hidden), and `tests/cli.rs` `clean_disconnects_log_no_error_with_the_shipped_config`
//! fails and points here.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata};
use tracing_subscriber::layer::{Context, Filter};

/// A per-layer filter that drops rumqttd's `error` events for an ordinary client disconnect and
/// lets every other event through; see the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct BenignDisconnects;

/// One benign rumqttd event.
struct Benign {
    /// Its target (rumqttd's module path).
    target: &'static str,
    /// Its line, when another callsite with the same target and message is not benign.
    line: Option<u32>,
    /// Whether the formatted message is this event's.
    message: fn(&str) -> bool,
    /// A field whose `Debug` text must be this.
    field: Option<(&'static str, &'static str)>,
}

/// The benign events of rumqttd 0.20, all logged at `error`.
const BENIGN: [Benign; 3] = [
    Benign {
        target: "rumqttd::router::routing",
        line: Some(416),
        message: is_already_gone,
        field: None,
    },
    Benign {
        target: "rumqttd::router::routing",
        line: Some(539),
        message: is_already_gone,
        field: None,
    },
    Benign {
        target: "rumqttd::server::broker",
        line: None,
        message: is_router_drop,
        field: Some(("error", "Recv(Disconnected)")),
    },
];

/// `no-connection id N is already gone`.
fn is_already_gone(message: &str) -> bool {
    message
        .strip_prefix("no-connection id ")
        .and_then(|rest| rest.strip_suffix(" is already gone"))
        .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
}

fn is_router_drop(message: &str) -> bool {
    message == "router-drop"
}

impl Benign {
    /// Whether `meta` is this event's callsite (checked once per callsite, then cached).
    fn is_callsite(&self, meta: &Metadata<'_>) -> bool {
        meta.is_event()
            && *meta.level() == Level::ERROR
            && meta.target() == self.target
            && self.line.is_none_or(|line| meta.line() == Some(line))
    }

    /// Whether `event`, from this callsite, carries this event's message and field.
    fn matches(&self, event: &Event<'_>) -> bool {
        let message = field_text(event, "message");
        message.as_deref().is_some_and(self.message)
            && self
                .field
                .is_none_or(|(name, text)| field_text(event, name).as_deref() == Some(text))
    }
}

impl<S> Filter<S> for BenignDisconnects {
    fn enabled(&self, _meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        // Only the benign callsites need a look at each event's fields; every other callsite
        // is always enabled here and costs nothing per event.
        if BENIGN.iter().any(|b| b.is_callsite(meta)) {
            Interest::sometimes()
        } else {
            Interest::always()
        }
    }

    fn event_enabled(&self, event: &Event<'_>, _cx: &Context<'_, S>) -> bool {
        let meta = event.metadata();
        !BENIGN
            .iter()
            .any(|b| b.is_callsite(meta) && b.matches(event))
    }
}

/// The text of `event`'s field `name`: a string as is, anything else (a message's
/// `format_args!` included) through `Debug`.
fn field_text(event: &Event<'_>, name: &str) -> Option<String> {
    struct Text<'a> {
        name: &'a str,
        text: Option<String>,
    }
    impl Visit for Text<'_> {
        fn record_str(&mut self, field: &Field, value: &str) {
            if field.name() == self.name {
                self.text = Some(value.to_owned());
            }
        }
        fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
            if field.name() == self.name {
                self.text = Some(format!("{value:?}"));
            }
        }
    }
    let mut visitor = Text { name, text: None };
    event.record(&mut visitor);
    visitor.text
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::Layer as _;

    use super::*;

    /// Stand-ins with the `Debug` text of rumqttd's `LinkError` values.
    #[derive(Debug)]
    #[allow(dead_code, reason = "only the Debug text is used")]
    enum LinkError {
        Recv(RecvError),
        Send(RecvError),
    }
    #[derive(Debug)]
    enum RecvError {
        Disconnected,
    }

    /// Everything logged while `f` runs, through a fmt layer behind the filter.
    fn logged(f: impl FnOnce()) -> String {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&out);
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || Sink(Arc::clone(&sink)))
            .with_filter(BenignDisconnects);
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), f);
        let bytes = out.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn router_drop_is_dropped_only_for_a_closed_router_channel() {
        let out = logged(|| {
            let e = LinkError::Recv(RecvError::Disconnected);
            tracing::error!(target: "rumqttd::server::broker", error = ?e, "router-drop");
        });
        assert_eq!(out, "");
        let out = logged(|| {
            let e = LinkError::Send(RecvError::Disconnected);
            tracing::error!(target: "rumqttd::server::broker", error = ?e, "router-drop");
            let e = LinkError::Recv(RecvError::Disconnected);
            tracing::error!(target: "rumqttd::server::broker", error = ?e, "disconnected");
            tracing::error!(target: "rumqttd::other", error = ?e, "router-drop");
        });
        assert_eq!(out.lines().count(), 3, "{out}");
    }

    #[test]
    fn already_gone_elsewhere_than_handle_disconnection_stays() {
        // Same target and message as rumqttd's line 416, but from another line: kept.
        let out = logged(|| {
            tracing::error!(target: "rumqttd::router::routing", "no-connection id {} is already gone", 1);
        });
        assert!(out.contains("no-connection id 1 is already gone"), "{out}");
    }

    #[test]
    fn the_already_gone_message_is_recognised_exactly() {
        assert!(is_already_gone("no-connection id 12 is already gone"));
        assert!(!is_already_gone("no-connection id  is already gone"));
        assert!(!is_already_gone("no-connection id 1 is already gone!"));
        assert!(!is_already_gone("no-connection id x is already gone"));
    }
}
