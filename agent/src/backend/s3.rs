//! A repository in an S3-compatible bucket (AWS S3, Garage, MinIO, Ceph RGW,
//! B2, R2, Wasabi, GCS interoperability). Built on aws-sdk-s3 behind the sync
//! [`Backend`] trait: each call runs on this backend's own tokio runtime, so
//! the engine's pipeline threads block on I/O while the runtime drives it.
//!
//! Safety does not depend on conditional writes: every object name is unique
//! (content hash) so plain PUTs never overwrite anything but identical bytes.
//! Where the store honours `If-None-Match: *` (probed once, at the first
//! write), writes use it as an extra guard.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};

use super::{Backend, FileInfo, FileKind};
use crate::error::{Error, Result};

/// Settings of an S3 repository, from its location string and `CAIRN_S3_*` variables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Config {
    /// Endpoint URL (`https://host:port`); `None` for AWS itself.
    pub endpoint: Option<String>,
    /// Bucket name.
    pub bucket: String,
    /// Key prefix inside the bucket (no leading or trailing `/`; may be empty).
    pub prefix: String,
    /// Region; `None` takes it from the AWS environment/profile, else `us-east-1`.
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most self-hosted stores.
    pub path_style: bool,
    /// Extra PEM CA certificates to trust (private endpoints).
    pub ca_bundle: Option<PathBuf>,
    /// Concurrent uploads (and restore downloads).
    pub concurrency: usize,
    /// Objects larger than this are uploaded in parts.
    pub multipart_threshold: usize,
    /// Part size for multipart uploads (at least 5 MiB on AWS).
    pub part_size: usize,
    /// Attempts per request (first try included) before giving up.
    pub max_attempts: u32,
    /// Timeout of one attempt of one request.
    pub attempt_timeout: Duration,
}

fn env_parse<T: std::str::FromStr>(name: &str) -> Result<Option<T>> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .map(Some)
            .map_err(|_| Error::InvalidInput(format!("{name}={v:?} is not a valid value"))),
        _ => Ok(None),
    }
}

impl S3Config {
    /// Parse `s3:https://HOST[:PORT]/BUCKET[/PREFIX]` (any S3-compatible store)
    /// or `s3:BUCKET[/PREFIX]` (AWS), then apply `CAIRN_S3_*` overrides.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a malformed location or setting.
    pub fn parse(location: &str) -> Result<S3Config> {
        let rest = location
            .strip_prefix("s3:")
            .ok_or_else(|| Error::InvalidInput(format!("{location:?} is not an s3: location")))?;
        let (endpoint, path) = if let Some(after) = rest
            .strip_prefix("https://")
            .or_else(|| rest.strip_prefix("http://"))
        {
            let scheme = if rest.starts_with("https://") {
                "https"
            } else {
                "http"
            };
            let (host, path) = after.split_once('/').unwrap_or((after, ""));
            if host.is_empty() {
                return Err(Error::InvalidInput(format!("{location}: missing host")));
            }
            (Some(format!("{scheme}://{host}")), path)
        } else {
            (None, rest.trim_start_matches('/'))
        };
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.is_empty() {
            return Err(Error::InvalidInput(format!(
                "{location}: missing bucket (use s3:https://HOST/BUCKET[/PREFIX] or s3:BUCKET[/PREFIX])"
            )));
        }
        let mut cfg = S3Config {
            path_style: endpoint.is_some(),
            endpoint,
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            region: None,
            ca_bundle: None,
            concurrency: 8,
            multipart_threshold: 64 << 20,
            part_size: 16 << 20,
            max_attempts: 8,
            attempt_timeout: Duration::from_secs(120),
        };
        if let Some(r) = env_parse::<String>("CAIRN_S3_REGION")? {
            cfg.region = Some(r);
        }
        if let Some(v) = env_parse::<bool>("CAIRN_S3_PATH_STYLE")? {
            cfg.path_style = v;
        }
        cfg.ca_bundle =
            env_parse::<PathBuf>("CAIRN_S3_CA_BUNDLE")?.or(env_parse::<PathBuf>("AWS_CA_BUNDLE")?);
        if let Some(v) = env_parse::<usize>("CAIRN_S3_CONCURRENCY")? {
            cfg.concurrency = v.clamp(1, 256);
        }
        if let Some(v) = env_parse::<usize>("CAIRN_S3_MULTIPART_THRESHOLD")? {
            cfg.multipart_threshold = v.max(1);
        }
        if let Some(v) = env_parse::<usize>("CAIRN_S3_PART_SIZE")? {
            cfg.part_size = v.max(1);
        }
        if let Some(v) = env_parse::<u32>("CAIRN_S3_MAX_ATTEMPTS")? {
            cfg.max_attempts = v.max(1);
        }
        if let Some(v) = env_parse::<f64>("CAIRN_S3_ATTEMPT_TIMEOUT")? {
            cfg.attempt_timeout = Duration::from_secs_f64(v.max(0.1));
        }
        Ok(cfg)
    }
}

/// The S3 backend.
pub struct S3Backend {
    cfg: S3Config,
    client: Client,
    rt: tokio::runtime::Runtime,
    /// Whether the store rejects a second `If-None-Match: *` PUT (probed lazily).
    conditional: OnceLock<bool>,
    /// Requests made, by kind: reported at `-v` when the backend is dropped.
    requests: RequestCounts,
}

/// Requests by operation (first attempts; the SDK's retries are not counted).
#[derive(Default, Debug)]
pub struct RequestCounts {
    /// PutObject and UploadPart.
    pub put: AtomicU64,
    /// GetObject (whole and ranged).
    pub get: AtomicU64,
    /// ListObjectsV2 pages.
    pub list: AtomicU64,
    /// HeadObject and HeadBucket.
    pub head: AtomicU64,
    /// DeleteObject.
    pub delete: AtomicU64,
}

fn count(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Drop for S3Backend {
    fn drop(&mut self) {
        let r = &self.requests;
        tracing::info!(
            "S3 requests: {} PUT, {} GET, {} LIST, {} HEAD, {} DELETE",
            r.put.load(Ordering::Relaxed),
            r.get.load(Ordering::Relaxed),
            r.list.load(Ordering::Relaxed),
            r.head.load(Ordering::Relaxed),
            r.delete.load(Ordering::Relaxed)
        );
    }
}

/// What went wrong with one S3 request, classified for a useful message.
fn describe<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    err: &SdkError<E>,
) -> (Option<u16>, Option<String>, String) {
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().map(str::to_string);
    (status, code, DisplayErrorContext(err).to_string())
}

/// The certificates an HTTPS connection trusts: the system's (unless the
/// endpoint is plain `http://`, which needs none) and the CA bundle's.
///
/// Checked here because the TLS layer would panic on what a user can cause:
/// a CA bundle without a valid PEM certificate, or a system without CA
/// certificates (a minimal container image).
fn trust_store(cfg: &S3Config) -> Result<TrustStore> {
    let plain_http = cfg
        .endpoint
        .as_deref()
        .is_some_and(|e| e.starts_with("http://"));
    let mut trust = TrustStore::empty();
    let mut any = false;
    if !plain_http {
        let native = rustls_native_certs::load_native_certs();
        if !native.certs.is_empty() {
            trust = trust.with_native_roots(true);
            any = true;
        }
    }
    if let Some(path) = &cfg.ca_bundle {
        use rustls_pki_types::pem::PemObject;
        let pem = read_ca_bundle(path)?;
        let certs = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| {
                Error::InvalidInput(format!(
                    "CA bundle {}: not PEM certificates: {e}",
                    path.display()
                ))
            })?;
        if certs.is_empty() {
            return Err(Error::InvalidInput(format!(
                "CA bundle {} holds no PEM certificate",
                path.display()
            )));
        }
        trust = trust.with_pem_certificate(pem);
        any = true;
    }
    if !plain_http && !any {
        return Err(Error::InvalidInput(
            "no CA certificates to verify the S3 endpoint with: this system has none \
             (SSL_CERT_FILE, /etc/ssl/certs) and no CA bundle was given (CAIRN_S3_CA_BUNDLE)"
                .into(),
        ));
    }
    Ok(trust)
}

impl S3Backend {
    /// Connect (lazily: no request is made here).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an unreadable CA bundle or a runtime that cannot start.
    pub fn new(cfg: S3Config) -> Result<S3Backend> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cairn-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("cannot start the S3 runtime: {e}")))?;
        let trust = trust_store(&cfg)?;
        let tls_context = TlsContext::builder()
            .with_trust_store(trust)
            .build()
            .map_err(|e| Error::InvalidInput(format!("TLS settings: {e}")))?;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .tls_context(tls_context)
            .build_https();
        let retry = RetryConfig::standard()
            .with_max_attempts(cfg.max_attempts)
            .with_initial_backoff(Duration::from_millis(200))
            .with_max_backoff(Duration::from_secs(20));
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(10))
            .operation_attempt_timeout(cfg.attempt_timeout)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .retry_config(retry)
            .timeout_config(timeouts);
        if let Some(r) = &cfg.region {
            loader = loader.region(Region::new(r.clone()));
        }
        let sdk = rt.block_on(loader.load());
        let mut builder = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(cfg.path_style);
        if sdk.region().is_none() {
            builder = builder.region(Region::new("us-east-1"));
        }
        if let Some(ep) = &cfg.endpoint {
            builder = builder.endpoint_url(ep);
        }
        Ok(S3Backend {
            client: Client::from_conf(builder.build()),
            cfg,
            rt,
            conditional: OnceLock::new(),
            requests: RequestCounts::default(),
        })
    }

    /// The parsed settings.
    pub fn config(&self) -> &S3Config {
        &self.cfg
    }

    fn key(&self, kind: FileKind, name: &str) -> String {
        if self.cfg.prefix.is_empty() {
            kind.path(name)
        } else {
            format!("{}/{}", self.cfg.prefix, kind.path(name))
        }
    }

    fn kind_prefix(&self, kind: FileKind) -> String {
        let dir = match kind {
            FileKind::Config => "config",
            FileKind::Key => "keys/",
            FileKind::Snapshot => "snapshots/",
            FileKind::Index => "index/",
            FileKind::Pack => "data/",
        };
        if self.cfg.prefix.is_empty() {
            dir.to_string()
        } else {
            format!("{}/{dir}", self.cfg.prefix)
        }
    }

    /// Turn an SDK error into an engine error that names bucket and key.
    fn error<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
        &self,
        op: &'static str,
        key: &str,
        err: SdkError<E>,
    ) -> Error {
        let (status, code, detail) = describe(&err);
        let bucket = &self.cfg.bucket;
        let at = format!("s3://{bucket}/{key}");
        let code_s = code.as_deref().unwrap_or("");
        let message = match (status, code_s) {
            (_, "NoSuchBucket") => format!("bucket {bucket:?} does not exist at {}", self.endpoint_name()),
            (Some(404), _) | (_, "NoSuchKey") | (_, "NotFound") => {
                return Error::NotFound(format!("object {at}"));
            }
            (Some(403), _) | (_, "AccessDenied") | (_, "InvalidAccessKeyId") | (_, "SignatureDoesNotMatch") => format!(
                "access denied ({code_s}): check the access key, secret key and the permissions on bucket {bucket:?}"
            ),
            (Some(301), _) | (_, "PermanentRedirect") | (_, "AuthorizationHeaderMalformed") => {
                format!("wrong region for bucket {bucket:?} ({code_s}); set AWS_REGION or CAIRN_S3_REGION")
            }
            (Some(s), _) => format!("HTTP {s} {code_s}: {detail}"),
            (None, _) => format!("{detail} (gave up after retries; at most {} attempts)", self.cfg.max_attempts),
        };
        Error::Backend {
            op,
            key: at,
            message,
            cause: None,
        }
    }

    fn endpoint_name(&self) -> String {
        self.cfg
            .endpoint
            .clone()
            .unwrap_or_else(|| "AWS S3".to_string())
    }

    async fn put(&self, key: &str, data: bytes::Bytes, guard: bool) -> Result<()> {
        count(&self.requests.put);
        let mut req = self
            .client
            .put_object()
            .bucket(&self.cfg.bucket)
            .key(key)
            .content_length(data.len() as i64)
            .body(ByteStream::from(data));
        if guard {
            req = req.if_none_match("*");
        }
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(412) => {
                Err(Error::Backend {
                    op: "write",
                    key: format!("s3://{}/{key}", self.cfg.bucket),
                    message: "object already exists (repository files are never overwritten)"
                        .into(),
                    cause: None,
                })
            }
            Err(e) => Err(self.error("write", key, e)),
        }
    }

    async fn put_multipart(&self, key: &str, data: bytes::Bytes) -> Result<()> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.cfg.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.error("start multipart upload", key, e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| Error::Backend {
                op: "start multipart upload",
                key: key.to_string(),
                message: "the store returned no upload ID".into(),
                cause: None,
            })?
            .to_string();
        let result = async {
            let mut parts = Vec::new();
            let starts = (0..data.len()).step_by(self.cfg.part_size.max(1));
            for (i, at) in starts.enumerate() {
                let part = data.slice(at..(at + self.cfg.part_size).min(data.len()));
                let number = i as i32 + 1;
                count(&self.requests.put);
                let out = self
                    .client
                    .upload_part()
                    .bucket(&self.cfg.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .content_length(part.len() as i64)
                    .body(ByteStream::from(part))
                    .send()
                    .await
                    .map_err(|e| self.error("upload part", key, e))?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag().map(str::to_string))
                        .build(),
                );
            }
            self.client
                .complete_multipart_upload()
                .bucket(&self.cfg.bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| self.error("complete multipart upload", key, e))?;
            Ok(())
        }
        .await;
        if result.is_err() {
            // Best effort: an abandoned upload only costs storage until the bucket's lifecycle rule runs.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.cfg.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    /// Does the store refuse a second `If-None-Match: *` PUT of the same key?
    async fn probe_conditional(&self) -> bool {
        let mut rnd = [0u8; 8];
        crate::crypto::fill_random(&mut rnd);
        let key = if self.cfg.prefix.is_empty() {
            format!("cairn-probe-{}", hex::encode(rnd))
        } else {
            format!("{}/cairn-probe-{}", self.cfg.prefix, hex::encode(rnd))
        };
        let put = || {
            count(&self.requests.put);
            self.client
                .put_object()
                .bucket(&self.cfg.bucket)
                .key(&key)
                .if_none_match("*")
                .body(ByteStream::from_static(b"probe"))
                .send()
        };
        let supported = match put().await {
            Ok(_) => {
                matches!(put().await, Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(412))
            }
            Err(_) => false,
        };
        count(&self.requests.delete);
        let _ = self
            .client
            .delete_object()
            .bucket(&self.cfg.bucket)
            .key(&key)
            .send()
            .await;
        tracing::info!(
            "{}: conditional writes (If-None-Match) {}",
            self.endpoint_name(),
            if supported {
                "supported: used as an extra guard"
            } else {
                "ignored by this store: not used"
            }
        );
        supported
    }

    /// Whether writes carry `If-None-Match: *` (probed once).
    pub fn conditional_writes(&self) -> bool {
        *self
            .conditional
            .get_or_init(|| self.rt.block_on(self.probe_conditional()))
    }
}

impl Backend for S3Backend {
    fn location(&self) -> String {
        let ep = self
            .cfg
            .endpoint
            .as_deref()
            .map(|e| format!("{e}/"))
            .unwrap_or_default();
        if self.cfg.prefix.is_empty() {
            format!("s3:{ep}{}", self.cfg.bucket)
        } else {
            format!("s3:{ep}{}/{}", self.cfg.bucket, self.cfg.prefix)
        }
    }

    fn concurrency(&self) -> usize {
        self.cfg.concurrency
    }

    fn create(&self) -> Result<()> {
        count(&self.requests.head);
        self.rt.block_on(async {
            self.client
                .head_bucket()
                .bucket(&self.cfg.bucket)
                .send()
                .await
                .map_err(|e| match self.error("open bucket", "", e) {
                    Error::NotFound(_) => Error::Backend {
                        op: "open bucket",
                        key: format!("s3://{}", self.cfg.bucket),
                        message: format!(
                            "bucket {:?} does not exist at {}",
                            self.cfg.bucket,
                            self.endpoint_name()
                        ),
                        cause: None,
                    },
                    other => other,
                })
        })?;
        if self.exists(FileKind::Config, "")? {
            return Err(Error::RepositoryExists(self.location()));
        }
        Ok(())
    }

    fn exists(&self, kind: FileKind, name: &str) -> Result<bool> {
        let key = self.key(kind, name);
        count(&self.requests.head);
        self.rt.block_on(async {
            match self
                .client
                .head_object()
                .bucket(&self.cfg.bucket)
                .key(&key)
                .send()
                .await
            {
                Ok(_) => Ok(true),
                Err(e) => match self.error("stat", &key, e) {
                    Error::NotFound(_) => Ok(false),
                    other => Err(other),
                },
            }
        })
    }

    fn read(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        let key = self.key(kind, name);
        count(&self.requests.get);
        self.rt.block_on(async {
            let out = self
                .client
                .get_object()
                .bucket(&self.cfg.bucket)
                .key(&key)
                .send()
                .await
                .map_err(|e| match self.error("read", &key, e) {
                    Error::NotFound(_) => {
                        Error::NotFound(format!("{} {name} ({})", kind.name(), key))
                    }
                    other => other,
                })?;
            let body = out.body.collect().await.map_err(|e| Error::Backend {
                op: "read",
                key: key.clone(),
                message: format!("download interrupted: {e}"),
                cause: None,
            })?;
            Ok(body.into_bytes().to_vec())
        })
    }

    fn read_range(&self, kind: FileKind, name: &str, offset: u64, length: u32) -> Result<Vec<u8>> {
        if length == 0 {
            return Ok(Vec::new());
        }
        let key = self.key(kind, name);
        count(&self.requests.get);
        let end = offset + u64::from(length) - 1;
        let data = self.rt.block_on(async {
            let out = self
                .client
                .get_object()
                .bucket(&self.cfg.bucket)
                .key(&key)
                .range(format!("bytes={offset}-{end}"))
                .send()
                .await
                .map_err(|e| match self.error("read", &key, e) {
                    Error::NotFound(_) => {
                        Error::NotFound(format!("{} {name} ({})", kind.name(), key))
                    }
                    Error::Backend { message, .. } if message.contains("416") => Error::corrupt(
                        format!("{} {name}", kind.name()),
                        format!("truncated: cannot read {length} bytes at offset {offset}"),
                    ),
                    other => other,
                })?;
            out.body
                .collect()
                .await
                .map(|b| b.into_bytes().to_vec())
                .map_err(|e| Error::Backend {
                    op: "read",
                    key: key.clone(),
                    message: format!("download interrupted: {e}"),
                    cause: None,
                })
        })?;
        if data.len() != length as usize {
            return Err(Error::corrupt(
                format!("{} {name}", kind.name()),
                format!("truncated: cannot read {length} bytes at offset {offset}"),
            ));
        }
        Ok(data)
    }

    fn write(&self, kind: FileKind, name: &str, data: Vec<u8>) -> Result<()> {
        let key = self.key(kind, name);
        let data = bytes::Bytes::from(data); // no copy; retries share it
        let guard = self.conditional_writes();
        self.rt.block_on(async {
            if data.len() > self.cfg.multipart_threshold {
                // Multipart uploads cannot carry If-None-Match everywhere; names are unique anyway.
                self.put_multipart(&key, data).await
            } else {
                self.put(&key, data, guard).await
            }
        })
    }

    fn list(&self, kind: FileKind) -> Result<Vec<FileInfo>> {
        if kind == FileKind::Config {
            return Ok(if self.exists(kind, "")? {
                vec![FileInfo {
                    name: "config".into(),
                    size: 0,
                }]
            } else {
                Vec::new()
            });
        }
        let prefix = self.kind_prefix(kind);
        let mut out = Vec::new();
        self.rt.block_on(async {
            let mut pages = self
                .client
                .list_objects_v2()
                .bucket(&self.cfg.bucket)
                .prefix(&prefix)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                count(&self.requests.list);
                let page = page.map_err(|e| self.error("list", &prefix, e))?;
                for obj in page.contents() {
                    let Some(key) = obj.key() else { continue };
                    let name = key.rsplit('/').next().unwrap_or(key);
                    out.push(FileInfo {
                        name: name.to_string(),
                        size: obj.size().unwrap_or(0).max(0) as u64,
                    });
                }
            }
            Ok::<(), Error>(())
        })?;
        if out.is_empty() && !self.exists(FileKind::Config, "")? {
            return Err(Error::RepositoryNotFound(self.location()));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn clock(&self) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        let mut tag = [0u8; 8];
        crate::crypto::fill_random(&mut tag);
        let name = format!(".clock-{}", hex::encode(tag));
        let key = if self.cfg.prefix.is_empty() {
            name
        } else {
            format!("{}/{name}", self.cfg.prefix)
        };
        self.rt.block_on(async {
            self.put(&key, bytes::Bytes::new(), false).await?;
            count(&self.requests.head);
            let head = self
                .client
                .head_object()
                .bucket(&self.cfg.bucket)
                .key(&key)
                .send()
                .await
                .map_err(|e| self.error("stat", &key, e));
            count(&self.requests.delete);
            if let Err(e) = self
                .client
                .delete_object()
                .bucket(&self.cfg.bucket)
                .key(&key)
                .send()
                .await
            {
                tracing::warn!(
                    "the clock probe {key} stays: {}",
                    self.error("remove", &key, e)
                );
            }
            let time = head?
                .last_modified()
                .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos()));
            if time.is_none() {
                tracing::warn!("the store gave the clock probe {key} no modification time: prune uses this host's clock");
            }
            Ok(time)
        })
    }

    fn remove(&self, kind: FileKind, name: &str) -> Result<()> {
        let key = self.key(kind, name);
        count(&self.requests.delete);
        self.rt.block_on(async {
            self.client
                .delete_object()
                .bucket(&self.cfg.bucket)
                .key(&key)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| self.error("remove", &key, e))
        })
    }
}

/// The largest CA bundle read (the system bundle is about 200 KiB).
const CA_BUNDLE_MAX: u64 = 16 << 20;

/// A CA bundle's bytes: a regular file of at most [`CA_BUNDLE_MAX`] bytes
/// (a path naming a FIFO or a device would otherwise block or fill memory).
fn read_ca_bundle(path: &std::path::Path) -> Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking: opening a FIFO to read would wait for a writer.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::io("open CA bundle", path, e))?;
    let meta = file
        .metadata()
        .map_err(|e| Error::io("stat CA bundle", path, e))?;
    if !meta.is_file() {
        return Err(Error::InvalidInput(format!(
            "CA bundle {} is not a regular file",
            path.display()
        )));
    }
    if meta.len() > CA_BUNDLE_MAX {
        return Err(Error::InvalidInput(format!(
            "CA bundle {} is {} bytes; at most {CA_BUNDLE_MAX} are read",
            path.display(),
            meta.len()
        )));
    }
    let mut pem = Vec::new();
    file.take(CA_BUNDLE_MAX + 1)
        .read_to_end(&mut pem)
        .map_err(|e| Error::io("read CA bundle", path, e))?;
    if pem.len() as u64 > CA_BUNDLE_MAX {
        return Err(Error::InvalidInput(format!(
            "CA bundle {} grew past {CA_BUNDLE_MAX} bytes while read",
            path.display()
        )));
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_bundle_must_be_a_small_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Returns at once (a blocking open would wait for a writer forever).
        let e = read_ca_bundle(&fifo).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let e = read_ca_bundle(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let big = dir.path().join("big.pem");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(CA_BUNDLE_MAX + 1)
            .unwrap();
        let e = read_ca_bundle(&big).unwrap_err().to_string();
        assert!(e.contains("at most"), "{e}");
        let ok = dir.path().join("ok.pem");
        std::fs::write(&ok, b"-----BEGIN CERTIFICATE-----\n").unwrap();
        assert_eq!(read_ca_bundle(&ok).unwrap().len(), 28);
    }

    #[test]
    fn parses_locations() {
        let c = S3Config::parse("s3:https://s3.example.com:9000/bucket/some/prefix/").unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("https://s3.example.com:9000"));
        assert_eq!(
            (c.bucket.as_str(), c.prefix.as_str()),
            ("bucket", "some/prefix")
        );
        assert!(c.path_style);
        let c = S3Config::parse("s3:http://127.0.0.1:3900/b").unwrap();
        assert_eq!(
            (c.endpoint.as_deref(), c.bucket.as_str(), c.prefix.as_str()),
            (Some("http://127.0.0.1:3900"), "b", "")
        );
        let c = S3Config::parse("s3:my-bucket/backups/db").unwrap();
        assert_eq!(
            (
                c.endpoint,
                c.bucket.as_str(),
                c.prefix.as_str(),
                c.path_style
            ),
            (None, "my-bucket", "backups/db", false)
        );
        assert!(S3Config::parse("s3:").is_err());
        assert!(S3Config::parse("s3:https://").is_err());
        assert!(S3Config::parse("s3:https://host/").is_err());
    }
}
