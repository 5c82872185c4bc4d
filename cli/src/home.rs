//! The home folder: everything one user of classe owns.
//!
//! ```text
//! <home>/author.key    the teacher identity (mode 0600)
//! <home>/node.key      the machine's network identity (mode 0600)
//! <home>/trust         authors whose lessons are accepted
//! <home>/config.toml   optional settings (see docs/cli.md)
//! <home>/follow        authors whose new lessons `seed` mirrors
//! <home>/announcements the latest signed announcement of each followed
//!                      or own lesson (so a replay is known after restart)
//! <home>/store/        bundles (iroh-blobs) and the lesson record
//! ```

use std::{path::PathBuf, time::Duration};

use classe_bundle::{AuthorKey, AuthorSecret, TrustStore};
use classe_node::{ControlConfig, NodeConfig};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::{
    exit::{Exit, USAGE},
    rate, NetArgs,
};

/// Settings from `<home>/config.toml`. Flags and environment win over it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub bind: Option<std::net::SocketAddr>,
    pub relay: Option<String>,
    /// Extra root certificates (PEM file) for an https:// relay.
    pub relay_ca: Option<PathBuf>,
    /// Ask the home router for a port mapping; default on.
    pub port_mapping: Option<bool>,
    pub max_upload: Option<String>,
    pub max_download: Option<String>,
    pub max_peers: Option<usize>,
    pub connect_timeout: Option<u64>,
    /// Nodes to join through.
    #[serde(default)]
    pub bootstrap: Vec<String>,
    /// LAN discovery; default on.
    pub mdns: Option<bool>,
    /// `seed` only: IP:PORT for both TCP (discovery) and UDP (data).
    pub listen: Option<std::net::SocketAddr>,
    /// `seed` only: authors to mirror.
    #[serde(default)]
    pub follow: Vec<String>,
    /// `seed` only: also write each mirrored lesson into this folder.
    pub out: Option<PathBuf>,
    /// `seed` only: run the school's relay on IP:PORT (TCP and UDP).
    pub relay_server: Option<std::net::SocketAddr>,
    /// `seed` only: the relay's certificate chain (PEM), for https://.
    pub relay_cert: Option<PathBuf>,
    /// `seed` only: the relay's private key (PEM).
    pub relay_key: Option<PathBuf>,
    /// `seed` only: the host name in the relay's URL (default: its IP).
    pub relay_host: Option<String>,
    /// `seed` only: most bytes per second the relay takes from one node.
    pub relay_max_rate: Option<String>,
    /// `seed` only: schools whose certified teachers to mirror.
    #[serde(default)]
    pub follow_schools: Vec<String>,
    /// Warn when the school's newest word is older than this many hours
    /// (default 48).
    pub school_freshness_hours: Option<u64>,
}

impl FileConfig {
    /// Reads a config file; a missing one is empty.
    pub fn read(path: &std::path::Path) -> Result<Self, Exit> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text)
                .map_err(|e| Exit::new(USAGE, format!("{} is not valid: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileConfig::default()),
            Err(e) => Err(crate::exit::io(format!("cannot read {}", path.display()))(
                e,
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Home {
    pub dir: PathBuf,
}

impl Home {
    pub fn resolve(flag: Option<PathBuf>) -> Result<Self, Exit> {
        let dir = match flag {
            Some(dir) => dir,
            None => dirs::data_dir().map(|d| d.join("classe")).ok_or_else(|| {
                Exit::new(
                    USAGE,
                    "cannot find a data folder for classe; set --home or CLASSE_HOME",
                )
            })?,
        };
        std::fs::create_dir_all(&dir).map_err(crate::exit::io(format!(
            "cannot create home {}",
            dir.display()
        )))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // Keys live here; keep the folder private where we created it.
            if let Ok(meta) = std::fs::metadata(&dir) {
                if meta.permissions().mode() & 0o077 != 0 && dir.join("author.key").exists() {
                    tracing::debug!("home folder is readable by others");
                }
            }
        }
        Ok(Self { dir })
    }

    pub fn author_key_path(&self) -> PathBuf {
        self.dir.join("author.key")
    }

    pub fn store_dir(&self) -> PathBuf {
        self.dir.join("store")
    }

    pub fn author_secret(&self) -> Result<AuthorSecret, Exit> {
        Ok(AuthorSecret::load_or_create(&self.author_key_path())?)
    }

    /// The node key: created on first use, never shown.
    pub fn node_key(&self) -> Result<Zeroizing<[u8; 32]>, Exit> {
        let key = AuthorSecret::load_or_create(&self.dir.join("node.key"))?;
        Ok(key.to_bytes())
    }

    pub fn trust_store(&self) -> Result<TrustStore, Exit> {
        Ok(TrustStore::load(self.dir.join("trust"))?)
    }

    /// The school key's folder (`classe school`), apart from the author key.
    pub fn school_dir(&self) -> PathBuf {
        self.dir.join("school")
    }

    /// The schools this user trusts and what is known of them.
    pub fn school_book(&self) -> Result<classe_bundle::anchor::SchoolBook, Exit> {
        classe_bundle::anchor::SchoolBook::load(self.dir.join("schools")).map_err(Exit::from)
    }

    /// The newest version accepted of each lesson.
    pub fn version_book(&self) -> Result<classe_bundle::anchor::VersionBook, Exit> {
        classe_bundle::anchor::VersionBook::load(self.dir.join("versions")).map_err(Exit::from)
    }

    /// Where `classe id --cert` keeps the teacher's certificate.
    pub fn credentials_path(&self) -> PathBuf {
        self.dir.join("credentials")
    }

    /// The certificate installed with `classe id --cert`, if any.
    pub fn credentials(&self) -> Result<Option<classe_bundle::school::Credentials>, Exit> {
        let path = self.credentials_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => classe_bundle::school::Credentials::from_text(&text)
                .map(Some)
                .map_err(|e| {
                    Exit::new(
                        USAGE,
                        format!("{} is damaged ({e}); install the certificate again with `classe id --cert FILE`", path.display()),
                    )
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(crate::exit::io(format!("cannot read {}", path.display()))(e)),
        }
    }

    /// The schools `classe follow --school` added.
    pub fn followed_schools(&self) -> Result<Vec<AuthorKey>, Exit> {
        self.key_list("follow-schools")
    }

    pub fn save_followed_schools(&self, keys: &[AuthorKey]) -> Result<(), Exit> {
        let text: String = keys.iter().map(|k| format!("{k}\n")).collect();
        write_atomic(&self.dir.join("follow-schools"), text.as_bytes())
    }

    /// How old the school's newest word may be before a fetch warns.
    pub fn max_staleness_secs(&self) -> Result<u64, Exit> {
        Ok(self
            .file_config()?
            .school_freshness_hours
            .map(|h| h.saturating_mul(3600))
            .unwrap_or(classe_bundle::anchor::DEFAULT_MAX_STALENESS_SECS))
    }

    pub fn file_config(&self) -> Result<FileConfig, Exit> {
        FileConfig::read(&self.dir.join("config.toml"))
    }

    /// The authors `classe follow` added.
    pub fn follow_list(&self) -> Result<Vec<AuthorKey>, Exit> {
        self.key_list("follow")
    }

    /// A file of keys, one per line (then anything), `#` comments.
    fn key_list(&self, name: &str) -> Result<Vec<AuthorKey>, Exit> {
        let path = self.dir.join(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(crate::exit::io(format!("cannot read {}", path.display()))(
                    e,
                ))
            }
        };
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                l.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .parse::<AuthorKey>()
                    .map_err(|e| Exit::new(USAGE, format!("{}: {e}", path.display())))
            })
            .collect()
    }

    pub fn save_follow_list(&self, keys: &[AuthorKey]) -> Result<(), Exit> {
        let path = self.dir.join("follow");
        let text: String = keys.iter().map(|k| format!("{k}\n")).collect();
        write_atomic(&path, text.as_bytes())
    }

    /// The signed announcements kept from earlier runs (followed and own
    /// lessons), so a restart re-announces them and knows a replay.
    pub fn announcement_log(&self) -> classe_node::AnnouncementLog {
        classe_node::AnnouncementLog::new(self.dir.join("announcements"))
    }

    /// Flags and environment over config.toml over defaults.
    pub fn node_config(&self, net: &NetArgs) -> Result<NodeConfig, Exit> {
        let file = self.file_config()?;
        self.node_config_from(net, &file, None)
    }

    /// As [`Home::node_config`], from a given config file; `listen` puts
    /// discovery on a fixed TCP port (the seed node's).
    pub fn node_config_from(
        &self,
        net: &NetArgs,
        file: &FileConfig,
        listen: Option<std::net::SocketAddr>,
    ) -> Result<NodeConfig, Exit> {
        let mut config = NodeConfig::default();
        if let Some(bind) = net.bind.or(file.bind) {
            config.bind_addr = bind;
        }
        config.relay_url = net.relay.clone().or(file.relay.clone());
        config.relay_ca = net.relay_ca.clone().or(file.relay_ca.clone());
        config.port_mapping = !net.no_port_mapping && file.port_mapping.unwrap_or(true);
        let file_rate = |r: &Option<String>| -> Result<Option<u64>, Exit> {
            r.as_deref()
                .map(rate::parse_rate)
                .transpose()
                .map_err(|e| Exit::new(USAGE, format!("config.toml: {e}")))
        };
        config.max_upload = match net.max_upload {
            Some(r) => Some(r),
            None => file_rate(&file.max_upload)?,
        };
        config.max_download = match net.max_download {
            Some(r) => Some(r),
            None => file_rate(&file.max_download)?,
        };
        if let Some(n) = net.max_peers.or(file.max_peers) {
            if n == 0 {
                return Err(Exit::new(USAGE, "--max-peers must be at least 1"));
            }
            config.max_connections = n;
        }
        if let Some(s) = net.connect_timeout.or(file.connect_timeout) {
            config.connect_timeout = Duration::from_secs(s.max(1));
        }
        if let Some(listen) = listen {
            config.bind_addr = listen;
        }
        let mut bootstrap = Vec::new();
        for text in net.bootstrap.iter().chain(&file.bootstrap) {
            bootstrap.push(classe_control::parse_bootstrap(text).map_err(|e| Exit::new(USAGE, e))?);
        }
        if net.no_discovery && listen.is_none() {
            return Ok(config);
        }
        let bind_ip = config.bind_addr.ip();
        config.control = Some(ControlConfig {
            // Discovery listens where data does: on the seed's fixed port,
            // elsewhere on any free port of the same address.
            listen: std::net::SocketAddr::new(bind_ip, listen.map_or(0, |l| l.port())),
            bootstrap,
            // mDNS finds nothing on loopback and would otherwise multicast
            // on every other interface of the machine.
            mdns: file.mdns.unwrap_or(true) && !net.no_mdns && !bind_ip.is_loopback(),
            known: self.announcement_log().load(),
            ..ControlConfig::default()
        });
        Ok(config)
    }

    /// Seconds since the epoch: the system clock, or `CLASSE_NOW` (to
    /// reproduce a decision at another date, and for tests).
    pub fn now() -> u64 {
        std::env::var("CLASSE_NOW")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            })
    }

    pub async fn open_store(&self) -> Result<classe_store::Store, Exit> {
        Ok(classe_store::Store::open(&self.store_dir()).await?)
    }

    pub async fn spawn_node_with(&self, config: NodeConfig) -> Result<classe_node::Node, Exit> {
        let store = self.open_store().await?;
        let key = self.node_key()?;
        Ok(classe_node::Node::spawn(store, &key, config).await?)
    }
}

/// Writes a small file by rename, so a crash leaves the old or the new.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<(), Exit> {
    classe_node::announce::write_atomic(path, bytes)
        .map_err(crate::exit::io(format!("cannot write {}", path.display())))
}
