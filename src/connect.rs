//! Building the kube client the way kubectl does: `--kubeconfig`, then `$KUBECONFIG`
//! (colon-separated, merged), then `~/.kube/config`; `--context`; the context's namespace.

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::exit::Failure;

pub struct Connection {
    pub client: kube::Client,
    /// `-n`, else the context's namespace, else `default`.
    pub namespace: String,
    pub all_namespaces: bool,
    pub server: String,
    pub context: Option<String>,
}

pub struct ConnectOptions<'a> {
    pub kubeconfig: Option<&'a std::path::Path>,
    pub context: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub all_namespaces: bool,
}

pub async fn connect(opts: &ConnectOptions<'_>) -> Result<Connection, Failure> {
    let kc = match opts.kubeconfig {
        Some(p) => Kubeconfig::read_from(p).map_err(|e| {
            Failure::usage(format!("cannot read kubeconfig {}: {e}. Check the --kubeconfig path.", p.display()))
        })?,
        None => Kubeconfig::read().map_err(|e| {
            Failure::runtime(format!(
                "no usable kubeconfig: {e}. Set KUBECONFIG or pass --kubeconfig FILE (for a local test cluster: `kubesim serve --state-dir /tmp/ks --kubeconfig /tmp/ks/kubeconfig`)."
            ))
        })?,
    };
    let context = opts
        .context
        .map(str::to_string)
        .or_else(|| kc.current_context.clone());
    if let Some(c) = opts.context {
        if !kc.contexts.iter().any(|nc| nc.name == c) {
            let known: Vec<&str> = kc.contexts.iter().map(|c| c.name.as_str()).collect();
            return Err(Failure::usage(format!(
                "context {c:?} is not in the kubeconfig; known contexts: {}",
                known.join(", ")
            )));
        }
    }
    let options = KubeConfigOptions {
        context: opts.context.map(str::to_string),
        cluster: None,
        user: None,
    };
    let mut config = kube::Config::from_custom_kubeconfig(kc, &options)
        .await
        .map_err(|e| Failure::runtime(format!("the kubeconfig cannot be used: {e}")))?;
    // Exec streams of large volumes can be quiet for a while (a slow tar on a cold disk);
    // every wait in this tool has its own timeout instead.
    config.read_timeout = None;
    let namespace = opts
        .namespace
        .map(str::to_string)
        .unwrap_or_else(|| config.default_namespace.clone());
    let server = config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_string();
    let client = kube::Client::try_from(config)
        .map_err(|e| Failure::runtime(format!("cannot build a client for {server}: {e}")))?;
    Ok(Connection {
        client,
        namespace,
        all_namespaces: opts.all_namespaces,
        server,
        context,
    })
}

/// A kube API error in words a user can act on.
pub fn explain(action: &str, e: &kube::Error) -> Failure {
    match e {
        kube::Error::Api(s) if s.code == 403 => Failure::runtime(format!(
            "{action}: forbidden: {}. Ask your cluster admin for the permissions listed in the README (RBAC section).",
            s.message
        ))
        .permanent(),
        kube::Error::Api(s) if s.code == 401 => Failure::runtime(format!(
            "{action}: the cluster rejected your credentials (401). Refresh them (e.g. re-run your cloud's get-credentials command)."
        ))
        .permanent(),
        kube::Error::Api(s) => {
            let f = Failure::runtime(format!("{action}: {} ({})", s.message, s.reason));
            // 4xx other than conflicts and throttling will fail the same way again.
            if (400..500).contains(&s.code) && s.code != 409 && s.code != 429 {
                f.permanent()
            } else {
                f
            }
        }
        other => Failure::runtime(format!("{action}: {other}. Is the cluster reachable? Check `kubectl cluster-info`.")),
    }
}
