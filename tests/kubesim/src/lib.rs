//! kubesim: a loopback Kubernetes API server and node agent whose containers are real sandboxed
//! processes and whose volumes are real directories. See `tests/kubesim/README.md` for what is
//! modelled, what is not, and the sources of each real-cluster behaviour.

pub mod admission;
pub mod api;
pub mod auth;
pub mod batch;
pub mod cluster;
pub mod controllers;
pub mod errors;
pub mod exec;
pub mod exec_io;
pub mod exec_transport;
pub mod faults;
pub mod hollow;
pub mod host;
pub mod kubelet;
pub mod openapi;
pub mod paging;
pub mod patch;
pub mod portforward;
pub mod protobuf;
pub mod resources;
pub mod sandbox;
pub mod scenario;
pub mod selectors;
pub mod server;
pub mod serviceaccounts;
pub mod sim;
pub mod snapshots;
pub mod store;
pub mod tables;
pub mod tls;
pub mod volumes;
pub use cluster::{rule, Cluster, ClusterError, ClusterOptions, Scenario};
pub use faults::FaultRequest;
pub mod client;
