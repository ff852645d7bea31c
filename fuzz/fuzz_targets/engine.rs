//! Byte strings as event sequences for the engine (a few channels, small uid pool, time jumps),
//! checking after each step that no channel runs more jobs than allowed when nothing lowered it.
#![no_main]

use coordinosaur::engine::{ChannelOptions, Engine, Input, Millis, QuotaLog, QuotaSpec, Registration, Time};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut engine = Engine::new(Box::new(|name: &str| ChannelOptions {
        max_concurrent_jobs: (name.len() % 3) as u32 + 1,
        timeout_offset: Millis(name.len() as u64 * 7),
        quotas: vec![QuotaSpec { name: "q".into(), interval: Millis(50), limit: 2, log: QuotaLog::Quiet }],
        ..ChannelOptions::default()
    }));
    let mut now = Time(1_000);
    for chunk in data.chunks(3) {
        let [op, a, b] = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let channel = ["a", "bb", "ccc"][(a % 3) as usize].to_owned();
        let uid = format!("u{}", b % 16);
        let input = match op % 7 {
            0 | 1 => Input::Register(Registration { channel, uid, timeout: Millis(u64::from(a) * 10), priority: 0, meta: None, reply: Default::default(), cost: 1, progress: false }),
            2 => Input::Finished { channel, uid, token: None },
            3 => Input::Aborted { channel, uid, token: None },
            4 => Input::Renew { channel, uid, timeout: Millis(u64::from(b)), token: None },
            5 => Input::Infos { channel },
            _ => {
                now = now + Millis(u64::from(a) * 4);
                engine.handle_timeout(now);
                while engine.poll_output().is_some() {}
                continue;
            }
        };
        engine.handle(now, input);
        while engine.poll_output().is_some() {}
        for name in ["a", "bb", "ccc"] {
            if let Some(state) = engine.channel_state(name) {
                assert!(state.running_count <= state.max_concurrent_jobs as usize, "{state:?}");
            }
        }
        if let Some(deadline) = engine.next_deadline() {
            assert!(deadline >= now, "deadline in the past");
        }
    }
});
