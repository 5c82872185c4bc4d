//! One lifecycle for every command that runs a node (share, fetch, seed):
//! start it, run the command's body, then, whatever the body returned,
//! gather the statistics, shut the node down (which flushes the store)
//! and write `--stats`. No error path can skip the flush.

use std::{path::Path, time::Instant};

use classe_node::{Node, NodeConfig};

use crate::{exit::Exit, home::Home, ui};

/// Figures a command adds to its `--stats` file beside the node's own.
pub type ExtraStats = serde_json::Map<String, serde_json::Value>;

/// Starts a node on `home`'s store and key with `config`, runs `body` with
/// it, and always shuts it down. `--stats` (`stats`) is written after the
/// shutdown, also when the body failed; the body's error wins over a
/// failure to write it.
pub async fn with_node<T>(
    home: &Home,
    config: NodeConfig,
    stats: Option<&Path>,
    body: impl AsyncFnOnce(&Node, &mut ExtraStats) -> Result<T, Exit>,
) -> Result<T, Exit> {
    let started = Instant::now();
    let node = home.spawn_node_with(config).await?;
    let mut extra = ExtraStats::new();
    let result = body(&node, &mut extra).await;
    let mut json = ui::stats_json(&node, started);
    if let Some(control) = node.control() {
        if let Ok(c) = serde_json::to_value(control.stats().await) {
            json["discovery"] = c;
        }
    }
    for (k, v) in extra {
        json[k] = v;
    }
    node.shutdown().await;
    let written = match stats {
        Some(path) => ui::write_json_file(path, &json)
            .map_err(crate::exit::io(format!("cannot write {}", path.display()))),
        None => Ok(()),
    };
    let value = result?;
    written?;
    Ok(value)
}
