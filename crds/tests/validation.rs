//! The CRDs' validation rules, evaluated client-side with kube's CEL
//! implementation against the generated schemas: the example manifests pass,
//! and bad specs fail with the readable message a user would see from
//! `kubectl apply`. The cases live in `cases/mod.rs`, which the real-apiserver
//! tests (`e2e/tests/apiserver.rs`) run against kube-apiserver too.

mod cases;

use cairn_crds::{Backup, BackupRepository, BackupSchedule, Restore};
use kube::core::cel::{validate_cel, validate_cel_update};
use serde_json::Value;

/// Validate `obj` (a whole manifest) as the type its `kind` names.
fn check(obj: &Value) -> Result<(), String> {
    fn typed<T: serde::de::DeserializeOwned>(obj: &Value) -> T {
        serde_json::from_value(obj.clone()).unwrap_or_else(|e| panic!("{e}\n{obj:#}"))
    }
    let r = match obj["kind"].as_str() {
        Some("BackupRepository") => validate_cel(&typed::<BackupRepository>(obj)),
        Some("BackupSchedule") => validate_cel(&typed::<BackupSchedule>(obj)),
        Some("Backup") => validate_cel(&typed::<Backup>(obj)),
        Some("Restore") => validate_cel(&typed::<Restore>(obj)),
        k => panic!("unknown kind {k:?}"),
    };
    r.map_err(|e| e.to_string())
}

fn check_update(new: &Value, old: &Value) -> Result<(), String> {
    fn typed<T: serde::de::DeserializeOwned>(obj: &Value) -> T {
        serde_json::from_value(obj.clone()).unwrap_or_else(|e| panic!("{e}\n{obj:#}"))
    }
    let r = match new["kind"].as_str() {
        Some("Backup") => validate_cel_update(&typed::<Backup>(new), &typed::<Backup>(old)),
        Some("Restore") => validate_cel_update(&typed::<Restore>(new), &typed::<Restore>(old)),
        k => panic!("no update case for kind {k:?}"),
    };
    r.map_err(|e| e.to_string())
}

#[test]
fn examples_are_valid() {
    for (name, obj) in cases::examples() {
        check(&obj).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn valid_variants_are_accepted() {
    for (what, obj) in cases::valid() {
        check(&obj).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
}

#[test]
fn invalid_specs_are_rejected_with_their_message() {
    let cases = cases::invalid();
    assert!(cases.len() >= 13);
    for c in cases {
        match check(&c.object) {
            Ok(()) => panic!("{}: accepted, expected {:?}", c.what, c.message),
            Err(e) => assert!(e.contains(c.message), "{}: {e}", c.what),
        }
    }
}

#[test]
fn backup_and_restore_specs_are_immutable() {
    for c in cases::invalid_updates() {
        check_update(&c.old, &c.old).unwrap_or_else(|e| panic!("{} (unchanged): {e}", c.what));
        match check_update(&c.new, &c.old) {
            Ok(()) => panic!("{}: accepted, expected {:?}", c.what, c.message),
            Err(e) => assert!(e.contains(c.message), "{}: {e}", c.what),
        }
    }
}

#[test]
fn duration_rules_accept_exactly_what_the_agent_and_controller_parse() {
    use cairn_protocol::duration::{parse_calendar, parse_fixed};
    let schedule = cases::valid()
        .into_iter()
        .find(|(what, _)| *what == "schedule naming PVCs instead of a selector")
        .map(|(_, v)| v)
        .expect("the case exists");
    let repo = cases::examples()
        .into_iter()
        .find(|(n, _)| *n == "repository-s3.yaml")
        .map(|(_, v)| v)
        .expect("the example exists");
    for &d in cases::DURATIONS {
        let mut jitter = schedule.clone();
        jitter["spec"]["jitter"] = d.into();
        let mut within = schedule.clone();
        within["spec"]["retention"] = serde_json::json!({ "keepWithin": d });
        let mut grace = repo.clone();
        grace["spec"]["maintenance"] = serde_json::json!({ "pruneSchedule": "@daily", "grace": d });
        for (field, obj, parsed) in [
            (
                "jitter",
                jitter,
                parse_fixed(d).map(|_| ()).map_err(|e| e.to_string()),
            ),
            (
                "keepWithin",
                within,
                parse_calendar(d).map(|_| ()).map_err(|e| e.to_string()),
            ),
            (
                "grace",
                grace,
                parse_fixed(d).map(|_| ()).map_err(|e| e.to_string()),
            ),
        ] {
            let cel = check(&obj);
            assert_eq!(
                cel.is_ok(),
                parsed.is_ok(),
                "{field} {d:?}: CEL {cel:?}, parser {parsed:?}"
            );
            // A bare m gets the same advice from both.
            if parsed.as_ref().is_err_and(|e| e.contains("ambiguous")) {
                let cel = cel.unwrap_err();
                assert!(cel.contains(cases::AMBIGUOUS_M), "{field} {d:?}: {cel}");
            }
        }
    }
}

/// The controller checks a stored repository's subPath itself (objects
/// stored before the rule existed are not checked again): its check must
/// say what the rule says, case for case.
#[test]
fn the_controllers_sub_path_check_agrees_with_the_rule() {
    use cairn_crds::{VolumeStorage, SUB_PATH_RULE};
    let volume = |obj: &Value| -> Option<VolumeStorage> {
        let v = obj.pointer("/spec/volume")?;
        Some(serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}")))
    };
    let mut checked = 0;
    for (what, obj) in cases::valid() {
        if let Some(v) = volume(&obj) {
            assert_eq!(v.invalid_sub_path(), None, "{what}");
            checked += 1;
        }
    }
    for c in cases::invalid()
        .into_iter()
        .filter(|c| c.message == SUB_PATH_RULE)
    {
        let v = volume(&c.object).unwrap_or_else(|| panic!("{}: no volume", c.what));
        let got = v.invalid_sub_path();
        assert!(
            got.as_deref().is_some_and(|m| m.contains(SUB_PATH_RULE)),
            "{}: {got:?}",
            c.what
        );
        checked += 1;
    }
    assert!(checked >= 5, "{checked} subPath cases");
}
