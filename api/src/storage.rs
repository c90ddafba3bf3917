//! Where product files are kept: one interface (`object_store`) over a local
//! directory (the default) or an S3-compatible bucket (`downloads.storage`).
//! Uploads stream to storage (multipart), capped in size and hashed on the
//! way; downloads stream back, whole or one byte range.

use std::sync::Arc;

use anyhow::Context as _;
use axum::body::Bytes;
use courier_shared::config::DownloadSettings;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, WriteMultipart};
use sha2::{Digest, Sha256};

#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Storage({})", self.store)
    }
}

/// Why an upload was not stored (nothing is left in storage).
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the file is larger than {0} bytes (downloads.max_file_bytes)")]
    TooLarge(u64),
    #[error("the request body broke off: {0}")]
    Body(String),
    #[error("storage: {0}")]
    Storage(#[from] object_store::Error),
}

/// What was stored.
#[derive(Debug)]
pub struct Stored {
    pub size: u64,
    pub sha256: String,
}

impl Storage {
    pub fn from_settings(d: &DownloadSettings) -> anyhow::Result<Self> {
        let store: Arc<dyn ObjectStore> = match d.storage.as_str() {
            "s3" => {
                // The environment first (AWS_*: instance and pod credentials),
                // then what the settings name.
                // A few quick retries: a customer's request waits on them.
                let retry = object_store::RetryConfig {
                    max_retries: 3,
                    retry_timeout: std::time::Duration::from_secs(10),
                    ..object_store::RetryConfig::default()
                };
                // No overall request timeout: object_store's default (30 s,
                // body included) would cut a large download on a slow line.
                // Connecting is bounded; a stalled body ends with the client.
                let client = object_store::ClientOptions::new()
                    .with_timeout_disabled()
                    .with_connect_timeout(std::time::Duration::from_secs(5));
                // The client options first: `with_allow_http` is one of them.
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_client_options(client)
                    .with_bucket_name(d.s3_bucket.clone().unwrap_or_default())
                    .with_allow_http(d.s3_allow_http)
                    .with_retry(retry);
                if let Some(r) = &d.s3_region {
                    b = b.with_region(r);
                }
                if let Some(e) = &d.s3_endpoint {
                    b = b.with_endpoint(e);
                }
                if let Some(k) = &d.s3_access_key_id {
                    b = b.with_access_key_id(k);
                }
                if let Some(s) = &d.s3_secret_access_key {
                    b = b.with_secret_access_key(s.expose());
                }
                Arc::new(b.build().context("downloads.s3_*")?)
            }
            _ => {
                std::fs::create_dir_all(&d.local_dir)
                    .with_context(|| format!("downloads.local_dir = {}", d.local_dir))?;
                Arc::new(
                    object_store::local::LocalFileSystem::new_with_prefix(&d.local_dir)
                        .with_context(|| format!("downloads.local_dir = {}", d.local_dir))?,
                )
            }
        };
        Ok(Storage { store })
    }

    /// Streams `body` to `key`, refusing it past `max` bytes; the object
    /// exists only if this returns `Ok`.
    pub async fn put_stream<S, E>(
        &self,
        key: &str,
        body: S,
        max: u64,
    ) -> Result<Stored, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let upload = self.store.put_multipart(&Path::from(key)).await?;
        let mut write = WriteMultipart::new(upload);
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let mut body = body;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = write.abort().await;
                    return Err(UploadError::Body(e.to_string()));
                }
            };
            size += chunk.len() as u64;
            if size > max {
                let _ = write.abort().await;
                return Err(UploadError::TooLarge(max));
            }
            hasher.update(&chunk);
            if let Err(e) = write.wait_for_capacity(4).await {
                let _ = write.abort().await;
                return Err(e.into());
            }
            write.put(chunk);
        }
        write.finish().await?;
        Ok(Stored {
            size,
            sha256: hex::encode(hasher.finalize()),
        })
    }

    /// Bytes `range` (inclusive ends) of `key`, or all of it.
    pub async fn get(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> Result<BoxStream<'static, object_store::Result<Bytes>>, object_store::Error> {
        let options = GetOptions {
            range: range.map(|(start, end)| GetRange::Bounded(start..end + 1)),
            ..GetOptions::default()
        };
        Ok(self
            .store
            .get_opts(&Path::from(key), options)
            .await?
            .into_stream())
    }

    pub async fn delete(&self, key: &str) -> Result<(), object_store::Error> {
        self.store.delete(&Path::from(key)).await
    }
}
