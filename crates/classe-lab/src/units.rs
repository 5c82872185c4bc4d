//! Rates and sizes as people write them: `20mbit`, `10Mbit/s`, `2MB/s`,
//! `50MB`, `5MiB`.
//!
//! Network rates are kept in bits per second and sizes in bytes, both with
//! SI prefixes (powers of 1000) unless the unit says `Ki`/`Mi`/`Gi`: that is
//! how links are sold and how `tc` reads `bit` values.

/// Parses a rate into bits per second. A bare number is Mbit/s. Units:
/// `bit`, `kbit`, `mbit`, `gbit` (also `bps`, `kbps`, `mbps`, `gbps`) and
/// byte rates `B`, `kB`, `MB`, `GB`, `KiB`, `MiB`, `GiB`; an optional `/s`
/// suffix is ignored.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t.strip_suffix("/s").unwrap_or(t).trim();
    let (number, unit) = split_number(t)?;
    let lower = unit.to_ascii_lowercase();
    let bits_per_unit: f64 = match lower.as_str() {
        "" | "mbit" | "mbps" => 1e6,
        "bit" | "bps" => 1.0,
        "kbit" | "kbps" => 1e3,
        "gbit" | "gbps" => 1e9,
        _ => match unit {
            "B" => 8.0,
            "kB" | "KB" => 8e3,
            "MB" => 8e6,
            "GB" => 8e9,
            "KiB" => 8.0 * 1024.0,
            "MiB" => 8.0 * 1024.0 * 1024.0,
            "GiB" => 8.0 * 1024.0 * 1024.0 * 1024.0,
            _ => {
                return Err(format!(
                    "unknown rate unit in {text:?} (try 10mbit or 2MB/s)"
                ))
            }
        },
    };
    let bits = number * bits_per_unit;
    if !(bits.is_finite() && bits >= 1000.0) {
        return Err(format!("rate {text:?} is below 1 kbit/s"));
    }
    if bits > 1e12 {
        return Err(format!("rate {text:?} is above 1 Tbit/s"));
    }
    Ok(bits.round() as u64)
}

/// Parses an optional rate: `none`, `off`, `0` and the empty string mean
/// "not shaped".
pub fn parse_opt_rate(text: &str) -> Result<Option<u64>, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "" | "0" | "none" | "off" | "unlimited" => Ok(None),
        _ => parse_rate(text).map(Some),
    }
}

/// Parses a size into bytes. A bare number is bytes. Units `B`, `kB`, `MB`,
/// `GB` (powers of 1000) and `KiB`, `MiB`, `GiB`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (number, unit) = split_number(text.trim())?;
    let mult: f64 = match unit {
        "" | "B" => 1.0,
        "k" | "kB" | "KB" => 1e3,
        "M" | "MB" => 1e6,
        "G" | "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("unknown size unit in {text:?} (try 50MB)")),
    };
    let bytes = number * mult;
    if !(bytes.is_finite() && bytes >= 1.0) {
        return Err(format!("size {text:?} must be at least one byte"));
    }
    Ok(bytes.round() as u64)
}

fn split_number(t: &str) -> Result<(f64, &str), String> {
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(end);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{t:?} does not start with a number"))?;
    Ok((number, unit.trim()))
}

/// `20 Mbit/s` style rendering of bits per second.
pub fn fmt_rate(bps: u64) -> String {
    let v = bps as f64;
    if v >= 1e9 {
        format!("{} Gbit/s", trim_float(v / 1e9))
    } else if v >= 1e6 {
        format!("{} Mbit/s", trim_float(v / 1e6))
    } else {
        format!("{} kbit/s", trim_float(v / 1e3))
    }
}

/// `50 MB` style rendering of a byte count (powers of 1000).
pub fn fmt_size(bytes: u64) -> String {
    let v = bytes as f64;
    if v >= 1e9 {
        format!("{} GB", trim_float(v / 1e9))
    } else if v >= 1e6 {
        format!("{} MB", trim_float(v / 1e6))
    } else if v >= 1e3 {
        format!("{} kB", trim_float(v / 1e3))
    } else {
        format!("{bytes} B")
    }
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_in_the_units_people_write() {
        assert_eq!(parse_rate("20mbit").unwrap(), 20_000_000);
        assert_eq!(parse_rate("20Mbit/s").unwrap(), 20_000_000);
        assert_eq!(parse_rate("10").unwrap(), 10_000_000);
        assert_eq!(parse_rate("2.5mbit").unwrap(), 2_500_000);
        assert_eq!(parse_rate("500kbit").unwrap(), 500_000);
        assert_eq!(parse_rate("2MB/s").unwrap(), 16_000_000);
        assert_eq!(parse_rate("1gbit").unwrap(), 1_000_000_000);
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("10 furlongs").is_err());
        assert!(parse_rate("0.1bit").is_err());
        assert_eq!(parse_opt_rate("none").unwrap(), None);
        assert_eq!(parse_opt_rate("0").unwrap(), None);
        assert_eq!(parse_opt_rate("100mbit").unwrap(), Some(100_000_000));
    }

    #[test]
    fn sizes_in_the_units_people_write() {
        assert_eq!(parse_size("50MB").unwrap(), 50_000_000);
        assert_eq!(parse_size("5 MB").unwrap(), 5_000_000);
        assert_eq!(parse_size("1MiB").unwrap(), 1_048_576);
        assert_eq!(parse_size("123").unwrap(), 123);
        assert!(parse_size("0").is_err());
        assert!(parse_size("MB").is_err());
    }

    #[test]
    fn rendering_round_trips_the_defaults() {
        assert_eq!(fmt_rate(20_000_000), "20 Mbit/s");
        assert_eq!(fmt_rate(2_500_000), "2.5 Mbit/s");
        assert_eq!(fmt_size(50_000_000), "50 MB");
        assert_eq!(fmt_size(5_000_000), "5 MB");
    }
}
