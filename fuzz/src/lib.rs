//! Fuzz targets for weir's decoders of untrusted bytes (see README.md). Each target's logic is
//! a plain function here, called by the `fuzz_targets/*.rs` libFuzzer entry points.

pub mod alloc_guard;
pub mod frame;
pub mod input;
pub mod storage;
