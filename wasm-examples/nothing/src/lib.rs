//! `nothing`: the do-nothing program (Laminar's `DoNothing` contract), the baseline of a
//! programmable topic's cost. Every message is accepted and becomes its own event, key and
//! value unchanged; it keeps no state.

use serde::{Deserialize, Serialize};
use weir_topic_sdk::{Message, Output, Program, Reject};

#[derive(Default, Serialize, Deserialize)]
struct Nothing;

impl Program for Nothing {
    fn on_message(&mut self, msg: &Message<'_>, out: &mut Output<'_>) -> Result<(), Reject> {
        out.put(msg.key, msg.value)
    }
}

weir_topic_sdk::export_program!(Nothing);
