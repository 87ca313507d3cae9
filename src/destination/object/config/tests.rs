use super::*;
use crate::destination::object::url;

fn env(vars: &[(&str, &str)]) -> Env {
    Env {
        vars: vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        home: Some(PathBuf::from("/nonexistent-home")),
    }
}

fn with_files(vars: &[(&str, &str)], config: &str, credentials: &str) -> (Env, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(".aws")).unwrap();
    std::fs::write(dir.path().join(".aws/config"), config).unwrap();
    std::fs::write(dir.path().join(".aws/credentials"), credentials).unwrap();
    let mut e = env(vars);
    e.home = Some(dir.path().to_path_buf());
    (e, dir)
}

fn u(s: &str) -> ObjectUrl {
    url::parse(s).unwrap().unwrap()
}

#[test]
fn s3_environment_keys_come_first() {
    let e = env(&[
        ("AWS_ACCESS_KEY_ID", "AKIA1"),
        ("AWS_SECRET_ACCESS_KEY", "s3cr3t-value"),
        ("AWS_REGION", "eu-central-1"),
        ("AWS_PROFILE", ""),
    ]);
    let p = plan_s3(&e, None).unwrap();
    assert_eq!(p.credentials, AwsCredentials::Environment);
    assert_eq!(p.region.as_deref(), Some("eu-central-1"));
    assert_eq!(p.endpoint, None);
    let built = build_s3(&u("s3://bucket-a/x"), &e, &p).unwrap();
    assert!(built.secrets.contains(&"s3cr3t-value".to_string()));
    assert!(
        built.store_checksum,
        "S3 uploads carry a SHA-256 the store checks"
    );
}

#[test]
fn s3_half_set_keys_name_the_missing_variable() {
    let e = plan_s3(&env(&[("AWS_ACCESS_KEY_ID", "AKIA1")]), None).unwrap_err();
    assert!(e.0.contains("AWS_SECRET_ACCESS_KEY is not"), "{}", e.0);
    let e = plan_s3(&env(&[("AWS_SECRET_ACCESS_KEY", "x")]), None).unwrap_err();
    assert!(e.0.contains("AWS_ACCESS_KEY_ID is not"), "{}", e.0);
}

#[test]
fn s3_endpoint_precedence_flag_env_profile() {
    let (e, _d) = with_files(
        &[
            ("AWS_PROFILE", "minio"),
            ("AWS_ENDPOINT_URL", "http://env:1"),
        ],
        "[profile minio]\nendpoint_url = http://profile:2\ns3 =\n  addressing_style = virtual\n",
        "[minio]\naws_access_key_id = AK\naws_secret_access_key = SK-long-secret\n",
    );
    let p = plan_s3(&e, Some("http://flag:3")).unwrap();
    assert_eq!(p.endpoint.as_deref(), Some("http://flag:3"));
    assert_eq!(p.virtual_hosted, Some(true));
    assert_eq!(
        plan_s3(&e, None).unwrap().endpoint.as_deref(),
        Some("http://env:1")
    );
    let mut e2 = e.clone();
    e2.vars
        .insert("AWS_ENDPOINT_URL_S3".into(), "http://s3-specific:4".into());
    assert_eq!(
        plan_s3(&e2, None).unwrap().endpoint.as_deref(),
        Some("http://s3-specific:4")
    );
    e2.vars.remove("AWS_ENDPOINT_URL_S3");
    e2.vars.remove("AWS_ENDPOINT_URL");
    assert_eq!(
        plan_s3(&e2, None).unwrap().endpoint.as_deref(),
        Some("http://profile:2")
    );
    let bad = plan_s3(&e, Some("minio:9000")).unwrap_err();
    assert!(bad.0.contains("http:// or https://"), "{}", bad.0);
}

#[test]
fn s3_profiles_from_the_shared_files() {
    let (e, dir) = with_files(
        &[("AWS_PROFILE", "backup")],
        "[default]\nregion = us-west-2\n[profile backup]\nregion = ap-south-1\n",
        "[backup]\naws_access_key_id = AKIABACKUP\naws_secret_access_key = backup-secret-1\naws_session_token = tok-123456\n",
    );
    let p = plan_s3(&e, None).unwrap();
    match &p.credentials {
        AwsCredentials::Profile {
            name,
            file,
            key_id,
            token,
            ..
        } => {
            assert_eq!(name, "backup");
            assert_eq!(key_id, "AKIABACKUP");
            assert_eq!(token.as_deref(), Some("tok-123456"));
            assert!(file.ends_with(".aws/credentials"), "{file}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(p.region.as_deref(), Some("ap-south-1"));
    let built = build_s3(&u("s3://bucket-a"), &e, &p).unwrap();
    assert!(built.secrets.contains(&"backup-secret-1".to_string()));
    assert!(built.secrets.contains(&"tok-123456".to_string()));
    assert!(built.credentials.what.contains("profile \"backup\""));
    // AWS_REGION beats the profile's region.
    let mut e2 = e.clone();
    e2.vars.insert("AWS_REGION".into(), "eu-north-1".into());
    assert_eq!(
        plan_s3(&e2, None).unwrap().region.as_deref(),
        Some("eu-north-1")
    );
    // Without AWS_PROFILE: the default profile, when it has keys.
    let mut e3 = e.clone();
    e3.vars.remove("AWS_PROFILE");
    std::fs::write(
        dir.path().join(".aws/credentials"),
        "[default]\naws_access_key_id = AKIADEF\naws_secret_access_key = def-secret\n",
    )
    .unwrap();
    let p = plan_s3(&e3, None).unwrap();
    assert!(matches!(p.credentials, AwsCredentials::Profile { ref name, .. } if name == "default"));
    assert_eq!(p.region.as_deref(), Some("us-west-2"));
    // AWS_SHARED_CREDENTIALS_FILE / AWS_CONFIG_FILE move the files.
    let elsewhere = dir.path().join("creds-elsewhere");
    std::fs::write(
        &elsewhere,
        "[default]\naws_access_key_id = AKIAELSE\naws_secret_access_key = else-secret\n",
    )
    .unwrap();
    e3.vars.insert(
        "AWS_SHARED_CREDENTIALS_FILE".into(),
        elsewhere.display().to_string(),
    );
    assert!(matches!(
        plan_s3(&e3, None).unwrap().credentials,
        AwsCredentials::Profile { ref key_id, .. } if key_id == "AKIAELSE"
    ));
}

#[test]
fn s3_profile_errors_name_the_profile_and_files() {
    let (e, _d) = with_files(
        &[("AWS_PROFILE", "missing")],
        "[profile sso]\nsso_session = corp\n[profile empty]\nregion = x\n",
        "",
    );
    let err = plan_s3(&e, None).unwrap_err().0;
    assert!(err.contains("AWS_PROFILE=missing"), "{err}");
    assert!(
        err.contains(".aws/credentials") && err.contains(".aws/config"),
        "{err}"
    );
    let mut e2 = e.clone();
    e2.vars.insert("AWS_PROFILE".into(), "sso".into());
    let err = plan_s3(&e2, None).unwrap_err().0;
    assert!(err.contains("sso_session"), "{err}");
    assert!(
        err.contains("aws configure export-credentials --profile sso"),
        "{err}"
    );
    e2.vars.insert("AWS_PROFILE".into(), "empty".into());
    let err = plan_s3(&e2, None).unwrap_err().0;
    assert!(err.contains("has no credentials"), "{err}");
}

#[test]
fn s3_web_identity_container_and_instance_metadata() {
    let p = plan_s3(
        &env(&[
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/secrets/token"),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/backup"),
        ]),
        None,
    )
    .unwrap();
    assert_eq!(p.credentials, AwsCredentials::WebIdentity);
    let p = plan_s3(
        &env(&[(
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "/v2/credentials/x",
        )]),
        None,
    )
    .unwrap();
    assert_eq!(p.credentials, AwsCredentials::Container);
    let p = plan_s3(&env(&[]), None).unwrap();
    assert_eq!(
        p.credentials,
        AwsCredentials::InstanceMetadata {
            endpoint: "http://169.254.169.254".into()
        }
    );
    let p = plan_s3(
        &env(&[("AWS_METADATA_ENDPOINT", "http://127.0.0.1:9/")]),
        None,
    )
    .unwrap();
    assert_eq!(
        metadata_endpoint(Provider::S3, &Plan::S3(p)),
        Some("http://127.0.0.1:9".into())
    );
    let err = plan_s3(&env(&[("AWS_EC2_METADATA_DISABLED", "true")]), None)
        .unwrap_err()
        .0;
    assert!(err.starts_with("no AWS credentials found"), "{err}");
    assert!(
        err.contains("AWS_ACCESS_KEY_ID") && err.contains("AWS_PROFILE"),
        "{err}"
    );
    // A profile with a web identity is handed to object_store's STS exchange.
    let (e, _d) = with_files(
        &[("AWS_PROFILE", "irsa")],
        "[profile irsa]\nweb_identity_token_file = /t\nrole_arn = arn:aws:iam::1:role/r\n",
        "",
    );
    assert!(matches!(
        plan_s3(&e, None).unwrap().credentials,
        AwsCredentials::ProfileWebIdentity { .. }
    ));
}

#[test]
fn unreachable_metadata_is_a_clear_error() {
    // Port 9 on loopback: nothing listens, the probe fails at once and never leaves the host.
    assert!(!metadata_reachable("http://127.0.0.1:9"));
    let e = env(&[("AWS_METADATA_ENDPOINT", "http://127.0.0.1:9")]);
    let plan = Plan::S3(plan_s3(&e, None).unwrap());
    let msg = unreachable_metadata(&plan, "http://127.0.0.1:9", &e).0;
    assert!(msg.contains("does not answer"), "{msg}");
    assert!(msg.contains("AWS_SECRET_ACCESS_KEY"), "{msg}");
}

#[test]
fn azure_account_key_sas_cli_names_and_connection_strings() {
    let err = plan_azure(&env(&[]), None).unwrap_err().0;
    assert!(err.contains("AZURE_STORAGE_ACCOUNT_NAME"), "{err}");
    let p = plan_azure(
        &env(&[
            ("AZURE_STORAGE_ACCOUNT", "acct"),
            ("AZURE_STORAGE_KEY", "a2V5a2V5a2V5"),
        ]),
        None,
    )
    .unwrap();
    assert_eq!(p.account.as_deref(), Some("acct"));
    assert_eq!(
        p.credentials,
        AzureCredentials::AccountKey {
            var: "AZURE_STORAGE_KEY"
        }
    );
    let p = plan_azure(
        &env(&[
            ("AZURE_STORAGE_ACCOUNT_NAME", "acct"),
            ("AZURE_STORAGE_SAS_TOKEN", "sv=2022&sig=abc"),
        ]),
        None,
    )
    .unwrap();
    assert_eq!(
        p.credentials,
        AzureCredentials::Sas {
            var: "AZURE_STORAGE_SAS_TOKEN"
        }
    );
    let p = plan_azure(
        &env(&[
            ("AZURE_STORAGE_ACCOUNT_NAME", "acct"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_CLIENT_SECRET", "s"),
            ("AZURE_TENANT_ID", "t"),
        ]),
        None,
    )
    .unwrap();
    assert_eq!(p.credentials, AzureCredentials::ClientSecret);
    let mut p = plan_azure(&env(&[("AZURE_STORAGE_ACCOUNT_NAME", "acct")]), None).unwrap();
    assert!(matches!(
        p.credentials,
        AzureCredentials::ManagedIdentity { .. }
    ));
    use_azure_cli(&mut p);
    assert_eq!(p.credentials, AzureCredentials::AzureCli);
    let cs = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;";
    let e = env(&[("AZURE_STORAGE_CONNECTION_STRING", cs)]);
    let p = plan_azure(&e, None).unwrap();
    assert_eq!(p.account.as_deref(), Some("devstoreaccount1"));
    assert_eq!(
        p.endpoint.as_deref(),
        Some("http://127.0.0.1:10000/devstoreaccount1")
    );
    assert!(matches!(p.credentials, AzureCredentials::AccountKey { .. }));
    let built = build_azure(&u("az://backups/x"), &e, &p).unwrap();
    assert!(built
        .secrets
        .iter()
        .any(|s| s.starts_with("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50")));
    let p = plan_azure(
        &env(&[(
            "AZURE_STORAGE_CONNECTION_STRING",
            "AccountName=a1;AccountKey=a2V5;EndpointSuffix=core.windows.net",
        )]),
        None,
    )
    .unwrap();
    assert_eq!(
        p.endpoint.as_deref(),
        Some("https://a1.blob.core.windows.net")
    );
}

#[test]
fn gcs_application_default_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("sa.json");
    std::fs::write(
        &key,
        r#"{"type": "authorized_user", "client_id": "id", "client_secret": "gcs-client-secret", "refresh_token": "refresh"}"#,
    )
    .unwrap();
    let e = env(&[("GOOGLE_APPLICATION_CREDENTIALS", key.to_str().unwrap())]);
    let p = plan_gcs(&e, None).unwrap();
    assert!(matches!(
        p.credentials,
        GcsCredentials::File {
            var: "GOOGLE_APPLICATION_CREDENTIALS",
            ..
        }
    ));
    let built = build_gcs(&u("gs://my-bucket/p"), &e, &p).unwrap();
    assert!(built.credentials.what.contains("sa.json"));
    let err = plan_gcs(
        &env(&[("GOOGLE_APPLICATION_CREDENTIALS", "/nope/key.json")]),
        None,
    )
    .unwrap_err()
    .0;
    assert!(
        err.contains("GOOGLE_APPLICATION_CREDENTIALS=/nope/key.json"),
        "{err}"
    );
    // gcloud's file in the home directory, then the metadata server.
    let home = tempfile::tempdir().unwrap();
    let adc = home.path().join(".config/gcloud");
    std::fs::create_dir_all(&adc).unwrap();
    std::fs::write(adc.join("application_default_credentials.json"), "{}").unwrap();
    let mut e = env(&[]);
    e.home = Some(home.path().to_path_buf());
    assert!(matches!(
        plan_gcs(&e, None).unwrap().credentials,
        GcsCredentials::ApplicationDefault { .. }
    ));
    let p = plan_gcs(&env(&[]), Some("http://127.0.0.1:4443")).unwrap();
    assert_eq!(
        p.credentials,
        GcsCredentials::Metadata {
            endpoint: "http://169.254.169.254".into()
        }
    );
    let p2 = plan_gcs(&env(&[("GCE_METADATA_HOST", "127.0.0.1:9")]), None).unwrap();
    assert_eq!(
        metadata_endpoint(Provider::Gcs, &Plan::Gcs(p2)),
        Some("http://127.0.0.1:9".into())
    );
    assert_eq!(p.endpoint.as_deref(), Some("http://127.0.0.1:4443"));
    assert!(metadata_endpoint(Provider::Gcs, &Plan::Gcs(p)).is_some());
}
