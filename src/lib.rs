//! coordinosaur: coordinates jobs over MQTT.
pub mod config;
pub mod engine;
pub mod protocol;
