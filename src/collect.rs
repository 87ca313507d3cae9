//! Asking the cluster: the API calls whose results the pure `discover` functions decide on.

use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolumeClaim, Pod};
use kube::api::{Api, ListParams};
use serde::de::DeserializeOwned;

use crate::connect::{explain, Connection};
use crate::exit::Failure;

pub struct Inventory {
    pub pods: Vec<Pod>,
    pub pvcs: Vec<PersistentVolumeClaim>,
    pub namespaces: Vec<Namespace>,
}

/// Objects per list call: kubectl's chunk size (`--chunk-size`, default 500). The API server
/// then serves a big collection as a series of bounded responses rather than one that it must
/// build whole (kubernetes.io/docs/reference/using-api/api-concepts/#retrieving-large-results-sets-in-chunks),
/// and this side decodes each page while the next is on its way.
pub const PAGE: u32 = 500;

/// Every object of a list, asked for in pages of [`PAGE`] following `metadata.continue`:
/// one consistent list (every page is read at the first page's resourceVersion).
pub async fn list_all<K>(api: &Api<K>, lp: &ListParams) -> Result<Vec<K>, kube::Error>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut lp = lp.clone().limit(PAGE);
    let mut items = Vec::new();
    loop {
        let page = api.list(&lp).await?;
        items.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => lp = lp.continue_token(&token),
            None => return Ok(items),
        }
    }
}

/// Pods (filtered by `selector`), PVCs and namespaces in the connection's scope: one paged
/// list per kind, whatever the number of namespaces or pods.
pub async fn collect_inventory(
    conn: &Connection,
    selector: Option<&str>,
) -> Result<Inventory, Failure> {
    let (pods_api, pvc_api): (Api<Pod>, Api<PersistentVolumeClaim>) = if conn.all_namespaces {
        (Api::all(conn.client.clone()), Api::all(conn.client.clone()))
    } else {
        (
            Api::namespaced(conn.client.clone(), &conn.namespace),
            Api::namespaced(conn.client.clone(), &conn.namespace),
        )
    };
    let mut lp = ListParams::default();
    if let Some(s) = selector {
        lp = lp.labels(s);
    }
    let ns_api: Api<Namespace> = Api::all(conn.client.clone());
    // The three reads are independent: asked at once, the slowest (pods, in a big cluster)
    // sets the time instead of the sum.
    let pods = async {
        list_all(&pods_api, &lp)
            .await
            .map_err(|e| explain("listing pods", &e))
    };
    let pvcs = async {
        list_all(&pvc_api, &ListParams::default())
            .await
            .map_err(|e| explain("listing persistentvolumeclaims", &e))
    };
    // Namespace labels only refine mesh detection (Istio ambient); a user who may not read
    // namespaces still gets a result.
    let namespaces = async {
        if conn.all_namespaces {
            list_all(&ns_api, &ListParams::default())
                .await
                .unwrap_or_default()
        } else {
            ns_api
                .get_opt(&conn.namespace)
                .await
                .ok()
                .flatten()
                .into_iter()
                .collect()
        }
    };
    let (pods, pvcs, namespaces) = tokio::join!(pods, pvcs, namespaces);
    let (pods, pvcs) = (pods?, pvcs?);
    Ok(Inventory {
        pods,
        pvcs,
        namespaces,
    })
}

/// The authenticated user's name (SelfSubjectReview, `kubectl auth whoami`, GA in 1.28); None
/// when the API server does not serve it or the call fails: it is a record, not a requirement.
pub async fn whoami(client: &kube::Client) -> Option<String> {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let api: Api<SelfSubjectReview> = Api::all(client.clone());
    match api
        .create(
            &kube::api::PostParams::default(),
            &SelfSubjectReview::default(),
        )
        .await
    {
        Ok(r) => r.status?.user_info?.username,
        Err(e) => {
            tracing::debug!("SelfSubjectReview failed, the backup records no creator: {e}");
            None
        }
    }
}

pub async fn collect_nodes(conn: &Connection) -> Vec<Node> {
    let api: Api<Node> = Api::all(conn.client.clone());
    list_all(&api, &ListParams::default())
        .await
        .unwrap_or_default()
}
