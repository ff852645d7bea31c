//! coordinosaur: coordinates jobs over MQTT.
#[cfg(feature = "embedded-broker")]
pub mod broker;
pub mod engine;
