//! How clients reach the daemon, through the real binaries: TLS and mutual
//! TLS with certificates made here, workspaces only under the folders the
//! server allows, and a user's own daemon on a socket only that user opens.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use maestro_tests::{Daemon, binary};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A CA with a server certificate (localhost, 127.0.0.1) and a client
/// certificate, written as PEM files.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn make(dir: &Path, name: &str) -> Pki {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, format!("{name} test CA"));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        for (leaf, names, usage) in [
            ("server", vec!["localhost".to_string(), "127.0.0.1".to_string()], ExtendedKeyUsagePurpose::ServerAuth),
            ("client", vec!["alice".to_string()], ExtendedKeyUsagePurpose::ClientAuth),
        ] {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params.distinguished_name.push(DnType::CommonName, leaf);
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca).unwrap();
            std::fs::write(dir.join(format!("{leaf}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{leaf}.key")), key.serialize_pem()).unwrap();
        }
        Pki { dir }
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// `maestroctl ARGS` with `token`, nothing taken from the environment.
fn ctl(token: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary("e2e-maestroctl"))
        .args(args)
        .env_remove("MAESTRO_SERVER")
        .env_remove("MAESTRO_CA_FILE")
        .env_remove("MAESTRO_TLS_CERT")
        .env_remove("MAESTRO_TLS_KEY")
        .env("MAESTRO_TOKEN", token)
        .env("HOME", std::env::temp_dir().join("maestro-e2e-home"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn port(daemon: &Daemon) -> &str {
    daemon.addr().rsplit(':').next().unwrap()
}

/// One readable line that names the failure.
fn refused(result: (i32, String, String), what: &str) -> String {
    let (code, _, err) = result;
    assert_eq!(code, 1, "{what}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "{what}: one line: {err}");
    err
}

#[test]
fn tls_serves_only_clients_that_trust_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::make(dir.path(), "team");
    let stranger = Pki::make(dir.path(), "stranger");
    let daemon =
        Daemon::start_with(&["--tls-cert", &pki.file("server.pem"), "--tls-key", &pki.file("server.key")]).unwrap();
    let token = daemon.admin_token();
    let by_name = format!("https://localhost:{}", port(&daemon));
    let by_ip = format!("https://127.0.0.1:{}", port(&daemon));

    for server in [&by_name, &by_ip] {
        let (code, out, err) = ctl(&token, &["--server", server, "--ca-file", &pki.file("ca.pem"), "info"]);
        assert_eq!(code, 0, "{server}: {err}");
        assert!(out.contains("REVISION"), "{out}");
    }
    let err = refused(ctl(&token, &["--server", &by_name, "info"]), "no CA: the system's roots do not know it");
    assert!(err.contains("certificate"), "{err}");
    let err =
        refused(ctl(&token, &["--server", &by_name, "--ca-file", &stranger.file("ca.pem"), "info"]), "another CA");
    assert!(err.contains("--ca-file"), "says what to check: {err}");
    refused(ctl(&token, &["--server", &format!("http://{}", daemon.addr()), "info"]), "plaintext to a TLS port");
    let err = refused(
        ctl("not-a-token", &["--server", &by_name, "--ca-file", &pki.file("ca.pem"), "info"]),
        "TLS does not replace the token",
    );
    assert!(err.contains("UNAUTHENTICATED"), "{err}");
    let err = refused(
        ctl(&token, &["--server", &format!("http://{}", daemon.addr()), "--ca-file", &pki.file("ca.pem"), "info"]),
        "a CA for a plaintext address is a mistake",
    );
    assert!(err.contains("https://"), "{err}");
}

#[test]
fn mutual_tls_admits_only_certificates_from_the_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::make(dir.path(), "team");
    let stranger = Pki::make(dir.path(), "stranger");
    let daemon = Daemon::start_with(&[
        "--tls-cert",
        &pki.file("server.pem"),
        "--tls-key",
        &pki.file("server.key"),
        "--tls-client-ca",
        &pki.file("ca.pem"),
    ])
    .unwrap();
    let token = daemon.admin_token();
    let server = format!("https://localhost:{}", port(&daemon));
    let ca = pki.file("ca.pem");
    let with_cert = |pki: &Pki| {
        ctl(
            &token,
            &[
                "--server",
                &server,
                "--ca-file",
                &ca,
                "--tls-cert",
                &pki.file("client.pem"),
                "--tls-key",
                &pki.file("client.key"),
                "info",
            ],
        )
    };
    let (code, _, err) = with_cert(&pki);
    assert_eq!(code, 0, "{err}");
    refused(ctl(&token, &["--server", &server, "--ca-file", &ca, "info"]), "no client certificate");
    refused(with_cert(&stranger), "a client certificate from another CA");
}

#[test]
fn a_server_others_reach_needs_tls_or_insecure_and_a_workspace_root() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::make(dir.path(), "team");
    let start = |extra: &[&str]| {
        Command::new(binary("e2e-maestrod"))
            .args(["--listen", "0.0.0.0:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(extra)
            .env_remove("MAESTRO_INSECURE_LISTEN")
            .env_remove("MAESTRO_WORKSPACE_ROOT")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let tls = ["--tls-cert", &pki.file("server.pem"), "--tls-key", &pki.file("server.key")];
    let out = start(&tls);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--workspace-root") && err.lines().count() == 1, "{err}");
    let out = start(&[&tls[..], &["--workspace-root", "relative"]].concat());
    assert!(String::from_utf8_lossy(&out.stderr).contains("absolute"), "{out:?}");

    let root = dir.path().join("projects");
    std::fs::create_dir(&root).unwrap();
    let log = dir.path().join("maestrod.log");
    let (mut child, addr) = maestro_tests::spawn_daemon(
        &dir.path().join("data2"),
        &log,
        &[&tls[..], &["--listen", "0.0.0.0:0", "--workspace-root", root.to_str().unwrap()]]
            .concat()
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let _ = child.kill();
    let _ = child.wait();
    assert!(addr.starts_with("0.0.0.0:"), "{addr}");
    let log = std::fs::read_to_string(log).unwrap();
    assert!(!log.contains("INSECURE"), "TLS beyond loopback is not insecure: {log}");
}

#[test]
fn workspaces_only_under_the_folders_the_server_allows() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("projects");
    let outside = dir.path().join("elsewhere");
    std::fs::create_dir_all(root.join("shop")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
    let daemon = Daemon::start_with(&["--workspace-root", root.to_str().unwrap()]).unwrap();

    let inside = root.join("shop");
    daemon.ctl(&["project", "create", "shop", "--workspace", inside.to_str().unwrap()]).ok();
    for (id, path) in [("etc", PathBuf::from("/etc")), ("out", outside.clone()), ("via-link", root.join("link"))] {
        let out = daemon.ctl(&["project", "create", id, "--workspace", path.to_str().unwrap()]);
        assert_eq!(out.code, 1, "{}: {}", path.display(), out.stderr);
        assert!(out.stderr.contains("PERMISSION_DENIED") && out.stderr.contains("--workspace-root"), "{}", out.stderr);
        let gone = daemon.ctl(&["project", "show", id]);
        assert!(gone.stderr.contains("NOT_FOUND"), "nothing was created: {}", gone.stderr);
    }
    // Moving a project, or starting a loop elsewhere, meets the same rule.
    let moved = daemon.ctl(&["-p", "shop", "run", "task", "--workspace", outside.to_str().unwrap(), "--detach"]);
    assert!(moved.code == 1 && moved.stderr.contains("PERMISSION_DENIED"), "{moved:?}");
    let demo = daemon.ctl(&["run", "--demo", "--workspace", outside.join("demo").to_str().unwrap(), "--detach"]);
    assert!(demo.code == 1 && demo.stderr.contains("PERMISSION_DENIED"), "{demo:?}");
    assert!(!outside.join("demo").exists(), "nothing was made outside the root");
    let demo = daemon.ctl(&["run", "--demo", "--workspace", root.join("demo").to_str().unwrap(), "--detach"]);
    assert_eq!(demo.code, 0, "{demo:?}");
    // (maestroctl itself may write .maestro/config.yaml in a folder its user names.)
    assert!(!outside.join(".git").exists(), "the daemon made no repository outside the root");
}

/// The user's own daemon (no --server): started on ~/.maestro/maestrod.sock,
/// which only that user can open; another user gets a daemon of their own.
#[test]
fn your_own_daemon_listens_on_a_socket_only_you_can_open() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // The binaries where any user may run them.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::copy(binary("e2e-maestroctl"), bin.join("maestroctl")).unwrap();
    std::fs::copy(binary("e2e-maestrod"), bin.join("maestrod")).unwrap();
    for b in ["maestroctl", "maestrod"] {
        std::fs::set_permissions(bin.join(b), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let home = dir.path().join("alice");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
    let own = |home: &Path, prefix: &[&str], args: &[&str]| {
        let mut command = Command::new(prefix.first().copied().unwrap_or(bin.join("maestroctl").to_str().unwrap()));
        if !prefix.is_empty() {
            command.args(&prefix[1..]).arg(bin.join("maestroctl"));
        }
        let out = command
            .args(args)
            .env("HOME", home)
            .env_remove("MAESTRO_SERVER")
            .env_remove("MAESTRO_TOKEN")
            .env_remove("MAESTROD_BIN")
            .current_dir("/")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code().unwrap_or(-1), text(&out.stderr), text(&out.stdout))
    };
    let pid_of = |stderr: &str| -> Option<i32> {
        stderr.split("(pid ").nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    let stop = |pid: Option<i32>| {
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
    };

    let (code, err, _) = own(&home, &[], &["info"]);
    let alice_daemon = pid_of(&err);
    let checks = || {
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("started a local maestrod on unix:"), "{err}");
        let socket = home.join(".maestro/maestrod.sock");
        use std::os::unix::fs::FileTypeExt;
        let meta = std::fs::metadata(&socket).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "only its user may open the socket");
        assert_eq!(std::fs::metadata(home.join(".maestro")).unwrap().permissions().mode() & 0o777, 0o700);
        let (again, err2, _) = own(&home, &[], &["project", "create", "mine"]);
        assert_eq!(again, 0, "{err2}");
        assert!(!err2.contains("started"), "the running daemon is reused: {err2}");
        // A client on the socket is on the daemon's machine: it may hand the loop its API keys.
        let token = std::fs::read_to_string(home.join(".maestro/data/admin.token")).unwrap();
        let keys_refusal = std::thread::spawn({
            let socket = socket.clone();
            move || {
                tokio::runtime::Runtime::new().unwrap().block_on(async move {
                    let endpoint = format!("unix:{}", socket.display());
                    let channel = tonic::transport::Endpoint::from_shared(endpoint).unwrap().connect().await.unwrap();
                    let conn = maestro_tests::Bearer::new(&token).unwrap().connect(channel);
                    let mut loops = maestro_shared::v1::loop_service_client::LoopServiceClient::new(conn);
                    let request = maestro_shared::v1::StartLoopRequest {
                        project_id: "mine".into(),
                        task: "t".into(),
                        keys: [("OPENAI_API_KEY".to_string(), "sk-test".to_string())].into(),
                        ..Default::default()
                    };
                    loops.start_loop(request).await.unwrap_err()
                })
            }
        })
        .join()
        .unwrap();
        assert!(!keys_refusal.message().contains("keys:"), "keys are taken over the socket: {keys_refusal:?}");

        if !nix::unistd::Uid::effective().is_root() || Command::new("setpriv").arg("--version").output().is_err() {
            eprintln!("skipped the second user: needs root and setpriv");
            return;
        }
        let nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
        // Another user cannot open alice's socket, whatever the token.
        let alice_socket = format!("unix:{}", socket.display());
        let (code, err, _) = own(Path::new("/nonexistent"), &nobody, &["--server", &alice_socket, "info"]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("cannot reach maestrod") && err.contains("ermission denied"), "{err}");
        // …and gets a daemon of their own, with their own projects.
        let bob = dir.path().join("bob");
        std::fs::create_dir(&bob).unwrap();
        nix::unistd::chown(&bob, Some(nix::unistd::Uid::from_raw(65534)), Some(nix::unistd::Gid::from_raw(65534)))
            .unwrap();
        let (code, err, out) = own(&bob, &nobody, &["-o", "json", "project", "list"]);
        let bob_daemon = pid_of(&err);
        stop(bob_daemon);
        assert_eq!(code, 0, "{err}");
        assert!(err.contains(&bob.join(".maestro/maestrod.sock").display().to_string()), "{err}");
        assert!(!out.contains("mine"), "bob's daemon is not alice's: {out}");
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(checks));
    stop(alice_daemon);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// `maestroctl context add|use|list`: a named server with its CA and token;
/// commands without --server then use it, and the token is never listed.
#[test]
fn a_context_carries_server_ca_and_token() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::make(dir.path(), "team");
    let daemon =
        Daemon::start_with(&["--tls-cert", &pki.file("server.pem"), "--tls-key", &pki.file("server.key")]).unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let token = daemon.admin_token();
    let ctl_at = |args: &[&str], token: Option<&str>| {
        let mut command = Command::new(binary("e2e-maestroctl"));
        command
            .args(args)
            .env("HOME", &home)
            .env_remove("MAESTRO_SERVER")
            .env_remove("MAESTRO_TOKEN")
            .env_remove("MAESTRO_CA_FILE")
            .current_dir(&home)
            .stdin(Stdio::null());
        if let Some(token) = token {
            command.env("MAESTRO_TOKEN", token);
        }
        let out = command.output().unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
    };
    let server = format!("https://localhost:{}", port(&daemon));
    let (code, _, err) = ctl_at(
        &["context", "add", "team", "--server", &server, "--ca-file", &pki.file("ca.pem"), "--use"],
        Some(&token),
    );
    assert_eq!(code, 0, "{err}");
    let file = home.join(".maestro/contexts.yaml");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600, "it holds a token");

    let (code, out, err) = ctl_at(&["project", "create", "shop"], None);
    assert_eq!(code, 0, "the context's server, CA and token: {err}");
    let (code, out2, _) = ctl_at(&["-o", "json", "project", "list"], None);
    assert_eq!(code, 0);
    assert!(out2.contains("shop"), "{out}{out2}");

    let (code, out, _) = ctl_at(&["-o", "json", "context", "list"], None);
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["name"], "team");
    assert_eq!(list[0]["current"], true);
    assert_eq!(list[0]["hasToken"], true);
    assert!(!out.contains(&token), "the token is never shown: {out}");
    let (_, table, _) = ctl_at(&["context", "list"], None);
    assert!(table.contains("team") && !table.contains(&token), "{table}");

    let (code, _, err) = ctl_at(&["context", "use", "nope"], None);
    assert!(code == 1 && err.contains("team"), "names the known ones: {err}");
    let (code, _, err) = ctl_at(&["context", "add", "bad name", "--server", &server], None);
    assert!(code == 1 && err.contains("context name"), "{err}");
    let (code, _, _) = ctl_at(&["context", "use", "--none"], None);
    assert_eq!(code, 0);
    let (_, config, _) = ctl_at(&["config"], None);
    assert!(!config.contains(&server), "back to the local daemon: {config}");
}
