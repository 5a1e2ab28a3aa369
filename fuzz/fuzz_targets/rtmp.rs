//! libFuzzer entry for `system_tests::fuzz::rtmp`; see that module.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| system_tests::fuzz::rtmp(data));
