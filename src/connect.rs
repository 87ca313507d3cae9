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
    /// The client runs in a pod of the cluster it talks to, with the pod's service account (a
    /// schedule's CronJob): its API server is on the cluster network, not across a distant
    /// link, so `create --streams auto` uses one stream there.
    pub in_cluster: bool,
}

/// A client config from a kubeconfig and `--context`, and the context's name.
async fn from_kubeconfig(
    kc: Kubeconfig,
    context_flag: Option<&str>,
) -> Result<(kube::Config, Option<String>), Failure> {
    let context = context_flag
        .map(str::to_string)
        .or_else(|| kc.current_context.clone());
    if let Some(c) = context_flag {
        if !kc.contexts.iter().any(|nc| nc.name == c) {
            let known: Vec<&str> = kc.contexts.iter().map(|c| c.name.as_str()).collect();
            return Err(Failure::usage(format!(
                "context {c:?} is not in the kubeconfig; known contexts: {}",
                known.join(", ")
            )));
        }
    }
    let options = KubeConfigOptions {
        context: context_flag.map(str::to_string),
        cluster: None,
        user: None,
    };
    let config = kube::Config::from_custom_kubeconfig(kc, &options)
        .await
        .map_err(|e| Failure::runtime(format!("the kubeconfig cannot be used: {e}")))?;
    Ok((config, context))
}

pub struct ConnectOptions<'a> {
    pub kubeconfig: Option<&'a std::path::Path>,
    pub context: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub all_namespaces: bool,
}

pub async fn connect(opts: &ConnectOptions<'_>) -> Result<Connection, Failure> {
    let (mut config, context, in_cluster) = match opts.kubeconfig {
        Some(p) => {
            let kc = Kubeconfig::read_from(p).map_err(|e| {
                Failure::usage(format!("cannot read kubeconfig {}: {e}. Check the --kubeconfig path.", p.display()))
            })?;
            let (config, context) = from_kubeconfig(kc, opts.context).await?;
            (config, context, false)
        }
        None => match Kubeconfig::read() {
            Ok(kc) => {
                let (config, context) = from_kubeconfig(kc, opts.context).await?;
                (config, context, false)
            }
            // As kubectl (client-go's loading rules): no kubeconfig at all, inside a pod, means
            // the pod's service account — what a CronJob running a drill uses.
            Err(_) if opts.context.is_none() && std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
                let config = kube::Config::incluster().map_err(|e| {
                    Failure::runtime(format!("no kubeconfig, and the in-cluster service account cannot be used: {e}"))
                })?;
                (config, None, true)
            }
            Err(e) => {
                return Err(Failure::runtime(format!(
                    "no usable kubeconfig: {e}. Set KUBECONFIG or pass --kubeconfig FILE (for a local test cluster: `kubesim serve --state-dir /tmp/ks --kubeconfig /tmp/ks/kubeconfig`)."
                )))
            }
        },
    };
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
        in_cluster,
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
