//! `validator`: lets through values that are valid JSON of at most `max_bytes` bytes (config,
//! default 1024) and rejects the others, with a reason the producer receives. Stateless.

use serde::{Deserialize, Serialize};
use weir_topic_sdk::{Config, Message, Output, Program, Reject};

#[derive(Default, Serialize, Deserialize)]
struct Validator {
    #[serde(skip)]
    max_bytes: usize,
}

impl Program for Validator {
    fn configure(&mut self, config: &Config) -> Result<(), String> {
        self.max_bytes = config.parse_or("max_bytes", 1024)?;
        Ok(())
    }

    fn on_message(&mut self, msg: &Message<'_>, out: &mut Output<'_>) -> Result<(), Reject> {
        if msg.value.len() > self.max_bytes {
            return Err(Reject::new(format!(
                "value of {} bytes exceeds max_bytes={}",
                msg.value.len(),
                self.max_bytes
            )));
        }
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(msg.value) {
            return Err(Reject::new(format!("value is not valid JSON: {e}")));
        }
        out.put(msg.key, msg.value)
    }
}

weir_topic_sdk::export_program!(Validator);
