//! Terminal output helpers: sizes, progress bars, QR codes, signals.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// `12.3 MB` style sizes (powers of 1000, as file managers show them).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A byte progress bar on stderr with rate and ETA; invisible when stderr
/// is not a terminal (scripts, CI, the lab).
pub fn byte_bar(total: u64, message: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(message.to_string());
    bar
}

/// Draws `text` (a ticket) as a QR code on stderr with half-block
/// characters.
pub fn print_qr(text: &str) {
    // Uppercase base32 fits QR's compact alphanumeric mode; tickets parse
    // in either case.
    print_qr_exact(&text.to_ascii_uppercase());
}

/// Draws `text` as it is (a name keeps its case and accents).
pub fn print_qr_exact(text: &str) {
    match qrcode::QrCode::with_error_correction_level(text.as_bytes(), qrcode::EcLevel::L) {
        Ok(code) => {
            let image = code
                .render::<qrcode::render::unicode::Dense1x2>()
                .dark_color(qrcode::render::unicode::Dense1x2::Light)
                .light_color(qrcode::render::unicode::Dense1x2::Dark)
                .build();
            let mut err = std::io::stderr().lock();
            writeln!(err, "{image}").ok();
        }
        Err(e) => eprintln!("warning: cannot draw a QR code: {e}"),
    }
}

/// Ctrl-C and SIGTERM, listened to from the moment `install` runs: a
/// signal that arrives before anybody awaits `wait` is kept, not lost to
/// the default action (a script may stop `share` as soon as it has read the
/// ticket).
pub struct Shutdown {
    #[cfg(unix)]
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Shutdown {
    /// Starts listening. Call it before printing anything a script may react
    /// to by sending a signal.
    pub fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let signals = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(term), Ok(int)) => Some((term, int)),
                _ => None,
            };
            Shutdown { signals }
        }
        #[cfg(not(unix))]
        {
            Shutdown {}
        }
    }

    /// Waits for Ctrl-C or SIGTERM (returns at once if one already came).
    pub async fn wait(&mut self) {
        #[cfg(unix)]
        if let Some((term, int)) = &mut self.signals {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
        tokio::signal::ctrl_c().await.ok();
    }
}

/// Writes `value` as pretty JSON to `path`, atomically.
pub fn write_json_file(path: &std::path::Path, value: &serde_json::Value) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(value)?)?;
    std::fs::rename(tmp, path)
}

/// The node's traffic as the JSON that `--stats` writes.
pub fn stats_json(node: &classe_node::Node, started: std::time::Instant) -> serde_json::Value {
    serde_json::json!({
        "node": data_encoding::HEXLOWER.encode(&node.id()),
        "uptime_secs": started.elapsed().as_secs_f64(),
        "traffic": node.traffic(),
        "quic": node.quic_counters(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_read_well() {
        assert_eq!(super::bytes(0), "0 B");
        assert_eq!(super::bytes(999), "999 B");
        assert_eq!(super::bytes(20_000_000), "20.0 MB");
    }
}
