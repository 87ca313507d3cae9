//! A minimal client for kubesim's own endpoint (`POST /kubesim/v1/faults`), used by
//! `kubesim fault` and by tests that run kubesim as a separate process.

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::faults::FaultRequest;

struct Target {
    host: String,
    port: u16,
    token: String,
    ca_pem: Vec<u8>,
}

fn read_kubeconfig(path: &Path) -> Result<Target, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read kubeconfig {}: {e}", path.display()))?;
    let cfg: serde_json::Value = serde_yaml::from_str(&text)
        .map_err(|e| format!("kubeconfig {} is not valid YAML: {e}", path.display()))?;
    let server = cfg["clusters"][0]["cluster"]["server"]
        .as_str()
        .ok_or("kubeconfig has no clusters[0].cluster.server")?;
    let url = url::Url::parse(server).map_err(|e| format!("bad server URL {server}: {e}"))?;
    let ca = cfg["clusters"][0]["cluster"]["certificate-authority-data"]
        .as_str()
        .ok_or("kubeconfig has no certificate-authority-data")?;
    let token = cfg["users"][0]["user"]["token"]
        .as_str()
        .ok_or("kubeconfig has no users[0].user.token")?;
    Ok(Target {
        host: url.host_str().unwrap_or("127.0.0.1").to_string(),
        port: url.port().unwrap_or(443),
        token: token.to_string(),
        ca_pem: base64::engine::general_purpose::STANDARD
            .decode(ca)
            .map_err(|e| format!("certificate-authority-data is not base64: {e}"))?,
    })
}

fn parse_pem_certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    let text = String::from_utf8_lossy(pem);
    let mut out = Vec::new();
    for block in text.split("-----BEGIN CERTIFICATE-----").skip(1) {
        let body: String = block
            .split("-----END CERTIFICATE-----")
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        if let Ok(der) = base64::engine::general_purpose::STANDARD.decode(body) {
            out.push(CertificateDer::from(der));
        }
    }
    out
}

pub async fn post_fault(kubeconfig: &Path, fault: &FaultRequest) -> Result<(), String> {
    let t = read_kubeconfig(kubeconfig)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in parse_pem_certs(&t.ca_pem) {
        roots
            .add(c)
            .map_err(|e| format!("bad CA certificate: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect((t.host.as_str(), t.port))
        .await
        .map_err(|e| format!("cannot connect to {}:{}: {e}", t.host, t.port))?;
    let name = ServerName::try_from(t.host.clone()).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let body = serde_json::to_vec(fault).map_err(|e| e.to_string())?;
    let req = hyper::Request::post("/kubesim/v1/faults")
        .header("host", format!("{}:{}", t.host, t.port))
        .header("authorization", format!("Bearer {}", t.token))
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status();
    let text = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if !status.is_success() {
        return Err(format!(
            "kubesim refused the fault ({status}): {}",
            String::from_utf8_lossy(&text)
        ));
    }
    Ok(())
}
