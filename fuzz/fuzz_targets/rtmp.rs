//! libFuzzer entry for `system_tests::fuzz::rtmp`; see that module.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: {
        // libfuzzer-sys aborts on every panic, even a caught one. rml_rtmp
        // panics on some malformed messages (see docs/SECURITY.md); the
        // ingest node contains those and closes the connection, which the
        // target checks. Only those are let through; any other panic still
        // aborts and is reported as a crash.
        let abort_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let trace = std::backtrace::Backtrace::force_capture().to_string();
            if !trace.contains("rml_rtmp::") || !trace.contains("catch_unwind") {
                abort_hook(info);
            }
        }));
    },
    |data: &[u8]| system_tests::fuzz::rtmp(data)
);
