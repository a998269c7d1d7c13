#![no_main]
// The controller reads the agent's result from a pod's termination message,
// which the agent's container (a tenant's volume, a crafted repository) can
// influence.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let r = cairn_controller::result::AgentResult::parse(s);
        let _ = r.snapshot_result("pvc");
    }
});
