//! Configuration from flags and environment variables (each flag has one).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use cluster::{NodeAddr, NodeId, TlsSettings};

/// A sharded counter service.
#[derive(Parser, Debug, Clone)]
#[command(name = "counter-service", version)]
pub struct Config {
    /// This node's id: unique in the cluster; the lowest live id leads.
    #[arg(long, env = "NODE_ID")]
    pub node_id: u64,
    /// Where cluster traffic is accepted (TCP).
    #[arg(long, env = "CLUSTER_LISTEN", default_value = "0.0.0.0:7000")]
    pub cluster_listen: SocketAddr,
    /// The address other nodes use to reach this one (defaults to --cluster-listen).
    #[arg(long, env = "CLUSTER_ADVERTISE")]
    pub cluster_advertise: Option<String>,
    /// Seed nodes, `id=host:port` separated by commas.
    #[arg(long, env = "SEEDS", value_delimiter = ',', value_parser = parse_seed)]
    pub seeds: Vec<(NodeId, NodeAddr)>,
    /// Only nodes with the same cluster name are accepted.
    #[arg(long, env = "CLUSTER_NAME", default_value = "counters")]
    pub cluster_name: String,
    /// Where the HTTP API listens.
    #[arg(long, env = "HTTP_LISTEN", default_value = "0.0.0.0:8080")]
    pub http_listen: SocketAddr,
    /// The lease guarding the shard coordinator.
    #[arg(long, env = "LEASE", value_enum, default_value_t = LeaseKind::None)]
    pub lease: LeaseKind,
    /// Kubernetes Lease name.
    #[arg(long, env = "LEASE_NAME", default_value = "counter-coordinator")]
    pub lease_name: String,
    /// Kubernetes namespace of the Lease (in-cluster: the pod's namespace).
    #[arg(long, env = "LEASE_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Lease owner; defaults to $HOSTNAME (the pod name).
    #[arg(long, env = "LEASE_OWNER")]
    pub lease_owner: Option<String>,
    /// Lease ttl in milliseconds.
    #[arg(long, env = "LEASE_TTL_MS", default_value_t = 30_000)]
    pub lease_ttl_ms: u64,
    /// Lease heartbeat in milliseconds.
    #[arg(long, env = "LEASE_HEARTBEAT_MS", default_value_t = 3_000)]
    pub lease_heartbeat_ms: u64,
    /// Membership probe interval in milliseconds.
    #[arg(long, env = "MEMBERSHIP_HEARTBEAT_MS", default_value_t = 1_000)]
    pub membership_heartbeat_ms: u64,
    /// Suspect members are declared down after this many milliseconds.
    #[arg(long, env = "MEMBERSHIP_DOWN_AFTER_MS", default_value_t = 10_000)]
    pub membership_down_after_ms: u64,
    /// Number of shards (the same on every node).
    #[arg(long, env = "NUM_SHARDS", default_value_t = 64)]
    pub num_shards: u32,
    /// PostgreSQL for the counters' states (`postgres://user@host/db`);
    /// without it they live in each process's memory. Needs
    /// `--lease kubernetes` (the writes are fenced by its token).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Mutual TLS between nodes: the CA bundle (PEM) peers' certificates
    /// must chain to. With --tls-cert and --tls-key; all three or none.
    #[arg(long, env = "TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM), carrying the DNS name
    /// `node-<id>.<cluster name>`. Re-read when it changes.
    #[arg(long, env = "TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The node ids that may connect, comma-separated (`1,2,3`; a
    /// StatefulSet's ordinals); any other is refused at the handshake.
    /// Unset: any id (with TLS, any holder of a certificate of the CA).
    #[arg(long, env = "ALLOWED_NODES", value_delimiter = ',')]
    pub allowed_nodes: Option<Vec<u64>>,
}

/// Which lease guards the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LeaseKind {
    /// No lease (a partition can give two active coordinators).
    None,
    /// A Kubernetes Lease; credentials in-cluster or from $KUBECONFIG.
    Kubernetes,
}

fn parse_seed(s: &str) -> Result<(NodeId, NodeAddr), String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("seed `{s}` is not `id=host:port`"))?;
    let id: u64 = id
        .trim()
        .parse()
        .map_err(|e| format!("seed `{s}`: node id `{id}`: {e}"))?;
    if !addr.contains(':') {
        return Err(format!("seed `{s}`: address `{addr}` has no port"));
    }
    Ok((NodeId(id), NodeAddr(addr.trim().to_owned())))
}

impl Config {
    /// Milliseconds as a duration.
    pub fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// The TLS files, when all three are given; an error naming the missing
    /// ones when only some are.
    pub fn tls(&self) -> Result<Option<TlsSettings>, String> {
        match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            (Some(ca), Some(cert), Some(key)) => Ok(Some(TlsSettings {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            })),
            (None, None, None) => Ok(None),
            (ca, cert, key) => {
                let missing: Vec<&str> = [
                    ("--tls-ca", ca.is_none()),
                    ("--tls-cert", cert.is_none()),
                    ("--tls-key", key.is_none()),
                ]
                .into_iter()
                .filter_map(|(flag, missing)| missing.then_some(flag))
                .collect();
                Err(format!(
                    "TLS needs --tls-ca, --tls-cert and --tls-key together; missing {}",
                    missing.join(", ")
                ))
            }
        }
    }

    /// What to warn about at start when nodes talk plaintext on an address
    /// other machines can reach.
    pub fn plaintext_warning(&self) -> Option<String> {
        if self.tls_ca.is_some() || self.cluster_listen.ip().is_loopback() {
            return None;
        }
        Some(format!(
            "the cluster port {} is reachable from the network WITHOUT TLS: anyone who can \
             reach it can join the cluster, host shards and take the coordinator over. \
             Set --tls-ca, --tls-cert and --tls-key (TLS_CA, TLS_CERT, TLS_KEY) outside development.",
            self.cluster_listen
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Config {
        Config::try_parse_from(["counter-service", "--node-id", "1"].iter().chain(args)).unwrap()
    }

    #[test]
    fn tls_files_come_all_three_or_not_at_all() {
        assert_eq!(config(&[]).tls(), Ok(None));
        let all = config(&["--tls-ca", "ca", "--tls-cert", "c", "--tls-key", "k"]);
        assert_eq!(all.tls().unwrap().unwrap().cert, PathBuf::from("c"));
        let error = config(&["--tls-ca", "ca"]).tls().unwrap_err();
        assert!(error.contains("--tls-cert, --tls-key"), "{error}");
    }

    #[test]
    fn plaintext_on_a_reachable_address_is_warned_about() {
        let warning = config(&["--cluster-listen", "0.0.0.0:7000"])
            .plaintext_warning()
            .unwrap();
        assert!(warning.contains("WITHOUT TLS"), "{warning}");
        assert!(
            config(&["--cluster-listen", "127.0.0.1:7000"])
                .plaintext_warning()
                .is_none()
        );
        let tls = config(&[
            "--cluster-listen",
            "0.0.0.0:7000",
            "--tls-ca",
            "a",
            "--tls-cert",
            "b",
            "--tls-key",
            "c",
        ]);
        assert!(tls.plaintext_warning().is_none());
    }

    #[test]
    fn seeds_parse_and_bad_ones_name_the_problem() {
        assert_eq!(
            parse_seed("1=10.0.0.1:7000").unwrap(),
            (NodeId(1), NodeAddr::from("10.0.0.1:7000"))
        );
        assert!(
            parse_seed("x=1.2.3.4:1")
                .unwrap_err()
                .contains("node id `x`")
        );
        assert!(
            parse_seed("1.2.3.4:1")
                .unwrap_err()
                .contains("not `id=host:port`")
        );
        assert!(parse_seed("2=host").unwrap_err().contains("no port"));
    }
}
