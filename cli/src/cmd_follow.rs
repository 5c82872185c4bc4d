//! `classe follow KEY` / `classe unfollow KEY`: the teachers whose new
//! lessons `classe seed` mirrors (and, with `--out`, writes to a folder).
//! Following a key is trusting its lessons for mirroring.

use clap::Args;

use crate::{cmd_id::parse_key, exit::Exit, home::Home};

#[derive(Debug, Args)]
pub struct FollowArgs {
    /// The teacher's author key (as `classe id` prints it). Without it,
    /// list the keys followed.
    key: Option<String>,
    /// List the keys followed (the same as giving no key).
    #[arg(long)]
    list: bool,
}

#[derive(Debug, Args)]
pub struct UnfollowArgs {
    /// The author key to stop following.
    key: String,
}

pub fn follow(home: &Home, args: FollowArgs) -> Result<(), Exit> {
    let mut keys = home.follow_list()?;
    match args.key {
        Some(text) if !args.list => {
            let key = parse_key(&text)?;
            if keys.contains(&key) {
                eprintln!("Already following {key}.");
            } else {
                keys.push(key);
                home.save_follow_list(&keys)?;
                eprintln!(
                    "Following {key}: `classe seed` will fetch and re-share each new lesson it signs."
                );
            }
        }
        _ => {
            for k in keys {
                println!("{k}");
            }
        }
    }
    Ok(())
}

pub fn unfollow(home: &Home, args: UnfollowArgs) -> Result<(), Exit> {
    let key = parse_key(&args.key)?;
    let mut keys = home.follow_list()?;
    let before = keys.len();
    keys.retain(|k| *k != key);
    if keys.len() == before {
        eprintln!("{key} was not followed.");
    } else {
        home.save_follow_list(&keys)?;
        eprintln!("No longer following {key}.");
    }
    Ok(())
}
