//! Object-storage URLs: `s3://bucket/prefix`, `az://container/prefix` (or `azure://`),
//! `gs://bucket/prefix`. Pure parsing, no environment.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    S3,
    Azure,
    Gcs,
}

impl Provider {
    /// The scheme shown back to users (`azure://` is accepted, `az://` is shown).
    pub fn scheme(self) -> &'static str {
        match self {
            Provider::S3 => "s3",
            Provider::Azure => "az",
            Provider::Gcs => "gs",
        }
    }

    /// What the top-level name is called in this cloud.
    pub fn bucket_word(self) -> &'static str {
        match self {
            Provider::Azure => "container",
            _ => "bucket",
        }
    }
}

/// A parsed object URL. `prefix` has no leading or trailing `/` (empty for the bucket root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectUrl {
    pub provider: Provider,
    pub bucket: String,
    pub prefix: String,
}

impl fmt::Display for ObjectUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.provider.scheme(), self.bucket)?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix)?;
        }
        Ok(())
    }
}

impl ObjectUrl {
    /// The full key of `key` (relative to the URL's prefix).
    pub fn key(&self, key: &str) -> String {
        let key = key.trim_start_matches('/');
        match (self.prefix.is_empty(), key.is_empty()) {
            (true, _) => key.to_string(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}/{key}", self.prefix),
        }
    }

    /// `key` relative to the URL's prefix, if it lies under it.
    pub fn relative<'a>(&self, full: &'a str) -> Option<&'a str> {
        if self.prefix.is_empty() {
            return Some(full);
        }
        full.strip_prefix(self.prefix.as_str())?.strip_prefix('/')
    }

    /// This URL with its last path segment split off: `(parent, last)`, for a BACKUP argument
    /// that names one object (`s3://b/p/<id>/ns/pvc.manifest.json`).
    pub fn split_last(&self) -> Option<(ObjectUrl, String)> {
        let (dir, last) = match self.prefix.rsplit_once('/') {
            Some((d, l)) => (d.to_string(), l.to_string()),
            None if !self.prefix.is_empty() => (String::new(), self.prefix.clone()),
            None => return None,
        };
        Some((
            ObjectUrl {
                provider: self.provider,
                bucket: self.bucket.clone(),
                prefix: dir,
            },
            last,
        ))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("{0}")]
    Bad(String),
}

/// `Some(Ok)` for an object-storage URL, `Some(Err)` for a malformed one, `None` for any other
/// scheme (the caller decides what those are).
pub fn parse(url: &str) -> Option<Result<ObjectUrl, UrlError>> {
    let (scheme, rest) = url.split_once("://")?;
    let provider = match scheme.to_ascii_lowercase().as_str() {
        "s3" | "s3a" => Provider::S3,
        "az" | "azure" => Provider::Azure,
        "gs" | "gcs" => Provider::Gcs,
        _ => return None,
    };
    Some(parse_rest(provider, rest))
}

fn parse_rest(provider: Provider, rest: &str) -> Result<ObjectUrl, UrlError> {
    let word = provider.bucket_word();
    if rest.contains('?') || rest.contains('#') {
        return Err(UrlError::Bad(format!(
            "it has a query or fragment; object URLs are {}://{word}/prefix, and credentials come from the environment, never from the URL",
            provider.scheme()
        )));
    }
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(UrlError::Bad(format!(
            "it names no {word}: write {}://{word}-name/optional/prefix",
            provider.scheme()
        )));
    }
    if bucket.contains('@') {
        return Err(UrlError::Bad(format!(
            "put credentials in the environment, not in the URL (the {word} name cannot contain '@')"
        )));
    }
    check_bucket(provider, bucket)
        .map_err(|why| UrlError::Bad(format!("{word} name {bucket:?} is not valid: {why}")))?;
    let segments: Vec<&str> = prefix.split('/').filter(|s| !s.is_empty()).collect();
    if segments.iter().any(|s| *s == "." || *s == "..") {
        return Err(UrlError::Bad(
            "the prefix may not contain '.' or '..' segments".to_string(),
        ));
    }
    Ok(ObjectUrl {
        provider,
        bucket: bucket.to_string(),
        prefix: segments.join("/"),
    })
}

/// The naming rules each cloud enforces, so a typo fails before any request. Sources:
/// S3 <https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html> (loosened to
/// the legacy us-east-1 rules, which allowed uppercase and '_' and up to 255 characters, so old
/// buckets stay reachable),
/// Azure <https://learn.microsoft.com/en-us/rest/api/storageservices/naming-and-referencing-containers--blobs--and-metadata>,
/// GCS <https://cloud.google.com/storage/docs/buckets#naming> (dotted names may be up to 222).
fn check_bucket(provider: Provider, b: &str) -> Result<(), &'static str> {
    let max = match provider {
        Provider::Azure => 63,
        Provider::Gcs => 222,
        Provider::S3 => 255,
    };
    if b.len() < 3 || b.len() > max {
        return Err(match provider {
            Provider::Gcs => "it must be 3 to 63 characters (222 with dots)",
            Provider::S3 => "it must be 3 to 63 characters",
            Provider::Azure => "it must be 3 to 63 characters",
        });
    }
    let allowed = |c: char| match provider {
        Provider::Azure => c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-',
        Provider::S3 => c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'),
        Provider::Gcs => {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_')
        }
    };
    if !b.chars().all(allowed) {
        return Err(match provider {
            Provider::Azure => "only lowercase letters, digits and '-' are allowed",
            Provider::S3 => "only letters, digits, '-', '_' and '.' are allowed",
            Provider::Gcs => "only lowercase letters, digits, '-', '_' and '.' are allowed",
        });
    }
    let first = b.chars().next().unwrap_or('-');
    let last = b.chars().last().unwrap_or('-');
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return Err("it must start and end with a letter or digit");
    }
    if provider == Provider::Azure && b.contains("--") {
        return Err("consecutive '-' are not allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(u: &str) -> ObjectUrl {
        parse(u).expect("object url").expect("valid")
    }

    #[test]
    fn schemes_buckets_and_prefixes() {
        let u = ok("s3://my-bucket/team/pv/");
        assert_eq!(u.provider, Provider::S3);
        assert_eq!(u.bucket, "my-bucket");
        assert_eq!(u.prefix, "team/pv");
        assert_eq!(u.to_string(), "s3://my-bucket/team/pv");
        assert_eq!(ok("s3://b-1").prefix, "");
        assert_eq!(ok("azure://backups/x").provider, Provider::Azure);
        assert_eq!(ok("azure://backups/x").to_string(), "az://backups/x");
        assert_eq!(ok("az://backups").provider, Provider::Azure);
        let g = ok("gs://my_bucket.example.com//a//b");
        assert_eq!(g.provider, Provider::Gcs);
        assert_eq!(g.bucket, "my_bucket.example.com");
        assert_eq!(g.prefix, "a/b");
        assert!(parse("file:///tmp").is_none());
        assert!(parse("./dir").is_none());
        assert!(parse("ftp://x/y").is_none());
    }

    #[test]
    fn bad_urls_say_why() {
        let e = |u: &str| parse(u).unwrap().unwrap_err().to_string();
        assert!(e("s3:///prefix").contains("names no bucket"));
        assert!(e("az:///p").contains("names no container"));
        assert!(e("s3://bad+bucket/x").contains("only letters"));
        assert!(e("gs://Bucket/x").contains("lowercase"));
        assert!(e("s3://ab").contains("3 to 63"));
        assert!(e("az://a_b_c").contains("'-'"));
        assert!(e("az://ab--cd").contains("consecutive"));
        assert!(e("gs://_bucket").contains("start and end"));
        assert!(e("s3://key:secret@bucket/x").contains("not in the URL"));
        assert!(e("s3://bucket/x?access_key=1").contains("environment"));
        assert!(e("s3://bucket/a/../b").contains("'..'"));
    }

    #[test]
    fn keys_are_relative_to_the_prefix() {
        let u = ok("s3://b-1/p/q");
        assert_eq!(u.key("id/ns/x.tar"), "p/q/id/ns/x.tar");
        assert_eq!(u.key(""), "p/q");
        assert_eq!(u.relative("p/q/id/ns/x.tar"), Some("id/ns/x.tar"));
        assert_eq!(u.relative("p/qq/x"), None);
        let root = ok("s3://b-1");
        assert_eq!(root.key("a/b"), "a/b");
        assert_eq!(root.relative("a/b"), Some("a/b"));
        let (parent, last) = ok("s3://b-1/p/id/ns/pvc.manifest.json")
            .split_last()
            .unwrap();
        assert_eq!(parent.to_string(), "s3://b-1/p/id/ns");
        assert_eq!(last, "pvc.manifest.json");
        let (parent, last) = ok("gs://b-1/m.json").split_last().unwrap();
        assert_eq!((parent.prefix.as_str(), last.as_str()), ("", "m.json"));
        assert!(ok("gs://b-1").split_last().is_none());
    }
}
