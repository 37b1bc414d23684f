//! `counter`: a running count per key. Every message is accepted and produces one event: its
//! key, with the number of messages seen so far for that key (decimal text) as the value.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use weir_topic_sdk::{Message, Output, Program, Reject};

// A BTreeMap, not a HashMap: its order (and so the snapshot's bytes) does not depend on a
// hasher's seed.
#[derive(Default, Serialize, Deserialize)]
struct Counter {
    counts: BTreeMap<Vec<u8>, u64>,
}

impl Program for Counter {
    fn on_message(&mut self, msg: &Message<'_>, out: &mut Output<'_>) -> Result<(), Reject> {
        let count = self.counts.entry(msg.key.to_vec()).or_default();
        *count += 1;
        out.put(msg.key, count.to_string().as_bytes())
    }
}

weir_topic_sdk::export_program!(Counter);
