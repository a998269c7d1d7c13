//! Cairn's Kubernetes controller binary: leader election, the four watch
//! loops ([`run::controllers`]), and `/healthz`, `/readyz`, `/metrics`.
//!
//! Configuration (environment): `CAIRN_AGENT_IMAGE` (required),
//! `CAIRN_AGENT_PULL_POLICY` (IfNotPresent), `CAIRN_MAX_JOBS_PER_REPOSITORY`
//! (4), `CAIRN_MAX_JOBS_PER_NODE` (2), `CAIRN_WATCH_NAMESPACE` (all
//! namespaces when empty), `CAIRN_HTTP_ADDR` (0.0.0.0:8080), `CAIRN_API_QPS`
//! (20 requests per second to the API server at most), `POD_NAME` and
//! `POD_NAMESPACE` (from the downward API; the Lease lives there).
//!
//! Exit codes: 0 after SIGTERM or Ctrl-C (the Lease released, so a standby
//! takes over at once), 1 when the Lease was lost or could not be renewed
//! in time (the process stops acting before a standby may take over; its
//! Deployment restarts it as a standby), 2 for a configuration error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cairn_controller::context::Context;
use cairn_controller::jobs::JobConfig;
use cairn_controller::leader::{LeaderElector, LeaseConfig};
use cairn_controller::metrics::Metrics;
use cairn_controller::run;
use futures::FutureExt;
use kube::runtime::events::{Recorder, Reporter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

static READY: AtomicBool = AtomicBool::new(false);

/// How long running reconciles may take to finish after SIGTERM before they
/// are dropped and the Lease released (below the Pod's default 30 s
/// termination grace period).
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(20);

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// A minimal HTTP endpoint for probes and Prometheus.
async fn serve_http(addr: String, metrics: Arc<Metrics>) {
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = sock.read(&mut buf).await.unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("/");
            let (code, body) = match path {
                "/healthz" => ("200 OK", "ok\n".to_string()),
                "/readyz" if READY.load(Ordering::Relaxed) => ("200 OK", "ok\n".to_string()),
                "/readyz" => ("503 Service Unavailable", "not ready\n".to_string()),
                "/metrics" => ("200 OK", metrics.render()),
                _ => ("404 Not Found", "not found\n".to_string()),
            };
            let resp = format!(
                "HTTP/1.1 {code}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber_init();
    let Some(image) = std::env::var("CAIRN_AGENT_IMAGE")
        .ok()
        .filter(|v| !v.is_empty())
    else {
        eprintln!(
            "cairn-controller: set CAIRN_AGENT_IMAGE to the agent image (the Helm chart does)"
        );
        std::process::exit(2);
    };
    let metrics = Arc::new(Metrics::default());
    let client = match kube::Config::infer()
        .await
        .map_err(|e| e.to_string())
        .and_then(|c| {
            let qps = env_or("CAIRN_API_QPS", "").parse().unwrap_or(run::API_QPS);
            run::client(
                c,
                concat!("cairn-controller/", env!("CARGO_PKG_VERSION")),
                qps,
                metrics.clone(),
            )
            .map_err(|e| e.to_string())
        }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cairn-controller: cannot reach the Kubernetes API: {e}");
            std::process::exit(1);
        }
    };
    tokio::spawn(serve_http(
        env_or("CAIRN_HTTP_ADDR", "0.0.0.0:8080"),
        metrics.clone(),
    ));
    // Ready once the API is reachable: a standby replica waiting for the Lease
    // is healthy and must not block a rollout.
    READY.store(true, Ordering::Relaxed);

    let identity = env_or("POD_NAME", "cairn-controller-local");
    let lease_ns = env_or("POD_NAMESPACE", "default");
    let shutdown = stop_signal().boxed().shared();
    // Only the Lease holder reconciles.
    let mut elector =
        LeaderElector::new(client.clone(), &lease_ns, &identity, LeaseConfig::default());
    tokio::select! {
        () = elector.acquire() => {}
        () = shutdown.clone() => {
            tracing::info!("stopped while standing by");
            return;
        }
    }
    tracing::info!("{identity} is the leader; starting controllers");

    let ctx = Arc::new(Context {
        client: client.clone(),
        jobs: JobConfig {
            image,
            pull_policy: env_or("CAIRN_AGENT_PULL_POLICY", "IfNotPresent"),
            max_per_repository: env_or("CAIRN_MAX_JOBS_PER_REPOSITORY", "4")
                .parse()
                .unwrap_or(4),
            max_per_node: env_or("CAIRN_MAX_JOBS_PER_NODE", "2").parse().unwrap_or(2),
            privileged_mover_namespaces: env_or("CAIRN_PRIVILEGED_MOVER_NAMESPACES", "")
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect(),
            ..JobConfig::default()
        },
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "cairn-controller".into(),
                instance: Some(identity),
            },
        ),
        metrics,
    });
    let ns = std::env::var("CAIRN_WATCH_NAMESPACE").unwrap_or_default();
    tokio::select! {
        lost = elector.keep() => {
            // Stop acting at once: another replica may take over as soon as
            // the Lease expires, and two must never act together.
            tracing::error!("{lost}; exiting so that only one replica acts");
            std::process::exit(1);
        }
        () = run::controllers(ctx, &ns, false, shutdown.clone()) => {}
        () = async { shutdown.await; tokio::time::sleep(STOP_GRACE).await } => {
            // The reconciles still running are dropped with the controllers.
            tracing::warn!("controllers did not stop within {} s of the signal", STOP_GRACE.as_secs());
        }
    }
    // Graceful stop: the running reconciles finished; hand the Lease over.
    match elector.release().await {
        Ok(()) => tracing::info!("controllers stopped; lease released; exiting"),
        Err(e) => tracing::warn!("controllers stopped; releasing the lease: {e}; exiting"),
    }
}

/// Resolves on SIGTERM (what the kubelet sends) or Ctrl-C.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn tracing_subscriber_init() {
    let filter = std::env::var("CAIRN_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
