//! `dedupe`: drops a message whose key was seen in the last `window` messages (config, default
//! 100); passes the others through. A dropped message is accepted with no event.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use weir_topic_sdk::{Config, Message, Output, Program, Reject};

#[derive(Default, Serialize, Deserialize)]
struct Dedupe {
    /// Keys of the last `window` messages, oldest first.
    recent: VecDeque<Vec<u8>>,
    /// How many times each key occurs in `recent`.
    occurrences: BTreeMap<Vec<u8>, u32>,
    #[serde(skip)]
    window: usize,
}

impl Program for Dedupe {
    fn configure(&mut self, config: &Config) -> Result<(), String> {
        self.window = config.parse_or("window", 100)?;
        if self.window == 0 {
            return Err("config window must be at least 1".into());
        }
        // A smaller window after an upgrade: forget the oldest keys.
        while self.recent.len() > self.window {
            self.forget_oldest();
        }
        Ok(())
    }

    fn on_message(&mut self, msg: &Message<'_>, out: &mut Output<'_>) -> Result<(), Reject> {
        let seen = self.occurrences.contains_key(msg.key);
        if self.recent.len() == self.window {
            self.forget_oldest();
        }
        self.recent.push_back(msg.key.to_vec());
        *self.occurrences.entry(msg.key.to_vec()).or_default() += 1;
        if seen {
            return Ok(());
        }
        out.put(msg.key, msg.value)
    }
}

impl Dedupe {
    fn forget_oldest(&mut self) {
        if let Some(key) = self.recent.pop_front()
            && let Some(count) = self.occurrences.get_mut(&key)
        {
            *count -= 1;
            if *count == 0 {
                self.occurrences.remove(&key);
            }
        }
    }
}

weir_topic_sdk::export_program!(Dedupe);
