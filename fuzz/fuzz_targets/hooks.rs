//! libFuzzer entry for `system_tests::fuzz::hooks`; see that module.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| system_tests::fuzz::hooks(data));
