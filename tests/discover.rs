//! What users read from `discover` on the demo cluster, pinned by snapshots.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_demo_table_and_json() {
    let cluster = demo().await;
    let table = plugin(&cluster, &["discover", "-A"]).await;
    assert_eq!(table.code, 0, "{}", table.stderr);
    insta::assert_snapshot!("discover_all_namespaces_table", table.stdout);

    let json = plugin(&cluster, &["discover", "-A", "--all-pods", "-o", "json"]).await;
    assert_eq!(json.code, 0, "{}", json.stderr);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    // Every mesh of the demo is recognised, in its form.
    let meshes: std::collections::BTreeSet<String> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["mesh"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        meshes.into_iter().collect::<Vec<_>>(),
        vec!["consul", "istio", "kuma", "linkerd"]
    );
    insta::with_settings!({filters => vec![(r#""node": "node-\d""#, r#""node": "[node]""#)]}, {
        insta::assert_snapshot!("discover_all_pods_json", json.stdout);
    });

    let scoped = plugin(&cluster, &["discover", "-n", "shop", "-l", "app=orders-db"]).await;
    assert_eq!(scoped.code, 0, "{}", scoped.stderr);
    assert!(scoped.stdout.contains("data-orders-db-0"));
    assert!(
        !scoped.stdout.contains("media"),
        "-l narrows to matching pods: {}",
        scoped.stdout
    );
}
