//! Scenarios: a pair of shell commands, one for the seed host and one for
//! each pupil, so a new contender can be dropped in without touching the
//! lab (`--scenario-file`, JSON, see [`Scenario`]).
//!
//! Each command runs with `sh -c` inside its host's namespace, with these
//! environment variables:
//!
//! | variable | on | meaning |
//! | --- | --- | --- |
//! | `LAB_SRC` | all | folder holding the lesson (read only) |
//! | `LAB_FILES` | all | the lesson's file names, space separated, relative to `LAB_SRC` |
//! | `LAB_URLS` | all | `http://$LAB_SEED_IP:$LAB_PORT/<file>` for each file |
//! | `LAB_SEED_IP`, `LAB_PORT` | all | the seed's address; a port for a seed that needs a fixed one |
//! | `LAB_ADDR` | all | this host's own address |
//! | `LAB_HOME` | all | a private, initially empty folder for this host |
//! | `LAB_STATS` | all | where a classe-style `--stats` JSON may be written on exit |
//! | `LAB_SETUP` | all | the first stdout line of the setup command, if any |
//! | `LAB_N`, `LAB_PUPIL` | all / pupils | number of pupils; this pupil's number (1-based) |
//! | `LAB_DEADLINE_SECS` | all | seconds left before the lab gives up on the run |
//! | `LAB_TICKET` | pupils | the seed's first stdout line (for classe: the ticket) |
//! | `LAB_OUT` | pupils | an empty folder to write the lesson into |
//! | `CLASSE` | all | the `classe` binary under test |
//!
//! Use `exec` for the last command so that signals reach the tool itself.

use serde::{Deserialize, Serialize};

/// When the seed is ready to serve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeedReady {
    /// When it prints its first stdout line (which becomes `LAB_TICKET`).
    FirstLine,
    /// When this command, run repeatedly in the seed's namespace, exits 0.
    Command(String),
}

/// When a pupil counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PupilDone {
    /// When it prints its first stdout line (then it keeps seeding until
    /// the last pupil is done).
    FirstLine,
    /// When it exits with status 0.
    Exit,
}

/// Where the seed's bytes sent come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accounting {
    /// The classe `--stats` JSON at `LAB_STATS` (`traffic.sent`), written
    /// on SIGTERM; interface counters are reported beside it.
    ClasseStats,
    /// Interface counters (`ip -s link`) only: all layers included.
    Interface,
}

/// A contender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scenario {
    /// Short name, used in tables and plots.
    pub name: String,
    /// Run once in the seed's namespace before the seed starts; must exit
    /// 0; its first stdout line becomes `LAB_SETUP`.
    #[serde(default)]
    pub setup: Option<String>,
    /// The seed-side command; serves until SIGTERM.
    pub seed: String,
    /// When the seed is ready.
    pub seed_ready: SeedReady,
    /// The pupil-side command.
    pub pupil: String,
    /// When a pupil is done.
    pub pupil_done: PupilDone,
    /// Where the seed's byte count comes from.
    pub accounting: Accounting,
    /// Give each pupil a classe ticket extended with the pupils that are
    /// already done as extra providers (classe has no peer discovery yet).
    #[serde(default)]
    pub extend_ticket: bool,
}

/// The port the central server listens on.
pub const HTTP_PORT: u16 = 8080;

/// A central server: nginx from Debian on the seed, curl on each pupil.
pub fn central() -> Scenario {
    Scenario {
        name: "central".into(),
        setup: None,
        // The config lives in the seed's home; `user root` because the
        // lesson sits in a private temporary folder.
        seed: r#"mkdir -p "$LAB_HOME/tmp"
cat > "$LAB_HOME/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
user root;
pid $LAB_HOME/nginx.pid;
error_log $LAB_HOME/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_timeout 5;
  client_body_temp_path $LAB_HOME/tmp/body;
  proxy_temp_path $LAB_HOME/tmp/proxy;
  fastcgi_temp_path $LAB_HOME/tmp/fastcgi;
  uwsgi_temp_path $LAB_HOME/tmp/uwsgi;
  scgi_temp_path $LAB_HOME/tmp/scgi;
  default_type application/octet-stream;
  server { listen $LAB_SEED_IP:$LAB_PORT; root $LAB_SRC; }
}
EOF
exec nginx -e "$LAB_HOME/error.log" -p "$LAB_HOME" -c "$LAB_HOME/nginx.conf""#
            .into(),
        seed_ready: SeedReady::Command(
            r#"exec curl -sf -o /dev/null --max-time 2 -I ${LAB_URLS%% *}"#.into(),
        ),
        pupil: r#"exec curl -sS --fail --max-time "$LAB_DEADLINE_SECS" --output-dir "$LAB_OUT" --remote-name-all $LAB_URLS"#
            .into(),
        pupil_done: PupilDone::Exit,
        accounting: Accounting::Interface,
        extend_ticket: false,
    }
}

/// classe: `classe share` on the seed, `classe fetch` on each pupil, which
/// goes on seeding after its JSON summary until the last pupil is done.
pub fn classe(extend_ticket: bool) -> Scenario {
    Scenario {
        name: "classe".into(),
        setup: Some(r#"exec "$CLASSE" --home "$LAB_HOME" id"#.into()),
        seed: r#"exec "$CLASSE" --home "$LAB_HOME" share "$LAB_SRC" --title lesson --bind "$LAB_ADDR:0" --stats "$LAB_STATS""#
            .into(),
        seed_ready: SeedReady::FirstLine,
        pupil: r#"exec "$CLASSE" --home "$LAB_HOME" fetch "$LAB_TICKET" --trust "$LAB_SETUP" --json --out "$LAB_OUT" --bind "$LAB_ADDR:0" --stats "$LAB_STATS""#
            .into(),
        pupil_done: PupilDone::FirstLine,
        accounting: Accounting::ClasseStats,
        extend_ticket,
    }
}

/// BitTorrent, the strongest rival for swarming: aria2c from Debian on
/// the seed and on every pupil, opentracker (Debian's build, which only
/// tracks whitelisted torrents) on the seed host, a torrent of 256 KiB
/// pieces made by mktorrent. aria2c's defaults otherwise: 4 unchoked peers
/// plus an optimistic one, up to 55 peers, peer exchange on. No DHT and no
/// local discovery (there is nothing to find them with; the tracker is
/// the rendezvous). Pupils keep seeding (`--seed-ratio=0.0`) until the
/// lab stops them, like classe's. A pupil reports done from aria2c's
/// download-complete hook, which prints the first stdout line
/// (`--quiet` keeps aria2c's own console off it).
///
/// The torrent is named `out` and pupils download into the parent of
/// `LAB_OUT`, so the files land in `LAB_OUT` itself; the seed serves the
/// lesson through a symlink of that name.
pub fn bittorrent() -> Scenario {
    const ARIA: &str = "aria2c --quiet=true --enable-dht=false --enable-dht6=false --bt-enable-lpd=false --seed-ratio=0.0";
    Scenario {
        name: "bittorrent".into(),
        setup: Some(
            r#"set -e
mktorrent -l 18 -n out -a "http://$LAB_SEED_IP:6969/announce" -o "$LAB_HOME/lesson.torrent" "$LAB_SRC" >/dev/null
aria2c -S "$LAB_HOME/lesson.torrent" | sed -n 's/^Info Hash: //p' > "$LAB_HOME/whitelist"
test -s "$LAB_HOME/whitelist"
echo "$LAB_HOME/lesson.torrent""#
                .into(),
        ),
        seed: format!(
            r#"mkdir -p "$LAB_HOME/data" && ln -sfn "$LAB_SRC" "$LAB_HOME/data/out"
# opentracker will not run as root: it chroots into the home and drops to nobody.
opentracker -i "$LAB_SEED_IP" -p 6969 -P 6969 -A "$LAB_SEED_IP" -w /whitelist -d "$LAB_HOME" >"$LAB_HOME/tracker.log" 2>&1 &
exec {ARIA} --check-integrity=true --dir="$LAB_HOME/data" "$LAB_SETUP""#
        ),
        // Ready once the tracker counts one seeder (aria2c has checked the
        // files and announced).
        seed_ready: SeedReady::Command(
            r#"test "$(curl -sf --max-time 2 "http://$LAB_SEED_IP:6969/stats?mode=peer" | sed -n 2p)" -ge 1"#
                .into(),
        ),
        pupil: format!(
            r#"printf '#!/bin/sh
echo done
' > "$LAB_HOME/done.sh" && chmod +x "$LAB_HOME/done.sh"
exec {ARIA} --dir="$(dirname "$LAB_OUT")" --on-bt-download-complete="$LAB_HOME/done.sh" "$LAB_SETUP""#
        ),
        pupil_done: PupilDone::FirstLine,
        accounting: Accounting::Interface,
        extend_ticket: false,
    }
}

/// The built-in scenarios by name.
pub fn builtin(name: &str, extend_ticket: bool) -> Option<Scenario> {
    match name {
        "central" => Some(central()),
        "classe" => Some(classe(extend_ticket)),
        "bittorrent" => Some(bittorrent()),
        _ => None,
    }
}

/// Which external programs a scenario needs on the machine.
pub fn required_programs(s: &Scenario) -> Vec<&'static str> {
    let mut v = Vec::new();
    let text = format!(
        "{} {} {:?} {}",
        s.setup.as_deref().unwrap_or(""),
        s.seed,
        s.seed_ready,
        s.pupil
    );
    for prog in ["nginx", "curl", "aria2c", "opentracker", "mktorrent"] {
        if text.contains(&format!("exec {prog} "))
            || text.contains(&format!("{prog} -"))
            || text.contains(&format!("{prog} --"))
        {
            v.push(prog);
        }
    }
    v
}

/// The Debian package that provides `prog`.
pub fn package_of(prog: &str) -> &str {
    match prog {
        "nginx" => "nginx-light",
        "aria2c" => "aria2",
        other => other,
    }
}

/// Whether `prog` is on the PATH.
pub fn have_program(prog: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            let p = dir.join(prog);
            p.is_file()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_round_trip_through_json() {
        for s in [central(), classe(true), bittorrent()] {
            let json = serde_json::to_string(&s).unwrap();
            let back: Scenario = serde_json::from_str(&json).unwrap();
            assert_eq!(back, s);
        }
    }

    #[test]
    fn a_contender_file_reads() {
        let s: Scenario = serde_json::from_str(
            r#"{"name":"x","seed":"exec x serve","seed_ready":{"command":"true"},
                "pupil":"exec x get","pupil_done":"exit","accounting":"interface"}"#,
        )
        .unwrap();
        assert_eq!(s.seed_ready, SeedReady::Command("true".into()));
        assert!(!s.extend_ticket);
        assert!(s.setup.is_none());
    }

    #[test]
    fn central_needs_nginx_and_curl() {
        assert_eq!(required_programs(&central()), vec!["nginx", "curl"]);
        assert!(required_programs(&classe(true)).is_empty());
        assert_eq!(
            required_programs(&bittorrent()),
            vec!["curl", "aria2c", "opentracker", "mktorrent"]
        );
    }
}
