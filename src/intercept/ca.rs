/*!
The local CA that signs the leaf certificates of intercepted hosts.

Clients trust this one certificate (`authproxy ca` prints its path), so its key is a
secret like a password: it is written 0600 in a 0700 directory, never logged, never
printed, and a key file that others may read is refused (with the file named) rather
than used, whether it was generated here or given as `intercept_ca: { cert, key }`.

The generated CA is ECDSA P-256, valid for ten years, named
`authproxy local CA (<user>@<host>)`, stored as `ca.pem` and `ca-key.pem` in
`$XDG_DATA_HOME/authproxy/ca/`. With `intercept_ca: { name_constraints: true }` it carries
X.509 permitted subtrees for the `intercept` patterns of the configuration it was made
under, so that even a stolen key signs for nothing else; a CA made earlier is kept as
is (remove the directory to make a new one).
*/

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType, GeneralSubtree,
    IsCa, KeyPair, KeyUsagePurpose, NameConstraints,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::config::snapshot::{CaSetting, InterceptEntry};
use crate::rule::HostPattern;

/// The generated CA's file names inside its directory.
pub const CERT_FILE: &str = "ca.pem";
pub const KEY_FILE: &str = "ca-key.pem";

/// Ten years, as mitmproxy's and most local CAs.
const CA_LIFETIME: time::Duration = time::Duration::days(3650);

/// How long a process that lost the race to create the CA waits for the winner's files.
const CREATE_WAIT: Duration = Duration::from_secs(5);

/// A loaded CA: what clients trust, and what signs leaves.
pub struct Ca {
    /// The CA certificate as clients get it (PEM) and as TLS sends it (DER).
    pub cert_pem: String,
    pub cert_der: CertificateDer<'static>,
    /// The file clients are told to trust.
    pub cert_path: PathBuf,
    /// The issuer's name and key identifier, as rcgen signs with them.
    issuer: rcgen::Certificate,
    key: KeyPair,
}

/// Never shows the key.
impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// The issuer and its key, for [`CertificateParams::signed_by`].
    pub(super) fn signer(&self) -> (&rcgen::Certificate, &KeyPair) {
        (&self.issuer, &self.key)
    }
}

/// Why the CA cannot be used. Messages name files, never their contents.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(
        "no place for the interception CA: neither XDG_DATA_HOME nor HOME is set; \
         name one with intercept_ca: {{ cert: FILE, key: FILE }}"
    )]
    NoDir,
    #[error("{}: {what}", path.display())]
    Io { path: PathBuf, what: String },
    #[error(
        "{}: the interception CA key may be read by others (mode {mode:04o}); authproxy \
         will not use it until it is private: chmod 600 {}",
        path.display(), path.display()
    )]
    KeyTooOpen { path: PathBuf, mode: u32 },
    #[error("{}: not a usable CA certificate: {why}", path.display())]
    BadCert { path: PathBuf, why: String },
    #[error(
        "{}: not a usable CA key (an unencrypted PKCS#8 `PRIVATE KEY` is needed; \
         convert with: openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pk8)",
        path.display()
    )]
    BadKey { path: PathBuf },
    #[error("{}: this key does not belong to the certificate {}", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("intercept_ca.name_constraints: the pattern `{0}` covers every host, so no name constraint can express it")]
    Unconstrainable(String),
    #[error("the interception CA could not be made: {0}")]
    Generate(String),
}

fn io_error(path: &Path, e: &io::Error) -> CaError {
    let what = match e.kind() {
        io::ErrorKind::NotFound => "no such file".to_string(),
        io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => e.to_string(),
    };
    CaError::Io {
        path: path.to_path_buf(),
        what,
    }
}

/// Where the CA certificate is (or will be) for this setting.
pub fn cert_path(setting: &CaSetting) -> Result<PathBuf, CaError> {
    match setting {
        CaSetting::Files { cert, .. } => Ok(cert.clone()),
        CaSetting::Generated { dir, .. } => Ok(dir.as_ref().ok_or(CaError::NoDir)?.join(CERT_FILE)),
    }
}

/// Loads the CA the setting names, generating it first if it is the generated one and
/// does not exist yet. Blocking (file system, key generation): call it off the runtime.
pub fn load_or_create(setting: &CaSetting, intercept: &[InterceptEntry]) -> Result<Ca, CaError> {
    match setting {
        CaSetting::Files { cert, key } => from_files(cert, key),
        CaSetting::Generated {
            dir,
            name_constraints,
        } => {
            let dir = dir.as_ref().ok_or(CaError::NoDir)?;
            let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
            if !cert.exists() {
                let constraints = if *name_constraints {
                    Some(constraints_for(intercept)?)
                } else {
                    None
                };
                generate(dir, constraints)?;
            }
            from_files(&cert, &key)
        }
    }
}

/// Reads a CA from its two PEM files, refusing a key others may read.
pub fn from_files(cert_path: &Path, key_path: &Path) -> Result<Ca, CaError> {
    let meta = fs::metadata(key_path).map_err(|e| io_error(key_path, &e))?;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CaError::KeyTooOpen {
            path: key_path.to_path_buf(),
            mode,
        });
    }
    let key_text = fs::read_to_string(key_path).map_err(|e| io_error(key_path, &e))?;
    let key = KeyPair::from_pem(&key_text).map_err(|_| CaError::BadKey {
        path: key_path.to_path_buf(),
    })?;
    drop(key_text);
    let cert_pem = fs::read_to_string(cert_path).map_err(|e| io_error(cert_path, &e))?;
    let bad = |why: &str| CaError::BadCert {
        path: cert_path.to_path_buf(),
        why: why.to_string(),
    };
    let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|_| bad("no PEM `CERTIFICATE` block"))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der)
        .map_err(|_| bad("the certificate does not parse"))?;
    if !parsed.is_ca() {
        return Err(bad(
            "it is not a CA certificate (no basicConstraints CA:TRUE)",
        ));
    }
    if !parsed.validity().is_valid() {
        return Err(bad("it is outside its validity period"));
    }
    if parsed.public_key().raw != key.public_key_der().as_slice() {
        return Err(CaError::Mismatch {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
        });
    }
    let params = CertificateParams::from_ca_cert_der(&cert_der)
        .map_err(|_| bad("rcgen cannot sign with this certificate"))?;
    let issuer = params
        .self_signed(&key)
        .map_err(|_| bad("rcgen cannot sign with this certificate's key"))?;
    Ok(Ca {
        cert_pem,
        cert_der,
        cert_path: cert_path.to_path_buf(),
        issuer,
        key,
    })
}

/// The file `authproxy ca --bundle` writes beside a generated CA.
pub const BUNDLE_FILE: &str = "bundle.pem";

/// Writes the system's trusted roots (as rustls-native-certs finds them: `SSL_CERT_FILE`,
/// else the distribution's bundle) followed by the CA into `dir/bundle.pem` (0644,
/// replaced atomically), for tools that take one CA file and must still reach hosts
/// that are not intercepted. Returns its path and how many roots it holds.
pub fn write_bundle(ca: &Ca, dir: &Path) -> Result<(PathBuf, usize), CaError> {
    use base64::Engine;
    let found = rustls_native_certs::load_native_certs();
    let mut text = String::new();
    let mut roots = 0;
    for der in found.unwrap_or_default() {
        if der.as_ref() == ca.cert_der.as_ref() {
            continue;
        }
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        text.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            text.push_str(std::str::from_utf8(line).unwrap_or_default());
            text.push('\n');
        }
        text.push_str("-----END CERTIFICATE-----\n");
        roots += 1;
    }
    text.push_str(&ca.cert_pem);
    if !text.ends_with('\n') {
        text.push('\n');
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_error(dir, &e))?;
    let path = dir.join(BUNDLE_FILE);
    let tmp = dir.join(format!(".{BUNDLE_FILE}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    write_new(&tmp, text.as_bytes(), 0o644)?;
    fs::rename(&tmp, &path).map_err(|e| io_error(&path, &e))?;
    Ok((path, roots))
}

/// The permitted subtrees for the `intercept` patterns: a DNS name covers itself and
/// every name below it, so `*.x.org` becomes `x.org`; an IP literal becomes its /32 or
/// /128.
fn constraints_for(intercept: &[InterceptEntry]) -> Result<NameConstraints, CaError> {
    let mut permitted = Vec::new();
    for e in intercept {
        let subtree = match &e.pattern.host {
            HostPattern::Any => return Err(CaError::Unconstrainable(e.written.clone())),
            HostPattern::Exact(h) => match h.parse::<IpAddr>() {
                Ok(ip) => {
                    let bits = if ip.is_ipv4() { 32 } else { 128 };
                    GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(ip, bits))
                }
                Err(_) => GeneralSubtree::DnsName(h.clone()),
            },
            HostPattern::Suffix(s) => GeneralSubtree::DnsName(s.trim_start_matches('.').into()),
        };
        if !permitted.contains(&subtree) {
            permitted.push(subtree);
        }
    }
    Ok(NameConstraints {
        permitted_subtrees: permitted,
        excluded_subtrees: Vec::new(),
    })
}

/// `authproxy local CA (<user>@<host>)`: which machine's CA a browser's list shows.
fn common_name() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| format!("uid {}", rustix::process::getuid().as_raw()));
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let host = if host.is_empty() {
        "localhost".into()
    } else {
        host
    };
    format!("authproxy local CA ({user}@{host})")
}

/// Makes a new CA in `dir` (created 0700): key 0600, certificate 0644. Two processes
/// may race here (`authproxy ca` and the daemon): the key is put in place with a hard
/// link, which only one can win; the other waits for the winner's certificate.
fn generate(dir: &Path, constraints: Option<NameConstraints>) -> Result<(), CaError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_error(dir, &e))?;
    let gen = |e: rcgen::Error| CaError::Generate(e.to_string());
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name());
    dn.push(DnType::OrganizationName, "authproxy");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + CA_LIFETIME;
    params.name_constraints = constraints;
    let cert = params.self_signed(&key).map_err(gen)?;

    let tmp = |name: &str| dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let (key_tmp, cert_tmp) = (tmp(KEY_FILE), tmp(CERT_FILE));
    let (key_path, cert_path) = (dir.join(KEY_FILE), dir.join(CERT_FILE));
    write_new(&key_tmp, key.serialize_pem().as_bytes(), 0o600)?;
    if let Err(e) = write_new(&cert_tmp, cert.pem().as_bytes(), 0o644) {
        let _ = fs::remove_file(&key_tmp);
        return Err(e);
    }
    let linked = fs::hard_link(&key_tmp, &key_path);
    let _ = fs::remove_file(&key_tmp);
    match linked {
        Ok(()) => {
            fs::rename(&cert_tmp, &cert_path).map_err(|e| io_error(&cert_path, &e))?;
            tracing::info!(cert = %cert_path.display(), "created the local CA for https interception");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let _ = fs::remove_file(&cert_tmp);
            let deadline = std::time::Instant::now() + CREATE_WAIT;
            while !cert_path.exists() {
                if std::time::Instant::now() > deadline {
                    return Err(CaError::Io {
                        path: key_path,
                        what: format!(
                            "a CA key exists without its certificate {CERT_FILE}; \
                             remove the directory to make a new CA"
                        ),
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(())
        }
        Err(e) => {
            let _ = fs::remove_file(&cert_tmp);
            Err(io_error(&key_path, &e))
        }
    }
}

/// Writes a file that must not exist yet, created with `mode` (not widened by a umask
/// later: the mode is set at creation, and a umask only narrows it).
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), CaError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| io_error(path, &e))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(|e| io_error(path, &e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn generated(dir: &Path) -> CaSetting {
        CaSetting::Generated {
            dir: Some(dir.to_path_buf()),
            name_constraints: false,
        }
    }

    #[test]
    fn generated_once_with_private_modes_and_reloaded() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join("authproxy/ca");
        let ca = load_or_create(&generated(&dir), &[]).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
        assert_eq!(mode(&dir.join(CERT_FILE)), 0o644);
        assert_eq!(ca.cert_path, dir.join(CERT_FILE));
        let (_, x) = x509_parser::parse_x509_certificate(&ca.cert_der).unwrap();
        assert!(x.is_ca());
        let cn = x.subject().iter_common_name().next().unwrap();
        assert!(cn.as_str().unwrap().starts_with("authproxy local CA ("));
        let days =
            (x.validity().not_after.timestamp() - x.validity().not_before.timestamp()) / 86400;
        assert_eq!(days, 3651);
        let again = load_or_create(&generated(&dir), &[]).unwrap();
        assert_eq!(again.cert_der, ca.cert_der);
        assert!(!format!("{ca:?}").contains("PRIVATE"));
    }

    #[test]
    fn an_open_key_is_refused_with_its_name() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join("ca");
        load_or_create(&generated(&dir), &[]).unwrap();
        let key = dir.join(KEY_FILE);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create(&generated(&dir), &[]).unwrap_err();
        let text = e.to_string();
        assert!(text.contains(&key.display().to_string()), "{text}");
        assert!(
            text.contains("0644") && text.contains("chmod 600"),
            "{text}"
        );
        let key_text = fs::read_to_string(&key).unwrap();
        assert!(!text.contains(key_text.lines().nth(1).unwrap()));
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let home = tempfile::tempdir().unwrap();
        let (a, b) = (home.path().join("a"), home.path().join("b"));
        load_or_create(&generated(&a), &[]).unwrap();
        load_or_create(&generated(&b), &[]).unwrap();
        let e = from_files(&a.join(CERT_FILE), &b.join(KEY_FILE)).unwrap_err();
        assert!(matches!(e, CaError::Mismatch { .. }), "{e}");
    }
}
