//! Parsing rates such as `2MB/s`, `10Mbit/s` or `500KiB/s` into bytes per
//! second.

/// Parses a rate. Units: B, KB, MB, GB (powers of 1000), KiB, MiB, GiB
/// (powers of 1024), bit, kbit, Mbit, Gbit (bits, powers of 1000); an
/// optional `/s`; a bare number is bytes per second.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t.strip_suffix("/s").unwrap_or(t).trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a rate; try 2MB/s or 10Mbit/s"))?;
    let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "bit" | "bps" => 1.0 / 8.0,
        "kbit" | "kbps" => 1e3 / 8.0,
        "mbit" | "mbps" => 1e6 / 8.0,
        "gbit" | "gbps" => 1e9 / 8.0,
        other => return Err(format!("unknown rate unit {other:?}; try MB/s or Mbit/s")),
    };
    let bytes = number * factor;
    if !bytes.is_finite() || bytes < 1.0 {
        return Err(format!("{text:?} is too small a rate"));
    }
    Ok(bytes.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_rate;

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("2MB/s"), Ok(2_000_000));
        assert_eq!(parse_rate("10Mbit/s"), Ok(1_250_000));
        assert_eq!(parse_rate("500KiB/s"), Ok(512_000));
        assert_eq!(parse_rate("1.5mb"), Ok(1_500_000));
        assert_eq!(parse_rate("1000"), Ok(1000));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("10 parsecs").is_err());
        assert!(parse_rate("0").is_err());
    }
}
