//! Conditional writes: probed once per process and used only where the store
//! honours them (moto does, Garage 2.5 does not). In its own test binary
//! because it sets process environment variables for the in-process backend.

mod common;

use common::{garage, moto};

/// Write the same object name twice through the S3 backend.
fn write_twice(location: &str, vars: &[(String, String)]) -> (bool, cairn::Result<()>) {
    for (k, v) in vars {
        std::env::set_var(k, v);
    }
    let backend =
        cairn::backend::S3Backend::new(cairn::backend::S3Config::parse(location).unwrap()).unwrap();
    use cairn::backend::{Backend, FileKind};
    let name = "00".repeat(32);
    backend
        .write(FileKind::Index, &name, b"first".to_vec())
        .unwrap();
    let second = backend.write(FileKind::Index, &name, b"second".to_vec());
    (backend.conditional_writes(), second)
}

#[test]
fn conditional_writes_are_probed_and_used_where_honoured() {
    // moto honours If-None-Match: the probe finds it and a second write of a name is refused.
    if let Some(m) = moto::moto() {
        assert_eq!(moto::http(m.port, "PUT", "/cond-bucket"), Some(200));
        let vars = vec![
            ("AWS_ACCESS_KEY_ID".to_string(), "testing".to_string()),
            ("AWS_SECRET_ACCESS_KEY".to_string(), "testing".to_string()),
            ("AWS_REGION".to_string(), "us-east-1".to_string()),
            ("AWS_EC2_METADATA_DISABLED".to_string(), "true".to_string()),
        ];
        let (probed, second) = write_twice(&format!("s3:{}/cond-bucket/p", m.endpoint), &vars);
        assert!(
            probed,
            "moto honours If-None-Match but the probe did not see it"
        );
        let err = second
            .expect_err("second write of the same name must be refused")
            .to_string();
        assert!(err.contains("already exists"), "{err}");
    }
    // Garage ignores it: the probe says so and writes go ahead without the header.
    if let Some(g) = garage::garage() {
        let (probed, second) = write_twice(&g.repo_url("cond"), &g.env());
        assert!(
            !probed,
            "Garage 2.5 ignores If-None-Match; the probe should detect that"
        );
        assert!(second.is_ok());
    }
}
