//! `counter-v2`: a test fixture for upgrades. It reads `counter`'s state (the same serde shape)
//! and carries on counting, but its events are JSON: `{"key":"...","count":N}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use weir_topic_sdk::{Message, Output, Program, Reject};

#[derive(Default, Serialize, Deserialize)]
struct CounterV2 {
    counts: BTreeMap<Vec<u8>, u64>,
}

impl Program for CounterV2 {
    fn on_message(&mut self, msg: &Message<'_>, out: &mut Output<'_>) -> Result<(), Reject> {
        let total = {
            let entry = self.counts.entry(msg.key.to_vec()).or_insert(0);
            *entry += 1;
            *entry
        };
        let key = String::from_utf8_lossy(msg.key);
        let event = format!(r#"{{"key":{key:?},"count":{total}}}"#);
        out.put(msg.key, event.as_bytes())
    }
}

weir_topic_sdk::export_program!(CounterV2);
