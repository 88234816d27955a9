//! TLS for the cbo QUIC link, shared by `cboserver` and the element's offload client.
//!
//! The server presents either a certificate the operator supplies (PEM files) or a self-signed one
//! it creates once and reuses. Clients trust a server in one of two ways ([`Trust`]): the
//! certificates of a PEM file as roots (the usual CA path, and the simplest way to trust a
//! self-signed server: give the client its `cert.pem`), or a pinned SHA-256 fingerprint of the
//! server's certificate (what `cboserver --self-signed` prints), which needs no file on the device.
//!
//! Every config is built on ring's crypto provider explicitly, so nothing depends on which
//! provider (if any) a process installed as its default.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

use crate::protocol::ALPN;

/// A certificate chain and its private key.
pub type CertAndKey = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// Names the self-signed certificate is valid for: the loopback addresses a local server is
/// reached on.
pub const SELF_SIGNED_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads `DIR/cert.pem` and `DIR/key.pem`, creating them (a self-signed certificate for
/// [`SELF_SIGNED_NAMES`]) when neither exists, so a server keeps its identity, and the
/// fingerprint clients pinned, across restarts.
pub fn load_or_create_self_signed(dir: &Path) -> Result<CertAndKey, String> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    match (cert.exists(), key.exists()) {
        (true, true) => return load_pem(&cert, &key),
        (false, false) => {}
        // Never overwrite half of an identity: one of the files may be the operator's.
        (true, false) | (false, true) => {
            return Err(format!(
                "'{}' has only one of cert.pem and key.pem; remove it or supply both",
                dir.display()
            ));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create '{}': {e}", dir.display()))?;
    let names: Vec<String> = SELF_SIGNED_NAMES.iter().map(|s| s.to_string()).collect();
    let generated = rcgen::generate_simple_self_signed(names)
        .map_err(|e| format!("cannot generate a self-signed certificate: {e}"))?;
    write_private(&key, generated.key_pair.serialize_pem().as_bytes())?;
    std::fs::write(&cert, generated.cert.pem())
        .map_err(|e| format!("cannot write '{}': {e}", cert.display()))?;
    load_pem(&cert, &key)
}

/// Writes a file readable by its owner only (a private key).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create '{}': {e}", path.display()))?;
    f.write_all(bytes)
        .map_err(|e| format!("cannot write '{}': {e}", path.display()))
}

/// Reads every certificate of a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificates from '{}': {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad certificate in '{}': {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("'{}' holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// Loads a certificate chain (leaf first) and its private key (PKCS#8, PKCS#1 or SEC1) from PEM.
pub fn load_pem(cert: &Path, key: &Path) -> Result<CertAndKey, String> {
    let certs = load_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read a private key from '{}': {e}", key.display()))?;
    Ok((certs, key))
}

/// Lowercase hex SHA-256 of the certificate's DER, no separators.
pub fn fingerprint(cert: &CertificateDer) -> String {
    hex(&Sha256::digest(cert.as_ref()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a SHA-256 fingerprint as people copy it: hex, any case, with or without `:` (or
/// space) separators.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], String> {
    let digits: String = s
        .chars()
        .filter(|c| !matches!(c, ':' | ' ' | '-'))
        .collect();
    let bad = || format!("'{s}' is not a SHA-256 fingerprint (64 hex digits, ':' allowed)");
    if digits.len() != 64 || !digits.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// QUIC server config presenting `certs`/`key`, TLS 1.3 only, ALPN [`ALPN`]. The caller sets the
/// transport limits.
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<quinn::ServerConfig, String> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not make a usable identity: {e}"))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| format!("TLS config unusable for QUIC: {e}"))?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
}

/// The server endpoint's configuration, with a stateless-reset key derived from its private key.
///
/// QUIC lets a server that has lost a connection's state (a restart) answer that connection's
/// next packet with a stateless reset, which the client recognises only if the token comes from
/// the key of the run that made the connection. quinn's default key is random per run, so after
/// a restart every client kept sending into the void until its idle timeout (30 s), each
/// offloaded frame waiting out its deadline meanwhile. Derived from the identity's private key,
/// the key is the same for every run with that identity, and as secret as the key itself. So is
/// the key that signs the connection IDs: a packet whose ID the new run's generator does not
/// recognise as one of its own is dropped unanswered.
pub fn endpoint_config(key: &PrivateKeyDer) -> quinn::EndpointConfig {
    let derive = |purpose: &[u8]| {
        ring::digest::digest(
            &ring::digest::SHA256,
            &[purpose, b"\0", key.secret_der()].concat(),
        )
    };
    let secret = derive(b"cbo stateless reset key");
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_ref());
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
    let cid_key = derive(b"cbo connection id key");
    let cid_key = u64::from_le_bytes(cid_key.as_ref()[..8].try_into().expect("8 bytes"));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    config
}

/// How a client decides to trust the server.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Trust {
    /// Trust exactly the certificates in this PEM file as roots (a CA, or the server's own
    /// self-signed certificate); the server name is checked against them.
    Pem(PathBuf),
    /// Trust only an end-entity certificate with this SHA-256 (hex, see [`parse_fingerprint`]);
    /// the name is not checked, the pin is the identity.
    Fingerprint(String),
}

/// QUIC client config for `trust`, TLS 1.3 only, ALPN [`ALPN`], with keep-alives so an
/// offloading connection survives quiet stretches of video.
pub fn client_config(trust: &Trust) -> Result<quinn::ClientConfig, String> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS setup: {e}"))?;
    let mut tls = match trust {
        Trust::Pem(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in load_certs(path)? {
                roots.add(cert).map_err(|e| {
                    format!("'{}' holds an unusable certificate: {e}", path.display())
                })?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Fingerprint(hex) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                pin: parse_fingerprint(hex)?,
                provider,
            }))
            .with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| format!("TLS config unusable for QUIC: {e}"))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(std::time::Duration::from_secs(5)));
    // The element sends one frame at a time and then idles, so the connection is almost always
    // application-limited and Cubic's window never grows past its initial 12 kB: every larger
    // JPEG would wait extra round trips that the planner's link model does not have. The planner
    // is the rate controller (it sends only what its uplink estimate says arrives in time), so
    // let one whole frame go out in a burst.
    let mut cubic = quinn::congestion::CubicConfig::default();
    cubic.initial_window(CLIENT_INITIAL_WINDOW);
    transport.congestion_controller_factory(Arc::new(cubic));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Initial congestion window of the element's connection: the largest JPEG at the profile's
/// largest resolution (320 px) is ~50 kB on the dev clip.
const CLIENT_INITIAL_WINDOW: u64 = 64 * 1024;

/// Accepts exactly one server certificate, by SHA-256 of its DER. The handshake signature is
/// still verified against that certificate's key, so a peer replaying the certificate without
/// the private key fails.
#[derive(Debug)]
struct PinnedVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

/// Why a pinned certificate was refused. rustls shows a `CertificateError::Other` by its
/// `Debug`, so this one's `Debug` is the plain message too ([`crate::quic`] then strips
/// rustls's wrapping), instead of `Custom { kind: Other, error: "..." }`.
pub(crate) struct FingerprintMismatch(pub(crate) String);

impl std::fmt::Debug for FingerprintMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for FingerprintMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FingerprintMismatch {}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if crate::protocol::token_matches(&self.pin, &got) {
            Ok(ServerCertVerified::assertion())
        } else {
            // Sent to the server as a bad_certificate alert; the message stays local.
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(FingerprintMismatch(
                    format!(
                        "server certificate fingerprint {} does not match the pinned {}",
                        hex(&got),
                        hex(&self.pin)
                    ),
                )))),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (certs, _) = load_or_create_self_signed(dir.path()).unwrap();
        let (again, _) = load_or_create_self_signed(dir.path()).unwrap();
        assert_eq!(fingerprint(&certs[0]), fingerprint(&again[0]));
        let fp = fingerprint(&certs[0]);
        assert_eq!(fp.len(), 64);
        assert!(
            fp.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_uppercase())
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "key.pem is private");
        assert!(
            server_config(
                certs,
                load_pem(&dir.path().join("cert.pem"), &dir.path().join("key.pem"))
                    .unwrap()
                    .1
            )
            .is_ok()
        );
        // Half an identity is refused, not overwritten.
        std::fs::remove_file(dir.path().join("key.pem")).unwrap();
        assert!(load_or_create_self_signed(dir.path()).is_err());
    }

    #[test]
    fn fingerprints_parse_in_common_spellings() {
        let fp = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let bytes = parse_fingerprint(fp).unwrap();
        assert_eq!(hex(&bytes), fp);
        let colons: Vec<String> = bytes.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(parse_fingerprint(&colons.join(":")).unwrap(), bytes);
        assert!(parse_fingerprint(&fp[..62]).is_err());
        assert!(parse_fingerprint(&fp.replace('a', "g")).is_err());
        assert!(parse_fingerprint("é".repeat(32).as_str()).is_err());
        assert!(client_config(&Trust::Fingerprint("nope".into())).is_err());
        assert!(client_config(&Trust::Fingerprint(fp.into())).is_ok());
    }
}
