//! Newtypes shared by every weir crate. Units are last in names (`timestamp_ms`).

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! newtype_u64 {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl $name {
            pub const ZERO: Self = Self(0);

            pub const fn get(self) -> u64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl From<u64> for $name {
            fn from(v: u64) -> Self {
                Self(v)
            }
        }
    };
}

newtype_u64!(
    /// Position of an entry in a topic's log: the Raft index of the entry minus one. Strictly
    /// increasing along the log; an offset may hold no message (Raft's leader no-op and membership
    /// entries take offsets too), as Kafka's transaction markers do.
    Offset
);
newtype_u64!(
    /// Milliseconds since the Unix epoch, assigned by the topic leader that sequenced the entry
    /// and stored in the entry, so every replica reports the same value. Readers and programs never consult a clock of their own.
    TimestampMs
);
newtype_u64!(
    /// Chosen by the client, unique per stream; replies carry the id of the request they answer.
    RequestId
);
newtype_u64!(
    /// Identifies one producer session. 0 means "anonymous" (no de-duplication).
    ProducerId
);
newtype_u64!(
    /// A producer's sequence number: +1 for every PUT of that producer.
    Seq
);

impl Offset {
    /// The offset after this one. Panics on overflow, which 2^64 entries never reach.
    pub fn next(self) -> Self {
        Self(self.0.checked_add(1).expect("offset overflow"))
    }
}
