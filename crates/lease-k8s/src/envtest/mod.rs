//! A real kube-apiserver and etcd on loopback for tests, the envtest way
//! (feature `envtest`).
//!
//! controller-runtime's envtest convention: the directory named by
//! `KUBEBUILDER_ASSETS` holds a `kube-apiserver` and an `etcd` binary.
//! [`EnvTest::start`] runs both on free loopback ports with a fresh data
//! directory, its own CA and serving certificate (IP SAN 127.0.0.1) and one
//! token user in `system:masters`, waits until the `default` namespace can be
//! read, and hands out clients. Dropping the handle stops both processes and
//! removes the directory; if the test process dies first, each process is
//! stopped by a small shell guard that waits on a pipe from us.
//!
//! Faults the real server cannot inject (a client cut off, a slow link) go
//! through a [`TcpProxy`] per client in front of it: TLS passes through
//! untouched, and the certificate names 127.0.0.1, so any proxy port works.
//!
//! ```no_run
//! # async fn demo() -> Result<(), lease_k8s::envtest::EnvTestError> {
//! use lease_k8s::envtest::EnvTest;
//!
//! let Some(env) = EnvTest::start_from_env().await? else {
//!     return Ok(()); // KUBEBUILDER_ASSETS is not set: the caller skips
//! };
//! let client = env.client()?;
//! # let _ = client;
//! # Ok(())
//! # }
//! ```

mod certs;
mod proxy;

use std::io::Write;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};

pub use proxy::TcpProxy;

/// The environment variable naming the assets directory.
pub const ASSETS_ENV: &str = "KUBEBUILDER_ASSETS";

/// Why the test API server could not be started or reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvTestError {
    /// A binary is missing from the assets directory.
    #[error(
        "{binary} not found in {dir} (set {ASSETS_ENV} to a directory holding kube-apiserver and etcd)"
    )]
    MissingBinary {
        /// `kube-apiserver` or `etcd`.
        binary: &'static str,
        /// The assets directory.
        dir: PathBuf,
    },
    /// Writing the data directory, or starting a process, failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Certificates could not be generated.
    #[error("generating certificates: {0}")]
    Certificates(String),
    /// The server did not become ready in time; the tail of its log says why.
    #[error(
        "kube-apiserver not ready after {after:?}: {last_error}\n--- kube-apiserver log tail ---\n{log_tail}"
    )]
    NotReady {
        /// How long we waited.
        after: Duration,
        /// The last readiness error.
        last_error: String,
        /// The last lines the API server wrote.
        log_tail: String,
    },
    /// A kubeconfig or client could not be built.
    #[error("client: {0}")]
    Client(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> EnvTestError {
    let what = what.into();
    move |source| EnvTestError::Io { what, source }
}

/// A running kube-apiserver + etcd pair; see the [module docs](self).
pub struct EnvTest {
    dir: PathBuf,
    url: String,
    kubeconfig_path: PathBuf,
    guards: Vec<Guard>,
}

/// A child process behind a shell guard: it exits when our end of the pipe
/// closes (on drop, or when the test process dies).
struct Guard {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Closing the pipe makes the guard stop the process and exit.
        self.stdin.take();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16, EnvTestError> {
    let listener = StdListener::bind("127.0.0.1:0").map_err(io("binding a free port"))?;
    let port = listener
        .local_addr()
        .map_err(io("reading a free port"))?
        .port();
    Ok(port)
}

/// Starts `program args…` under a guard that stops it (SIGTERM) when our
/// stdin pipe closes; the guard exits with the program, after `cleanup` (a
/// shell command).
fn guarded(
    program: &Path,
    args: &[String],
    log: &Path,
    cleanup: &str,
) -> Result<Guard, EnvTestError> {
    let script = format!(
        "exec 3<&0; \"$0\" \"$@\" </dev/null >>'{log}' 2>&1 & child=$!; (cat <&3 >/dev/null; kill -TERM $child 2>/dev/null) & wait $child; {cleanup}",
        log = log.display(),
    );
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(io(format!("starting {}", program.display())))?;
    let stdin = child.stdin.take();
    Ok(Guard { child, stdin })
}

impl EnvTest {
    /// Starts a server from `$KUBEBUILDER_ASSETS`; `Ok(None)` when it is unset
    /// (callers skip and say so).
    pub async fn start_from_env() -> Result<Option<Self>, EnvTestError> {
        match std::env::var_os(ASSETS_ENV) {
            Some(dir) if !dir.is_empty() => Self::start(Path::new(&dir)).await.map(Some),
            _ => Ok(None),
        }
    }

    /// Whether `$KUBEBUILDER_ASSETS` is set.
    pub fn configured() -> bool {
        std::env::var_os(ASSETS_ENV).is_some_and(|d| !d.is_empty())
    }

    /// Starts etcd and kube-apiserver from `assets` and waits until ready.
    pub async fn start(assets: &Path) -> Result<Self, EnvTestError> {
        let apiserver_bin = assets.join("kube-apiserver");
        let etcd_bin = assets.join("etcd");
        for (binary, path) in [("kube-apiserver", &apiserver_bin), ("etcd", &etcd_bin)] {
            if !path.exists() {
                return Err(EnvTestError::MissingBinary {
                    binary,
                    dir: assets.to_owned(),
                });
            }
        }
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lease-k8s-envtest-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let files = certs::write_all(&dir)?;

        let etcd_client = free_port()?;
        let etcd_peer = free_port()?;
        let secure_port = free_port()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let etcd_args = vec![
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=default={peer_url}"),
            "--unsafe-no-fsync=true".into(),
        ];
        // etcd's guard removes the whole directory once etcd is gone.
        let cleanup = format!("sleep 1; rm -rf '{}'", dir.display());
        let etcd = guarded(&etcd_bin, &etcd_args, &dir.join("etcd.log"), &cleanup)?;

        let url = format!("https://127.0.0.1:{secure_port}");
        let apiserver_args = vec![
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={secure_port}"),
            format!("--cert-dir={}", dir.join("certs").display()),
            format!("--tls-cert-file={}", files.serving_cert.display()),
            format!("--tls-private-key-file={}", files.serving_key.display()),
            format!("--client-ca-file={}", files.ca_cert.display()),
            format!("--token-auth-file={}", files.tokens.display()),
            "--authorization-mode=RBAC".into(),
            format!("--service-account-key-file={}", files.sa_pub.display()),
            format!(
                "--service-account-signing-key-file={}",
                files.sa_key.display()
            ),
            format!("--service-account-issuer={url}"),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--disable-admission-plugins=ServiceAccount".into(),
            "--allow-privileged=true".into(),
        ];
        let apiserver = guarded(
            &apiserver_bin,
            &apiserver_args,
            &dir.join("kube-apiserver.log"),
            "true",
        )?;

        let kubeconfig_path = dir.join("kubeconfig.yaml");
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: envtest\n  cluster:\n    server: {url}\n    certificate-authority: {ca}\nusers:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: envtest\n  context:\n    cluster: envtest\n    user: admin\n    namespace: default\ncurrent-context: envtest\n",
            ca = files.ca_cert.display(),
            token = certs::TOKEN,
        );
        std::fs::File::create(&kubeconfig_path)
            .and_then(|mut f| f.write_all(kubeconfig.as_bytes()))
            .map_err(io("writing the kubeconfig"))?;

        // The API server stops before etcd (guards drop in order).
        let mut env = Self {
            dir,
            url,
            kubeconfig_path,
            guards: vec![apiserver, etcd],
        };
        env.wait_ready(Duration::from_secs(60)).await?;
        Ok(env)
    }

    async fn wait_ready(&mut self, within: Duration) -> Result<(), EnvTestError> {
        let start = tokio::time::Instant::now();
        let mut last_error = String::from("not tried");
        while start.elapsed() < within {
            if let Some(exited) = self
                .guards
                .iter_mut()
                .find_map(|g| g.child.try_wait().ok().flatten())
            {
                last_error = format!(
                    "a server process exited ({exited}); see {}",
                    self.dir.display()
                );
                break;
            }
            match self.client() {
                Ok(client) => {
                    let namespaces: Api<Namespace> = Api::all(client);
                    match namespaces.get("default").await {
                        Ok(_) => return Ok(()),
                        Err(e) => last_error = e.to_string(),
                    }
                }
                Err(e) => last_error = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let log = std::fs::read_to_string(self.dir.join("kube-apiserver.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let log_tail = lines[lines.len().saturating_sub(30)..].join("\n");
        Err(EnvTestError::NotReady {
            after: start.elapsed(),
            last_error,
            log_tail,
        })
    }

    /// The API server's URL (`https://127.0.0.1:<port>`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A kubeconfig file for the admin user (CA by path, token inline).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// A client config reaching the server at `url` (the server's own URL,
    /// or a [`TcpProxy`] in front of it) as the admin user.
    pub fn config_for(&self, url: &str) -> Result<kube::Config, EnvTestError> {
        let text =
            std::fs::read_to_string(&self.kubeconfig_path).map_err(io("reading the kubeconfig"))?;
        let mut kubeconfig =
            Kubeconfig::from_yaml(&text).map_err(|e| EnvTestError::Client(e.to_string()))?;
        for cluster in &mut kubeconfig.clusters {
            if let Some(c) = cluster.cluster.as_mut() {
                c.server = Some(url.to_owned());
            }
        }
        // Config loading is synchronous for a kubeconfig without exec plugins.
        let options = KubeConfigOptions::default();
        futures::executor::block_on(kube::Config::from_custom_kubeconfig(kubeconfig, &options))
            .map_err(|e| EnvTestError::Client(e.to_string()))
    }

    /// A client straight to the server.
    pub fn client(&self) -> Result<kube::Client, EnvTestError> {
        self.client_via(&self.url)
    }

    /// A client through `url` (for example a [`TcpProxy`]'s).
    pub fn client_via(&self, url: &str) -> Result<kube::Client, EnvTestError> {
        let config = self.config_for(url)?;
        kube::Client::try_from(config).map_err(|e| EnvTestError::Client(e.to_string()))
    }

    /// A [`TcpProxy`] in front of the server, on its own loopback port.
    pub fn proxy(&self) -> Result<TcpProxy, EnvTestError> {
        let target = self.url.trim_start_matches("https://").to_owned();
        TcpProxy::start(target).map_err(io("starting a proxy"))
    }
}

impl Drop for EnvTest {
    fn drop(&mut self) {
        self.guards.clear();
    }
}
