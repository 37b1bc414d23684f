//! `hostile`: a test fixture, not an example to copy. Counts accepted messages like `counter`
//! (under the key `count`), but some values make it misbehave:
//! - `loop`: an infinite loop (runs out of fuel),
//! - `grow`: allocates until memory runs out (hits the memory limit, then aborts),
//! - `recurse`: unbounded recursion (overflows the stack),
//! - `panic`: panics (a trap).
//!
//! The host must reject exactly those messages, on every replica alike, and keep the count
//! from before each of them.

use serde::{Deserialize, Serialize};
use weir_topic_sdk::{Message, Output, Program, Reject};

#[derive(Default, Serialize, Deserialize)]
struct Hostile {
    count: u64,
    #[serde(skip)]
    hoard: Vec<Vec<u8>>,
}

#[allow(unconditional_recursion)] // the point of the fixture
fn recurse(depth: u64) -> u64 {
    // black_box keeps the recursion from being turned into a loop.
    let next = std::hint::black_box(depth + 1);
    recurse(next) + std::hint::black_box(1)
}

impl Program for Hostile {
    fn on_message(&mut self, msg: &Message<'_>, out: &mut Output<'_>) -> Result<(), Reject> {
        // Changed before misbehaving: the host must roll this back.
        self.count += 1;
        match msg.value {
            b"loop" => loop {
                std::hint::black_box(self.count);
            },
            // Reserved, not filled: it is the memory limit that must stop this, not fuel.
            b"grow" => loop {
                let mut block = Vec::<u8>::with_capacity(8 * 1024 * 1024);
                block.push(1);
                self.hoard.push(block);
            },
            b"recurse" => {
                self.count += recurse(0);
            }
            b"panic" => panic!("asked to panic"),
            _ => {}
        }
        out.put(b"count", self.count.to_string().as_bytes())
    }
}

weir_topic_sdk::export_program!(Hostile);
