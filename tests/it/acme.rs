//! ACME against Pebble (the ACME test server, Debian's `pebble` package) on loopback, with
//! its mock DNS (`pebble-challtestsrv`) pointing the test domain at 127.0.0.1: external
//! account binding, a real TLS-ALPN-01 validation of our HTTPS port, issuance, and the
//! certificate kept across a restart.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::*;

const DOMAIN: &str = "ecole-ceredis.test";
const EAB_KID: &str = "kid-ceredis";
const EAB_KEY: &str = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free port below the kernel's ephemeral range (32768 and up), so that it cannot be
/// taken between this check and its use by the other tests' servers and clients, which all
/// bind or connect from ephemeral ports.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = 20_000 + (std::process::id() % 5_000) as u16;
    loop {
        let port = start + NEXT.fetch_add(1, Ordering::Relaxed) % 7_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

async fn wait_for_port(port: u16) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("port {port} never opened");
}

/// Pebble's own HTTPS certificate, from a throwaway CA made here.
fn pebble_tls(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let (root, cert, pkey) = (
        dir.join("pebble-root.pem"),
        dir.join("pebble-cert.pem"),
        dir.join("pebble-key.pem"),
    );
    std::fs::write(&root, ca_cert.pem()).unwrap();
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&pkey, key.serialize_pem()).unwrap();
    (root, cert, pkey)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_domain_gets_its_certificate_from_an_acme_directory() {
    let work = tempfile::tempdir().unwrap();
    let (root, cert, key) = pebble_tls(work.path());
    let (dns, acme, mgmt, https, chall_mgmt) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let _dns = Killed(
        Command::new("pebble-challtestsrv")
            .args([
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
                "-dns01",
                &format!("127.0.0.1:{dns}"),
            ])
            .args([
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                &format!("127.0.0.1:{chall_mgmt}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv (Debian package pebble) is installed"),
    );
    let config = serde_json::json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{acme}"),
        "managementListenAddress": format!("127.0.0.1:{mgmt}"),
        "certificate": cert, "privateKey": key,
        "httpPort": 5002, "tlsPort": https,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": true,
        "externalAccountMACKeys": { EAB_KID: EAB_KEY },
    }});
    let config_path = work.path().join("pebble.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let _pebble = Killed(
        Command::new("pebble")
            .args([
                "-config",
                config_path.to_str().unwrap(),
                "-dnsserver",
                &format!("127.0.0.1:{dns}"),
            ])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(Stdio::from(
                std::fs::File::create(work.path().join("pebble.log")).unwrap(),
            ))
            .stderr(Stdio::from(
                std::fs::File::create(work.path().join("pebble.err")).unwrap(),
            ))
            .spawn()
            .expect("pebble (Debian package pebble) is installed"),
    );
    wait_for_port(acme).await;
    wait_for_port(dns).await;

    let directory = format!("https://127.0.0.1:{acme}/dir");
    let root_path = root.to_str().unwrap().to_string();
    let env = [
        ("CEREDIS_TLS__ACME__DOMAIN", DOMAIN),
        ("CEREDIS_TLS__ACME__DIRECTORY_URL", directory.as_str()),
        ("CEREDIS_TLS__ACME__CA_ROOT", root_path.as_str()),
        ("CEREDIS_TLS__ACME__CONTACT_EMAIL", "it@ecole.test"),
        ("CEREDIS_TLS__ACME__EAB_KEY_ID", EAB_KID),
        ("CEREDIS_TLS__ACME__EAB_HMAC_KEY", EAB_KEY),
    ];
    let mut app = Appliance::init_with_env(&env);
    app.listen = format!("127.0.0.1:{https}");
    app.start();

    // Pebble issues from a root it makes at start; trust exactly that root.
    let admin = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&root).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    let issuing_root = admin
        .get(format!("https://127.0.0.1:{mgmt}/roots/0"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let client = |resolve_port: u16| {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(issuing_root.as_bytes()).unwrap())
            .tls_built_in_root_certs(false)
            .resolve(DOMAIN, ([127, 0, 0, 1], resolve_port).into())
            .build()
            .unwrap()
    };
    let url = format!("https://{DOMAIN}:{https}/healthz");
    let mut served = false;
    for _ in 0..300 {
        if let Ok(r) = client(https).get(&url).send().await {
            assert_eq!(r.text().await.unwrap(), "ok");
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(app.log_path()).unwrap_or_default();
    assert!(served, "no ACME certificate was served; server log:\n{log}");
    assert!(log.contains("ACME certificate installed"), "{log}");
    assert!(app.data_path().join("acme/certificate.pem").exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(app.data_path().join("acme/account.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the ACME account key is private");
    }

    // After a restart the stored certificate is served at once, without a new order.
    app.kill();
    app.start();
    let r = client(https)
        .get(&url)
        .send()
        .await
        .expect("the stored ACME certificate is served immediately");
    assert_eq!(r.text().await.unwrap(), "ok");
    let log = std::fs::read_to_string(app.log_path()).unwrap();
    assert_eq!(
        log.matches("ACME certificate installed").count(),
        1,
        "no second order: {log}"
    );
}
