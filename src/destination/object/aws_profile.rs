//! AWS shared config and credentials files (`~/.aws/config`, `~/.aws/credentials`).
//!
//! `object_store` reads credentials from the environment, web identity, container endpoints
//! and instance metadata, but not from profiles, which is how most people at a laptop hold
//! their keys. The files are a small INI dialect; the official parser lives in the AWS SDK
//! (aws-config), far too large a dependency for the few keys read here, and generic INI crates
//! do not know its `[profile NAME]` sections or indented sub-settings. Format:
//! <https://docs.aws.amazon.com/sdkref/latest/guide/file-format.html>.

use std::collections::BTreeMap;

/// Sections of one file: section name → key → value. In the config file a profile's section
/// is `[profile NAME]` (and `[default]`); in the credentials file it is `[NAME]`. Nested
/// settings (`s3 =` followed by indented `key = value` lines) are stored as `s3.key`.
pub type Sections = BTreeMap<String, BTreeMap<String, String>>;

/// Parses the INI dialect: `#` and `;` start comment lines, keys are case-insensitive,
/// whitespace around `=` is ignored, indented lines under an empty-valued key are its
/// sub-settings.
pub fn parse(text: &str) -> Sections {
    let mut out = Sections::new();
    let mut section: Option<String> = None;
    let mut parent: Option<String> = None;
    for raw in text.lines() {
        let line = raw.trim_end();
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if let Some(name) = trimmed.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
            out.entry(name.clone()).or_default();
            section = Some(name);
            parent = None;
            continue;
        }
        let Some(sec) = &section else { continue };
        let Some((k, v)) = trimmed.split_once('=') else {
            continue;
        };
        let key = k.trim().to_ascii_lowercase();
        let value = v.trim().to_string();
        let indented = line.starts_with(' ') || line.starts_with('\t');
        let entry = out.entry(sec.clone()).or_default();
        match (&parent, indented) {
            (Some(p), true) => {
                entry.insert(format!("{p}.{key}"), value);
            }
            _ => {
                parent = value.is_empty().then(|| key.clone());
                entry.insert(key, value);
            }
        }
    }
    out
}

/// One profile's settings, merged from both files the way the AWS CLI does: the credentials
/// file wins for keys it has.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Profile {
    pub settings: BTreeMap<String, String>,
    /// Which file each credential key came from (for error messages).
    pub credentials_from: Option<String>,
}

impl Profile {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.settings
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// Looks `name` up in the parsed files. `None` when neither has it.
pub fn profile(
    name: &str,
    config: Option<(&str, &Sections)>,
    credentials: Option<(&str, &Sections)>,
) -> Option<Profile> {
    let mut p = Profile::default();
    let mut found = false;
    if let Some((_, cfg)) = config {
        let section = if name == "default" {
            cfg.get("default").or_else(|| cfg.get("profile default"))
        } else {
            cfg.get(&format!("profile {name}"))
        };
        if let Some(s) = section {
            found = true;
            p.settings.extend(s.clone());
            if s.contains_key("aws_access_key_id") {
                p.credentials_from = config.map(|(f, _)| f.to_string());
            }
        }
    }
    if let Some((file, creds)) = credentials {
        if let Some(s) = creds.get(name) {
            found = true;
            if s.contains_key("aws_access_key_id") {
                p.credentials_from = Some(file.to_string());
            }
            p.settings.extend(s.clone());
        }
    }
    found.then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "\
# a comment
[default]
region = eu-west-1

[profile minio]
region=us-east-1
endpoint_url = http://127.0.0.1:9000
s3 =
  addressing_style = path
  endpoint_url = http://127.0.0.1:9001
output = json

[profile  sso]
sso_session = corp
; another comment
[profile keys-in-config]
aws_access_key_id = AKIACONFIG
aws_secret_access_key = secret-in-config
";

    const CREDENTIALS: &str = "\
[default]
aws_access_key_id = AKIADEFAULT
aws_secret_access_key = default-secret

[minio]
AWS_ACCESS_KEY_ID = minioadmin
aws_secret_access_key = minio-secret
aws_session_token=tok
";

    #[test]
    fn parses_sections_keys_and_nested_settings() {
        let c = parse(CONFIG);
        assert_eq!(c["default"]["region"], "eu-west-1");
        let m = &c["profile minio"];
        assert_eq!(m["region"], "us-east-1");
        assert_eq!(m["endpoint_url"], "http://127.0.0.1:9000");
        assert_eq!(m["s3.addressing_style"], "path");
        assert_eq!(m["s3.endpoint_url"], "http://127.0.0.1:9001");
        assert_eq!(
            m["output"], "json",
            "a flush-left key ends the nested block"
        );
        assert!(
            c.contains_key("profile sso"),
            "inner whitespace is normalised"
        );
        let k = parse(CREDENTIALS);
        assert_eq!(
            k["minio"]["aws_access_key_id"], "minioadmin",
            "keys are case-insensitive"
        );
        assert_eq!(k["minio"]["aws_session_token"], "tok");
    }

    #[test]
    fn profiles_merge_both_files_and_credentials_win() {
        let (c, k) = (parse(CONFIG), parse(CREDENTIALS));
        let cfg = Some(("/h/.aws/config", &c));
        let creds = Some(("/h/.aws/credentials", &k));
        let m = profile("minio", cfg, creds).unwrap();
        assert_eq!(m.get("aws_access_key_id"), Some("minioadmin"));
        assert_eq!(m.get("region"), Some("us-east-1"));
        assert_eq!(m.credentials_from.as_deref(), Some("/h/.aws/credentials"));
        let d = profile("default", cfg, creds).unwrap();
        assert_eq!(d.get("region"), Some("eu-west-1"));
        assert_eq!(d.get("aws_secret_access_key"), Some("default-secret"));
        let kc = profile("keys-in-config", cfg, creds).unwrap();
        assert_eq!(kc.credentials_from.as_deref(), Some("/h/.aws/config"));
        assert!(profile("nope", cfg, creds).is_none());
        assert!(profile("minio", None, None).is_none());
        let sso = profile("sso", cfg, creds).unwrap();
        assert_eq!(sso.get("sso_session"), Some("corp"));
        assert_eq!(sso.get("aws_access_key_id"), None);
    }
}
