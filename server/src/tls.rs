//! TLS for the client and peer ports, configured as etcd's flags configure it (`--cert-file`,
//! `--key-file`, `--trusted-ca-file`, `--client-cert-auth`, their `--peer-*` twins and
//! `--tls-min-version`/`--tls-max-version`). Certificates, keys and CA bundles are PEM files,
//! read again whenever one of them changes (etcd reads them at every handshake), so a rotated
//! certificate takes effect without a restart. rustls with ring: no OpenSSL.

use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// The CA bundle Debian (and most distributions) keep the system's trusted roots in: used to
/// check a peer's certificate when no `--peer-trusted-ca-file` is given, as Go's system pool.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// What one side's flags name: the certificate and key this member presents, the CAs it
/// trusts, and whether it asks the other end for a certificate.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub trusted_ca: Option<PathBuf>,
    /// Ask every client for a certificate signed by `trusted_ca`, refusing those without.
    pub client_cert_auth: bool,
    /// The certificate and key presented when this member dials out (peers), when not `cert`
    /// and `key` (etcd 3.5's `--peer-client-cert-file`).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Protocol versions allowed, oldest first.
    pub versions: Vec<&'static SupportedProtocolVersion>,
}

/// `--tls-min-version`/`--tls-max-version` to the protocol versions allowed. rustls speaks
/// TLS 1.2 and 1.3 only; etcd's TLS1.0 and TLS1.1 are refused rather than ignored.
pub fn versions(min: &str, max: &str) -> Result<Vec<&'static SupportedProtocolVersion>, String> {
    let rank = |v: &str, flag: &str| match v {
        "TLS1.2" => Ok(2),
        "TLS1.3" => Ok(3),
        "TLS1.0" | "TLS1.1" => Err(format!(
            "--{flag}={v}: pgraftd speaks TLS1.2 and TLS1.3 only"
        )),
        other => Err(format!(
            "--{flag}: unexpected TLS version {other:?} (TLS1.2 or TLS1.3)"
        )),
    };
    let lo = rank(
        if min.is_empty() { "TLS1.2" } else { min },
        "tls-min-version",
    )?;
    let hi = if max.is_empty() {
        3
    } else {
        rank(max, "tls-max-version")?
    };
    if hi < lo {
        return Err("--tls-max-version is less than --tls-min-version".into());
    }
    let mut v = Vec::new();
    if lo <= 2 {
        v.push(&rustls::version::TLS12);
    }
    if hi >= 3 {
        v.push(&rustls::version::TLS13);
    }
    Ok(v)
}

/// ring's provider: builds with a C compiler alone (aws-lc-rs would need cmake). rustls marks
/// it deprecated for lacking post-quantum key exchange, which etcd 3.4's Go clients do not
/// offer either.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("cannot read a private key from {}: {e}", path.display()))
}

fn roots(path: &Path) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(certs(path)?);
    if added == 0 {
        return Err(format!("no usable CA certificate in {}", path.display()));
    }
    Ok(store)
}

impl TlsFiles {
    /// Every file these settings read, for noticing a change.
    fn paths(&self) -> Vec<PathBuf> {
        let mut v = vec![self.cert.clone(), self.key.clone()];
        v.extend(self.trusted_ca.clone());
        if let Some((c, k)) = &self.client_cert {
            v.push(c.clone());
            v.push(k.clone());
        }
        v
    }

    /// The server side: this member's certificate, and the client check when asked for.
    /// `alpn` lists the application protocols offered (h2 before http/1.1 on the client port).
    fn server_config(&self, alpn: &[&[u8]]) -> Result<ServerConfig, String> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&self.versions)
            .map_err(|e| e.to_string())?;
        let builder = if self.client_cert_auth {
            let ca = self
                .trusted_ca
                .as_deref()
                .ok_or("client certificate auth needs a trusted CA file")?;
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                    .build()
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut cfg = builder
            .with_single_cert(certs(&self.cert)?, key(&self.key)?)
            .map_err(|e| format!("{} and {}: {e}", self.cert.display(), self.key.display()))?;
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(cfg)
    }

    /// The client side (dialing a peer): the peer's certificate checked against the trusted
    /// CAs (the system's when none is given), and this member's own presented.
    fn client_config(&self, alpn: &[&[u8]]) -> Result<ClientConfig, String> {
        let identity = match &self.client_cert {
            Some((c, k)) => (c.as_path(), k.as_path()),
            None => (self.cert.as_path(), self.key.as_path()),
        };
        client_config(
            self.trusted_ca.as_deref(),
            Some(identity),
            &self.versions,
            alpn,
        )
    }
}

/// A client's TLS configuration: servers checked against the CA bundle `ca` (the system's when
/// `None`), presenting the certificate and key `identity` when given. For dialing peers, and
/// for the PostgreSQL extension's connections to a cluster.
pub fn client_config(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Result<ClientConfig, String> {
    let ca = ca.unwrap_or(Path::new(SYSTEM_ROOTS));
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots(ca)?);
    let mut cfg = match identity {
        Some((cert, key_file)) => builder
            .with_client_auth_cert(certs(cert)?, key(key_file)?)
            .map_err(|e| format!("{} and {}: {e}", cert.display(), key_file.display()))?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// A file's identity and version: a new one (rename into place) or a rewrite changes it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

/// A rustls configuration built from files, rebuilt when one of them changes. A rebuild that
/// fails (a file caught half rewritten, a key that does not match) keeps the last good
/// configuration and is tried again at the next use.
struct Reloading<C> {
    files: TlsFiles,
    build: fn(&TlsFiles) -> Result<C, String>,
    current: Mutex<Option<Loaded<C>>>,
}

/// A configuration and the stamps of the files it was built from.
type Loaded<C> = (Vec<Option<Stamp>>, Arc<C>);

impl<C> Reloading<C> {
    fn new(files: TlsFiles, build: fn(&TlsFiles) -> Result<C, String>) -> Result<Self, String> {
        let r = Reloading {
            files,
            build,
            current: Mutex::new(None),
        };
        r.get()?;
        Ok(r)
    }

    fn get(&self) -> Result<Arc<C>, String> {
        let stamps: Vec<_> = self.files.paths().iter().map(|p| stamp(p)).collect();
        let mut current = self.current.lock();
        if let Some((seen, cfg)) = current.as_ref() {
            if *seen == stamps {
                return Ok(cfg.clone());
            }
        }
        match (self.build)(&self.files) {
            Ok(cfg) => {
                let cfg = Arc::new(cfg);
                if current.is_some() {
                    tracing::info!(cert = %self.files.cert.display(), "TLS files changed; reloaded");
                }
                *current = Some((stamps, cfg.clone()));
                Ok(cfg)
            }
            Err(e) => match current.as_ref() {
                Some((_, cfg)) => {
                    tracing::warn!(error = %e, "TLS files changed but cannot be loaded; keeping the previous ones");
                    Ok(cfg.clone())
                }
                None => Err(e),
            },
        }
    }
}

/// The TLS side of a listener: a fresh acceptor per connection, from the files as they are.
pub struct ServerTls {
    config: Reloading<ServerConfig>,
    /// `--peer-cert-allowed-cn`: a client certificate must carry this common name.
    pub allowed_cn: Option<String>,
}

/// ALPN offered on the client port: gRPC (HTTP/2) and the gateway (HTTP/1.1) share it.
pub const CLIENT_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

impl ServerTls {
    /// Loads the files once (an error here stops the member from starting).
    pub fn new(files: TlsFiles, allowed_cn: Option<String>) -> Result<Self, String> {
        Ok(ServerTls {
            config: Reloading::new(files, |f| f.server_config(CLIENT_ALPN))?,
            allowed_cn,
        })
    }

    pub fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, String> {
        self.config.get().map(tokio_rustls::TlsAcceptor::from)
    }

    /// Whether a verified client certificate chain may connect (`--peer-cert-allowed-cn`).
    pub fn admits(&self, common_name: Option<&str>) -> bool {
        match &self.allowed_cn {
            Some(want) => common_name == Some(want.as_str()),
            None => true,
        }
    }
}

/// The TLS side of dialing peers: this member's certificate, and the CAs a peer's must chain
/// to.
pub struct ClientTls {
    config: Reloading<ClientConfig>,
}

impl ClientTls {
    pub fn new(files: TlsFiles) -> Result<Self, String> {
        Ok(ClientTls {
            config: Reloading::new(files, |f| f.client_config(&[]))?,
        })
    }

    pub fn connector(&self) -> Result<tokio_rustls::TlsConnector, String> {
        self.config.get().map(tokio_rustls::TlsConnector::from)
    }
}

/// The subject common name of a DER certificate (etcd maps a client certificate's CN to the
/// user name); the last one when there are several, as Go's `pkix.Name` keeps. `None` for
/// no CN, a string type not read here, or bytes that are not a certificate.
pub fn common_name(cert: &[u8]) -> Option<String> {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    let (tag, cert, _) = der(cert)?;
    (tag == SEQUENCE).then_some(())?;
    let (tag, tbs, _) = der(cert)?;
    (tag == SEQUENCE).then_some(())?;
    let mut rest = tbs;
    // [0] version, when present; then serial, signature algorithm, issuer and validity.
    if der(rest)?.0 == 0xa0 {
        rest = der(rest)?.2;
    }
    for _ in 0..4 {
        rest = der(rest)?.2;
    }
    let (tag, mut rdns, _) = der(rest)?;
    (tag == SEQUENCE).then_some(())?;
    let mut found = None;
    while !rdns.is_empty() {
        let (tag, mut set, next) = der(rdns)?;
        (tag == SET).then_some(())?;
        rdns = next;
        while !set.is_empty() {
            let (tag, atv, next) = der(set)?;
            (tag == SEQUENCE).then_some(())?;
            set = next;
            let (tag, oid, value) = der(atv)?;
            if tag == OID && oid == CN {
                let (tag, v, _) = der(value)?;
                found = directory_string(tag, v);
            }
        }
    }
    found
}

/// One DER element at the start of `b`: its tag, contents and what follows.
fn der(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, b) = b.split_first()?;
    let (len, b) = if first < 0x80 {
        (usize::from(first), b)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let len = b[..n]
            .iter()
            .fold(0usize, |acc, &x| (acc << 8) | usize::from(x));
        (len, &b[n..])
    };
    (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
}

/// An X.520 DirectoryString (UTF8, Printable, IA5, Teletex read as Latin-1, BMP).
fn directory_string(tag: u8, v: &[u8]) -> Option<String> {
    match tag {
        0x0c | 0x13 | 0x16 => String::from_utf8(v.to_vec()).ok(),
        0x14 => Some(v.iter().map(|&b| char::from(b)).collect()),
        0x1e if v.len().is_multiple_of(2) => {
            let units: Vec<u16> = v
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(params: rcgen::CertificateParams) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn common_name_is_read_from_the_subject() {
        let mut p = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "pgraft");
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        assert_eq!(common_name(&cert_with(p)).as_deref(), Some("alice"));

        let mut p = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "no cn here");
        assert_eq!(common_name(&cert_with(p)), None);
    }

    #[test]
    fn garbage_has_no_common_name_and_never_panics() {
        let mut p = rcgen::CertificateParams::new(vec!["x".into()]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, "bob");
        let good = cert_with(p);
        assert_eq!(common_name(&good).as_deref(), Some("bob"));
        // Every truncation and every single-byte change of a real certificate.
        for n in 0..good.len() {
            let _ = common_name(&good[..n]);
            let mut bad = good.clone();
            bad[n] ^= 0xff;
            let _ = common_name(&bad);
        }
        assert_eq!(common_name(&[]), None);
        assert_eq!(common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }

    #[test]
    fn tls_versions_follow_etcds_flags() {
        assert_eq!(versions("", "").unwrap().len(), 2);
        assert_eq!(
            versions("TLS1.3", "").unwrap(),
            vec![&rustls::version::TLS13]
        );
        assert_eq!(
            versions("", "TLS1.2").unwrap(),
            vec![&rustls::version::TLS12]
        );
        assert!(versions("TLS1.3", "TLS1.2").is_err());
        assert!(versions("TLS1.0", "")
            .unwrap_err()
            .contains("TLS1.2 and TLS1.3 only"));
        assert!(versions("SSLv3", "").is_err());
    }
}
