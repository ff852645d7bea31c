//! coordinosaur: coordinates jobs over MQTT.
pub mod engine;
pub mod protocol;
