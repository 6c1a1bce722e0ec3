//! Raw TLS clients against a node's TCP listener: the negotiated version is TLS 1.3, a TLS 1.2
//! client is refused, and certificates with a missing, badly signed or foreign libp2p extension
//! are refused without a panic.
//!
//! A libp2p TCP connection first negotiates the security protocol with multistream-select
//! (`/multistream/1.0.0`, then `/tls/1.0.0`), then runs TLS; these tests speak both by hand with
//! a blocking rustls client (this dev-build of rustls has `tls12` so a test can offer it).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use playergold_net::NetworkEvent;
use playergold_net::testnet::{TestNode, node_ip, tcp_addr, test_config};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

const IO_TIMEOUT: Duration = Duration::from_secs(5);
const P2P_EXT_OID: [u64; 9] = [1, 3, 6, 1, 4, 1, 53594, 1, 1];
const SIGNING_PREFIX: &[u8] = b"libp2p-tls-handshake:";

/// Accepts any server certificate (these tests check the server, not the client) and records
/// which TLS version's handshake signature it was asked to check: 12 or 13.
#[derive(Debug)]
struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>, Arc<AtomicU8>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.1.store(12, Ordering::SeqCst);
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.1.store(13, Ordering::SeqCst);
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Presents one certificate without checking it (rustls would refuse the critical libp2p
/// extension of our own certificate otherwise).
#[derive(Debug)]
struct FixedClientCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

fn der_len(len: usize) -> Vec<u8> {
    match len {
        0..=127 => vec![len as u8],
        128..=255 => vec![0x81, len as u8],
        _ => vec![0x82, (len >> 8) as u8, len as u8],
    }
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend(der_len(content.len()));
    out.extend_from_slice(content);
    out
}

/// How to build the client's libp2p certificate extension.
#[derive(Clone, Copy, Debug)]
enum Ext {
    /// A correct extension for the client's own key.
    Valid,
    /// No libp2p extension at all.
    Missing,
    /// The signature covers the wrong bytes.
    BadSignature,
    /// Names another peer's public key, signed with ours.
    ForeignKey,
}

/// A self-signed client certificate and its key.
fn client_cert(ext: Ext) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let identity = Keypair::generate_ed25519();
    let other = Keypair::generate_ed25519();
    let cert_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("cert key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let mut msg = SIGNING_PREFIX.to_vec();
    msg.extend(cert_key.public_key_der());
    let (pubkey, signature) = match ext {
        Ext::Valid | Ext::Missing => (
            identity.public().encode_protobuf(),
            identity.sign(&msg).expect("sign"),
        ),
        Ext::BadSignature => (
            identity.public().encode_protobuf(),
            identity.sign(b"something else").expect("sign"),
        ),
        Ext::ForeignKey => (
            other.public().encode_protobuf(),
            identity.sign(&msg).expect("sign"),
        ),
    };
    if !matches!(ext, Ext::Missing) {
        let mut body = der(0x04, &pubkey);
        body.extend(der(0x04, &signature));
        let mut ext = rcgen::CustomExtension::from_oid_content(&P2P_EXT_OID, der(0x30, &body));
        ext.set_criticality(true);
        params.custom_extensions.push(ext);
    }
    let cert = params.self_signed(&cert_key).expect("self-signed cert");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert_key.serialize_der()));
    (cert.der().clone(), key)
}

fn client_config(
    versions: &[&'static rustls::SupportedProtocolVersion],
    ext: Ext,
) -> rustls::ClientConfig {
    client_config_recording(versions, ext, Arc::default())
}

/// A client config whose verifier stores the TLS version it saw (12 or 13) in `seen`.
fn client_config_recording(
    versions: &[&'static rustls::SupportedProtocolVersion],
    ext: Ext,
    seen: Arc<AtomicU8>,
) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let (cert, key) = client_cert(ext);
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .expect("versions supported by this build")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider, seen)))
        .with_client_cert_resolver(Arc::new(FixedClientCert(Arc::new(
            rustls::sign::CertifiedKey::new(
                vec![cert],
                rustls::crypto::aws_lc_rs::sign::any_ecdsa_type(&key).expect("ecdsa key"),
            ),
        ))));
    cfg.alpn_protocols = vec![b"libp2p".to_vec()];
    cfg
}

/// Writes one multistream-select message (uvarint length, then the line).
fn ms_write(io: &mut impl Write, line: &str) {
    let msg = format!("{line}\n");
    // Every message here is shorter than 128 bytes: the uvarint is one byte.
    io.write_all(&[msg.len() as u8]).expect("write length");
    io.write_all(msg.as_bytes()).expect("write message");
    io.flush().expect("flush");
}

fn ms_read(io: &mut impl Read) -> String {
    let mut len = [0u8; 1];
    io.read_exact(&mut len).expect("read length");
    let mut buf = vec![0u8; usize::from(len[0])];
    io.read_exact(&mut buf).expect("read message");
    String::from_utf8(buf).expect("utf8").trim_end().to_owned()
}

/// Opens a TCP connection and negotiates `/tls/1.0.0`.
fn open(addr: SocketAddr) -> TcpStream {
    let mut sock = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("tcp connect");
    sock.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    ms_write(&mut sock, "/multistream/1.0.0");
    ms_write(&mut sock, "/tls/1.0.0");
    assert_eq!(ms_read(&mut sock), "/multistream/1.0.0");
    assert_eq!(
        ms_read(&mut sock),
        "/tls/1.0.0",
        "the node offers TLS as its only security protocol"
    );
    sock
}

/// Outcome of a raw TLS session attempt.
#[derive(Debug)]
enum Outcome {
    /// The handshake failed on the client side (e.g. a protocol version alert).
    HandshakeFailed(String),
    /// The handshake completed but the server then closed or alerted.
    RefusedAfterHandshake(String),
    /// The server accepted the session: it answered multistream-select inside TLS.
    Accepted(rustls::ProtocolVersion),
}

fn attempt(addr: SocketAddr, cfg: rustls::ClientConfig) -> Outcome {
    let mut sock = open(addr);
    let name = ServerName::try_from("l").expect("server name");
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).expect("client");
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut sock) {
            return Outcome::HandshakeFailed(e.to_string());
        }
    }
    let version = conn.protocol_version().expect("negotiated version");
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    // Inside TLS, libp2p negotiates the stream multiplexer: a server that accepted us answers.
    let mut write = || -> std::io::Result<()> {
        tls.write_all(&[19])?;
        tls.write_all(b"/multistream/1.0.0\n")?;
        tls.write_all(&[14])?;
        tls.write_all(b"/yamux/1.0.0\n")?;
        tls.flush()
    };
    if let Err(e) = write() {
        return Outcome::RefusedAfterHandshake(e.to_string());
    }
    let mut first = [0u8; 1];
    match tls.read(&mut first) {
        Ok(0) => Outcome::RefusedAfterHandshake("closed".into()),
        Ok(_) => Outcome::Accepted(version),
        Err(e) => Outcome::RefusedAfterHandshake(e.to_string()),
    }
}

async fn tcp_node(n: u8) -> (TestNode, SocketAddr) {
    let mut cfg = test_config(node_ip(n));
    cfg.listen_addrs = vec![tcp_addr(node_ip(n))];
    let node = TestNode::spawn_fresh(cfg).await.expect("node starts");
    let mut ip = None;
    let mut port = None;
    for p in node.listen_addrs[0].iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(a),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    let addr = SocketAddr::from((ip.expect("ip"), port.expect("port")));
    (node, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls13_is_negotiated_even_when_the_client_offers_tls12() {
    crate::init_tracing();
    let (node, addr) = tcp_node(210).await;
    let cfg = client_config(
        &[&rustls::version::TLS12, &rustls::version::TLS13],
        Ext::Valid,
    );
    let outcome = tokio::task::spawn_blocking(move || attempt(addr, cfg))
        .await
        .expect("join");
    match outcome {
        Outcome::Accepted(v) => assert_eq!(v, rustls::ProtocolVersion::TLSv1_3),
        other => panic!("a valid libp2p client must be accepted, got {other:?}"),
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_only_client_is_refused() {
    let (node, addr) = tcp_node(211).await;
    let cfg = client_config(&[&rustls::version::TLS12], Ext::Valid);
    match tokio::task::spawn_blocking(move || attempt(addr, cfg))
        .await
        .expect("join")
    {
        Outcome::HandshakeFailed(why) => eprintln!("TLS 1.2 refused: {why}"),
        other => panic!("TLS 1.2 must be refused during the handshake, got {other:?}"),
    }
    // The node is still alive and well.
    let ok = client_config(&[&rustls::version::TLS13], Ext::Valid);
    let outcome = tokio::task::spawn_blocking(move || attempt(addr, ok))
        .await
        .expect("join");
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_libp2p_certificates_are_refused_without_panic() {
    let (node, addr) = tcp_node(212).await;
    let mut events = node.handle.subscribe();
    for ext in [Ext::Missing, Ext::BadSignature, Ext::ForeignKey] {
        let cfg = client_config(&[&rustls::version::TLS13], ext);
        match tokio::task::spawn_blocking(move || attempt(addr, cfg))
            .await
            .expect("join")
        {
            Outcome::HandshakeFailed(why) | Outcome::RefusedAfterHandshake(why) => {
                eprintln!("{ext:?} refused: {why}");
            }
            accepted => panic!("{ext:?} must be refused, got {accepted:?}"),
        }
    }
    // No peer was admitted, and the node still serves honest clients.
    assert!(node.handle.peers().await.expect("peers").is_empty());
    while let Ok(event) = events.try_recv() {
        assert!(
            !matches!(event, NetworkEvent::PeerConnected { .. }),
            "{event:?}"
        );
    }
    let ok = client_config(&[&rustls::version::TLS13], Ext::Valid);
    let outcome = tokio::task::spawn_blocking(move || attempt(addr, ok))
        .await
        .expect("join");
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    node.stop().await;
}

/// The node's QUIC socket address.
fn quic_socket(node: &TestNode) -> SocketAddr {
    let mut ip = None;
    let mut port = None;
    for p in node.listen_addrs[0].iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(a),
            Protocol::Udp(p) => port = Some(p),
            _ => {}
        }
    }
    SocketAddr::from((ip.expect("ip"), port.expect("udp port")))
}

/// A raw quinn client endpoint on `ip` using `tls`.
fn quic_client(ip: std::net::Ipv4Addr, tls: rustls::ClientConfig) -> quinn::Endpoint {
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC-capable TLS config");
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from((ip, 0))).expect("client endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_handshake_is_tls13() {
    let node = TestNode::spawn_fresh(test_config(node_ip(213)))
        .await
        .expect("node starts");
    let mut events = node.handle.subscribe();
    // Offer TLS 1.2 and 1.3; QUIC v1 can only run TLS 1.3 (RFC 9001), and the node agrees.
    let seen = Arc::new(AtomicU8::new(0));
    let tls = client_config_recording(
        &[&rustls::version::TLS12, &rustls::version::TLS13],
        Ext::Valid,
        seen.clone(),
    );
    let endpoint = quic_client(node_ip(214), tls);
    let conn = endpoint
        .connect(quic_socket(&node), "l")
        .expect("connect")
        .await
        .expect("QUIC handshake");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        13,
        "the server signed a TLS 1.3 handshake"
    );
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    assert_eq!(alpn.as_deref(), Some(&b"libp2p"[..]));
    // The node admitted us as a peer over QUIC.
    tokio::time::timeout(IO_TIMEOUT, async {
        loop {
            if let Ok(NetworkEvent::PeerConnected { .. }) = events.recv().await {
                return;
            }
        }
    })
    .await
    .expect("node reports the QUIC peer");
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_libp2p_certificates_are_refused_over_quic() {
    let node = TestNode::spawn_fresh(test_config(node_ip(215)))
        .await
        .expect("node starts");
    for ext in [Ext::Missing, Ext::BadSignature, Ext::ForeignKey] {
        let endpoint = quic_client(node_ip(216), client_config(&[&rustls::version::TLS13], ext));
        let attempt = endpoint
            .connect(quic_socket(&node), "l")
            .expect("connect")
            .await;
        // The client may finish its side of the handshake before the server has checked the
        // client certificate; then the server closes the connection right after.
        let reason = match attempt {
            Err(e) => e.to_string(),
            Ok(conn) => tokio::time::timeout(IO_TIMEOUT, conn.closed())
                .await
                .expect("server closes")
                .to_string(),
        };
        eprintln!("QUIC {ext:?} refused: {reason}");
        endpoint.wait_idle().await;
    }
    assert!(node.handle.peers().await.expect("peers").is_empty());
    node.stop().await;
}
