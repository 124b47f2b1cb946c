//! --web.config.file against exporter-toolkit's own test data (tests/fixtures/webconfig, copied
//! from prometheus/exporter-toolkit's web/testdata) and the expectations of its Go tests.

use crate::process::{assert_one_line, exporter, run};

/// Client authentication asked for without a certificate: the toolkit refuses to start, and
/// so do we; falling back to plain HTTP would open what the operator meant to close.
#[test]
fn client_auth_without_a_certificate_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    for tls in [
        "client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt",
        "client_auth_type: VerifyClientCertIfGiven",
        "client_ca_file: ca.crt",
    ] {
        let path = dir.path().join("web.yml");
        std::fs::write(&path, format!("tls_server_config:\n  {tls}\n")).unwrap();
        let (code, stderr) = run(exporter()
            .args(["--demo", "--web.listen-address", "127.0.0.1:0"])
            .arg("--web.config.file")
            .arg(&path));
        assert_eq!(code, 1, "{tls}: {stderr}");
        assert_one_line(&stderr, &["missing one of cert or cert_file"]);
    }
}
