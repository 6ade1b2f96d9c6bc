//! Mutual TLS between nodes on loopback (certificates made here with rcgen):
//! a cluster forms over it, and every way of coming in without being a node
//! of the cluster is refused, counted by reason, with the node still serving.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cluster::transport::dev_certs::{CertOptions, DevCa, NodeCert, write_files};
use cluster::{
    BindError, Channel, Envelope, Membership, MembershipSettings, NodeAddr, NodeId, RefusalReason,
    TcpSettings, TcpTransport, TlsError, TlsSettings, Transport, node_identity,
};
use futures::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

const CH: Channel = Channel(5);
const CLUSTER: &str = "tls-test";

struct Pki {
    ca: DevCa,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        Self {
            ca: DevCa::new(CLUSTER).unwrap(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn files(&self, node: u64) -> TlsSettings {
        self.ca
            .write_node(NodeId(node), &self.dir.path().join(format!("node-{node}")))
            .unwrap()
    }
}

fn settings(node: u64, tls: Option<TlsSettings>) -> TcpSettings {
    let mut s = TcpSettings::new(CLUSTER, NodeId(node), "127.0.0.1:0".parse().unwrap());
    s.tls = tls;
    s.max_frame_size = 64 * 1024;
    s.handshake_timeout = Duration::from_secs(2);
    s.backoff_min = Duration::from_millis(20);
    s.backoff_max = Duration::from_millis(200);
    s
}

async fn tls_node(pki: &Pki, node: u64) -> TcpTransport {
    TcpTransport::bind(settings(node, Some(pki.files(node))))
        .await
        .unwrap()
}

async fn send_until_delivered(
    from: &TcpTransport,
    to: NodeId,
    inbox: &mut mpsc::Receiver<Envelope>,
) -> Envelope {
    for _ in 0..100 {
        from.send(to, CH, Bytes::from_static(b"ping")).unwrap();
        if let Ok(Some(e)) = timeout(Duration::from_millis(100), inbox.recv()).await {
            return e;
        }
    }
    panic!("nothing from {} reached {to}", from.local_node());
}

/// Node 1 with a healthy peer 2 already talking to it: every attack below
/// must leave this conversation going.
struct Served {
    a: TcpTransport,
    b: TcpTransport,
    inbox: mpsc::Receiver<Envelope>,
}

async fn served(pki: &Pki) -> Served {
    let a = tls_node(pki, 1).await;
    let b = tls_node(pki, 2).await;
    let mut inbox = a.subscribe(CH);
    b.learn_address(NodeId(1), &NodeAddr::from(a.local_addr()));
    send_until_delivered(&b, NodeId(1), &mut inbox).await;
    Served { a, b, inbox }
}

impl Served {
    async fn still_serving(&mut self) {
        while self.inbox.try_recv().is_ok() {}
        let got = send_until_delivered(&self.b, NodeId(1), &mut self.inbox).await;
        assert_eq!(got.from, NodeId(2));
    }
}

fn client_config(ca_pem: &str, cert: Option<&NodeCert>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots);
    match cert {
        None => builder.with_no_client_auth(),
        Some(cert) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
    }
}

/// Connects to `to` over TLS as a hand-made client and sends a hello; true
/// when the node answered `Accepted`.
async fn try_join(
    to: &TcpTransport,
    server_ca_pem: &str,
    cert: Option<&NodeCert>,
    cluster: &str,
    as_node: u64,
) -> bool {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(server_ca_pem, cert)));
    let tcp = TcpStream::connect(to.local_addr()).await.unwrap();
    let name = ServerName::try_from(node_identity(CLUSTER, to.local_node())).unwrap();
    let Ok(tls) = connector.connect(name, tcp).await else {
        return false;
    };
    let mut framed = Framed::new(tls, LengthDelimitedCodec::new());
    let hello =
        postcard::to_stdvec(&(cluster::PROTOCOL_VERSION, cluster, as_node, "127.0.0.1:1")).unwrap();
    if framed.send(Bytes::from(hello)).await.is_err() {
        return false;
    }
    match timeout(Duration::from_secs(5), framed.next()).await {
        Ok(Some(Ok(reply))) => reply[..] == [0],
        _ => false,
    }
}

#[tokio::test]
async fn three_nodes_form_a_cluster_over_mtls_and_route() {
    let pki = Pki::new();
    let transports: Vec<Arc<TcpTransport>> = vec![
        Arc::new(tls_node(&pki, 1).await),
        Arc::new(tls_node(&pki, 2).await),
        Arc::new(tls_node(&pki, 3).await),
    ];
    let seed = vec![(NodeId(1), NodeAddr::from(transports[0].local_addr()))];
    let mut inboxes: Vec<_> = transports.iter().map(|t| t.subscribe(CH)).collect();
    let members: Vec<Membership> = transports
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut settings = MembershipSettings::new(seed.clone());
            settings.heartbeat_interval = Duration::from_millis(200);
            settings.probe_timeout = Duration::from_millis(100);
            settings.down_after = Duration::from_secs(1);
            settings.announce_interval = Duration::from_millis(300);
            settings.rng_seed = i as u64;
            Membership::start(
                Arc::clone(t) as Arc<dyn Transport>,
                NodeAddr::from(t.local_addr()),
                settings,
            )
            .unwrap()
        })
        .collect();
    for _ in 0..100 {
        if members.iter().all(|m| m.view().members().len() == 3) {
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    for m in &members {
        assert_eq!(m.view().members(), vec![NodeId(1), NodeId(2), NodeId(3)]);
    }
    let got = send_until_delivered(&transports[2], NodeId(2), &mut inboxes[1]).await;
    assert_eq!(got.from, NodeId(3));
    let got = send_until_delivered(&transports[1], NodeId(1), &mut inboxes[0]).await;
    assert_eq!(got.from, NodeId(2));
    for t in &transports {
        for reason in RefusalReason::ALL {
            assert_eq!(t.refused(reason), 0, "{reason} on {}", t.local_node());
        }
    }
}

#[tokio::test]
async fn a_valid_certificate_joins_and_the_hand_made_client_is_sound() {
    // The control for the refusals below: the same client with a good
    // certificate is accepted, so a refusal is the node's doing.
    let pki = Pki::new();
    let s = served(&pki).await;
    let good = pki.ca.issue(NodeId(7)).unwrap();
    assert!(try_join(&s.a, &pki.ca.ca_pem(), Some(&good), CLUSTER, 7).await);
}

#[tokio::test]
async fn no_client_certificate_is_refused() {
    let pki = Pki::new();
    let mut s = served(&pki).await;
    assert!(!try_join(&s.a, &pki.ca.ca_pem(), None, CLUSTER, 7).await);
    assert_eq!(s.a.refused(RefusalReason::Tls), 1);
    s.still_serving().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let pki = Pki::new();
    let mut s = served(&pki).await;
    let rogue = DevCa::new(CLUSTER).unwrap();
    let cert = rogue.issue(NodeId(7)).unwrap();
    assert!(!try_join(&s.a, &pki.ca.ca_pem(), Some(&cert), CLUSTER, 7).await);
    assert_eq!(s.a.refused(RefusalReason::Tls), 1);
    s.still_serving().await;
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let pki = Pki::new();
    let mut s = served(&pki).await;
    let options = CertOptions {
        expired: true,
        ..CertOptions::default()
    };
    let cert = pki.ca.issue_with(NodeId(7), &options).unwrap();
    assert!(!try_join(&s.a, &pki.ca.ca_pem(), Some(&cert), CLUSTER, 7).await);
    assert_eq!(s.a.refused(RefusalReason::Tls), 1);
    s.still_serving().await;
}

#[tokio::test]
async fn a_valid_certificate_cannot_speak_as_another_node() {
    let pki = Pki::new();
    let mut s = served(&pki).await;
    let cert = pki.ca.issue(NodeId(7)).unwrap();
    // Node 7's certificate, claiming node 2 (a member) and node 0 (which
    // would lead every view).
    for claimed in [2, 0] {
        assert!(!try_join(&s.a, &pki.ca.ca_pem(), Some(&cert), CLUSTER, claimed).await);
    }
    assert_eq!(s.a.refused(RefusalReason::Identity), 2);
    // A wildcard-free certificate of another cluster's naming does not help.
    let other = pki
        .ca
        .issue_with(
            NodeId(2),
            &CertOptions {
                dns_names: Some(vec![node_identity("other", NodeId(2))]),
                ..CertOptions::default()
            },
        )
        .unwrap();
    assert!(!try_join(&s.a, &pki.ca.ca_pem(), Some(&other), CLUSTER, 2).await);
    assert_eq!(s.a.refused(RefusalReason::Identity), 3);
    s.still_serving().await;
}

#[tokio::test]
async fn a_wrong_cluster_name_is_refused_even_with_a_valid_certificate() {
    let pki = Pki::new();
    let mut s = served(&pki).await;
    let cert = pki.ca.issue(NodeId(7)).unwrap();
    assert!(!try_join(&s.a, &pki.ca.ca_pem(), Some(&cert), "other", 7).await);
    assert_eq!(s.a.refused(RefusalReason::ClusterName), 1);
    s.still_serving().await;
}

#[tokio::test]
async fn a_plaintext_peer_is_refused_by_a_tls_node() {
    let pki = Pki::new();
    let mut s = served(&pki).await;
    // A plaintext node of the right cluster, and a raw plaintext hello.
    let plain = TcpTransport::bind(settings(7, None)).await.unwrap();
    plain.learn_address(NodeId(1), &NodeAddr::from(s.a.local_addr()));
    let mut raw = TcpStream::connect(s.a.local_addr()).await.unwrap();
    let hello =
        postcard::to_stdvec(&(cluster::PROTOCOL_VERSION, CLUSTER, 7u64, "127.0.0.1:1")).unwrap();
    raw.write_all(&(hello.len() as u32).to_be_bytes())
        .await
        .unwrap();
    raw.write_all(&hello).await.unwrap();
    for _ in 0..20 {
        let _ = plain.send(NodeId(1), CH, Bytes::from_static(b"let me in"));
        sleep(Duration::from_millis(50)).await;
    }
    assert!(
        s.a.refused(RefusalReason::Tls) >= 2,
        "{}",
        s.a.refused(RefusalReason::Tls)
    );
    while let Ok(e) = s.inbox.try_recv() {
        assert_eq!(e.from, NodeId(2), "only the real peer is heard");
    }
    s.still_serving().await;
}

#[tokio::test]
async fn a_dialer_refuses_a_node_that_is_not_the_one_it_meant() {
    // The address learned for node 2 is node 3's: node 1 must not send
    // node 2's messages to it.
    let pki = Pki::new();
    let a = tls_node(&pki, 1).await;
    let c = tls_node(&pki, 3).await;
    let mut c_inbox = c.subscribe(CH);
    a.learn_address(NodeId(2), &NodeAddr::from(c.local_addr()));
    for _ in 0..10 {
        let _ = a.send(NodeId(2), CH, Bytes::from_static(b"for node 2"));
        sleep(Duration::from_millis(30)).await;
    }
    assert!(c_inbox.try_recv().is_err(), "node 3 got node 2's messages");
}

#[tokio::test]
async fn a_rotated_certificate_is_used_by_new_connections() {
    let pki = Pki::new();
    let dir = pki.dir.path().join("rotating");
    let first = pki.ca.issue(NodeId(1)).unwrap();
    let files = write_files(&dir, &pki.ca.ca_pem(), &first).unwrap();
    let a = TcpTransport::bind(settings(1, Some(files))).await.unwrap();
    assert_eq!(presented(&a, &pki).await, der(&first));

    // cert-manager renews the Secret in place.
    let second = pki.ca.issue(NodeId(1)).unwrap();
    write_files(&dir, &pki.ca.ca_pem(), &second).unwrap();
    let mut now = presented(&a, &pki).await;
    for _ in 0..30 {
        if now == der(&second) {
            break;
        }
        sleep(Duration::from_millis(100)).await;
        now = presented(&a, &pki).await;
    }
    assert_eq!(now, der(&second), "the renewed certificate is not in use");

    // A half-written rotation (garbage) keeps the last good one.
    std::fs::write(dir.join("tls.crt"), "not a certificate").unwrap();
    sleep(Duration::from_millis(1100)).await;
    assert_eq!(presented(&a, &pki).await, der(&second));
    // And peers still join.
    let b = tls_node(&pki, 2).await;
    let mut inbox = a.subscribe(CH);
    b.learn_address(NodeId(1), &NodeAddr::from(a.local_addr()));
    send_until_delivered(&b, NodeId(1), &mut inbox).await;
}

fn der(cert: &NodeCert) -> Vec<u8> {
    CertificateDer::from_pem_slice(cert.cert_pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// The certificate `node` presents to a new connection.
async fn presented(node: &TcpTransport, pki: &Pki) -> Vec<u8> {
    let me = pki.ca.issue(NodeId(9)).unwrap();
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(client_config(&pki.ca.ca_pem(), Some(&me))));
    let tcp = TcpStream::connect(node.local_addr()).await.unwrap();
    let name = ServerName::try_from(node_identity(CLUSTER, node.local_node())).unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn bad_tls_settings_are_typed_errors_naming_the_file_or_value() {
    let pki = Pki::new();
    let good = pki.files(1);
    let missing = TlsSettings {
        cert: pki.dir.path().join("nope.crt"),
        ..good.clone()
    };
    match TcpTransport::bind(settings(1, Some(missing))).await {
        Err(BindError::Tls(TlsError::Read { path, .. })) => assert!(path.ends_with("nope.crt")),
        other => panic!("{:?}", other.err()),
    }
    let garbage = pki.dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let bad_ca = TlsSettings {
        ca: garbage.clone(),
        ..good.clone()
    };
    let error = TcpTransport::bind(settings(1, Some(bad_ca)))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&error, BindError::Tls(TlsError::Pem { path, .. }) if path == &garbage),
        "{error}"
    );
    // Node 2's key with node 1's certificate.
    let other_key = TlsSettings {
        key: pki.files(2).key,
        ..good.clone()
    };
    let error = TcpTransport::bind(settings(1, Some(other_key)))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(error, BindError::Tls(TlsError::Config { .. })),
        "{error}"
    );
    let mut bad_name = settings(1, Some(good));
    bad_name.cluster_name = "no spaces allowed".into();
    let error = TcpTransport::bind(bad_name).await.err().unwrap();
    assert!(error.to_string().contains("no spaces allowed"), "{error}");
    let mut zero = settings(1, None);
    zero.max_pending_handshakes = 0;
    let error = TcpTransport::bind(zero).await.err().unwrap();
    assert!(
        error.to_string().contains("max_pending_handshakes"),
        "{error}"
    );
}

#[tokio::test]
async fn silent_connections_to_a_tls_node_are_capped_then_timed_out() {
    let pki = Pki::new();
    let mut settings = settings(1, Some(pki.files(1)));
    settings.max_pending_handshakes = 2;
    settings.handshake_timeout = Duration::from_millis(500);
    let a = TcpTransport::bind(settings).await.unwrap();
    let b = tls_node(&pki, 2).await;
    let mut inbox = a.subscribe(CH);
    b.learn_address(NodeId(1), &NodeAddr::from(a.local_addr()));
    send_until_delivered(&b, NodeId(1), &mut inbox).await;
    // Connect and never send a ClientHello.
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(TcpStream::connect(a.local_addr()).await.unwrap());
    }
    sleep(Duration::from_millis(200)).await;
    assert_eq!(a.refused(RefusalReason::TooManyPending), 3);
    sleep(Duration::from_millis(500)).await;
    assert_eq!(a.refused(RefusalReason::Timeout), 2);
    let mut s = Served { a, b, inbox };
    s.still_serving().await;
}
