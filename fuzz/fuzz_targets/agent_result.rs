#![no_main]
// The controller reads the agent's result from a pod's termination message,
// which the agent's container (a tenant's volume, a crafted repository) can
// influence. Whatever it says parses into a result without panicking, and a
// result that parsed as ours reads back the same once written again.
use cairn_protocol::AgentResult;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let r = AgentResult::parse(s);
        if r.command.is_empty() {
            assert!(!r.ok && r.exit_code == 1);
            return;
        }
        let mut again = AgentResult::parse(&r.to_json());
        // serde_json's default float parsing may differ in the last bit.
        let (a, b) = (r.duration_seconds, again.duration_seconds.take());
        assert_eq!(a.is_some(), b.is_some());
        if let (Some(a), Some(b)) = (a, b) {
            assert!((a - b).abs() <= a.abs() * 1e-12, "{a} {b}");
        }
        assert_eq!(
            again,
            AgentResult {
                duration_seconds: None,
                ..r
            }
        );
    }
});
