//! The CRDs as YAML, generated from the types.
//!
//! `cargo run -p cairn-crds --bin crdgen` prints them;
//! `cargo run -p cairn-crds --bin crdgen -- --write` writes
//! `crds/cairn.dev_crds.yaml` and the Helm chart's copy
//! `charts/cairn/crds/cairn.dev_crds.yaml` (tests fail when either is stale).

fn main() {
    let yaml = cairn_crds::crds_yaml();
    if std::env::args().nth(1).as_deref() == Some("--write") {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for path in [
            "crds/cairn.dev_crds.yaml",
            "charts/cairn/crds/cairn.dev_crds.yaml",
        ] {
            if let Err(e) = std::fs::write(root.join(path), &yaml) {
                eprintln!("crdgen: cannot write {path}: {e}");
                std::process::exit(1);
            }
            eprintln!("crdgen: wrote {path}");
        }
    } else {
        print!("{yaml}");
    }
}
