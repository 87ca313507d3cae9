//! Asking the cluster: the API calls whose results the pure `discover` functions decide on.

use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolumeClaim, Pod};
use kube::api::{Api, ListParams};

use crate::connect::{explain, Connection};
use crate::exit::Failure;

pub struct Inventory {
    pub pods: Vec<Pod>,
    pub pvcs: Vec<PersistentVolumeClaim>,
    pub namespaces: Vec<Namespace>,
}

/// Pods (filtered by `selector`), PVCs and namespaces in the connection's scope.
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
        pods_api
            .list(&lp)
            .await
            .map(|l| l.items)
            .map_err(|e| explain("listing pods", &e))
    };
    let pvcs = async {
        pvc_api
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .map_err(|e| explain("listing persistentvolumeclaims", &e))
    };
    // Namespace labels only refine mesh detection (Istio ambient); a user who may not read
    // namespaces still gets a result.
    let namespaces = async {
        if conn.all_namespaces {
            ns_api
                .list(&ListParams::default())
                .await
                .map(|l| l.items)
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
    api.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}
