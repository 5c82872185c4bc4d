//! Tickets: the short text a teacher pastes into the school platform.
//!
//! `classe` + lowercase base32 (no padding) of a postcard-encoded,
//! versioned value carrying the bundle's root hash, the author key the
//! pupil should expect, and a few addresses of nodes that hold the bundle.
//! Lowercase base32 survives being read aloud, typed, put in a URL, or
//! copied from a QR code (whose alphanumeric mode would want uppercase; the
//! parser accepts both cases).

use std::{fmt, net::SocketAddr, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::keys::AuthorKey;

/// Text every ticket starts with.
pub const PREFIX: &str = "classe";
/// Most providers one ticket may carry.
pub const MAX_PROVIDERS: usize = 8;
/// Most direct addresses one provider entry may carry.
pub const MAX_ADDRS: usize = 16;
/// Longest ticket text accepted: room for the largest ticket the other
/// limits allow (about 8000 characters), so every ticket that parses
/// prints to one that parses.
pub const MAX_TICKET_CHARS: usize = 8192;
/// Longest relay URL accepted.
pub const MAX_RELAY_URL: usize = 256;

/// A node that holds the bundle and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderInfo {
    /// The node's iroh id (an ed25519 public key).
    pub node_id: [u8; 32],
    /// Direct UDP addresses.
    pub addrs: Vec<SocketAddr>,
    /// The relay it is reachable through, if it uses one (a school's own).
    pub relay_url: Option<String>,
    /// The TCP port its discovery (libp2p) listens on, at the same IP
    /// addresses; its peer id derives from `node_id`. None: unknown.
    pub control_port: Option<u16>,
}

/// A provider as tickets of format 1 carried it (no discovery port).
#[derive(Clone, Serialize, Deserialize)]
struct ProviderInfoV1 {
    node_id: [u8; 32],
    addrs: Vec<SocketAddr>,
    relay_url: Option<String>,
}

/// What a ticket says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    /// The bundle's root hash: a hash sequence `[manifest, files...]`.
    pub root: [u8; 32],
    /// The key that must have signed the manifest.
    pub author: AuthorKey,
    /// Where to fetch it.
    pub providers: Vec<ProviderInfo>,
}

#[derive(Serialize, Deserialize)]
enum Wire {
    V1 {
        root: [u8; 32],
        author: AuthorKey,
        providers: Vec<ProviderInfoV1>,
    },
    /// Adds each provider's discovery port.
    V2 {
        root: [u8; 32],
        author: AuthorKey,
        providers: Vec<ProviderInfo>,
    },
}

/// Why a text is not a ticket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// Does not start with `classe`.
    #[error("not a classe ticket: it should start with \"{PREFIX}\"")]
    Prefix,
    /// Longer than any ticket we make.
    #[error("ticket is too long ({0} characters)")]
    TooLong(usize),
    /// A character outside base32: typically a copy-paste accident.
    #[error("ticket is damaged: it contains characters that cannot appear in a ticket")]
    Encoding,
    /// Base32 is fine but the content is not a ticket: truncated, from a
    /// newer classe, or damaged.
    #[error("ticket is damaged or truncated, or was made by a newer classe")]
    Decode,
    /// Decodes but breaks a limit (too many providers or addresses).
    #[error("ticket is invalid: {0}")]
    Invalid(&'static str),
}

impl Ticket {
    fn check_limits(&self) -> Result<(), TicketError> {
        if self.providers.len() > MAX_PROVIDERS {
            return Err(TicketError::Invalid("too many providers"));
        }
        for p in &self.providers {
            if p.addrs.len() > MAX_ADDRS {
                return Err(TicketError::Invalid("too many addresses"));
            }
            if p.relay_url
                .as_ref()
                .is_some_and(|u| u.len() > MAX_RELAY_URL)
            {
                return Err(TicketError::Invalid("relay URL too long"));
            }
        }
        Ok(())
    }

    fn encode(&self) -> Vec<u8> {
        let wire = Wire::V2 {
            root: self.root,
            author: self.author,
            providers: self.providers.clone(),
        };
        postcard::to_stdvec(&wire).unwrap_or_default()
    }
}

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let body = data_encoding::BASE32_NOPAD
            .encode(&self.encode())
            .to_ascii_lowercase();
        write!(f, "{PREFIX}{body}")
    }
}

impl FromStr for Ticket {
    type Err = TicketError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() > MAX_TICKET_CHARS {
            return Err(TicketError::TooLong(s.len()));
        }
        let lower = s.to_ascii_lowercase();
        let body = lower.strip_prefix(PREFIX).ok_or(TicketError::Prefix)?;
        let bytes = data_encoding::BASE32_NOPAD
            .decode(body.to_ascii_uppercase().as_bytes())
            .map_err(|_| TicketError::Encoding)?;
        let (wire, rest): (Wire, _) =
            postcard::take_from_bytes(&bytes).map_err(|_| TicketError::Decode)?;
        if !rest.is_empty() {
            return Err(TicketError::Decode);
        }
        // Only the canonical encoding of a value is accepted: re-encode it
        // in the same format and compare.
        let canonical = postcard::to_stdvec(&wire).unwrap_or_default();
        if canonical != bytes {
            return Err(TicketError::Decode);
        }
        let (root, author, providers) = match wire {
            Wire::V1 {
                root,
                author,
                providers,
            } => {
                let providers = providers
                    .into_iter()
                    .map(|p| ProviderInfo {
                        node_id: p.node_id,
                        addrs: p.addrs,
                        relay_url: p.relay_url,
                        control_port: None,
                    })
                    .collect();
                (root, author, providers)
            }
            Wire::V2 {
                root,
                author,
                providers,
            } => (root, author, providers),
        };
        // The author key bytes came from the wire: check they are a key.
        let author = AuthorKey::from_bytes(*author.as_bytes()).map_err(|_| TicketError::Decode)?;
        let ticket = Ticket {
            root,
            author,
            providers,
        };
        ticket.check_limits()?;
        Ok(ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::AuthorSecret;

    fn sample() -> Ticket {
        Ticket {
            root: [9; 32],
            author: AuthorSecret::generate().public(),
            providers: vec![ProviderInfo {
                node_id: [4; 32],
                addrs: vec![
                    "192.0.2.10:4433".parse().unwrap(),
                    "[2001:db8::1]:4433".parse().unwrap(),
                ],
                relay_url: None,
                control_port: Some(4100),
            }],
        }
    }

    #[test]
    fn ticket_round_trips_and_is_short() {
        let ticket = sample();
        let text = ticket.to_string();
        assert!(text.starts_with("classe"));
        assert!(text.len() < 260, "{} chars", text.len());
        assert_eq!(text.parse::<Ticket>().unwrap(), ticket);
        assert_eq!(text.to_uppercase().parse::<Ticket>().unwrap(), ticket);
        assert_eq!(format!("  {text}\n").parse::<Ticket>().unwrap(), ticket);
    }

    #[test]
    fn ticket_parse_errors() {
        let text = sample().to_string();
        assert_eq!("".parse::<Ticket>(), Err(TicketError::Prefix));
        assert_eq!("blob-abc".parse::<Ticket>(), Err(TicketError::Prefix));
        assert_eq!(
            format!("{text}!").parse::<Ticket>(),
            Err(TicketError::Encoding)
        );
        let truncated = {
            let bytes = data_encoding::BASE32_NOPAD
                .decode(text[6..].to_ascii_uppercase().as_bytes())
                .unwrap();
            format!(
                "classe{}",
                data_encoding::BASE32_NOPAD
                    .encode(&bytes[..bytes.len() - 5])
                    .to_lowercase()
            )
        };
        assert_eq!(truncated.parse::<Ticket>(), Err(TicketError::Decode));
        assert_eq!(
            format!("{text}aaaaaaaa").parse::<Ticket>(),
            Err(TicketError::Decode)
        );
        let huge = format!("classe{}", "a".repeat(MAX_TICKET_CHARS));
        assert!(matches!(
            huge.parse::<Ticket>(),
            Err(TicketError::TooLong(_))
        ));
        // A different version tag.
        let mut bytes = data_encoding::BASE32_NOPAD
            .decode(text[6..].to_ascii_uppercase().as_bytes())
            .unwrap();
        bytes[0] = 7;
        let other = format!(
            "classe{}",
            data_encoding::BASE32_NOPAD.encode(&bytes).to_lowercase()
        );
        assert_eq!(other.parse::<Ticket>(), Err(TicketError::Decode));
    }

    #[test]
    fn too_many_providers_are_refused() {
        let mut ticket = sample();
        ticket.providers = vec![ticket.providers[0].clone(); MAX_PROVIDERS + 1];
        assert_eq!(
            ticket.to_string().parse::<Ticket>(),
            Err(TicketError::Invalid("too many providers"))
        );
    }

    fn v1_text(ticket: &Ticket) -> String {
        let wire = Wire::V1 {
            root: ticket.root,
            author: ticket.author,
            providers: ticket
                .providers
                .iter()
                .map(|p| ProviderInfoV1 {
                    node_id: p.node_id,
                    addrs: p.addrs.clone(),
                    relay_url: p.relay_url.clone(),
                })
                .collect(),
        };
        format!(
            "{PREFIX}{}",
            data_encoding::BASE32_NOPAD
                .encode(&postcard::to_stdvec(&wire).unwrap())
                .to_ascii_lowercase()
        )
    }

    #[test]
    fn every_ticket_within_the_limits_prints_to_a_text_that_parses() {
        // Found by the fuzz property "a ticket that parses prints to one
        // that parses": a format-1 ticket just under the length limit
        // printed (as format 2, one byte more per provider) just over it.
        let addr: SocketAddr = "[2001:db8::1]:4433".parse().unwrap();
        let mut ticket = sample();
        ticket.providers = (0..MAX_PROVIDERS as u8)
            .map(|n| ProviderInfo {
                node_id: [n; 32],
                addrs: vec![addr; 14],
                relay_url: (n == 0).then(|| "x".repeat(85)),
                control_port: None,
            })
            .collect();
        let old = v1_text(&ticket);
        assert!(old.len() <= MAX_TICKET_CHARS, "{}", old.len());
        let parsed: Ticket = old.parse().unwrap();
        assert_eq!(parsed.to_string().parse::<Ticket>().unwrap(), parsed);
        // And the largest ticket the limits allow.
        let big: SocketAddr = "[2001:db8::1]:65535".parse().unwrap();
        ticket.providers = (0..MAX_PROVIDERS as u8)
            .map(|n| ProviderInfo {
                node_id: [n; 32],
                addrs: vec![big; MAX_ADDRS],
                relay_url: Some("x".repeat(MAX_RELAY_URL)),
                control_port: Some(u16::MAX),
            })
            .collect();
        assert_eq!(ticket.to_string().parse::<Ticket>().unwrap(), ticket);
    }

    #[test]
    fn format_1_tickets_still_parse_without_a_discovery_port() {
        let ticket = sample();
        let p = &ticket.providers[0];
        let wire = Wire::V1 {
            root: ticket.root,
            author: ticket.author,
            providers: vec![ProviderInfoV1 {
                node_id: p.node_id,
                addrs: p.addrs.clone(),
                relay_url: None,
            }],
        };
        let text = format!(
            "{PREFIX}{}",
            data_encoding::BASE32_NOPAD
                .encode(&postcard::to_stdvec(&wire).unwrap())
                .to_ascii_lowercase()
        );
        let parsed: Ticket = text.parse().unwrap();
        assert_eq!(parsed.root, ticket.root);
        assert_eq!(parsed.providers[0].addrs, p.addrs);
        assert_eq!(parsed.providers[0].control_port, None);
    }
}
