//! Any topic and payload through the wire decoder: a rejection is fine, a panic is a bug.
#![no_main]

use coordinosaur::protocol::{decode, encode, DecodeLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: (&str, &[u8])| {
    let (topic, payload) = data;
    // Most inputs should at least get the prefix right to reach the payload decoders.
    let topic = format!("coordinosaur/{topic}");
    if let Err(rejection) = decode("coordinosaur", &topic, payload, &DecodeLimits::default()) {
        if let Some(out) = rejection.to_output() {
            let _ = encode("coordinosaur", &out);
        }
    }
});
