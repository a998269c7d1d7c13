//! Pods on a real kubelet: on the local harness (`scripts/e2e local`, which
//! starts containerd and the kubelet with `scripts/k8s/up --kubelet`) and on
//! any cluster in KUBECONFIG. A restricted pod runs as a non-root uid and its
//! log is read through the apiserver; a Job's pod completes, the real Job
//! controller marks the Job Complete, and the termination message the
//! container wrote (which the controller reads as the agent's result) is in
//! the pod's status.
//!
//! `#[ignore]`d in the normal suite; `scripts/e2e local` runs them.

use std::time::{Duration, Instant};

use cairn_e2e::{cluster, run_pod, shell_pod, wait_for, TestNamespace};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ListParams, PostParams};
use kube::Api;
use serde_json::json;

/// With `CAIRN_E2E_REQUIRE=1`, a cluster without a Ready node is a failure.
async fn ready_node(client: &kube::Client) -> bool {
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("list nodes");
    let ready = nodes.items.iter().any(|n| {
        n.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    });
    if !ready {
        assert!(
            !std::env::var("CAIRN_E2E_REQUIRE").is_ok_and(|v| v == "1"),
            "e2e: CAIRN_E2E_REQUIRE=1 but no node is Ready ({} nodes)",
            nodes.items.len()
        );
        eprintln!("e2e: NOT RUN: no Ready node");
    }
    ready
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster with a node (scripts/e2e local)"]
async fn restricted_pod_runs_and_job_completes() {
    let Some(client) = cluster().await else {
        return;
    };
    if !ready_node(&client).await {
        return;
    }
    let start = Instant::now();
    let ns = TestNamespace::create(&client, "node").await;

    // A pod under restricted Pod Security: its uid, a computed checksum.
    let log = run_pod(
        &client,
        &ns.name,
        shell_pod("hello", "id -u; seq 1 1000 | sha256sum | cut -c1-16", &[]),
    )
    .await;
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        ["65532", "67d4ff71d43921d5"],
        "log of pod hello"
    );
    eprintln!("e2e: restricted pod ran as 65532, log read through the apiserver");

    // A Job: the real Job controller creates the pod and completes the Job;
    // the container's termination message reaches the pod's status.
    let mut pod = shell_pod(
        "unused",
        "printf '{\"ok\":true}' > /dev/termination-log",
        &[],
    );
    let spec = pod["spec"].take();
    let job: Job = serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "once"},
        "spec": {"backoffLimit": 0, "template": {"spec": spec}}
    }))
    .expect("job object");
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    jobs.create(&PostParams::default(), &job)
        .await
        .expect("create job");
    let done = wait_for(&jobs, "once", "Complete", Duration::from_secs(120), |j| {
        j.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
            })
    })
    .await;
    let st = done.status.expect("job status");
    assert_eq!(st.succeeded, Some(1), "{st:?}");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let list = pods
        .list(&ListParams::default().labels("job-name=once"))
        .await
        .expect("list pods");
    let message = list
        .items
        .iter()
        .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref()?.first())
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.message.clone())
        .next();
    assert_eq!(message.as_deref(), Some("{\"ok\":true}"), "{list:?}");
    eprintln!("e2e: Job completed, termination message in the pod status");
    ns.delete().await;
    eprintln!(
        "e2e: restricted_pod_runs_and_job_completes took {:.1}s",
        start.elapsed().as_secs_f64()
    );
}

/// The agent image the local cluster runs (packaged by
/// scripts/k8s/agent-image, no docker here) has what the Dockerfile's
/// `agent` target gives users: its user, its entrypoint, the binary where
/// the entrypoint says, and CA certificates (distroless ships them).
#[test]
#[ignore = "needs the agent image archive of the local cluster (scripts/e2e local)"]
fn the_agent_image_matches_the_dockerfile() {
    let Some(state) = std::env::var_os("CAIRN_K8S_STATE") else {
        eprintln!("e2e: NOT RUN: no CAIRN_K8S_STATE (the local cluster's agent image)");
        return;
    };
    let archive = std::path::Path::new(&state).join("agent-image.tar");
    if !archive.is_file() {
        assert_ne!(
            std::env::var("CAIRN_E2E_REQUIRE").as_deref(),
            Ok("1"),
            "no {}",
            archive.display()
        );
        eprintln!("e2e: NOT RUN: no {}", archive.display());
        return;
    }
    // The Dockerfile's agent stage.
    let dockerfile = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Dockerfile"))
        .expect("Dockerfile");
    let stage: Vec<&str> = dockerfile
        .lines()
        .skip_while(|l| !(l.starts_with("FROM ") && l.ends_with(" AS agent")))
        .skip(1)
        .take_while(|l| !l.starts_with("FROM "))
        .collect();
    let directive = |d: &str| {
        stage
            .iter()
            .find_map(|l| l.strip_prefix(d))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {d} in the Dockerfile's agent stage"))
            .to_string()
    };
    let user = directive("USER ");
    let entrypoint: Vec<String> =
        serde_json::from_str(&directive("ENTRYPOINT ")).expect("ENTRYPOINT");
    let copied = directive("COPY ");
    let binary = copied
        .split_whitespace()
        .last()
        .expect("COPY destination")
        .to_string();
    assert_eq!(
        entrypoint,
        vec![binary.clone()],
        "the entrypoint is the copied binary"
    );

    // The image: index -> manifest -> config and layer.
    let dir = std::env::temp_dir().join(format!("cairn-image-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ok = std::process::Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&dir)
        .status()
        .expect("tar")
        .success();
    assert!(ok, "unpack {}", archive.display());
    let json = |p: std::path::PathBuf| -> serde_json::Value {
        serde_json::from_slice(
            &std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
        )
        .expect("JSON")
    };
    let blob = |digest: &serde_json::Value| {
        let d = digest.as_str().expect("digest");
        dir.join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let index = json(dir.join("index.json"));
    let manifest = json(blob(&index["manifests"][0]["digest"]));
    let config = json(blob(&manifest["config"]["digest"]));
    assert_eq!(config["config"]["User"], json!(user));
    assert_eq!(config["config"]["Entrypoint"], json!(entrypoint));
    let layer = blob(&manifest["layers"][0]["digest"]);
    let listing = std::process::Command::new("tar")
        .arg("-tzvf")
        .arg(&layer)
        .output()
        .expect("tar -t");
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    let _ = std::fs::remove_dir_all(&dir);
    let entry = |path: &str| {
        listing
            .lines()
            .find(|l| l.ends_with(&format!(" {}", path.trim_start_matches('/'))))
            .unwrap_or_else(|| panic!("{path} not in the image:\n{listing}"))
            .to_string()
    };
    assert!(
        entry(&binary).starts_with("-rwxr-xr-x"),
        "{}",
        entry(&binary)
    );
    entry("/etc/ssl/certs/ca-certificates.crt");
    entry("/etc/passwd");
    eprintln!("e2e: agent image: user {user}, entrypoint {entrypoint:?}, {binary} and CA certificates present");
}
