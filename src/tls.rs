/*!
Client certificates and extra trusted CAs, loaded from files at config-load time.

The daemon presents a client certificate to upstream TLS servers and can trust CAs
beyond the system store. They are configured with the netCDF-C rc keys
`HTTP.SSL.CERTIFICATE`, `HTTP.SSL.KEY`, `HTTP.SSL.KEYPASSWORD`, `HTTP.SSL.CAINFO` and
`HTTP.SSL.CAPATH`, or with the YAML `tls:` section (`client_cert`, `client_key`,
`key_password_file`, `pkcs12`, `ca`, `ca_dir`).

This module exists because the TLS engine must never see bad material: handed a
malformed key or a key that does not belong to its certificate, it fails (or panics)
at connect time, deep inside a request, where the user only sees a broken download.
So everything is read, decoded, decrypted and cross-checked here, once, when the
configuration is loaded, and every problem becomes a plain-language [`TlsFileError`]
that names the file and the option to fix. No error message ever contains a
password or key material.

The output is plain DER: the certificate chain and the private key go to pingora's
`CertKey::new(chain, key)` (the key is PKCS#8, PKCS#1 or SEC1 DER, which rustls'
`PrivateKeyDer::try_from(Vec<u8>)` recognises; decrypted and PKCS#12 keys are PKCS#8),
and CA lists are a `Vec` of DER certificates.

Accepted inputs:
* PEM files with `CERTIFICATE`, `PRIVATE KEY` (PKCS#8), `RSA PRIVATE KEY` (PKCS#1),
  `EC PRIVATE KEY` (SEC1) and `ENCRYPTED PRIVATE KEY` (PKCS#8 with PBES2) blocks, in any
  order, certificate and key in one file or in two. Other blocks (`TRUSTED CERTIFICATE`,
  `EC PARAMETERS`, CRLs, ...) and any text between blocks are ignored.
* PKCS#12 (`.p12`/`.pfx`) bundles, modern (AES/SHA-256) and legacy (3DES/RC2) ones.
* Keys: RSA (2048 bits or more), ECDSA P-256 and P-384, Ed25519: what the TLS engine
  (rustls with *ring*) can sign with.

The legacy OpenSSL encrypted PEM format (`Proc-Type: 4,ENCRYPTED`) is refused with the
command that converts it.
*/

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::secret::Secret;

/// Files bigger than this are not certificate material; refuse instead of reading them.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

const CERT_OPTION: &str = "HTTP.SSL.CERTIFICATE / tls.client_cert";
const KEY_OPTION: &str = "HTTP.SSL.KEY / tls.client_key";
const PASSWORD_OPTION: &str = "HTTP.SSL.KEYPASSWORD or tls.key_password_file";
const SUPPORTED_PBE: &str = "PBES2 with AES-CBC and PBKDF2 or scrypt";
const CONVERT_KEY: &str = "openssl pkcs8 -topk8 -v2 aes-256-cbc -in old.pem -out new.pem";

/// A client certificate chain with its private key, ready for the TLS engine.
pub struct ClientIdentity {
    /// DER certificates: the leaf first, then the others in file (or bundle chain) order.
    pub chain: Vec<Vec<u8>>,
    /// DER private key (PKCS#8, PKCS#1 or SEC1) usable by `PrivateKeyDer::try_from`.
    pub key: Secret<Vec<u8>>,
    /// Subject of the leaf certificate, e.g. `CN=alice, O=Example`.
    pub subject: String,
    /// Expiry of the leaf certificate, e.g. `2030-01-31 12:00:00 UTC`.
    pub not_after: String,
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("chain_len", &self.chain.len())
            .field("key", &self.key)
            .field("subject", &self.subject)
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// Why certificate, key or CA material could not be used. Every message names the file
/// and says what to do; none contains a password or key bytes.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    #[error("cannot read {}: {}", .path.display(), io_text(.source))]
    Unreadable { path: PathBuf, source: io::Error },

    #[error("{} is larger than 16 MiB, which no certificate or key file is; check that the option names the right file", .path.display())]
    TooLarge { path: PathBuf },

    #[error("{} holds no PEM certificate; {CERT_OPTION} must name a PEM file with a CERTIFICATE block", .path.display())]
    NoCertificate { path: PathBuf },

    #[error("{} is a binary file, not PEM; for a PKCS#12 (.p12/.pfx) bundle use tls.pkcs12, for a DER certificate convert it with `openssl x509 -inform der -in {} -out cert.pem`", .path.display(), .path.display())]
    NotPem { path: PathBuf },

    #[error("{} holds no private key; set {KEY_OPTION} to the key file (a PEM file with a PRIVATE KEY, RSA PRIVATE KEY, EC PRIVATE KEY or ENCRYPTED PRIVATE KEY block)", .path.display())]
    NoKey { path: PathBuf },

    #[error("{} holds {count} private keys; keep only the one that belongs to the client certificate", .path.display())]
    MultipleKeys { path: PathBuf, count: usize },

    #[error("the private key in {} is encrypted and no password was given; set {PASSWORD_OPTION}", .path.display())]
    EncryptedKeyNoPassword { path: PathBuf },

    #[error("could not decrypt {} with the given password; check {PASSWORD_OPTION}", .path.display())]
    WrongPassword { path: PathBuf },

    #[error("the private key in {} is encrypted with the old OpenSSL \"Proc-Type: 4,ENCRYPTED\" format, which is not supported; convert it with `{CONVERT_KEY}` and set {KEY_OPTION} to new.pem", .path.display())]
    LegacyEncryptedKey { path: PathBuf },

    #[error("the private key in {} is encrypted with a scheme that is not supported: {reason}; convert it with `{CONVERT_KEY}` and set {KEY_OPTION} to new.pem", .path.display())]
    UnsupportedKeyEncryption { path: PathBuf, reason: String },

    #[error("the private key in {} cannot be used: {reason}", .path.display())]
    UnsupportedKey { path: PathBuf, reason: String },

    #[error("the private key in {} does not belong to the certificate in {}; point {KEY_OPTION} and {CERT_OPTION} at a matching pair", .key.display(), .cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },

    #[error("{} line {line}: malformed PEM ({reason}); fix or replace the file", .path.display())]
    BadPem {
        path: PathBuf,
        line: usize,
        reason: &'static str,
    },

    #[error("the certificate at line {line} of {} cannot be used: {reason}; fix or remove it", .path.display())]
    BadCertificate {
        path: PathBuf,
        line: usize,
        reason: String,
    },

    #[error("cannot use the PKCS#12 bundle {}: {reason}", .path.display())]
    Pkcs12 { path: PathBuf, reason: String },

    #[error("{} holds no PEM certificate; HTTP.SSL.CAINFO / tls.ca must name a PEM file with CERTIFICATE blocks", .path.display())]
    EmptyCa { path: PathBuf },

    #[error("the directory {} holds no file with a PEM certificate; HTTP.SSL.CAPATH / tls.ca_dir must name a directory of PEM CA files", .path.display())]
    EmptyCaDir { path: PathBuf },

    #[error(
        "no CA file or directory was given; set HTTP.SSL.CAINFO / tls.ca or HTTP.SSL.CAPATH / tls.ca_dir"
    )]
    NoCaSource,
}

fn io_text(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "no such file or directory".to_string(),
        io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        io::ErrorKind::IsADirectory => "it is a directory, not a file".to_string(),
        io::ErrorKind::NotADirectory => "not a directory".to_string(),
        _ => e.to_string(),
    }
}

/// Load a PEM client certificate (plus intermediates) and its private key.
///
/// `cert` and `key` may name the same file; `key: None` means the key is in `cert`.
/// `password` decrypts an `ENCRYPTED PRIVATE KEY`; it is ignored for a plain key.
/// The leaf is the certificate whose public key matches the private key; the other
/// certificates of `cert` follow it in file order.
pub fn load_identity(
    cert: &Path,
    key: Option<&Path>,
    password: Option<&Secret<String>>,
) -> Result<ClientIdentity, TlsFileError> {
    let cert_data = read_file(cert)?;
    let cert_blocks = parse_pem(cert, &cert_data)?;
    let certs = certificates(cert, &cert_blocks)?;
    if certs.is_empty() {
        return Err(
            if cert_blocks.is_empty() && cert_data.first() == Some(&0x30) {
                TlsFileError::NotPem {
                    path: cert.to_path_buf(),
                }
            } else {
                TlsFileError::NoCertificate {
                    path: cert.to_path_buf(),
                }
            },
        );
    }

    let key_path = key.unwrap_or(cert);
    let key_blocks = if key_path == cert {
        cert_blocks
    } else {
        let data = read_file(key_path)?;
        parse_pem(key_path, &data)?
    };
    let key_der = private_key(key_path, &key_blocks, password)?;
    let spki = key_spki(key_path, &key_der)?;

    let leaf =
        certs
            .iter()
            .position(|c| c.spki == spki)
            .ok_or_else(|| TlsFileError::KeyMismatch {
                cert: cert.to_path_buf(),
                key: key_path.to_path_buf(),
            })?;
    let mut certs = certs;
    let leaf = certs.remove(leaf);
    let mut chain = vec![leaf.der];
    for c in certs {
        if !chain.contains(&c.der) {
            chain.push(c.der);
        }
    }
    Ok(ClientIdentity {
        chain,
        key: Secret::new(key_der),
        subject: leaf.subject,
        not_after: leaf.not_after,
    })
}

/// Load a client certificate, its private key and any CA certificates from a PKCS#12
/// (`.p12`/`.pfx`) bundle. `None` tries the empty password.
pub fn load_pkcs12(
    path: &Path,
    password: Option<&Secret<String>>,
) -> Result<ClientIdentity, TlsFileError> {
    let data = read_file(path)?;
    let pw = password.map(|p| p.expose().as_str()).unwrap_or("");
    let p12_err = |reason: &str| TlsFileError::Pkcs12 {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let parsed = std::panic::catch_unwind(|| p12_keystore::Pkcs12Archive::from_pkcs12(&data, pw))
        .map_err(|_| p12_err("the file is damaged"))?;
    let archive = parsed.map_err(|e| {
        use p12_keystore::error::Error as E;
        let password_problem = || match password {
            None => TlsFileError::EncryptedKeyNoPassword {
                path: path.to_path_buf(),
            },
            Some(_) => TlsFileError::WrongPassword {
                path: path.to_path_buf(),
            },
        };
        match e {
            E::MacError(_) | E::UnpadError => password_problem(),
            E::Pkcs5Error(ref s) if s.to_ascii_lowercase().contains("decrypt") => {
                password_problem()
            }
            E::UnsupportedEncryptionScheme | E::UnsupportedMacAlgorithm | E::Pkcs5Error(_) => {
                p12_err("it uses an encryption or integrity scheme that is not supported; re-export it with `openssl pkcs12 -export -keypbe AES-256-CBC -certpbe AES-256-CBC -macalg sha256`")
            }
            E::InvalidParameters => p12_err(
                "its encryption parameters are invalid or demand too much work (iteration count)",
            ),
            _ => p12_err("it is not a PKCS#12 (.p12/.pfx) file or it is damaged"),
        }
    })?;

    if archive.keys.is_empty() {
        return Err(p12_err("it holds no private key"));
    }
    let mut certs = Vec::new();
    for (i, bag) in archive.certs.iter().enumerate() {
        let der = bag.cert.as_der().to_vec();
        if certs
            .iter()
            .any(|c: &(CertInfo, Option<Vec<u8>>)| c.0.der == der)
        {
            continue;
        }
        let info = parse_cert(path, i + 1, der).map_err(|_| {
            p12_err(&format!(
                "certificate number {} in it cannot be parsed",
                i + 1
            ))
        })?;
        certs.push((info, bag.local_key_id.clone()));
    }
    if certs.is_empty() {
        return Err(p12_err("it holds no certificate"));
    }

    let mut last_mismatch = false;
    for key in &archive.keys {
        let key_der = key.key.as_der().to_vec();
        let spki = key_spki(path, &key_der)?;
        let by_id = key.local_key_id.as_ref().and_then(|id| {
            certs
                .iter()
                .position(|(_, cid)| cid.as_deref() == Some(id.as_ref()))
        });
        let leaf = match by_id.or_else(|| certs.iter().position(|(c, _)| c.spki == spki)) {
            Some(i) => i,
            None => continue,
        };
        if certs[leaf].0.spki != spki {
            last_mismatch = true;
            continue;
        }
        let mut rest: Vec<CertInfo> = certs.iter().map(|(c, _)| c.clone()).collect();
        let leaf = rest.remove(leaf);
        let mut chain = vec![leaf.der.clone()];
        // Follow issuer links from the leaf, then append whatever is left in bag order.
        let mut issuer = leaf.issuer_raw.clone();
        let mut subject = leaf.subject_raw.clone();
        while issuer != subject {
            let Some(i) = rest.iter().position(|c| c.subject_raw == issuer) else {
                break;
            };
            let next = rest.remove(i);
            issuer = next.issuer_raw;
            subject = next.subject_raw;
            chain.push(next.der);
        }
        chain.extend(rest.into_iter().map(|c| c.der));
        return Ok(ClientIdentity {
            chain,
            key: Secret::new(key_der),
            subject: leaf.subject,
            not_after: leaf.not_after,
        });
    }
    if last_mismatch {
        Err(p12_err(
            "its private key does not belong to its certificate; re-export the bundle from a matching pair",
        ))
    } else {
        Err(p12_err("it holds no certificate for its private key"))
    }
}

/// Load trusted CA certificates from a PEM bundle and/or a directory of PEM files.
///
/// In the directory every regular file is read (symlinks are followed, as in
/// `c_rehash` directories); files holding no certificate are skipped. Duplicates are
/// dropped. The result is never empty.
pub fn load_ca(file: Option<&Path>, dir: Option<&Path>) -> Result<Vec<Vec<u8>>, TlsFileError> {
    if file.is_none() && dir.is_none() {
        return Err(TlsFileError::NoCaSource);
    }
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut seen: HashSet<Vec<u8>> = HashSet::new();

    if let Some(file) = file {
        let certs = ca_certs_from_file(file)?;
        if certs.is_empty() {
            return Err(TlsFileError::EmptyCa {
                path: file.to_path_buf(),
            });
        }
        for c in certs {
            if seen.insert(c.clone()) {
                out.push(c);
            }
        }
    }

    if let Some(dir) = dir {
        let unreadable = |source| TlsFileError::Unreadable {
            path: dir.to_path_buf(),
            source,
        };
        let mut paths = Vec::new();
        for entry in fs::read_dir(dir).map_err(unreadable)? {
            paths.push(entry.map_err(unreadable)?.path());
        }
        paths.sort();
        let mut found = false;
        for path in paths {
            // fs::metadata follows symlinks; dangling links and subdirectories are skipped.
            match fs::metadata(&path) {
                Ok(m) if m.is_file() => {}
                _ => continue,
            }
            let certs = ca_certs_from_file(&path)?;
            found |= !certs.is_empty();
            for c in certs {
                if seen.insert(c.clone()) {
                    out.push(c);
                }
            }
        }
        if !found {
            return Err(TlsFileError::EmptyCaDir {
                path: dir.to_path_buf(),
            });
        }
    }
    Ok(out)
}

fn ca_certs_from_file(path: &Path) -> Result<Vec<Vec<u8>>, TlsFileError> {
    let data = read_file(path)?;
    let blocks = parse_pem(path, &data)?;
    let certs = certificates(path, &blocks)?;
    let mut out = Vec::with_capacity(certs.len());
    for c in certs {
        let mut store = rustls::RootCertStore::empty();
        store
            .add(CertificateDer::from(c.der.clone()))
            .map_err(|e| TlsFileError::BadCertificate {
                path: path.to_path_buf(),
                line: c.line,
                reason: format!("it is not usable as a trust anchor ({e})"),
            })?;
        out.push(c.der);
    }
    Ok(out)
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsFileError> {
    let unreadable = |source| TlsFileError::Unreadable {
        path: path.to_path_buf(),
        source,
    };
    match crate::small_file::read(path, MAX_FILE_BYTES) {
        Ok((data, _)) => Ok(data),
        Err(e) if e.kind() == io::ErrorKind::FileTooLarge => Err(TlsFileError::TooLarge {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(unreadable(e)),
    }
}

// ---------------------------------------------------------------------------------
// PEM

struct PemBlock {
    label: String,
    /// 1-based line of the BEGIN line.
    line: usize,
    /// `Proc-Type: 4,ENCRYPTED` header seen (legacy OpenSSL encryption).
    legacy_encrypted: bool,
    der: Vec<u8>,
}

/// A PEM block whose END line has not been seen yet.
struct OpenBlock {
    label: Vec<u8>,
    begin: usize,
    /// `Proc-Type: 4,ENCRYPTED` header seen.
    legacy: bool,
    /// Base64 text has started (headers come only before it).
    body: bool,
    text: Vec<u8>,
}

/// Split a file into PEM blocks. Text outside blocks is ignored (OpenSSL writes
/// "Bag Attributes" and "subject=" lines there).
fn parse_pem(path: &Path, data: &[u8]) -> Result<Vec<PemBlock>, TlsFileError> {
    let bad = |line, reason| TlsFileError::BadPem {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let mut blocks = Vec::new();
    let mut open: Option<OpenBlock> = None;
    for (i, raw) in data.split(|b| *b == b'\n').enumerate() {
        let lineno = i + 1;
        let line = raw.trim_ascii();
        match open.as_mut() {
            None => {
                if let Some(rest) = line.strip_prefix(b"-----BEGIN ") {
                    let Some(label) = rest.strip_suffix(b"-----") else {
                        return Err(bad(lineno, "BEGIN line does not end with -----"));
                    };
                    open = Some(OpenBlock {
                        label: label.to_vec(),
                        begin: lineno,
                        legacy: false,
                        body: false,
                        text: Vec::new(),
                    });
                } else if line.starts_with(b"-----END ") {
                    return Err(bad(lineno, "END line without a BEGIN line"));
                }
            }
            Some(OpenBlock {
                label,
                begin,
                legacy,
                body,
                text,
            }) => {
                if let Some(rest) = line.strip_prefix(b"-----END ") {
                    if rest.strip_suffix(b"-----") != Some(label.as_slice()) {
                        return Err(bad(lineno, "END line does not match its BEGIN line"));
                    }
                    let der = base64_decode(text)
                        .ok_or_else(|| bad(*begin, "the block's base64 text is damaged"))?;
                    if der.is_empty() {
                        return Err(bad(*begin, "the block is empty"));
                    }
                    blocks.push(PemBlock {
                        label: String::from_utf8_lossy(label).into_owned(),
                        line: *begin,
                        legacy_encrypted: *legacy,
                        der,
                    });
                    open = None;
                } else if line.starts_with(b"-----BEGIN ") {
                    return Err(bad(*begin, "BEGIN line without an END line"));
                } else if !*body && line.contains(&b':') {
                    // RFC 1421 header such as "Proc-Type: 4,ENCRYPTED" or "DEK-Info: ...".
                    let upper = line.to_ascii_uppercase();
                    if upper.starts_with(b"PROC-TYPE:") && upper.ends_with(b"ENCRYPTED") {
                        *legacy = true;
                    }
                } else if !line.is_empty() {
                    *body = true;
                    text.extend_from_slice(line);
                }
            }
        }
    }
    if let Some(block) = open {
        return Err(bad(block.begin, "BEGIN line without an END line"));
    }
    Ok(blocks)
}

/// Standard base64 with optional padding; whitespace is skipped. `None` if malformed.
fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    use base64::Engine;
    const PEM_BASE64: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let compact: Vec<u8> = text
        .iter()
        .copied()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    PEM_BASE64.decode(compact).ok()
}

// ---------------------------------------------------------------------------------
// Certificates

#[derive(Clone)]
struct CertInfo {
    der: Vec<u8>,
    line: usize,
    spki: Vec<u8>,
    subject_raw: Vec<u8>,
    issuer_raw: Vec<u8>,
    subject: String,
    not_after: String,
}

fn certificates(path: &Path, blocks: &[PemBlock]) -> Result<Vec<CertInfo>, TlsFileError> {
    blocks
        .iter()
        .filter(|b| b.label == "CERTIFICATE" || b.label == "X509 CERTIFICATE")
        .map(|b| parse_cert(path, b.line, b.der.clone()))
        .collect()
}

fn parse_cert(path: &Path, line: usize, der: Vec<u8>) -> Result<CertInfo, TlsFileError> {
    let bad = |reason: String| TlsFileError::BadCertificate {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let parsed = std::panic::catch_unwind(|| {
        let (rest, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| format!("it is not a valid X.509 certificate ({e})"))?;
        if !rest.is_empty() {
            return Err("it has trailing bytes after the certificate".to_string());
        }
        let tbs = &cert.tbs_certificate;
        Ok((
            tbs.subject_pki.raw.to_vec(),
            tbs.subject.as_raw().to_vec(),
            tbs.issuer.as_raw().to_vec(),
            tbs.subject.to_string(),
            format_time(&tbs.validity.not_after),
        ))
    })
    .map_err(|_| bad("it is not a valid X.509 certificate".to_string()))?;
    let (spki, subject_raw, issuer_raw, subject, not_after) = parsed.map_err(bad)?;
    Ok(CertInfo {
        der,
        line,
        spki,
        subject_raw,
        issuer_raw,
        subject,
        not_after,
    })
}

fn format_time(t: &x509_parser::time::ASN1Time) -> String {
    // X.509 times are UTC (UTCTime / GeneralizedTime with Z), and x509-parser keeps them so.
    let d = t.to_datetime();
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        d.year(),
        u8::from(d.month()),
        d.day(),
        d.hour(),
        d.minute(),
        d.second()
    )
}

// ---------------------------------------------------------------------------------
// Private keys

/// Find the one private key in `blocks` and return it as DER the TLS engine accepts.
fn private_key(
    path: &Path,
    blocks: &[PemBlock],
    password: Option<&Secret<String>>,
) -> Result<Vec<u8>, TlsFileError> {
    let keys: Vec<&PemBlock> = blocks
        .iter()
        .filter(|b| b.label.ends_with("PRIVATE KEY"))
        .collect();
    let block = match keys.as_slice() {
        [] => {
            return Err(TlsFileError::NoKey {
                path: path.to_path_buf(),
            });
        }
        [one] => *one,
        many => {
            return Err(TlsFileError::MultipleKeys {
                path: path.to_path_buf(),
                count: many.len(),
            });
        }
    };
    if block.legacy_encrypted {
        return Err(TlsFileError::LegacyEncryptedKey {
            path: path.to_path_buf(),
        });
    }
    let unsupported = |reason: &str| TlsFileError::UnsupportedKey {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let der = match block.label.as_str() {
        "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" => block.der.clone(),
        "ENCRYPTED PRIVATE KEY" => decrypt_pkcs8(path, &block.der, password)?,
        "OPENSSH PRIVATE KEY" => {
            return Err(unsupported(
                "OpenSSH-format keys are not supported; convert a copy with `ssh-keygen -p -m PKCS8 -f COPY`",
            ));
        }
        "DSA PRIVATE KEY" => return Err(unsupported("DSA keys are not supported by TLS 1.2/1.3")),
        _ => {
            return Err(unsupported(&format!(
                "a \"{}\" block is not a supported key format; use a PEM PRIVATE KEY (PKCS#8) block",
                block.label
            )));
        }
    };
    // This is exactly what pingora does with the bytes; make sure the label agreed.
    let sniffed_ok = matches!(
        (
            PrivateKeyDer::try_from(der.as_slice()),
            block.label.as_str()
        ),
        (Ok(PrivateKeyDer::Pkcs1(_)), "RSA PRIVATE KEY")
            | (Ok(PrivateKeyDer::Sec1(_)), "EC PRIVATE KEY")
            | (
                Ok(PrivateKeyDer::Pkcs8(_)),
                "PRIVATE KEY" | "ENCRYPTED PRIVATE KEY"
            )
    );
    if !sniffed_ok {
        return Err(unsupported(&format!(
            "the \"{}\" block at line {} does not hold a key of that kind or is damaged",
            block.label, block.line
        )));
    }
    Ok(der)
}

fn decrypt_pkcs8(
    path: &Path,
    der: &[u8],
    password: Option<&Secret<String>>,
) -> Result<Vec<u8>, TlsFileError> {
    use pkcs8::pkcs5::Error as P5;
    let info = match pkcs8::EncryptedPrivateKeyInfo::try_from(der) {
        Ok(info) => info,
        // Well-formed but with an algorithm pkcs8 does not know (PBES1, 3DES, ...)?
        Err(_) => match encryption_oid(der) {
            Some(oid) => {
                return Err(TlsFileError::UnsupportedKeyEncryption {
                    path: path.to_path_buf(),
                    reason: format!("it uses {oid}, and only {SUPPORTED_PBE} is supported"),
                });
            }
            None => {
                return Err(TlsFileError::UnsupportedKey {
                    path: path.to_path_buf(),
                    reason: "the ENCRYPTED PRIVATE KEY block is damaged".to_string(),
                });
            }
        },
    };
    let Some(password) = password else {
        return Err(TlsFileError::EncryptedKeyNoPassword {
            path: path.to_path_buf(),
        });
    };
    if let Some(reason) = excessive_kdf(&info.encryption_algorithm) {
        return Err(TlsFileError::UnsupportedKeyEncryption {
            path: path.to_path_buf(),
            reason,
        });
    }
    let wrong = || TlsFileError::WrongPassword {
        path: path.to_path_buf(),
    };
    match info.decrypt(password.expose().as_bytes()) {
        Ok(doc) => {
            // A wrong password occasionally yields valid padding over garbage.
            pkcs8::PrivateKeyInfo::try_from(doc.as_bytes()).map_err(|_| wrong())?;
            Ok(doc.as_bytes().to_vec())
        }
        // pkcs5 0.7 reports a padding failure (the usual sign of a wrong password) as
        // `EncryptFailed`, so only the "cannot do this scheme" errors are singled out.
        Err(pkcs8::Error::EncryptedPrivateKey(
            e @ (P5::NoPbes1CryptSupport
            | P5::UnsupportedAlgorithm { .. }
            | P5::AlgorithmParametersInvalid { .. }),
        )) => Err(TlsFileError::UnsupportedKeyEncryption {
            path: path.to_path_buf(),
            reason: match e {
                P5::NoPbes1CryptSupport => {
                    format!("it uses PKCS#5 v1.5 PBES1, and only {SUPPORTED_PBE} is supported")
                }
                P5::UnsupportedAlgorithm { oid } => {
                    format!("it uses algorithm {oid}, and only {SUPPORTED_PBE} is supported")
                }
                P5::AlgorithmParametersInvalid { oid } => {
                    format!("its parameters for algorithm {oid} are invalid")
                }
                _ => format!("only {SUPPORTED_PBE} is supported"),
            },
        }),
        Err(_) => Err(wrong()),
    }
}

/// Refuse key-derivation parameters that would take minutes or gigabytes (a damaged or
/// hostile file must not stall or kill the daemon at config load).
fn excessive_kdf(scheme: &pkcs8::pkcs5::EncryptionScheme<'_>) -> Option<String> {
    use pkcs8::pkcs5::{pbes2::Kdf, EncryptionScheme};
    const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;
    const MAX_SCRYPT_BYTES: u64 = 1 << 30;
    let EncryptionScheme::Pbes2(params) = scheme else {
        return None;
    };
    match &params.kdf {
        Kdf::Pbkdf2(p) if p.iteration_count > MAX_PBKDF2_ITERATIONS => Some(format!(
            "its PBKDF2 iteration count {} is beyond the limit of {MAX_PBKDF2_ITERATIONS}",
            p.iteration_count
        )),
        Kdf::Scrypt(p) => {
            let memory = 128u64
                .checked_mul(p.cost_parameter)
                .and_then(|m| m.checked_mul(u64::from(p.block_size)));
            match memory {
                Some(m) if m <= MAX_SCRYPT_BYTES && p.parallelization <= 16 => None,
                _ => Some("its scrypt parameters demand more than 1 GiB of memory".to_string()),
            }
        }
        _ => None,
    }
}

/// The outer algorithm OID of an EncryptedPrivateKeyInfo, read without understanding
/// its parameters.
fn encryption_oid(der: &[u8]) -> Option<String> {
    use pkcs8::der::{asn1::OctetStringRef, Decode, Reader, SliceReader};
    let mut reader = SliceReader::new(der).ok()?;
    let oid = reader
        .sequence(|r| {
            let alg = pkcs8::spki::AlgorithmIdentifierRef::decode(r)?;
            OctetStringRef::decode(r)?;
            Ok(alg.oid)
        })
        .ok()?;
    let inner = match oid.to_string().as_str() {
        "1.2.840.113549.1.5.13" => "PBES2 with a cipher other than AES-CBC (such as 3DES)",
        "1.2.840.113549.1.12.1.3" => "PKCS#12 PBE with SHA-1 and 3DES (openssl -v1)",
        s if s.starts_with("1.2.840.113549.1.12.1.") => "PKCS#12 PBE (openssl -v1)",
        s if s.starts_with("1.2.840.113549.1.5.") => "PKCS#5 v1.5 PBES1 (openssl -v1)",
        _ => "",
    };
    Some(if inner.is_empty() {
        format!("algorithm {oid}")
    } else {
        format!("{inner} ({oid})")
    })
}

/// The SubjectPublicKeyInfo (DER) of a private key, derived by the TLS engine itself,
/// which also proves the engine can sign with the key.
fn key_spki(path: &Path, der: &[u8]) -> Result<Vec<u8>, TlsFileError> {
    let unsupported = |reason: &str| TlsFileError::UnsupportedKey {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let key = PrivateKeyDer::try_from(der.to_vec())
        .map_err(|_| unsupported("it is not a PKCS#8, PKCS#1 or SEC1 private key"))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|_| {
        unsupported(
            "it is not an RSA (2048 bits or more), ECDSA P-256/P-384 or Ed25519 key, or it is damaged",
        )
    })?;
    let spki = signer
        .public_key()
        .ok_or_else(|| unsupported("its public key cannot be derived"))?;
    Ok(spki.as_ref().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SignatureAlgorithm,
        PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519,
    };
    use std::process::Command;
    use tempfile::TempDir;

    const PASSWORD: &str = "correct horse battery staple";

    struct Issued {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    fn params(cn: &str, ca: bool) -> CertificateParams {
        let mut p =
            CertificateParams::new(vec![format!("{}.example", cn.to_lowercase())]).expect("params");
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.distinguished_name
            .push(DnType::OrganizationName, "Example");
        if ca {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        p
    }

    fn self_signed(cn: &str, alg: &'static SignatureAlgorithm, ca: bool) -> Issued {
        let key = KeyPair::generate_for(alg).expect("keygen");
        let cert = params(cn, ca).self_signed(&key).expect("self-signed");
        Issued { cert, key }
    }

    fn signed_by(cn: &str, ca: bool, issuer: &Issued) -> Issued {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("keygen");
        let cert = params(cn, ca)
            .signed_by(&key, &issuer.cert, &issuer.key)
            .expect("signed");
        Issued { cert, key }
    }

    fn write(dir: &TempDir, name: &str, data: impl AsRef<[u8]>) -> PathBuf {
        let p = dir.path().join(name);
        fs::write(&p, data).expect("write");
        p
    }

    fn pw(s: &str) -> Secret<String> {
        Secret::new(s.to_string())
    }

    fn pem(label: &str, der: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut b64 = String::new();
        for chunk in der.chunks(3) {
            let n = chunk.len();
            let v = (u32::from(chunk[0]) << 16)
                | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
                | u32::from(*chunk.get(2).unwrap_or(&0));
            for i in 0..4 {
                if i <= n {
                    b64.push(A[((v >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    b64.push('=');
                }
            }
        }
        let mut out = format!("-----BEGIN {label}-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap());
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
        out
    }

    /// The SEC1 ECPrivateKey inside a PKCS#8 PrivateKeyInfo.
    fn pkcs8_to_sec1(pkcs8_der: &[u8]) -> Vec<u8> {
        pkcs8::PrivateKeyInfo::try_from(pkcs8_der)
            .expect("pkcs8")
            .private_key
            .to_vec()
    }

    fn encrypt_pkcs8(pkcs8_der: &[u8], password: &str) -> String {
        let params =
            pkcs8::pkcs5::pbes2::Parameters::pbkdf2_sha256_aes256cbc(2048, b"saltsalt", &[7u8; 16])
                .expect("pbes2 params");
        let doc = pkcs8::PrivateKeyInfo::try_from(pkcs8_der)
            .expect("pkcs8")
            .encrypt_with_params(params, password)
            .expect("encrypt");
        pem("ENCRYPTED PRIVATE KEY", doc.as_bytes())
    }

    fn assert_usable(id: &ClientIdentity, roots: &[Vec<u8>]) {
        let mut store = rustls::RootCertStore::empty();
        for r in roots {
            store.add(CertificateDer::from(r.clone())).expect("root");
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let chain: Vec<CertificateDer<'static>> =
            id.chain.iter().cloned().map(CertificateDer::from).collect();
        let key = PrivateKeyDer::try_from(id.key.expose().clone()).expect("key der");
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(store)
            .with_client_auth_cert(chain, key)
            .expect("client config accepts the identity");
    }

    fn openssl(args: &[&str]) -> bool {
        Command::new("openssl")
            .args(args)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    #[test]
    fn p256_pkcs8_separate_files() {
        let dir = TempDir::new().unwrap();
        let id = self_signed("Alice", &PKCS_ECDSA_P256_SHA256, false);
        let cert = write(&dir, "cert.pem", id.cert.pem());
        let key = write(&dir, "key.pem", id.key.serialize_pem());
        let loaded = load_identity(&cert, Some(&key), None).expect("load");
        assert_eq!(loaded.chain, vec![id.cert.der().to_vec()]);
        assert_eq!(loaded.key.expose(), &id.key.serialize_der());
        assert!(loaded.subject.contains("CN=Alice"), "{}", loaded.subject);
        assert!(loaded.subject.contains("O=Example"), "{}", loaded.subject);
        assert!(loaded.not_after.ends_with("UTC"), "{}", loaded.not_after);
        assert!(
            !format!("{loaded:?}").contains("48"),
            "Debug hides the key bytes"
        );
        assert_usable(&loaded, &[id.cert.der().to_vec()]);
    }

    #[test]
    fn p384_and_ed25519() {
        let dir = TempDir::new().unwrap();
        for (name, alg) in [
            ("p384", &PKCS_ECDSA_P384_SHA384),
            ("ed25519", &PKCS_ED25519),
        ] {
            let id = self_signed(name, alg, false);
            let cert = write(&dir, &format!("{name}.crt"), id.cert.pem());
            let key = write(&dir, &format!("{name}.key"), id.key.serialize_pem());
            let loaded = load_identity(&cert, Some(&key), None).expect(name);
            assert_usable(&loaded, &[]);
        }
    }

    #[test]
    fn combined_file_in_either_order() {
        let dir = TempDir::new().unwrap();
        let id = self_signed("Bob", &PKCS_ECDSA_P256_SHA256, false);
        let key_first = write(
            &dir,
            "a.pem",
            format!(
                "Bag Attributes\n  friendlyName: bob\n{}{}",
                id.key.serialize_pem(),
                id.cert.pem()
            ),
        );
        let cert_first = write(
            &dir,
            "b.pem",
            format!(
                "{}\r\n{}",
                id.cert.pem().replace('\n', "\r\n"),
                id.key.serialize_pem()
            ),
        );
        for path in [&key_first, &cert_first] {
            let a = load_identity(path, None, None).expect("key: None");
            let b = load_identity(path, Some(path), None).expect("same file twice");
            assert_eq!(a.chain, vec![id.cert.der().to_vec()]);
            assert_eq!(b.key.expose(), a.key.expose());
        }
    }

    #[test]
    fn sec1_ec_key() {
        let dir = TempDir::new().unwrap();
        let id = self_signed("Carol", &PKCS_ECDSA_P256_SHA256, false);
        let sec1 = pkcs8_to_sec1(&id.key.serialize_der());
        let cert = write(&dir, "cert.pem", id.cert.pem());
        let key = write(
            &dir,
            "key.pem",
            format!(
                "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{}",
                pem("EC PRIVATE KEY", &sec1)
            ),
        );
        let loaded = load_identity(&cert, Some(&key), None).expect("sec1");
        assert_eq!(loaded.key.expose(), &sec1);
        assert!(matches!(
            PrivateKeyDer::try_from(loaded.key.expose().clone()),
            Ok(PrivateKeyDer::Sec1(_))
        ));
        assert_usable(&loaded, &[]);

        // The same bytes under the wrong label are refused, not handed to the engine.
        let mislabelled = write(&dir, "bad.pem", pem("RSA PRIVATE KEY", &sec1));
        let err = load_identity(&cert, Some(&mislabelled), None).unwrap_err();
        assert!(matches!(err, TlsFileError::UnsupportedKey { .. }), "{err}");
    }

    #[test]
    fn openssl_generated_keys() {
        // ring cannot generate RSA keys, so RSA (PKCS#1 and PKCS#8) and OpenSSL's own
        // SEC1 and encrypted PKCS#8 output are tested with the openssl CLI, which
        // scripts/install-deps installs.
        let dir = TempDir::new().unwrap();
        let d = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
        assert!(
            openssl(&["genrsa", "-out", &d("rsa8.pem"), "2048"]),
            "the openssl command is needed (scripts/install-deps installs it)"
        );
        assert!(openssl(&[
            "rsa",
            "-in",
            &d("rsa8.pem"),
            "-traditional",
            "-out",
            &d("rsa1.pem")
        ]));
        assert!(openssl(&[
            "req",
            "-new",
            "-x509",
            "-key",
            &d("rsa8.pem"),
            "-subj",
            "/CN=rsa/O=Example",
            "-days",
            "2",
            "-out",
            &d("rsa.crt")
        ]));
        let rsa1 = fs::read_to_string(d("rsa1.pem")).unwrap();
        assert!(rsa1.contains("BEGIN RSA PRIVATE KEY"));
        let crt = PathBuf::from(d("rsa.crt"));
        for key in ["rsa8.pem", "rsa1.pem"] {
            let loaded = load_identity(&crt, Some(&PathBuf::from(d(key))), None).expect(key);
            assert_eq!(loaded.subject, "CN=rsa, O=Example");
            assert_usable(&loaded, &[]);
        }
        let rsa1_loaded = load_identity(&crt, Some(Path::new(&d("rsa1.pem"))), None).unwrap();
        assert!(matches!(
            PrivateKeyDer::try_from(rsa1_loaded.key.expose().clone()),
            Ok(PrivateKeyDer::Pkcs1(_))
        ));

        // Key mismatch with RSA: an EC key against the RSA certificate.
        let other = self_signed("x", &PKCS_ECDSA_P256_SHA256, false);
        let other_key = write(&dir, "ec.pem", other.key.serialize_pem());
        assert!(matches!(
            load_identity(&crt, Some(&other_key), None),
            Err(TlsFileError::KeyMismatch { .. })
        ));

        // Encrypted PKCS#8 the way the error message tells users to make it.
        assert!(openssl(&[
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-in",
            &d("rsa1.pem"),
            "-out",
            &d("enc.pem"),
            "-passout",
            &format!("pass:{PASSWORD}")
        ]));
        let enc = PathBuf::from(d("enc.pem"));
        load_identity(&crt, Some(&enc), Some(&pw(PASSWORD))).expect("openssl pkcs8 -v2");
        assert!(matches!(
            load_identity(&crt, Some(&enc), Some(&pw("nope"))),
            Err(TlsFileError::WrongPassword { .. })
        ));

        // PBES1 and 3DES-encrypted PKCS#8: refused with the conversion command.
        for (name, args) in [
            ("v1.pem", ["-v1", "PBE-SHA1-3DES"]),
            ("des3.pem", ["-v2", "des3"]),
        ] {
            if openssl(&[
                "pkcs8",
                "-topk8",
                args[0],
                args[1],
                "-in",
                &d("rsa1.pem"),
                "-out",
                &d(name),
                "-passout",
                "pass:x",
            ]) {
                let err =
                    load_identity(&crt, Some(Path::new(&d(name))), Some(&pw("x"))).unwrap_err();
                assert!(
                    matches!(err, TlsFileError::UnsupportedKeyEncryption { .. }),
                    "{err}"
                );
                assert!(err.to_string().contains(CONVERT_KEY), "{err}");
            }
        }

        // OpenSSL SEC1 key with parameters, and a legacy encrypted one.
        assert!(openssl(&[
            "ecparam",
            "-genkey",
            "-name",
            "prime256v1",
            "-out",
            &d("ec1.pem")
        ]));
        assert!(openssl(&[
            "req",
            "-new",
            "-x509",
            "-key",
            &d("ec1.pem"),
            "-subj",
            "/CN=ec",
            "-days",
            "2",
            "-out",
            &d("ec.crt")
        ]));
        let ec = load_identity(
            Path::new(&d("ec.crt")),
            Some(Path::new(&d("ec1.pem"))),
            None,
        )
        .expect("openssl sec1");
        assert_usable(&ec, &[]);
        if openssl(&[
            "ec",
            "-in",
            &d("ec1.pem"),
            "-aes256",
            "-passout",
            "pass:x",
            "-out",
            &d("ec_legacy.pem"),
        ]) {
            let err = load_identity(
                Path::new(&d("ec.crt")),
                Some(Path::new(&d("ec_legacy.pem"))),
                Some(&pw("x")),
            )
            .unwrap_err();
            assert!(
                matches!(err, TlsFileError::LegacyEncryptedKey { .. }),
                "{err}"
            );
        }

        // A PKCS#12 bundle written by OpenSSL 3 (AES-256 + SHA-256 MAC).
        if openssl(&[
            "pkcs12",
            "-export",
            "-in",
            &d("rsa.crt"),
            "-inkey",
            &d("rsa8.pem"),
            "-passout",
            &format!("pass:{PASSWORD}"),
            "-out",
            &d("b.p12"),
        ]) {
            let p12 =
                load_pkcs12(Path::new(&d("b.p12")), Some(&pw(PASSWORD))).expect("openssl p12");
            assert_eq!(p12.subject, "CN=rsa, O=Example");
            assert_usable(&p12, &[]);
        }
        // ... and a legacy one (RC2-40 certificates, 3DES key, SHA-1 MAC), no password.
        if openssl(&[
            "pkcs12",
            "-export",
            "-legacy",
            "-in",
            &d("ec.crt"),
            "-inkey",
            &d("ec1.pem"),
            "-passout",
            "pass:",
            "-out",
            &d("legacy.p12"),
        ]) {
            let p12 = load_pkcs12(Path::new(&d("legacy.p12")), None).expect("legacy p12");
            assert_eq!(p12.subject, "CN=ec");
            assert_usable(&p12, &[]);
        }
    }

    #[test]
    fn legacy_encrypted_pem_is_refused_with_the_conversion_command() {
        let dir = TempDir::new().unwrap();
        let id = self_signed("Dave", &PKCS_ECDSA_P256_SHA256, false);
        let cert = write(&dir, "cert.pem", id.cert.pem());
        let body = pem("RSA PRIVATE KEY", b"\x30\x03\x02\x01\x00");
        let legacy = body.replacen(
            "-----\n",
            "-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,00112233445566778899AABBCCDDEEFF\n\n",
            1,
        );
        let key = write(&dir, "old.pem", legacy);
        let err = load_identity(&cert, Some(&key), Some(&pw(PASSWORD))).unwrap_err();
        assert!(matches!(err, TlsFileError::LegacyEncryptedKey { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains("openssl pkcs8 -topk8 -v2 aes-256-cbc -in old.pem -out new.pem"),
            "{msg}"
        );
        assert!(msg.contains("old.pem"));
    }

    #[test]
    fn encrypted_pkcs8_right_wrong_and_missing_password() {
        let dir = TempDir::new().unwrap();
        let id = self_signed("Erin", &PKCS_ECDSA_P256_SHA256, false);
        let cert = write(&dir, "cert.pem", id.cert.pem());
        let enc = encrypt_pkcs8(&id.key.serialize_der(), PASSWORD);
        let key = write(&dir, "key.pem", &enc);

        let ok = load_identity(&cert, Some(&key), Some(&pw(PASSWORD))).expect("right password");
        assert_eq!(
            ok.key.expose(),
            &id.key.serialize_der(),
            "decrypted to PKCS#8"
        );
        assert_usable(&ok, &[]);

        let wrong = load_identity(&cert, Some(&key), Some(&pw("hunter2"))).unwrap_err();
        assert!(
            matches!(wrong, TlsFileError::WrongPassword { .. }),
            "{wrong}"
        );
        let missing = load_identity(&cert, Some(&key), None).unwrap_err();
        assert!(
            matches!(missing, TlsFileError::EncryptedKeyNoPassword { .. }),
            "{missing}"
        );
        assert!(missing.to_string().contains("HTTP.SSL.KEYPASSWORD"));

        // Combined file with an encrypted key.
        let combined = write(&dir, "both.pem", format!("{}{}", id.cert.pem(), enc));
        load_identity(&combined, None, Some(&pw(PASSWORD))).expect("combined encrypted");
    }

    #[test]
    fn excessive_key_derivation_work_is_refused() {
        use pkcs8::der::Encode;
        use pkcs8::pkcs5::pbes2;
        let dir = TempDir::new().unwrap();
        let id = self_signed("Gina", &PKCS_ECDSA_P256_SHA256, false);
        let cert = write(&dir, "cert.pem", id.cert.pem());
        let mut params =
            pbes2::Parameters::pbkdf2_sha256_aes256cbc(2048, b"saltsalt", &[7u8; 16]).unwrap();
        if let pbes2::Kdf::Pbkdf2(p) = &mut params.kdf {
            p.iteration_count = u32::MAX;
        }
        let info = pkcs8::EncryptedPrivateKeyInfo {
            encryption_algorithm: params.into(),
            encrypted_data: &[0u8; 48],
        };
        let key = write(
            &dir,
            "slow.pem",
            pem("ENCRYPTED PRIVATE KEY", &info.to_der().unwrap()),
        );
        let started = std::time::Instant::now();
        let err = load_identity(&cert, Some(&key), Some(&pw(PASSWORD))).unwrap_err();
        assert!(
            matches!(err, TlsFileError::UnsupportedKeyEncryption { .. }),
            "{err}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn key_mismatch_is_detected() {
        let dir = TempDir::new().unwrap();
        for alg in [
            &PKCS_ECDSA_P256_SHA256,
            &PKCS_ECDSA_P384_SHA384,
            &PKCS_ED25519,
        ] {
            let a = self_signed("A", alg, false);
            let b = self_signed("B", alg, false);
            let cert = write(&dir, "a.crt", a.cert.pem());
            let key = write(&dir, "b.key", b.key.serialize_pem());
            let err = load_identity(&cert, Some(&key), None).unwrap_err();
            assert!(matches!(err, TlsFileError::KeyMismatch { .. }), "{err}");
            let msg = err.to_string();
            assert!(msg.contains("a.crt") && msg.contains("b.key"), "{msg}");
        }
    }

    #[test]
    fn chain_with_intermediate_keeps_order() {
        let dir = TempDir::new().unwrap();
        let root = self_signed("Root", &PKCS_ECDSA_P256_SHA256, true);
        let inter = signed_by("Intermediate", true, &root);
        let leaf = signed_by("Leaf", false, &inter);
        let cert = write(
            &dir,
            "chain.pem",
            format!("{}{}", leaf.cert.pem(), inter.cert.pem()),
        );
        let key = write(&dir, "leaf.key", leaf.key.serialize_pem());
        let loaded = load_identity(&cert, Some(&key), None).expect("chain");
        assert_eq!(
            loaded.chain,
            vec![leaf.cert.der().to_vec(), inter.cert.der().to_vec()]
        );
        assert!(loaded.subject.contains("CN=Leaf"));
        assert_usable(&loaded, &[root.cert.der().to_vec()]);

        // Intermediate first in the file: the leaf is still found by its key.
        let cert2 = write(
            &dir,
            "chain2.pem",
            format!("{}{}", inter.cert.pem(), leaf.cert.pem()),
        );
        let loaded2 = load_identity(&cert2, Some(&key), None).expect("chain2");
        assert_eq!(loaded2.chain[0], leaf.cert.der().to_vec());
    }

    #[test]
    fn ca_file_and_directory() {
        let dir = TempDir::new().unwrap();
        let r1 = self_signed("Root1", &PKCS_ECDSA_P256_SHA256, true);
        let r2 = self_signed("Root2", &PKCS_ED25519, true);
        let both = write(
            &dir,
            "bundle.pem",
            format!("{}\n{}", r1.cert.pem(), r2.cert.pem()),
        );
        let certs = load_ca(Some(&both), None).expect("ca file");
        assert_eq!(certs, vec![r1.cert.der().to_vec(), r2.cert.der().to_vec()]);

        let cadir = TempDir::new().unwrap();
        write(&cadir, "one.pem", r1.cert.pem());
        write(&cadir, "two.crt", r2.cert.pem());
        write(&cadir, "README", "these are my CAs\n");
        write(&cadir, "junk.bin", [0u8, 159, 146, 150, 255]);
        write(
            &cadir,
            "root1.crl",
            "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
        );
        fs::create_dir(cadir.path().join("subdir")).unwrap();
        std::os::unix::fs::symlink(
            cadir.path().join("one.pem"),
            cadir.path().join("1a2b3c4d.0"),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            cadir.path().join("gone.pem"),
            cadir.path().join("dangling.0"),
        )
        .unwrap();
        let mut from_dir = load_ca(None, Some(cadir.path())).expect("ca dir");
        from_dir.sort();
        let mut want = vec![r1.cert.der().to_vec(), r2.cert.der().to_vec()];
        want.sort();
        assert_eq!(from_dir, want);

        // Only a symlink to a CA file: still found.
        let linkdir = TempDir::new().unwrap();
        std::os::unix::fs::symlink(&both, linkdir.path().join("abcd.0")).unwrap();
        assert_eq!(load_ca(None, Some(linkdir.path())).unwrap().len(), 2);

        // File and dir together: duplicates dropped.
        assert_eq!(load_ca(Some(&both), Some(cadir.path())).unwrap().len(), 2);
    }

    #[test]
    fn empty_ca_errors() {
        let dir = TempDir::new().unwrap();
        let empty = write(&dir, "empty.pem", "");
        let err = load_ca(Some(&empty), None).unwrap_err();
        assert!(matches!(err, TlsFileError::EmptyCa { .. }), "{err}");
        assert!(err.to_string().contains("empty.pem"));
        let key_only = write(
            &dir,
            "key.pem",
            self_signed("k", &PKCS_ED25519, false).key.serialize_pem(),
        );
        assert!(matches!(
            load_ca(Some(&key_only), None),
            Err(TlsFileError::EmptyCa { .. })
        ));
        let emptydir = TempDir::new().unwrap();
        write(&emptydir, "notes.txt", "nothing here");
        assert!(matches!(
            load_ca(None, Some(emptydir.path())),
            Err(TlsFileError::EmptyCaDir { .. })
        ));
        assert!(matches!(load_ca(None, None), Err(TlsFileError::NoCaSource)));
        let missing = load_ca(Some(&dir.path().join("nope.pem")), None).unwrap_err();
        assert_eq!(
            missing.to_string(),
            format!(
                "cannot read {}: no such file or directory",
                dir.path().join("nope.pem").display()
            )
        );
    }

    #[test]
    fn pkcs12_bundle() {
        use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};
        let dir = TempDir::new().unwrap();
        let root = self_signed("Root", &PKCS_ECDSA_P256_SHA256, true);
        let inter = signed_by("Intermediate", true, &root);
        let leaf = signed_by("Leaf", false, &inter);
        let c = |i: &Issued| Certificate::from_der(i.cert.der()).unwrap();
        let chain = PrivateKeyChain::new(
            b"key1".to_vec(),
            PrivateKey::from_der(&leaf.key.serialize_der()).unwrap(),
            [c(&leaf), c(&inter), c(&root)],
        );
        let mut store = KeyStore::new();
        store.add_entry("leaf", KeyStoreEntry::PrivateKeyChain(chain));
        let bytes = store
            .writer(PASSWORD)
            .encryption_iterations(1000)
            .mac_iterations(1000)
            .write()
            .unwrap();
        let path = write(&dir, "id.p12", bytes);

        let loaded = load_pkcs12(&path, Some(&pw(PASSWORD))).expect("p12");
        assert_eq!(
            loaded.chain,
            vec![
                leaf.cert.der().to_vec(),
                inter.cert.der().to_vec(),
                root.cert.der().to_vec()
            ]
        );
        assert_eq!(loaded.key.expose(), &leaf.key.serialize_der());
        assert!(loaded.subject.contains("CN=Leaf"));
        assert_usable(&loaded, &[root.cert.der().to_vec()]);

        let wrong = load_pkcs12(&path, Some(&pw("hunter2"))).unwrap_err();
        assert!(
            matches!(wrong, TlsFileError::WrongPassword { .. }),
            "{wrong}"
        );
        let missing = load_pkcs12(&path, None).unwrap_err();
        assert!(
            matches!(missing, TlsFileError::EncryptedKeyNoPassword { .. }),
            "{missing}"
        );

        let not_p12 = write(&dir, "cert.pem", leaf.cert.pem());
        assert!(matches!(
            load_pkcs12(&not_p12, None),
            Err(TlsFileError::Pkcs12 { .. })
        ));
        // A .p12 named as a PEM certificate gets a pointer to tls.pkcs12.
        let err = load_identity(&path, None, None).unwrap_err();
        assert!(matches!(err, TlsFileError::NotPem { .. }), "{err}");
        assert!(err.to_string().contains("tls.pkcs12"));
    }

    #[test]
    fn bad_input_never_panics_and_errors_leak_nothing() {
        let dir = TempDir::new().unwrap();
        let id = self_signed("Frank", &PKCS_ECDSA_P256_SHA256, false);
        let cert_pem = id.cert.pem();
        let key_pem = id.key.serialize_pem();
        let enc = encrypt_pkcs8(&id.key.serialize_der(), PASSWORD);
        let cert = write(&dir, "cert.pem", &cert_pem);

        let mut cases: Vec<(String, Vec<u8>)> = vec![
            ("empty".into(), vec![]),
            ("text".into(), b"hello\n".to_vec()),
            (
                "no end".into(),
                key_pem
                    .lines()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join("\n")
                    .into_bytes(),
            ),
            (
                "bad b64".into(),
                b"-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n".to_vec(),
            ),
            (
                "garbage key".into(),
                pem("PRIVATE KEY", b"\x30\x82\xff\xff garbage").into_bytes(),
            ),
            (
                "garbage enc".into(),
                pem("ENCRYPTED PRIVATE KEY", b"\x30\x03\x02\x01\x00").into_bytes(),
            ),
            (
                "mismatched end".into(),
                key_pem
                    .replace("END PRIVATE KEY", "END CERTIFICATE")
                    .into_bytes(),
            ),
            (
                "two keys".into(),
                format!("{key_pem}{key_pem}").into_bytes(),
            ),
            ("binary".into(), (0..=255u8).cycle().take(5000).collect()),
            ("enc".into(), enc.clone().into_bytes()),
        ];
        // Truncations and bit flips of a valid encrypted key and of the certificate.
        for cut in (0..enc.len()).step_by(37) {
            cases.push((format!("cut {cut}"), enc.as_bytes()[..cut].to_vec()));
        }
        let cert_der = id.cert.der().to_vec();
        for i in (0..cert_der.len()).step_by(13) {
            let mut d = cert_der.clone();
            d[i] ^= 0x55;
            cases.push((
                format!("flip {i}"),
                format!("{}{key_pem}", pem("CERTIFICATE", &d)).into_bytes(),
            ));
        }
        for (name, data) in cases {
            let p = write(&dir, "case.pem", &data);
            for password in [None, Some(pw(PASSWORD)), Some(pw("wrong-pass"))] {
                let results = [
                    load_identity(&cert, Some(&p), password.as_ref()).err(),
                    load_identity(&p, None, password.as_ref()).err(),
                    load_pkcs12(&p, password.as_ref()).err(),
                    load_ca(Some(&p), None).err(),
                ];
                for e in results.into_iter().flatten() {
                    let msg = e.to_string();
                    assert!(!msg.contains(PASSWORD), "{name}: {msg}");
                    assert!(!msg.contains("wrong-pass"), "{name}: {msg}");
                    assert!(!msg.contains("-----BEGIN"), "{name}: {msg}");
                    for line in key_pem.lines().chain(enc.lines()).chain(cert_pem.lines()) {
                        if line.len() > 20 && !line.starts_with("-----") {
                            assert!(!msg.contains(line), "{name}: {msg}");
                        }
                    }
                    assert!(
                        msg.contains("case.pem") || msg.contains("cert.pem"),
                        "{name}: {msg}"
                    );
                    assert!(!format!("{e:?}").contains(PASSWORD));
                }
            }
        }
    }

    #[test]
    fn base64_edge_cases() {
        assert_eq!(base64_decode(b"TWFu").unwrap(), b"Man");
        assert_eq!(base64_decode(b"TWE=").unwrap(), b"Ma");
        assert_eq!(base64_decode(b"TQ==").unwrap(), b"M");
        assert_eq!(base64_decode(b"TQ").unwrap(), b"M");
        assert!(base64_decode(b"T").is_none());
        assert!(base64_decode(b"TQ=x").is_none());
        assert!(base64_decode(b"TQ===").is_none());
        assert!(base64_decode(b"T$==").is_none());
    }
}
