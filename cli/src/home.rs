//! The home folder: everything one user of classe owns.
//!
//! ```text
//! <home>/author.key    the teacher identity (mode 0600)
//! <home>/node.key      the machine's network identity (mode 0600)
//! <home>/trust         authors whose lessons are accepted
//! <home>/config.toml   optional settings (see docs/cli.md)
//! <home>/store/        bundles (iroh-blobs) and the lesson record
//! ```

use std::{path::PathBuf, time::Duration};

use classe_bundle::{AuthorSecret, TrustStore};
use classe_node::NodeConfig;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::{
    exit::{Exit, IO, USAGE},
    rate, NetArgs,
};

/// Settings from `<home>/config.toml`. Flags and environment win over it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub bind: Option<std::net::SocketAddr>,
    pub relay: Option<String>,
    pub max_upload: Option<String>,
    pub max_download: Option<String>,
    pub max_peers: Option<usize>,
    pub connect_timeout: Option<u64>,
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
        AuthorSecret::load_or_create(&self.author_key_path())
            .map_err(|e| Exit::new(IO, e.to_string()).with_source(&e))
    }

    /// The node key: created on first use, never shown.
    pub fn node_key(&self) -> Result<Zeroizing<[u8; 32]>, Exit> {
        let key = AuthorSecret::load_or_create(&self.dir.join("node.key"))
            .map_err(|e| Exit::new(IO, e.to_string()).with_source(&e))?;
        Ok(key.to_bytes())
    }

    pub fn trust_store(&self) -> Result<TrustStore, Exit> {
        TrustStore::load(self.dir.join("trust"))
            .map_err(|e| Exit::new(IO, e.to_string()).with_source(&e))
    }

    pub fn file_config(&self) -> Result<FileConfig, Exit> {
        let path = self.dir.join("config.toml");
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text)
                .map_err(|e| Exit::new(USAGE, format!("{} is not valid: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileConfig::default()),
            Err(e) => Err(crate::exit::io(format!("cannot read {}", path.display()))(
                e,
            )),
        }
    }

    /// Flags and environment over config.toml over defaults.
    pub fn node_config(&self, net: &NetArgs) -> Result<NodeConfig, Exit> {
        let file = self.file_config()?;
        let mut config = NodeConfig::default();
        if let Some(bind) = net.bind.or(file.bind) {
            config.bind_addr = bind;
        }
        config.relay_url = net.relay.clone().or(file.relay);
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
        Ok(config)
    }

    pub async fn open_store(&self) -> Result<classe_store::Store, Exit> {
        classe_store::Store::open(&self.store_dir())
            .await
            .map_err(crate::exit::store_open)
    }

    pub async fn spawn_node(&self, net: &NetArgs) -> Result<classe_node::Node, Exit> {
        let config = self.node_config(net)?;
        let store = self.open_store().await?;
        let key = self.node_key()?;
        classe_node::Node::spawn(store, &key, config)
            .await
            .map_err(|e| match e {
                classe_node::SpawnError::RelayUrl(_) => Exit::new(USAGE, e.to_string()),
                classe_node::SpawnError::Bind { .. } => Exit::new(IO, e.to_string()),
            })
    }
}
