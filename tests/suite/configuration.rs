//! One configuration for the service and every command, as an installed system has it: the
//! file is found the same way from any folder, its relative paths are its own folder's, a
//! command never starts a store of its own, and root acts as the store's owner.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli::{callverify, free_port, in_clean_env, migrate, run, serve_in, stderr, BIN};

/// The status line of `GET path` on `addr`, with `key` as a bearer token; empty when nothing
/// listens there.
fn http_status(addr: std::net::SocketAddr, path: &str, key: &str) -> String {
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn the_service_and_every_command_use_one_configuration_from_any_folder() {
    let etc = tempfile::tempdir().unwrap();
    let (anywhere, elsewhere) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (agi, http) = (free_port(), free_port());
    let file = etc.path().join("callverify.toml");
    // Relative paths, as an admin may write them: they are the file's folder's.
    std::fs::write(
        &file,
        format!(
            "[agi]\nlisten = \"{agi}\"\n[http]\nlisten = \"{http}\"\n[speech]\nlisten = \"127.0.0.1:0\"\n\
             [database]\nurl = \"sqlite://callverify.db\"\n[security]\nsecret_file = \"callverify.secret\"\n"
        ),
    )
    .unwrap();
    // The service, started in one folder with the file named by $CALLVERIFY_CONFIG.
    let log = std::fs::File::create(etc.path().join("serve.log")).unwrap();
    let mut service = callverify(anywhere.path())
        .arg("serve")
        .env("CALLVERIFY_CONFIG", &file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http_status(http, "/healthz", "").contains("200") {
        assert!(
            Instant::now() < deadline,
            "the service did not start: {}",
            std::fs::read_to_string(etc.path().join("serve.log")).unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        etc.path().join("callverify.db").exists(),
        "the store is beside its configuration"
    );

    // A key made in another folder, the file found by --config, works for the service.
    let out = run(callverify(elsewhere.path()).args([
        "--config",
        file.to_str().unwrap(),
        "keys",
        "create",
        "--name",
        "web app",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let read = |key: &str| http_status(http, "/v1/verifications/vf_nosuchthing", key);
    assert!(read(&key).contains("404"), "{}", read(&key));
    assert!(read("cvk_not_a_key").contains("401"));
    // A status read through $CALLVERIFY_CONFIG, in a third folder, sees the same store.
    let out = run(callverify(elsewhere.path())
        .args(["keys", "list"])
        .env("CALLVERIFY_CONFIG", &file));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("web app"),
        "{}",
        stderr(&out)
    );

    // Without the configuration, a command refuses to start a store of its own, says which
    // configuration and store it looked at, and leaves nothing behind.
    let out = run(callverify(elsewhere.path()).args(["keys", "create", "--name", "lost"]));
    assert_eq!(out.status.code(), Some(1));
    let said = stderr(&out);
    for words in [
        "no store at",
        "callverify migrate",
        "configuration: none",
        "store: sqlite://callverify.db",
    ] {
        assert!(said.contains(words), "{words:?} in {said}");
    }
    let left: Vec<_> = std::fs::read_dir(elsewhere.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");

    // --help says which file and store a command uses here.
    let out = run(callverify(elsewhere.path())
        .args(["keys", "create", "--help"])
        .env("CALLVERIFY_CONFIG", &file));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains(&format!("{} ($CALLVERIFY_CONFIG)", file.display())),
        "{help}"
    );
    assert!(
        help.contains(&format!(
            "sqlite://{}",
            etc.path().join("callverify.db").display()
        )),
        "{help}"
    );
    let out = run(callverify(elsewhere.path()).arg("--version"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("callverify {}", env!("CARGO_PKG_VERSION"))
    );

    let sent = Command::new("kill")
        .args(["-TERM", &service.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    assert!(service.wait().unwrap().success());
}

/// Run as root on the service's store (owned by the service user, as the package installs
/// it), a command acts as that user: SQLite's -wal and -shm files stay the service's, so the
/// service can still open its store afterwards.
#[test]
fn root_acts_as_the_owner_of_the_store() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root (it hands a store to another user); ./scripts/test and CI run as root"
    );
    let dir = tempfile::tempdir().unwrap();
    migrate(dir.path());
    // nobody:nogroup, a user that exists on every Debian system.
    let (uid, gid) = (65534, 65534);
    let chown = |path: &Path| std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    chown(dir.path());
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        chown(&entry.unwrap().path());
    }
    // The service, started by root by hand, runs as the store's owner, and so do the files
    // SQLite makes while it has the store open.
    let served = serve_in(callverify(dir.path()), dir.path(), free_port(), "serve.log");
    let identity = std::fs::read_to_string(format!("/proc/{}/status", served.pid())).unwrap();
    let line = |name: &str| {
        identity
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
            .unwrap()
    };
    assert_eq!(line("Uid:"), "65534 65534 65534 65534");
    assert_eq!(line("Gid:"), "65534 65534 65534 65534");
    assert_eq!(line("Groups:"), "65534");
    let wal = std::fs::metadata(dir.path().join("callverify.db-wal")).unwrap();
    assert_eq!(wal.uid(), uid);
    // A command while the service runs, and one after.
    let out = run(callverify(dir.path()).args(["keys", "create", "--name", "as root"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let log = || std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    assert!(served.terminate().success(), "{}", log());
    std::fs::remove_file(dir.path().join("serve.log")).unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(callverify(dir.path()).args([
        "verify",
        "start",
        "--phone",
        "+14155550101",
        "--user",
        "root",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{:?}", entry.path());
    }
    // The service user can use it all: nobody runs a command on it.
    let out = run(in_clean_env("setpriv", dir.path()).args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        BIN,
        "keys",
        "list",
    ]));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("as root"),
        "{}",
        stderr(&out)
    );
}

/// Run as root where the service's store is to be (its state directory, before the first
/// start), `migrate` makes the store and its key as the folder's owner, not as root, whom the
/// service could not open them as.
#[test]
fn root_makes_a_new_store_as_the_owner_of_its_folder() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root (it hands a folder to another user); ./scripts/test and CI run as root"
    );
    let dir = tempfile::tempdir().unwrap();
    // nobody:nogroup, a user that exists on every Debian system.
    std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
    migrate(dir.path());
    let made: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        made.iter().any(|p| p.ends_with("callverify.db"))
            && made.iter().any(|p| p.ends_with("callverify.secret")),
        "{made:?}"
    );
    for path in made {
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (65534, 65534),
            "{}",
            path.display()
        );
    }
}

/// A store that is another user's symbolic link (to a store root owns): a command run as
/// root acts as the link's owner, who may not open what it points to, rather than following
/// it as root. Root's own link to the service's store is followed: the daemon acts as the
/// store's owner, and the files SQLite makes beside the store are the owner's.
#[test]
fn root_acts_as_a_links_owner_unless_the_link_is_roots() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root (it hands a link to another user); ./scripts/test and CI run as root"
    );
    let roots = tempfile::tempdir().unwrap();
    migrate(roots.path());
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
    let link = dir.path().join("callverify.db");
    std::os::unix::fs::symlink(roots.path().join("callverify.db"), &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).unwrap();
    std::fs::copy(
        roots.path().join("callverify.secret"),
        dir.path().join("callverify.secret"),
    )
    .unwrap();
    let out = run(callverify(dir.path()).args(["keys", "list"]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // As root, in its own folder, the store opens.
    let out = run(callverify(roots.path()).args(["keys", "list"]));
    assert!(out.status.success(), "{}", stderr(&out));

    // Root's own link to the service's store (another user's) is followed: the command acts
    // as the store's owner, and the files SQLite makes beside the store stay the owner's.
    let service = tempfile::tempdir().unwrap();
    migrate(service.path());
    for path in [service.path().to_owned()].into_iter().chain(
        std::fs::read_dir(service.path())
            .unwrap()
            .map(|e| e.unwrap().path()),
    ) {
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
    }
    let admin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        service.path().join("callverify.db"),
        admin.path().join("callverify.db"),
    )
    .unwrap();
    std::fs::copy(
        service.path().join("callverify.secret"),
        admin.path().join("callverify.secret"),
    )
    .unwrap();
    std::os::unix::fs::chown(admin.path().join("callverify.secret"), Some(65534), None).unwrap();
    let served = serve_in(
        callverify(admin.path()),
        admin.path(),
        free_port(),
        "serve.log",
    );
    let identity = std::fs::read_to_string(format!("/proc/{}/status", served.pid())).unwrap();
    let uid = identity.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid.split_whitespace().skip(1).collect::<Vec<_>>(),
        ["65534"; 4],
        "{identity}"
    );
    let wal = std::fs::metadata(service.path().join("callverify.db-wal")).unwrap();
    assert_eq!(wal.uid(), 65534);
    assert!(served.terminate().success());
}

/// At a terminal, `staff add` asks twice and shows nothing typed; piped, it reads one line.
#[test]
fn staff_add_asks_for_the_password_without_echo_at_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    migrate(dir.path());
    let password = "correct horse battery";
    // `script` runs the command on a terminal of its own, fed from our pipe.
    let mut session = in_clean_env("script", dir.path())
        .args(["-qec", &format!("{BIN} staff add bob"), "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script (util-linux)");
    let mut input = session.stdin.take().unwrap();
    let mut output = session.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut wait_for = |words: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !String::from_utf8_lossy(&seen).contains(words) {
            assert!(
                Instant::now() < deadline,
                "no {words:?} in {:?}",
                String::from_utf8_lossy(&seen)
            );
            let mut chunk = [0u8; 256];
            let n = output.read(&mut chunk).unwrap();
            assert!(
                n > 0,
                "ended before {words:?}: {:?}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&chunk[..n]);
        }
    };
    wait_for("Password for bob");
    writeln!(input, "{password}").unwrap();
    wait_for("again");
    writeln!(input, "{password}").unwrap();
    wait_for("added staff member bob");
    drop(input);
    assert!(session.wait().unwrap().success());
    let shown = String::from_utf8_lossy(&seen);
    assert!(
        !shown.contains(password),
        "the password was echoed: {shown:?}"
    );

    // Piped, as scripts add accounts: one line, no prompt.
    let mut piped = callverify(dir.path())
        .args(["staff", "add", "carol"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(piped.stdin.take().unwrap(), "{password}").unwrap();
    let out = piped.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("Password"), "{}", stderr(&out));
    let out = run(callverify(dir.path()).args(["staff", "list"]));
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(list.contains("bob") && list.contains("carol"), "{list}");
}

/// A secret the file gives another type (an unquoted number) is named in the error, its
/// value not shown: the error goes to the terminal and the journal, and to help's footer.
#[test]
fn a_mistyped_secret_is_not_shown() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("callverify.toml");
    std::fs::write(&file, "[ami]\nhost = \"pbx\"\nsecret = 73910384712\n").unwrap();
    for args in [
        &["--config", file.to_str().unwrap(), "migrate"][..],
        &["--help"],
    ] {
        let out = run(callverify(dir.path()).args(args));
        let said = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
        assert!(
            said.contains("ami.secret: expected a string"),
            "{args:?}: {said}"
        );
        assert!(!said.contains("73910384712"), "{args:?}: {said}");
    }
    assert!(!dir.path().join("callverify.db").exists());
}
