//! A minimal client for a running kubesim, through its kubeconfig: `POST /kubesim/v1/faults`
//! (`kubesim fault`) and `GET /version` (`kubesim status`).

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
    let body = serde_json::to_vec(fault).map_err(|e| e.to_string())?;
    let (status, text) = request(&t, hyper::Method::POST, "/kubesim/v1/faults", body).await?;
    if !status.is_success() {
        return Err(format!(
            "kubesim refused the fault ({status}): {}",
            String::from_utf8_lossy(&text)
        ));
    }
    Ok(())
}

/// Whether the kubesim a kubeconfig points to is up: `Ok(server URL)` when it answers
/// `GET /version` for this kubeconfig's token, else why not (in words a script can print).
///
/// `kubesim serve` writes its kubeconfig only once the cluster is ready (for the demo
/// scenario: every pod Running) and removes it when it stops, so "up" here means "ready".
pub async fn status(kubeconfig: &Path) -> Result<String, String> {
    if !kubeconfig.exists() {
        return Err(format!(
            "not running: there is no kubeconfig at {} (kubesim serve writes it once the cluster is ready)",
            kubeconfig.display()
        ));
    }
    let t = read_kubeconfig(kubeconfig)?;
    let url = format!("https://{}:{}", t.host, t.port);
    match request(&t, hyper::Method::GET, "/version", Vec::new()).await {
        Ok((s, _)) if s.is_success() => Ok(url),
        Ok((s, body)) if s == hyper::StatusCode::UNAUTHORIZED => Err(format!(
            "not running: {url} refused the token in {} ({s}): the kubesim that wrote it is gone and something else serves that port ({})",
            kubeconfig.display(),
            String::from_utf8_lossy(&body).trim()
        )),
        Ok((s, body)) => Err(format!(
            "{url} answered GET /version with {s}: {}",
            String::from_utf8_lossy(&body).trim()
        )),
        Err(e) => Err(format!(
            "not running: {e} (the kubesim that wrote {} is gone)",
            kubeconfig.display()
        )),
    }
}

/// One HTTPS request with the kubeconfig's CA and token; (status, body).
async fn request(
    t: &Target,
    method: hyper::Method,
    path: &str,
    body: Vec<u8>,
) -> Result<(hyper::StatusCode, bytes::Bytes), String> {
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
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
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
    Ok((status, text))
}
