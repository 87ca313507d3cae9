//! Open multipart uploads, for `cleanup --to`.
//!
//! object_store can start, complete and abort a multipart upload but not list the ones left
//! open (its `MultipartStore` has no such call), and an upload left by a killed `create` is
//! invisible to every object listing while its parts stay stored (and billed). S3 lists them
//! with `ListMultipartUploads` (`GET /?uploads&prefix=…`, pages of at most 1000 with
//! `NextKeyMarker`/`NextUploadIdMarker`;
//! <https://docs.aws.amazon.com/AmazonS3/latest/API/API_ListMultipartUploads.html>). The
//! request is signed by object_store's own S3 signer (a presigned URL with the query folded
//! into the signature), so it uses exactly the credentials, region, endpoint and addressing
//! style of every other request; aborting goes through object_store's `abort_multipart`.
//!
//! Azure has no open upload to list or abort: object_store writes blocks with Put Block and
//! commits them with Put Block List, and blocks never committed are deleted by the service 7
//! days after they were written
//! (<https://learn.microsoft.com/en-us/rest/api/storageservices/put-block#remarks>). GCS does
//! have XML-API multipart uploads and a listing for them, but object_store signs GCS URLs only
//! with a service-account key or through IAM signBlob, which gcloud's user login and many
//! workload identities cannot do, and no GCS emulator here implements the listing to test it
//! against; for GCS a bucket lifecycle rule (AbortIncompleteMultipartUpload) does the work.

use std::time::Duration;

use chrono::{DateTime, Utc};
use object_store::path::Path as StorePath;
use object_store::signer::{Method, SignedUrlOptions, Signer};
use serde::Deserialize;

use super::{summarize, xml_tag, Context};
use crate::destination::{DestinationError, UnfinishedWrite};

/// One page of `ListMultipartUploadsResult`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Page {
    #[serde(default)]
    is_truncated: bool,
    #[serde(default)]
    next_key_marker: Option<String>,
    #[serde(default)]
    next_upload_id_marker: Option<String>,
    #[serde(default, rename = "Upload")]
    uploads: Vec<Upload>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Upload {
    key: String,
    upload_id: String,
    initiated: DateTime<Utc>,
}

/// A page limit, so that a bucket with an endless listing cannot keep cleanup going forever
/// (100,000 open uploads under one prefix).
const MAX_PAGES: usize = 100;

/// Every open multipart upload under the destination's prefix: (key relative to the prefix,
/// upload id, initiated).
pub async fn list_s3(
    signer: &dyn Signer,
    ctx: &Context,
) -> Result<Vec<UnfinishedWrite>, DestinationError> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| DestinationError::Config(format!("HTTP client: {e}")))?;
    // Only keys under the prefix, and under it as a directory (`nightly/`, not `nightly2/`).
    let prefix = match ctx.url.prefix.as_str() {
        "" => String::new(),
        p => format!("{p}/"),
    };
    let mut out = Vec::new();
    let mut markers: Option<(String, String)> = None;
    for _ in 0..MAX_PAGES {
        let mut query = vec![
            ("uploads".to_string(), String::new()),
            ("prefix".to_string(), prefix.clone()),
        ];
        if let Some((key, id)) = &markers {
            query.push(("key-marker".into(), key.clone()));
            query.push(("upload-id-marker".into(), id.clone()));
        }
        let body = get_signed(signer, &client, ctx, query).await?;
        let page: Page = quick_xml::de::from_str(&body).map_err(|e| DestinationError::Store {
            message: format!(
                "the store's list of multipart uploads under {} is not what S3 sends: {e}",
                ctx.url
            ),
            permanent: true,
        })?;
        out.extend(page.uploads.into_iter().filter_map(|u| {
            Some(UnfinishedWrite {
                key: ctx.url.relative(&u.key)?.to_string(),
                handle: u.upload_id,
                since: u.initiated,
                size: None,
            })
        }));
        match (
            page.is_truncated,
            page.next_key_marker,
            page.next_upload_id_marker,
        ) {
            (true, Some(k), Some(id)) => markers = Some((k, id)),
            _ => return Ok(out),
        }
    }
    Err(DestinationError::Store {
        message: format!(
            "more than {} multipart uploads are open under {}; abort them with the store's own tools, or give the bucket an AbortIncompleteMultipartUpload lifecycle rule",
            MAX_PAGES * 1000,
            ctx.url
        ),
        permanent: true,
    })
}

/// One signed GET of the bucket with `query`, retried on 5xx, 429 and transport errors.
async fn get_signed(
    signer: &dyn Signer,
    client: &reqwest::Client,
    ctx: &Context,
    query: Vec<(String, String)>,
) -> Result<String, DestinationError> {
    let action = format!("list the multipart uploads under {}", ctx.url);
    let mut wait = Duration::from_millis(200);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let url = signer
            .signed_url_opts(
                Method::GET,
                &StorePath::from(""),
                Duration::from_secs(300),
                &SignedUrlOptions::default().with_query(query.clone()),
            )
            .await
            .map_err(|e| ctx.error("list the multipart uploads under", "", &e))?;
        let transient = match client.get(url.as_str()).send().await {
            Ok(resp) => {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                if status.is_success() {
                    return Ok(body);
                }
                if !(status.is_server_error() || status.as_u16() == 429) || attempt >= 5 {
                    return Err(refusal(ctx, &action, status.as_u16(), &body));
                }
                format!("{status}")
            }
            Err(e) if attempt < 5 => e.to_string(),
            Err(e) => {
                return Err(DestinationError::Store {
                    message: format!(
                        "cannot reach the store to {action}: {}. Check the endpoint (--endpoint, AWS_ENDPOINT_URL) and the network",
                        ctx.redact(&e.to_string())
                    ),
                    permanent: false,
                })
            }
        };
        tracing::debug!("{action}: {transient}; retrying in {wait:?}");
        tokio::time::sleep(wait).await;
        wait *= 2;
    }
}

/// An error answer, worded with the permission to grant when it is one.
fn refusal(ctx: &Context, action: &str, status: u16, body: &str) -> DestinationError {
    let code = xml_tag(body, "Code").unwrap_or_default();
    let detail = ctx.redact(&summarize(&format!(
        "Server returned non-2xx status code: {status} : {body}"
    )));
    match (status, code.as_str()) {
        (404, "NoSuchBucket") => DestinationError::Store {
            message: format!(
                "Bucket {} does not exist ({action}); create it first, or fix the name in the URL",
                ctx.url.bucket
            ),
            permanent: true,
        },
        (401 | 403, _) => DestinationError::Store {
            message: format!(
                "the store refused to {action} with {}: {detail}. The credentials need s3:ListBucketMultipartUploads and s3:AbortMultipartUpload on the bucket; check {}",
                ctx.credentials.what, ctx.credentials.fix
            ),
            permanent: true,
        },
        _ => DestinationError::Store {
            message: format!("{action} failed: {detail}"),
            permanent: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_of_uploads_parses() {
        // The shape of the example in the ListMultipartUploads reference (linked above).
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>bucket</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>nightly/b/shop/db.tar.zst</NextKeyMarker>
  <NextUploadIdMarker>xY2</NextUploadIdMarker><Prefix>nightly/</Prefix>
  <MaxUploads>2</MaxUploads><IsTruncated>true</IsTruncated>
  <Upload><Key>nightly/a/shop/db.tar.zst</Key><UploadId>xY1</UploadId>
    <Initiator><ID>arn:aws:iam::1:user/u</ID><DisplayName>u</DisplayName></Initiator>
    <Owner><ID>75aa</ID><DisplayName>o</DisplayName></Owner>
    <StorageClass>STANDARD</StorageClass><Initiated>2026-11-20T10:15:00.000Z</Initiated></Upload>
  <Upload><Key>nightly/b/shop/db.tar.zst</Key><UploadId>xY2</UploadId>
    <StorageClass>STANDARD</StorageClass><Initiated>2026-11-21T10:15:00.000Z</Initiated></Upload>
</ListMultipartUploadsResult>"#;
        let page: Page = quick_xml::de::from_str(xml).unwrap();
        assert!(page.is_truncated);
        assert_eq!(page.next_upload_id_marker.as_deref(), Some("xY2"));
        assert_eq!(page.uploads.len(), 2);
        assert_eq!(page.uploads[0].key, "nightly/a/shop/db.tar.zst");
        assert_eq!(
            page.uploads[1].initiated.to_rfc3339(),
            "2026-11-21T10:15:00+00:00"
        );
        let empty: Page = quick_xml::de::from_str(
            "<ListMultipartUploadsResult><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>",
        )
        .unwrap();
        assert!(empty.uploads.is_empty() && !empty.is_truncated);
    }
}
