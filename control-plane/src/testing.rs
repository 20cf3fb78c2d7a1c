//! Test helpers: a throwaway PostgreSQL server (Debian's `postgresql` package) on a free loopback
//! port, one per test binary, with a fresh database per test.
//!
//! PostgreSQL refuses to run as root, so when tests run as root the server runs as the
//! `postgres` user. The server is tied to the test process (it dies with it) and its data lives
//! in a temporary directory.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use sqlx::Connection;

pub struct TestPostgres {
    port: u16,
    child: Mutex<Option<Child>>,
    data_dir: PathBuf,
    _temp: tempfile::TempDir,
}

/// The user to run PostgreSQL as: `postgres` when we are root, ourselves otherwise.
fn run_as() -> Option<(u32, u32)> {
    // SAFETY: getuid has no preconditions; getpwnam returns a pointer into static storage that
    // is read at once, before any other call could change it.
    unsafe {
        if libc::getuid() != 0 {
            return None;
        }
        let entry = libc::getpwnam(c"postgres".as_ptr());
        assert!(
            !entry.is_null(),
            "no postgres user: run scripts/install-test-deps.sh"
        );
        Some(((*entry).pw_uid, (*entry).pw_gid))
    }
}

fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: run scripts/install-test-deps.sh")
        .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("postgres").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("no PostgreSQL server binaries under /usr/lib/postgresql")
}

fn command(program: &Path, user: Option<(u32, u32)>) -> Command {
    let mut command = Command::new(program);
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
    command.stdin(Stdio::null()).env("LC_ALL", "C.UTF-8");
    command
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

impl TestPostgres {
    /// The server shared by every test in this binary, started on first use.
    pub fn shared() -> &'static TestPostgres {
        static SHARED: OnceLock<TestPostgres> = OnceLock::new();
        SHARED.get_or_init(TestPostgres::start)
    }

    pub fn start() -> TestPostgres {
        let user = run_as();
        let temp = tempfile::Builder::new()
            .prefix("ampora-pg-")
            .tempdir()
            .expect("temp dir");
        let data_dir = temp.path().join("data");
        std::fs::create_dir(&data_dir).expect("data dir");
        if let Some((uid, gid)) = user {
            for dir in [temp.path(), data_dir.as_path()] {
                std::os::unix::fs::chown(dir, Some(uid), Some(gid)).expect("chown to postgres");
            }
        }
        let bin = bin_dir();
        let initdb = command(&bin.join("initdb"), user)
            .args(["-D"])
            .arg(&data_dir)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .output()
            .expect("run initdb");
        assert!(
            initdb.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        let server = TestPostgres {
            port: free_port(),
            child: Mutex::new(None),
            data_dir,
            _temp: temp,
        };
        server.launch(user);
        server
    }

    /// Starts the server process from a thread that lives as long as the test process, so the
    /// parent-death signal fires only when the whole test process ends.
    fn launch(&self, user: Option<(u32, u32)>) {
        let mut postgres = command(&bin_dir().join("postgres"), user);
        postgres
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.data_dir.parent().expect("temp dir"))
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
            ])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=300"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe and touches only this (child) process.
        unsafe {
            postgres.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = sender.send(postgres.spawn());
            loop {
                std::thread::park();
            }
        });
        let child = receiver
            .recv()
            .expect("launcher thread")
            .expect("start postgres");
        *self.child.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The maintenance database's URL.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A fresh, uniquely named database; returns its URL.
    pub async fn create_database(&self) -> String {
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut connection = loop {
            match sqlx::PgConnection::connect(&self.url()).await {
                Ok(connection) => break connection,
                // The socket accepts before the server takes queries.
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(error) => panic!("cannot connect to the test PostgreSQL: {error}"),
            }
        };
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut connection)
            .await
            .expect("create test database");
        let _ = connection.close().await;
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Kills the server (as a crash would) — for failure tests.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and data.
    pub fn restart(&self) {
        self.kill();
        self.launch(run_as());
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        self.kill();
    }
}
