#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weir_fuzz::storage::run_recovery(data));
