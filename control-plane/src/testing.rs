//! Test helpers: a throwaway PostgreSQL server (Debian's `postgresql` package) on a free loopback
//! port, one per test binary, with a fresh database per test.
//!
//! PostgreSQL refuses to run as root, so when tests run as root the server runs as the
//! `postgres` user. The server is tied to the test process (it dies with it) and its data lives
//! in a temporary directory, removed on drop — for the [`shared`](TestPostgres::shared) server,
//! which is never dropped, when the test process exits. Directories that a killed test process
//! left behind are removed by the next server to start. The server's log is `postgres.log` in
//! that directory.

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
    /// `None` once removed (at exit, for the shared server).
    temp: Mutex<Option<tempfile::TempDir>>,
}

const DIR_PREFIX: &str = "ampora-pg-";
/// Holds the pid of the test process that owns the directory.
const OWNER_FILE: &str = "owner.pid";

static SHARED: OnceLock<TestPostgres> = OnceLock::new();

/// Runs at process exit (statics are never dropped): stops the shared server, removes its data.
extern "C" fn stop_shared_at_exit() {
    if let Some(server) = SHARED.get() {
        server.stop();
    }
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists (EPERM: it does, not ours).
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

fn pid_in(file: &Path) -> Option<i32> {
    std::fs::read_to_string(file)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Removes the data of test servers whose test process is gone (killed before it could clean
/// up). Directories of live test processes, and recent ones without an owner (still being set
/// up by an older version of this helper), are left alone.
fn remove_abandoned_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let dir = entry.path();
        let abandoned = match pid_in(&dir.join(OWNER_FILE)) {
            Some(owner) => !process_alive(owner),
            None => {
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|modified| modified.elapsed().ok())
                    .is_some_and(|age| age > Duration::from_secs(600));
                let server_alive =
                    pid_in(&dir.join("data").join("postmaster.pid")).is_some_and(process_alive);
                old && !server_alive
            }
        };
        if abandoned {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
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
        SHARED.get_or_init(|| {
            let server = TestPostgres::start();
            // SAFETY: registers a plain function with no preconditions.
            unsafe { libc::atexit(stop_shared_at_exit) };
            server
        })
    }

    /// A server of its own, stopped (and its data removed) on drop.
    pub fn start() -> TestPostgres {
        remove_abandoned_dirs();
        let user = run_as();
        let temp = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .expect("temp dir");
        std::fs::write(temp.path().join(OWNER_FILE), std::process::id().to_string())
            .expect("owner file");
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
        let mut server = TestPostgres {
            port: 0,
            child: Mutex::new(None),
            data_dir,
            temp: Mutex::new(Some(temp)),
        };
        // The free port may be taken by someone else before the server binds it: try another.
        for attempt in 1.. {
            server.port = free_port();
            match server.launch(user) {
                Ok(()) => break,
                Err(error) if attempt < 3 => eprintln!("TestPostgres: {error}; retrying"),
                Err(error) => panic!("{error}"),
            }
        }
        server
    }

    /// Starts the server process from a thread that lives as long as the test process, so the
    /// parent-death signal fires only when the whole test process ends.
    fn launch(&self, user: Option<(u32, u32)>) -> Result<(), String> {
        let log_path = self.data_dir.with_file_name("postgres.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("postgres log");
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
            .stdout(log.try_clone().expect("postgres log"))
            .stderr(log);
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
            let exited = self
                .child
                .lock()
                .unwrap()
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child.lock().unwrap().take();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                return Err(format!(
                    "PostgreSQL exited on start ({status}) on port {}: {}",
                    self.port,
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                ));
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!("PostgreSQL did not start on port {}", self.port));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The maintenance database's URL.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A connection to the maintenance database, once the server takes queries.
    pub async fn admin_connection(&self) -> sqlx::PgConnection {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match sqlx::PgConnection::connect(&self.url()).await {
                Ok(connection) => return connection,
                // The socket accepts before the server takes queries.
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(error) => panic!("cannot connect to the test PostgreSQL: {error}"),
            }
        }
    }

    /// A fresh, uniquely named database; returns its URL.
    pub async fn create_database(&self) -> String {
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let mut connection = self.admin_connection().await;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut connection)
            .await
            .expect("create test database");
        let _ = connection.close().await;
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Takes the server down as a crash would for its clients (every connection ends at once,
    /// nothing is checkpointed: the next start recovers), for failure tests. Returns once the
    /// postmaster and all its backends are gone, so a server started next on the same data
    /// never finds the old one's shared memory still in use.
    pub fn kill(&self) {
        if let Some(child) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            self.shut_down(child);
        }
    }

    /// PostgreSQL's immediate shutdown through `pg_ctl -w`, which returns once the postmaster
    /// has removed its pid file: it does that last, after every backend has exited.
    fn shut_down(&self, mut child: Child) {
        let stopped = command(&bin_dir().join("pg_ctl"), run_as())
            .arg("stop")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "immediate", "-w", "-t", "60"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !stopped {
            // Not even pg_ctl could stop it: the process at least must not outlive the test.
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    /// Starts it again on the same port and data.
    pub fn restart(&self) {
        self.kill();
        if let Err(error) = self.launch(run_as()) {
            panic!("{error}");
        }
    }

    /// Stops the server for good and removes its data.
    fn stop(&self) {
        self.kill();
        if let Some(temp) = self.temp.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = temp.close();
        }
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::TestPostgres;
    use sqlx::Connection;

    /// A restart right after a kill, with backends still busy, finds the old server gone.
    #[tokio::test]
    async fn restarts_with_busy_backends_start_every_time() {
        let server = TestPostgres::start();
        for _ in 0..3 {
            let mut connections = Vec::new();
            for _ in 0..4 {
                connections.push(server.admin_connection().await);
            }
            let mut busy = server.admin_connection().await;
            let sleeping = tokio::spawn(async move {
                let _ = sqlx::query("SELECT pg_sleep(60)").execute(&mut busy).await;
            });
            server.restart();
            let mut connection = server.admin_connection().await;
            let (one,): (i32,) = sqlx::query_as("SELECT 1")
                .fetch_one(&mut connection)
                .await
                .unwrap();
            assert_eq!(one, 1);
            let _ = connection.close().await;
            sleeping.await.unwrap();
            drop(connections);
        }
    }
}
