/*!
Leaf certificates for intercepted hosts: minted by the local CA, cached in memory.

A leaf names one host (a DNS SAN, or an IP SAN for an IP literal: a client checks the
name it connected to, not the port, so one leaf serves every port of a host). It is valid
for seven days and replaced a day before it expires. Signing costs a key generation and
an ECDSA signature, so it runs on the blocking pool, and it runs once per host however
many connections arrive at the same moment: the first caller mints, the others wait for
its result (a per-host `OnceCell`). The cache holds the finished rustls `ServerConfig`,
so the handshake path only clones an `Arc`.
*/

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;
use tokio::sync::OnceCell;

use super::ca::Ca;

/// How long a leaf is valid.
const LEAF_LIFETIME: time::Duration = time::Duration::days(7);
/// A leaf is replaced this long before it expires, so no client ever sees it expire.
const RENEW_BEFORE: time::Duration = time::Duration::days(1);
/// Backdating, for clients whose clock is a little behind.
const BACKDATE: time::Duration = time::Duration::hours(1);
/// More hosts than this (a `*.domain` pattern met many names) empties the cache.
const MAX_CACHED: usize = 10_000;

/// A minted leaf, ready for handshakes.
struct Leaf {
    config: Arc<ServerConfig>,
    renew_at: SystemTime,
}

/// The leaves of one CA.
pub struct Leaves {
    ca: Arc<Ca>,
    cells: Mutex<HashMap<String, Arc<OnceCell<Leaf>>>>,
    /// Leaves minted so far by this daemon (every CA), for tests and metrics.
    minted: Arc<AtomicU64>,
}

impl Leaves {
    pub fn new(ca: Arc<Ca>, minted: Arc<AtomicU64>) -> Self {
        Self {
            ca,
            cells: Mutex::default(),
            minted,
        }
    }

    /// The TLS server configuration presenting `host`'s leaf, minted if needed.
    pub async fn config_for(&self, host: &str) -> Result<Arc<ServerConfig>, String> {
        loop {
            let cell = {
                let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
                if cells.len() >= MAX_CACHED && !cells.contains_key(host) {
                    cells.clear();
                }
                cells.entry(host.to_string()).or_default().clone()
            };
            let leaf = cell
                .get_or_try_init(|| async {
                    let (ca, name) = (self.ca.clone(), host.to_string());
                    let leaf = tokio::task::spawn_blocking(move || mint(&ca, &name))
                        .await
                        .map_err(|e| e.to_string())??;
                    self.minted.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(host, "minted a leaf certificate");
                    Ok::<_, String>(leaf)
                })
                .await?;
            if SystemTime::now() < leaf.renew_at {
                return Ok(leaf.config.clone());
            }
            // Due for renewal: the first caller to notice swaps in an empty cell.
            let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
            if cells.get(host).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                cells.insert(host.to_string(), Arc::default());
            }
        }
    }
}

/// Signs a leaf for `host` and builds its TLS configuration (HTTP/1.1 only: the
/// requests inside go to pingora's HTTP/1 session).
fn mint(ca: &Ca, host: &str) -> Result<Leaf, String> {
    let (cert, key_der) = mint_cert(ca, host)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![cert, ca.cert_der.clone()], key_der)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let renew_at = SystemTime::now()
        + std::time::Duration::from_secs(
            (LEAF_LIFETIME - RENEW_BEFORE)
                .whole_seconds()
                .unsigned_abs(),
        );
    Ok(Leaf {
        config: Arc::new(config),
        renew_at,
    })
}

/// The leaf certificate for `host` (DER) and its new key.
fn mint_cert(
    ca: &Ca,
    host: &str,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), String> {
    let err = |e: rcgen::Error| format!("minting a certificate for {host}: {e}");
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, host);
    params.distinguished_name = dn;
    params.subject_alt_names = vec![match host.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(host.try_into().map_err(err)?),
    }];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + LEAF_LIFETIME;
    let (issuer, issuer_key) = ca.signer();
    let cert = params.signed_by(&key, issuer, issuer_key).map_err(err)?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((cert.der().clone(), key_der))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::snapshot::CaSetting;

    fn ca(dir: &std::path::Path) -> Arc<Ca> {
        let setting = CaSetting::Generated {
            dir: Some(dir.to_path_buf()),
            name_constraints: false,
        };
        Arc::new(super::super::ca::load_or_create(&setting, &[]).unwrap())
    }

    #[test]
    fn a_leaf_names_its_host_for_seven_days_and_is_signed_by_the_ca() {
        let home = tempfile::tempdir().unwrap();
        let ca = ca(home.path());
        for (host, want) in [
            ("data.example.org", "DNSName(\"data.example.org\")"),
            ("127.0.0.1", "IPAddress([127, 0, 0, 1])"),
            (
                "::1",
                "IPAddress([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])",
            ),
        ] {
            let (cert, _) = mint_cert(&ca, host).unwrap();
            let (_, x) = x509_parser::parse_x509_certificate(&cert).unwrap();
            let san = x.subject_alternative_name().unwrap().unwrap();
            assert_eq!(
                format!("{:?}", san.value.general_names),
                format!("[{want}]")
            );
            let v = x.validity();
            let secs = v.not_after.timestamp() - v.not_before.timestamp();
            assert_eq!(secs, (LEAF_LIFETIME + BACKDATE).whole_seconds());
            let (_, issuer) = x509_parser::parse_x509_certificate(&ca.cert_der).unwrap();
            assert_eq!(x.issuer(), issuer.subject());
            x.verify_signature(Some(issuer.public_key())).unwrap();
            assert!(!x.is_ca());
        }
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_mint_and_the_cache_serves_later_ones() {
        let home = tempfile::tempdir().unwrap();
        let minted = Arc::new(AtomicU64::new(0));
        let leaves = Arc::new(Leaves::new(ca(home.path()), minted.clone()));
        let calls: Vec<_> = (0..20)
            .map(|_| {
                let l = leaves.clone();
                tokio::spawn(async move { l.config_for("a.example.org").await.unwrap() })
            })
            .collect();
        let mut configs = Vec::new();
        for c in calls {
            configs.push(c.await.unwrap());
        }
        assert!(configs.iter().all(|c| Arc::ptr_eq(c, &configs[0])));
        assert_eq!(minted.load(Ordering::Relaxed), 1);
        leaves.config_for("b.example.org").await.unwrap();
        leaves.config_for("a.example.org").await.unwrap();
        assert_eq!(minted.load(Ordering::Relaxed), 2);
    }
}
