//! Print the CRDs as YAML: `cargo run -p cairn-crds --bin crdgen > crds/cairn.dev_crds.yaml`.

fn main() {
    print!("{}", cairn_crds::crds_yaml());
}
