//! `window-sum`: tumbling-window sums per key by the leader-assigned timestamp. Values are
//! decimal integers (others are rejected). When a message opens a later window, the closed
//! window's sums are emitted, one event per key, as
//! `{"window_start_ms":W,"window_ms":N,"sum":S}`. Config: `window_ms` (default 1000).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use weir_topic_sdk::{Config, Message, Output, Program, Reject};

#[derive(Default, Serialize, Deserialize)]
struct WindowSum {
    /// Start of the open window, if a message opened one.
    window_start_ms: Option<u64>,
    sums: BTreeMap<Vec<u8>, i64>,
    #[serde(skip)]
    window_ms: u64,
}

impl Program for WindowSum {
    fn configure(&mut self, config: &Config) -> Result<(), String> {
        self.window_ms = config.parse_or("window_ms", 1000)?;
        if self.window_ms == 0 {
            return Err("config window_ms must be at least 1".into());
        }
        Ok(())
    }

    fn on_message(&mut self, msg: &Message<'_>, out: &mut Output<'_>) -> Result<(), Reject> {
        let value: i64 = std::str::from_utf8(msg.value)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .ok_or_else(|| Reject::new("value is not a decimal integer"))?;
        let start = msg.timestamp_ms - msg.timestamp_ms % self.window_ms;
        match self.window_start_ms {
            Some(open) if open == start => {}
            Some(open) => {
                // Timestamps never decrease along the log, so `start` is a later window.
                for (key, sum) in std::mem::take(&mut self.sums) {
                    let event = format!(
                        r#"{{"window_start_ms":{open},"window_ms":{},"sum":{sum}}}"#,
                        self.window_ms
                    );
                    out.put(&key, event.as_bytes())?;
                }
                self.window_start_ms = Some(start);
            }
            None => self.window_start_ms = Some(start),
        }
        let sum = self.sums.entry(msg.key.to_vec()).or_default();
        *sum = sum
            .checked_add(value)
            .ok_or_else(|| Reject::new("sum would overflow"))?;
        Ok(())
    }
}

weir_topic_sdk::export_program!(WindowSum);
