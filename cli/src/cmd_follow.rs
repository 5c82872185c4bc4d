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
    /// Follow a school instead: mirror the lessons of every teacher it
    /// certifies (and trust it). KEY is the school key.
    #[arg(long, value_name = "KEY", conflicts_with = "key")]
    school: Option<String>,
    /// With --school: the school's name (default: the one in its
    /// certificates).
    #[arg(long, requires = "school")]
    name: Option<String>,
}

#[derive(Debug, Args)]
pub struct UnfollowArgs {
    /// The author key to stop following.
    key: String,
}

pub fn follow(home: &Home, args: FollowArgs) -> Result<(), Exit> {
    if let Some(text) = &args.school {
        let key = parse_key(text)?;
        let mut book = home.school_book()?;
        if book.get(&key).is_none() || args.name.is_some() {
            book.add(key, args.name.as_deref().unwrap_or(""))?;
        }
        let mut schools = home.followed_schools()?;
        if schools.contains(&key) {
            eprintln!("Already following the school {key}.");
        } else {
            schools.push(key);
            home.save_followed_schools(&schools)?;
            eprintln!(
                "Following the school {key}: `classe seed` will mirror the lessons of every teacher it certifies."
            );
        }
        return Ok(());
    }
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
            for k in home.followed_schools()? {
                println!("{k} (school)");
            }
        }
    }
    Ok(())
}

pub fn unfollow(home: &Home, args: UnfollowArgs) -> Result<(), Exit> {
    let key = parse_key(&args.key)?;
    let mut schools = home.followed_schools()?;
    if schools.contains(&key) {
        schools.retain(|k| *k != key);
        home.save_followed_schools(&schools)?;
        eprintln!("No longer following the school {key}.");
        return Ok(());
    }
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
