//! The CRDs' validation rules, evaluated client-side with kube's CEL
//! implementation against the generated schemas: the example manifests pass,
//! and bad specs fail with the readable message a user would see from
//! `kubectl apply`.

use cairn_crds::{Backup, BackupRepository, BackupSchedule, Restore};
use kube::core::cel::{validate_cel, validate_cel_update};
use kube::CustomResourceExt;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn example<T: DeserializeOwned>(name: &str) -> T {
    let path = format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn from_yaml<T: DeserializeOwned>(text: &str) -> T {
    serde_yaml::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn rejected<T: CustomResourceExt + Serialize>(obj: &T, message: &str) {
    match validate_cel(obj) {
        Ok(()) => panic!("accepted, expected {message:?}"),
        Err(e) => assert!(e.to_string().contains(message), "{e}"),
    }
}

#[test]
fn examples_are_valid() {
    validate_cel(&example::<BackupRepository>("repository-s3.yaml")).unwrap();
    validate_cel(&example::<BackupSchedule>("schedule.yaml")).unwrap();
    validate_cel(&example::<Backup>("backup.yaml")).unwrap();
    validate_cel(&example::<Restore>("restore.yaml")).unwrap();
}

#[test]
fn repository_needs_exactly_one_storage() {
    let both: BackupRepository = from_yaml(
        r#"
apiVersion: cairn.dev/v1alpha1
kind: BackupRepository
metadata: {name: r}
spec:
  s3: {bucket: abc}
  volume: {claimName: repo}
  passwordSecretRef: {name: p, key: password}
"#,
    );
    rejected(&both, "set exactly one of s3 and volume");
    let none: BackupRepository = from_yaml(
        r#"
apiVersion: cairn.dev/v1alpha1
kind: BackupRepository
metadata: {name: r}
spec:
  passwordSecretRef: {name: p, key: password}
"#,
    );
    rejected(&none, "set exactly one of s3 and volume");
    let mut bad_endpoint: BackupRepository = example("repository-s3.yaml");
    bad_endpoint.spec.s3.as_mut().unwrap().endpoint = Some("s3.example.net".into());
    rejected(&bad_endpoint, "endpoint must be an http:// or https:// URL");
}

#[test]
fn schedule_rules() {
    let mut s: BackupSchedule = example("schedule.yaml");
    s.spec.selector = None;
    rejected(&s, "name PVCs in pvcs or select them with selector");
    s.spec.pvcs = vec!["data".into()];
    validate_cel(&s).unwrap();

    s.spec.jitter = Some("ten minutes".into());
    rejected(&s, "jitter must look like 30s, 10m or 1h30m");
    s.spec.jitter = Some("1h30m".into());
    validate_cel(&s).unwrap();

    s.spec.retention = Some(Default::default());
    rejected(&s, "a retention policy needs at least one keep rule");
    s.spec.retention = Some(cairn_crds::RetentionPolicy {
        keep_within: Some("a week".into()),
        ..Default::default()
    });
    rejected(&s, "keepWithin must look like 7d, 1y6m or 12h");
    s.spec.retention = Some(cairn_crds::RetentionPolicy {
        keep_tags: vec!["important".into()],
        ..Default::default()
    });
    validate_cel(&s).unwrap();
}

#[test]
fn restore_rules() {
    let mut r: Restore = example("restore.yaml");
    r.spec.snapshot.id = Some("0123abcd".into());
    rejected(&r, "give either id, or latestOf and/or tags");
    r.spec.snapshot.latest_of = None;
    validate_cel(&r).unwrap();
    r.spec.snapshot.id = Some("latest".into());
    rejected(&r, "id must be 8 to 64 hex digits");

    let mut r: Restore = example("restore.yaml");
    r.spec.target.pvc = Some("existing".into());
    rejected(&r, "set exactly one of pvc and newPvc");
}

#[test]
fn backup_and_restore_specs_are_immutable() {
    let old: Backup = example("backup.yaml");
    let mut new = old.clone();
    validate_cel_update(&new, &old).unwrap();
    new.spec.pvcs.push("other".into());
    let e = validate_cel_update(&new, &old).unwrap_err();
    assert!(
        e.to_string().contains("a Backup's spec cannot change"),
        "{e}"
    );
}

#[test]
fn maintenance_rules() {
    let mut r: BackupRepository = example("repository-s3.yaml");
    r.spec.maintenance = Some(cairn_crds::Maintenance {
        prune_schedule: "@weekly".into(),
        grace: Some("2d".into()),
        max_unused: Some("2.5%".into()),
    });
    validate_cel(&r).unwrap();
    r.spec.maintenance.as_mut().unwrap().max_unused = Some("lots".into());
    rejected(&r, "maxUnused must look like 5% or be unlimited");
    r.spec.maintenance.as_mut().unwrap().max_unused = Some("unlimited".into());
    r.spec.maintenance.as_mut().unwrap().grace = Some("a day".into());
    rejected(&r, "grace must look like 24h, 90m or 2d");
}
