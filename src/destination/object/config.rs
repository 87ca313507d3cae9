//! Which credentials, region and endpoint a destination uses, decided from the environment
//! the way each cloud's own tools decide it, and the `object_store` client built from that.
//!
//! Deciding is pure (an [`Env`] in, a plan out) so it is unit-tested without a cloud; the only
//! network step is [`metadata_reachable`], a 1-second TCP probe run before falling back to an
//! instance-metadata endpoint, so that a laptop without credentials gets an answer at once
//! instead of minutes of retries against 169.254.169.254.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, Checksum};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::{BackoffConfig, ClientConfigKey, RetryConfig};

use super::aws_profile;
use super::url::{ObjectUrl, Provider};
use super::Backend;

/// The process environment, or a made-up one in tests.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub vars: BTreeMap<String, String>,
    pub home: Option<PathBuf>,
}

impl Env {
    pub fn from_process() -> Env {
        Env {
            vars: std::env::vars().collect(),
            home: std::env::var_os("HOME").map(PathBuf::from),
        }
    }

    /// A variable's value; set-but-empty counts as unset, as the AWS CLI treats it.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.vars
            .get(k)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn truthy(&self, k: &str) -> bool {
        self.get(k)
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
    }

    fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (String, &'a str)> + 'a {
        self.vars
            .iter()
            .filter(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
    }
}

/// Where the credentials come from, for messages ("check …").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialSource {
    /// What was used, e.g. "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from the environment".
    pub what: String,
    /// What to check when the store refuses them.
    pub fix: String,
}

/// A client ready to use, with what a message about it needs.
pub struct Built {
    pub store: Arc<dyn Backend>,
    pub credentials: CredentialSource,
    /// Secret values in play, never to be printed.
    pub secrets: Vec<String>,
    /// Whether the store itself verifies a checksum of every upload request.
    pub store_checksum: bool,
    /// Signs requests object_store has no call for (S3's ListMultipartUploads, for `cleanup`).
    pub signer: Option<Arc<dyn object_store::signer::Signer>>,
}

/// A configuration problem found before any request: exit 2, with the variable or file to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Retries per request: 5xx, 429 throttling, timeouts and connection resets are retried with
/// exponential backoff (0.1 s doubling to 15 s, with jitter) at most 8 times or for 3 minutes.
/// Every request is at most one part or one read range, so this bounds each step, not the
/// whole transfer.
pub fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
            base: 2.0,
        },
        max_retries: 8,
        retry_timeout: Duration::from_secs(180),
    }
}

/// object_store's default 30 s covers a whole request; a part of 8-64 MiB over a slow uplink
/// needs longer. Requests are bounded in size, so 10 minutes still catches a hung one.
const REQUEST_TIMEOUT: &str = "10 minutes";
const CONNECT_TIMEOUT: &str = "10 seconds";

const SECRET_VARS: &[&str] = &[
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_MASTER_KEY",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_CLIENT_SECRET",
    "AZURE_CLIENT_SECRET",
    "AZURE_STORAGE_TOKEN",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
    "GOOGLE_BEARER_TOKEN",
];

fn env_secrets(env: &Env) -> Vec<String> {
    let mut out: Vec<String> = SECRET_VARS
        .iter()
        .filter_map(|k| env.get(k).map(str::to_string))
        .collect();
    // A connection string's parts are secrets on their own too.
    if let Some(cs) = env.get("AZURE_STORAGE_CONNECTION_STRING") {
        out.extend(
            connection_string(cs)
                .into_iter()
                .filter(|(k, _)| matches!(k.as_str(), "accountkey" | "sharedaccesssignature"))
                .map(|(_, v)| v),
        );
    }
    out
}

// ---------------------------------------------------------------------------------------------
// S3

/// How S3 requests are signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AwsCredentials {
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (/ `AWS_SESSION_TOKEN`); object_store
    /// reads them itself.
    Environment,
    /// `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN` (IRSA on EKS), exchanged at STS.
    WebIdentity,
    /// Static keys from a profile.
    Profile {
        name: String,
        file: String,
        key_id: String,
        secret: String,
        token: Option<String>,
    },
    /// A profile that names a web identity token file and role.
    ProfileWebIdentity {
        name: String,
        token_file: String,
        role_arn: String,
        session_name: Option<String>,
    },
    /// ECS task role or EKS Pod Identity (`AWS_CONTAINER_CREDENTIALS_*`).
    Container,
    /// EC2 instance profile, at the metadata endpoint.
    InstanceMetadata { endpoint: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Plan {
    pub credentials: AwsCredentials,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub virtual_hosted: Option<bool>,
}

const IMDS: &str = "http://169.254.169.254";

fn aws_file(env: &Env, var: &str, default: &str) -> Option<PathBuf> {
    env.get(var)
        .map(PathBuf::from)
        .or_else(|| env.home.as_ref().map(|h| h.join(".aws").join(default)))
}

fn read_ini(
    path: &Option<PathBuf>,
) -> Result<Option<(String, aws_profile::Sections)>, ConfigError> {
    let Some(p) = path else { return Ok(None) };
    match std::fs::read_to_string(p) {
        Ok(text) => Ok(Some((p.display().to_string(), aws_profile::parse(&text)))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ConfigError(format!(
            "cannot read AWS file {}: {e}",
            p.display()
        ))),
    }
}

/// Decides S3 credentials, region and endpoint. Order (the AWS CLI's, minus SSO and
/// assume-role chains): environment keys, web identity from the environment, the profile
/// (`AWS_PROFILE`, else `default`) in `~/.aws/credentials` and `~/.aws/config`, container
/// credentials, instance metadata.
pub fn plan_s3(env: &Env, endpoint_flag: Option<&str>) -> Result<S3Plan, ConfigError> {
    let config_path = aws_file(env, "AWS_CONFIG_FILE", "config");
    let creds_path = aws_file(env, "AWS_SHARED_CREDENTIALS_FILE", "credentials");
    let config = read_ini(&config_path)?;
    let creds = read_ini(&creds_path)?;
    let explicit = env.get("AWS_PROFILE").or(env.get("AWS_DEFAULT_PROFILE"));
    let name = explicit.unwrap_or("default");
    let profile = aws_profile::profile(
        name,
        config.as_ref().map(|(f, s)| (f.as_str(), s)),
        creds.as_ref().map(|(f, s)| (f.as_str(), s)),
    );
    let files = || {
        [&creds_path, &config_path]
            .iter()
            .filter_map(|p| p.as_ref().map(|p| p.display().to_string()))
            .collect::<Vec<_>>()
            .join(" and ")
    };
    if explicit.is_some() && profile.is_none() {
        return Err(ConfigError(format!(
            "AWS_PROFILE={name}, but no profile {name:?} is in {} (sections [{name}] in the credentials file or [profile {name}] in the config file); fix AWS_PROFILE or add the profile",
            files()
        )));
    }
    let has_env_keys =
        env.get("AWS_ACCESS_KEY_ID").is_some() || env.get("AWS_SECRET_ACCESS_KEY").is_some();
    if has_env_keys {
        match (env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")) {
            (Some(_), None) => {
                return Err(ConfigError(
                    "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not; set both, or unset both to use a profile or role".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError(
                    "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not; set both, or unset both to use a profile or role".into(),
                ))
            }
            _ => {}
        }
    }
    let web_identity_env =
        env.get("AWS_WEB_IDENTITY_TOKEN_FILE").is_some() && env.get("AWS_ROLE_ARN").is_some();
    let credentials = if has_env_keys {
        AwsCredentials::Environment
    } else if web_identity_env {
        AwsCredentials::WebIdentity
    } else if let Some(p) = profile.as_ref().filter(|p| {
        explicit.is_some()
            || p.get("aws_access_key_id").is_some()
            || p.get("web_identity_token_file").is_some()
    }) {
        profile_credentials(name, p, &files())?
    } else if env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
        || (env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some()
            && env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE").is_some())
    {
        AwsCredentials::Container
    } else {
        if env.truthy("AWS_EC2_METADATA_DISABLED") {
            return Err(no_aws_credentials(
                &files(),
                "instance metadata is off (AWS_EC2_METADATA_DISABLED)",
            ));
        }
        AwsCredentials::InstanceMetadata {
            endpoint: env
                .get("AWS_METADATA_ENDPOINT")
                .or(env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT"))
                .unwrap_or(IMDS)
                .trim_end_matches('/')
                .to_string(),
        }
    };
    let setting = |k: &str| profile.as_ref().and_then(|p| p.get(k)).map(str::to_string);
    let region = env
        .get("AWS_REGION")
        .or(env.get("AWS_DEFAULT_REGION"))
        .map(str::to_string)
        .or_else(|| setting("region"));
    let endpoint = endpoint_flag
        .map(str::to_string)
        .or_else(|| env.get("AWS_ENDPOINT_URL_S3").map(str::to_string))
        .or_else(|| env.get("AWS_ENDPOINT_URL").map(str::to_string))
        .or_else(|| setting("s3.endpoint_url"))
        .or_else(|| setting("endpoint_url"));
    if let Some(e) = &endpoint {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(ConfigError(format!(
                "endpoint {e:?} must be an http:// or https:// URL, e.g. --endpoint http://127.0.0.1:9000"
            )));
        }
    }
    let virtual_hosted = match env.get("AWS_VIRTUAL_HOSTED_STYLE_REQUEST") {
        Some(v) => Some(matches!(
            v.to_ascii_lowercase().as_str(),
            "1" | "true" | "yes"
        )),
        None => setting("s3.addressing_style").map(|s| s == "virtual"),
    };
    Ok(S3Plan {
        credentials,
        region,
        endpoint,
        virtual_hosted,
    })
}

fn profile_credentials(
    name: &str,
    p: &aws_profile::Profile,
    files: &str,
) -> Result<AwsCredentials, ConfigError> {
    if let (Some(key_id), Some(secret)) =
        (p.get("aws_access_key_id"), p.get("aws_secret_access_key"))
    {
        return Ok(AwsCredentials::Profile {
            name: name.to_string(),
            file: p
                .credentials_from
                .clone()
                .unwrap_or_else(|| files.to_string()),
            key_id: key_id.to_string(),
            secret: secret.to_string(),
            token: p.get("aws_session_token").map(str::to_string),
        });
    }
    if p.get("aws_access_key_id").is_some() {
        return Err(ConfigError(format!(
            "profile {name:?} in {} has aws_access_key_id but no aws_secret_access_key",
            p.credentials_from.as_deref().unwrap_or(files)
        )));
    }
    if let (Some(token_file), Some(role_arn)) =
        (p.get("web_identity_token_file"), p.get("role_arn"))
    {
        return Ok(AwsCredentials::ProfileWebIdentity {
            name: name.to_string(),
            token_file: token_file.to_string(),
            role_arn: role_arn.to_string(),
            session_name: p.get("role_session_name").map(str::to_string),
        });
    }
    let kind = [
        "sso_session",
        "sso_start_url",
        "role_arn",
        "credential_process",
        "credential_source",
    ]
    .iter()
    .find(|k| p.get(k).is_some());
    Err(ConfigError(match kind {
        Some(k) => format!(
            "profile {name:?} gets its credentials through {k}, which this tool does not run itself; export them for this shell with `eval \"$(aws configure export-credentials --profile {name} --format env)\"` (the AWS CLI sets AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN)"
        ),
        None => format!(
            "profile {name:?} in {files} has no credentials (aws_access_key_id and aws_secret_access_key); add them, or pick another profile with AWS_PROFILE"
        ),
    }))
}

fn no_aws_credentials(files: &str, why: &str) -> ConfigError {
    ConfigError(format!(
        "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with a profile in {files}, or AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN; {why}"
    ))
}

impl AwsCredentials {
    fn source(&self) -> CredentialSource {
        match self {
            AwsCredentials::Environment => CredentialSource {
                what: "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from the environment".into(),
                fix: "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary keys)".into(),
            },
            AwsCredentials::WebIdentity => CredentialSource {
                what: "web identity (AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_ARN)".into(),
                fix: "AWS_ROLE_ARN and the role's trust policy, and that AWS_WEB_IDENTITY_TOKEN_FILE holds a current token".into(),
            },
            AwsCredentials::Profile { name, file, .. } => CredentialSource {
                what: format!("profile {name:?} in {file}"),
                fix: format!("aws_access_key_id and aws_secret_access_key of profile {name:?} in {file} (or choose another with AWS_PROFILE)"),
            },
            AwsCredentials::ProfileWebIdentity { name, .. } => CredentialSource {
                what: format!("web identity of profile {name:?}"),
                fix: format!("role_arn and web_identity_token_file of profile {name:?}"),
            },
            AwsCredentials::Container => CredentialSource {
                what: "container credentials (AWS_CONTAINER_CREDENTIALS_*)".into(),
                fix: "the task or pod identity role".into(),
            },
            AwsCredentials::InstanceMetadata { endpoint } => CredentialSource {
                what: format!("the instance profile from instance metadata ({endpoint})"),
                fix: "the instance profile's role, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into(),
            },
        }
    }
}

/// reqwest is built with rustls but no bundled provider (see Cargo.toml): install ring, which
/// kube uses too, before any client is built. A second install is refused, harmlessly.
fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn apply_prefixed<B>(
    mut b: B,
    env: &Env,
    prefix: &str,
    with: impl Fn(B, &str, &str) -> Option<B>,
) -> B
where
    B: Clone,
{
    for (k, v) in env.with_prefix(prefix) {
        if let Some(next) = with(b.clone(), &k, v) {
            b = next;
        }
    }
    b
}

pub fn build_s3(url: &ObjectUrl, env: &Env, plan: &S3Plan) -> Result<Built, ConfigError> {
    install_crypto();
    // The environment's AWS_* settings first (what AmazonS3Builder::from_env reads), then ours.
    let mut b = apply_prefixed(AmazonS3Builder::new(), env, "AWS_", |b, k, v| {
        k.parse::<AmazonS3ConfigKey>()
            .ok()
            .map(|key| b.with_config(key, v))
    });
    b = b
        .with_bucket_name(&url.bucket)
        .with_retry(retry_config())
        .with_checksum_algorithm(Checksum::SHA256)
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
            REQUEST_TIMEOUT,
        )
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
            CONNECT_TIMEOUT,
        );
    let mut secrets = env_secrets(env);
    match &plan.credentials {
        AwsCredentials::Profile {
            key_id,
            secret,
            token,
            ..
        } => {
            b = b.with_access_key_id(key_id).with_secret_access_key(secret);
            secrets.push(secret.clone());
            if let Some(t) = token {
                b = b.with_token(t);
                secrets.push(t.clone());
            }
        }
        AwsCredentials::ProfileWebIdentity {
            token_file,
            role_arn,
            session_name,
            ..
        } => {
            b = b
                .with_config(AmazonS3ConfigKey::WebIdentityTokenFile, token_file)
                .with_config(AmazonS3ConfigKey::RoleArn, role_arn);
            if let Some(s) = session_name {
                b = b.with_config(AmazonS3ConfigKey::RoleSessionName, s);
            }
        }
        AwsCredentials::InstanceMetadata { endpoint } => {
            b = b.with_config(AmazonS3ConfigKey::MetadataEndpoint, endpoint);
        }
        _ => {}
    }
    if let Some(r) = &plan.region {
        b = b.with_region(r);
    }
    if let Some(e) = &plan.endpoint {
        b = b.with_endpoint(e);
        if e.starts_with("http://") {
            // The user named a plain-HTTP endpoint (MinIO, moto, a lab Ceph): that is consent.
            b = b.with_allow_http(true);
        }
    }
    if let Some(v) = plan.virtual_hosted {
        b = b.with_virtual_hosted_style_request(v);
    }
    let store = b
        .build()
        .map_err(|e| ConfigError(format!("S3 settings: {e}")))?;
    let store = Arc::new(store);
    Ok(Built {
        store: store.clone(),
        credentials: plan.credentials.source(),
        secrets,
        store_checksum: true,
        signer: Some(store),
    })
}

// ---------------------------------------------------------------------------------------------
// Azure

/// `Key=Value;Key=Value` of an Azure connection string, keys lowercased.
pub fn connection_string(s: &str) -> Vec<(String, String)> {
    s.split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AzureCredentials {
    AccountKey { var: &'static str },
    Sas { var: &'static str },
    BearerToken,
    ClientSecret,
    WorkloadIdentity,
    AzureCli,
    ManagedIdentity { endpoint: String },
    Emulator,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzurePlan {
    pub account: Option<String>,
    /// Settings to hand to the builder (object_store's config keys).
    pub settings: Vec<(AzureConfigKey, String)>,
    pub credentials: AzureCredentials,
    pub endpoint: Option<String>,
}

/// Decides Azure credentials: what object_store reads (`AZURE_STORAGE_ACCOUNT_NAME`,
/// `AZURE_STORAGE_ACCOUNT_KEY`, `AZURE_STORAGE_SAS_TOKEN`, `AZURE_CLIENT_ID`/`SECRET`/
/// `TENANT_ID`, `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_USE_AZURE_CLI`), plus the names the
/// `az` CLI uses (`AZURE_STORAGE_ACCOUNT`, `AZURE_STORAGE_KEY`,
/// `AZURE_STORAGE_CONNECTION_STRING`). With none of them: managed identity when the metadata
/// endpoint answers, else the Azure CLI's login when `az` is installed
/// (DefaultAzureCredential's order; the switch to the CLI is [`use_azure_cli`]).
pub fn plan_azure(env: &Env, endpoint_flag: Option<&str>) -> Result<AzurePlan, ConfigError> {
    let mut settings = Vec::new();
    let cs = env
        .get("AZURE_STORAGE_CONNECTION_STRING")
        .map(connection_string)
        .unwrap_or_default();
    let cs_get = |k: &str| cs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let emulator = env.truthy("AZURE_STORAGE_USE_EMULATOR")
        || cs_get("usedevelopmentstorage").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if emulator {
        settings.push((AzureConfigKey::UseEmulator, "true".to_string()));
    }
    let account = env
        .get("AZURE_STORAGE_ACCOUNT_NAME")
        .map(str::to_string)
        .or_else(|| env.get("AZURE_STORAGE_ACCOUNT").map(str::to_string))
        .or_else(|| cs_get("accountname"));
    if let Some(a) = &account {
        settings.push((AzureConfigKey::AccountName, a.clone()));
    } else if !emulator {
        return Err(ConfigError(
            "no Azure storage account: set AZURE_STORAGE_ACCOUNT_NAME (or AZURE_STORAGE_ACCOUNT, or AZURE_STORAGE_CONNECTION_STRING)".into(),
        ));
    }
    let key_var = [
        "AZURE_STORAGE_ACCOUNT_KEY",
        "AZURE_STORAGE_ACCESS_KEY",
        "AZURE_STORAGE_MASTER_KEY",
        "AZURE_STORAGE_KEY",
    ]
    .into_iter()
    .find(|k| env.get(k).is_some());
    let sas_var = ["AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_SAS_KEY"]
        .into_iter()
        .find(|k| env.get(k).is_some());
    let credentials = if env.get("AZURE_STORAGE_TOKEN").is_some() {
        AzureCredentials::BearerToken
    } else if let Some(var) = key_var {
        settings.push((
            AzureConfigKey::AccessKey,
            env.get(var).unwrap_or_default().to_string(),
        ));
        AzureCredentials::AccountKey { var }
    } else if let Some(k) = cs_get("accountkey") {
        settings.push((AzureConfigKey::AccessKey, k));
        AzureCredentials::AccountKey {
            var: "AZURE_STORAGE_CONNECTION_STRING",
        }
    } else if env.get("AZURE_FEDERATED_TOKEN_FILE").is_some()
        && env.get("AZURE_CLIENT_ID").is_some()
        && env.get("AZURE_TENANT_ID").is_some()
    {
        AzureCredentials::WorkloadIdentity
    } else if env.get("AZURE_CLIENT_ID").is_some()
        && env.get("AZURE_CLIENT_SECRET").is_some()
        && env.get("AZURE_TENANT_ID").is_some()
    {
        AzureCredentials::ClientSecret
    } else if let Some(var) = sas_var {
        AzureCredentials::Sas { var }
    } else if let Some(sas) = cs_get("sharedaccesssignature") {
        settings.push((AzureConfigKey::SasKey, sas));
        AzureCredentials::Sas {
            var: "AZURE_STORAGE_CONNECTION_STRING",
        }
    } else if emulator {
        AzureCredentials::Emulator
    } else if env.truthy("AZURE_USE_AZURE_CLI") {
        settings.push((AzureConfigKey::UseAzureCli, "true".into()));
        AzureCredentials::AzureCli
    } else {
        let endpoint = env
            .get("AZURE_MSI_ENDPOINT")
            .or(env.get("MSI_ENDPOINT"))
            .unwrap_or("http://169.254.169.254/metadata/identity/oauth2/token")
            .to_string();
        AzureCredentials::ManagedIdentity { endpoint }
    };
    let endpoint = endpoint_flag
        .map(str::to_string)
        .or_else(|| cs_get("blobendpoint"))
        .or_else(|| {
            let suffix = cs_get("endpointsuffix")?;
            let proto = cs_get("defaultendpointsprotocol").unwrap_or_else(|| "https".into());
            Some(format!("{proto}://{}.blob.{suffix}", account.as_deref()?))
        });
    Ok(AzurePlan {
        account,
        settings,
        credentials,
        endpoint,
    })
}

/// Managed identity did not answer and `az` is installed: sign in through the Azure CLI.
pub fn use_azure_cli(plan: &mut AzurePlan) {
    plan.settings
        .push((AzureConfigKey::UseAzureCli, "true".into()));
    plan.credentials = AzureCredentials::AzureCli;
}

impl AzureCredentials {
    fn source(&self) -> CredentialSource {
        let (what, fix): (String, String) = match self {
            AzureCredentials::AccountKey { var } => (
                format!("the account key in {var}"),
                format!("{var} and the account name (AZURE_STORAGE_ACCOUNT_NAME)"),
            ),
            AzureCredentials::Sas { var } => (
                format!("the SAS token in {var}"),
                format!("{var}: its expiry, its permissions (read, write, list, delete) and that it is for this container"),
            ),
            AzureCredentials::BearerToken => ("AZURE_STORAGE_TOKEN".into(), "AZURE_STORAGE_TOKEN (it may have expired)".into()),
            AzureCredentials::ClientSecret => (
                "the service principal in AZURE_CLIENT_ID, AZURE_CLIENT_SECRET and AZURE_TENANT_ID".into(),
                "AZURE_CLIENT_ID, AZURE_CLIENT_SECRET, AZURE_TENANT_ID and the principal's role (Storage Blob Data Contributor)".into(),
            ),
            AzureCredentials::WorkloadIdentity => (
                "workload identity (AZURE_FEDERATED_TOKEN_FILE, AZURE_CLIENT_ID, AZURE_TENANT_ID)".into(),
                "the federated credential of AZURE_CLIENT_ID and its role (Storage Blob Data Contributor)".into(),
            ),
            AzureCredentials::AzureCli => ("the Azure CLI login (az login)".into(), "`az account show`, and the signed-in user's role (Storage Blob Data Contributor)".into()),
            AzureCredentials::ManagedIdentity { endpoint } => (
                format!("managed identity ({endpoint})"),
                "the identity's role (Storage Blob Data Contributor), or set AZURE_STORAGE_ACCOUNT_KEY".into(),
            ),
            AzureCredentials::Emulator => ("the storage emulator's well-known key".into(), "AZURE_STORAGE_USE_EMULATOR and AZURITE_BLOB_STORAGE_URL".into()),
        };
        CredentialSource { what, fix }
    }
}

pub fn build_azure(url: &ObjectUrl, env: &Env, plan: &AzurePlan) -> Result<Built, ConfigError> {
    install_crypto();
    let mut b = apply_prefixed(MicrosoftAzureBuilder::new(), env, "AZURE_", |b, k, v| {
        k.parse::<AzureConfigKey>()
            .ok()
            .map(|key| b.with_config(key, v))
    });
    if let Some(msi) = env.get("MSI_ENDPOINT").or(env.get("AZURE_MSI_ENDPOINT")) {
        b = b.with_msi_endpoint(msi);
    }
    for (k, v) in &plan.settings {
        b = b.with_config(*k, v);
    }
    if let AzureCredentials::ManagedIdentity { endpoint } = &plan.credentials {
        b = b.with_msi_endpoint(endpoint);
    }
    b = b
        .with_container_name(&url.bucket)
        .with_retry(retry_config())
        .with_config(
            AzureConfigKey::Client(ClientConfigKey::Timeout),
            REQUEST_TIMEOUT,
        )
        .with_config(
            AzureConfigKey::Client(ClientConfigKey::ConnectTimeout),
            CONNECT_TIMEOUT,
        );
    if let Some(e) = &plan.endpoint {
        b = b.with_endpoint(e.clone());
        if e.starts_with("http://") {
            b = b.with_allow_http(true);
        }
    }
    let store = b
        .build()
        .map_err(|e| ConfigError(format!("Azure settings: {e}")))?;
    let mut secrets = env_secrets(env);
    secrets.extend(
        plan.settings
            .iter()
            .filter(|(k, _)| matches!(k, AzureConfigKey::AccessKey | AzureConfigKey::SasKey))
            .map(|(_, v)| v.clone()),
    );
    Ok(Built {
        store: Arc::new(store),
        credentials: plan.credentials.source(),
        secrets,
        store_checksum: false,
        signer: None,
    })
}

// ---------------------------------------------------------------------------------------------
// GCS

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GcsCredentials {
    /// A service account key file (`GOOGLE_APPLICATION_CREDENTIALS`, `GOOGLE_SERVICE_ACCOUNT`).
    File { var: &'static str, path: String },
    /// The key itself in `GOOGLE_SERVICE_ACCOUNT_KEY`.
    Key,
    /// `gcloud auth application-default login`'s file.
    ApplicationDefault { path: String },
    /// The metadata server of a GCE VM or GKE node (Workload Identity).
    Metadata { endpoint: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcsPlan {
    pub credentials: GcsCredentials,
    pub endpoint: Option<String>,
}

/// Decides GCS credentials the way Google's client libraries do (Application Default
/// Credentials): `GOOGLE_APPLICATION_CREDENTIALS`, then gcloud's
/// `~/.config/gcloud/application_default_credentials.json`, then the metadata server.
pub fn plan_gcs(env: &Env, endpoint_flag: Option<&str>) -> Result<GcsPlan, ConfigError> {
    let file_var = [
        "GOOGLE_APPLICATION_CREDENTIALS",
        "GOOGLE_SERVICE_ACCOUNT",
        "GOOGLE_SERVICE_ACCOUNT_PATH",
        "SERVICE_ACCOUNT",
    ]
    .into_iter()
    .find(|k| env.get(k).is_some());
    let credentials = if let Some(var) = file_var {
        let path = env.get(var).unwrap_or_default().to_string();
        if !Path::new(&path).is_file() {
            return Err(ConfigError(format!(
                "{var}={path}, but there is no such file; point {var} at a service account key file (JSON), or unset it"
            )));
        }
        GcsCredentials::File { var, path }
    } else if env.get("GOOGLE_SERVICE_ACCOUNT_KEY").is_some() {
        GcsCredentials::Key
    } else if let Some(adc) = env
        .home
        .as_ref()
        .map(|h| h.join(".config/gcloud/application_default_credentials.json"))
        .filter(|p| p.is_file())
    {
        GcsCredentials::ApplicationDefault {
            path: adc.display().to_string(),
        }
    } else {
        // object_store asks GCE_METADATA_HOST (default metadata.google.internal), then
        // GCE_METADATA_IP (default 169.254.169.254); the probe checks the first one set.
        let endpoint = env
            .get("GCE_METADATA_HOST")
            .or(env.get("GCE_METADATA_IP"))
            .unwrap_or("169.254.169.254");
        GcsCredentials::Metadata {
            endpoint: format!("http://{endpoint}"),
        }
    };
    let endpoint = endpoint_flag
        .map(str::to_string)
        .or_else(|| env.get("GOOGLE_BASE_URL").map(str::to_string));
    Ok(GcsPlan {
        credentials,
        endpoint,
    })
}

impl GcsCredentials {
    fn source(&self) -> CredentialSource {
        match self {
            GcsCredentials::File { var, path } => CredentialSource {
                what: format!("the service account key {path} ({var})"),
                fix: format!("{var} and the service account's role on the bucket (Storage Object Admin)"),
            },
            GcsCredentials::Key => CredentialSource {
                what: "the service account key in GOOGLE_SERVICE_ACCOUNT_KEY".into(),
                fix: "GOOGLE_SERVICE_ACCOUNT_KEY and the account's role on the bucket".into(),
            },
            GcsCredentials::ApplicationDefault { path } => CredentialSource {
                what: format!("application default credentials in {path}"),
                fix: "`gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS".into(),
            },
            GcsCredentials::Metadata { .. } => CredentialSource {
                what: "the metadata server's service account".into(),
                fix: "the VM's or workload's service account, or set GOOGLE_APPLICATION_CREDENTIALS to a key file".into(),
            },
        }
    }
}

pub fn build_gcs(url: &ObjectUrl, env: &Env, plan: &GcsPlan) -> Result<Built, ConfigError> {
    install_crypto();
    let mut b = apply_prefixed(
        GoogleCloudStorageBuilder::new(),
        env,
        "GOOGLE_",
        |b, k, v| {
            k.parse::<GoogleConfigKey>()
                .ok()
                .map(|key| b.with_config(key, v))
        },
    );
    if let GcsCredentials::File {
        var: "SERVICE_ACCOUNT",
        path,
    } = &plan.credentials
    {
        // The one variable object_store reads without the GOOGLE_ prefix.
        b = b.with_config(GoogleConfigKey::ServiceAccount, path);
    }
    b = b
        .with_bucket_name(&url.bucket)
        .with_retry(retry_config())
        .with_config(
            GoogleConfigKey::Client(ClientConfigKey::Timeout),
            REQUEST_TIMEOUT,
        )
        .with_config(
            GoogleConfigKey::Client(ClientConfigKey::ConnectTimeout),
            CONNECT_TIMEOUT,
        );
    if let Some(e) = &plan.endpoint {
        b = b.with_base_url(e);
        if e.starts_with("http://") {
            b = b.with_config(GoogleConfigKey::Client(ClientConfigKey::AllowHttp), "true");
        }
    }
    let store = b
        .build()
        .map_err(|e| ConfigError(format!("GCS settings: {e}")))?;
    Ok(Built {
        store: Arc::new(store),
        credentials: plan.credentials.source(),
        secrets: env_secrets(env),
        store_checksum: false,
        signer: None,
    })
}

// ---------------------------------------------------------------------------------------------

/// The instance-metadata endpoint a plan falls back to, if any (to probe before use).
pub fn metadata_endpoint(provider: Provider, plan: &Plan) -> Option<String> {
    match (provider, plan) {
        (_, Plan::S3(p)) => match &p.credentials {
            AwsCredentials::InstanceMetadata { endpoint } => Some(endpoint.clone()),
            _ => None,
        },
        (_, Plan::Azure(p)) => match &p.credentials {
            AzureCredentials::ManagedIdentity { endpoint } => Some(endpoint.clone()),
            _ => None,
        },
        (_, Plan::Gcs(p)) => match &p.credentials {
            GcsCredentials::Metadata { endpoint } => Some(endpoint.clone()),
            _ => None,
        },
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    S3(S3Plan),
    Azure(AzurePlan),
    Gcs(GcsPlan),
}

pub fn plan(url: &ObjectUrl, env: &Env, endpoint_flag: Option<&str>) -> Result<Plan, ConfigError> {
    Ok(match url.provider {
        Provider::S3 => Plan::S3(plan_s3(env, endpoint_flag)?),
        Provider::Azure => Plan::Azure(plan_azure(env, endpoint_flag)?),
        Provider::Gcs => Plan::Gcs(plan_gcs(env, endpoint_flag)?),
    })
}

pub fn build(url: &ObjectUrl, env: &Env, plan: &Plan) -> Result<Built, ConfigError> {
    match plan {
        Plan::S3(p) => build_s3(url, env, p),
        Plan::Azure(p) => build_azure(url, env, p),
        Plan::Gcs(p) => build_gcs(url, env, p),
    }
}

/// Whether `program` is on PATH.
pub fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// Whether the metadata endpoint `url` accepts a TCP connection within a second. Only
/// called when no other credentials exist; off a cloud VM the address does not answer.
pub fn metadata_reachable(url: &str) -> bool {
    use std::net::ToSocketAddrs;
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let hostport = rest.split('/').next().unwrap_or(rest);
    let hostport = if hostport.contains(':') && !hostport.ends_with(']') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    let Ok(addrs) = hostport.to_socket_addrs() else {
        return false;
    };
    addrs
        .into_iter()
        .any(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok())
}

/// What to say when the metadata endpoint of `plan` does not answer.
pub fn unreachable_metadata(plan: &Plan, endpoint: &str, env: &Env) -> ConfigError {
    match plan {
        Plan::S3(_) => {
            let files = [
                aws_file(env, "AWS_SHARED_CREDENTIALS_FILE", "credentials"),
                aws_file(env, "AWS_CONFIG_FILE", "config"),
            ]
            .iter()
            .flatten()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" and ");
            no_aws_credentials(
                &files,
                &format!("instance metadata ({endpoint}) does not answer from here"),
            )
        }
        Plan::Azure(_) => ConfigError(format!(
            "no Azure credentials found: set AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN, or AZURE_CLIENT_ID/AZURE_CLIENT_SECRET/AZURE_TENANT_ID, or AZURE_USE_AZURE_CLI=true after `az login`; managed identity ({endpoint}) does not answer from here"
        )),
        Plan::Gcs(_) => ConfigError(format!(
            "no Google Cloud credentials found: set GOOGLE_APPLICATION_CREDENTIALS to a service account key file, or run `gcloud auth application-default login`; the metadata server ({endpoint}) does not answer from here"
        )),
    }
}

#[cfg(test)]
mod tests;
