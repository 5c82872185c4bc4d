//! Real control planes on loopback (mDNS off: it skips loopback): a seed
//! node as bootstrap, a teacher and pupils.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{net::SocketAddr, time::Duration};

use classe_bundle::{Announcement, AuthorSecret, LessonId, ProviderInfo, SignedAnnouncement};
use classe_control::{Control, ControlConfig, ControlEvent, Multiaddr};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(20);

struct Peer {
    control: Control,
    events: mpsc::Receiver<ControlEvent>,
    key: [u8; 32],
}

fn random_key() -> [u8; 32] {
    *AuthorSecret::generate().to_bytes()
}

async fn start(
    bootstrap: Vec<Multiaddr>,
    follow: Vec<classe_bundle::AuthorKey>,
    data_port: u16,
) -> Peer {
    let key = random_key();
    let (tx, events) = mpsc::channel(64);
    let config = ControlConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        bootstrap,
        mdns: false,
        data_addrs: vec![SocketAddr::from(([127, 0, 0, 1], data_port))],
        follow,
        catch_up_every: Duration::from_secs(2),
        ..Default::default()
    };
    let control = Control::spawn(&key, config, tx).await.unwrap();
    Peer {
        control,
        events,
        key,
    }
}

fn node_id(key: &[u8; 32]) -> [u8; 32] {
    classe_bundle::AuthorSecret::from_bytes(key)
        .public()
        .as_bytes()
        .to_owned()
}

fn announcement(secret: &AuthorSecret, lesson: LessonId, version: u64) -> SignedAnnouncement {
    SignedAnnouncement::sign(
        Announcement {
            author: secret.public(),
            lesson_id: lesson,
            version,
            root: [version as u8; 32],
            title: format!("Leçon v{version}"),
            unix_secs: 1_800_000_000 + version,
            providers: vec![],
        },
        secret,
    )
    .unwrap()
}

/// Waits for the next announcement event, skipping `Ignored` ones.
async fn next_announced(events: &mut mpsc::Receiver<ControlEvent>) -> Option<SignedAnnouncement> {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await? {
                ControlEvent::Announced { announcement, .. } => return Some(announcement),
                _ => continue,
            }
        }
    })
    .await
    .ok()
    .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_records_lead_to_data_addresses() {
    let seed = start(vec![], vec![], 4001).await;
    let boot = seed.control.listen_addrs().await;
    assert!(!boot.is_empty());
    let teacher = start(boot.clone(), vec![], 4002).await;
    let pupil = start(boot, vec![], 4003).await;
    let root = [42u8; 32];
    teacher.control.provide(root).await;

    let mut found = Vec::new();
    for _ in 0..40 {
        found = pupil
            .control
            .find_providers(root, Duration::from_secs(5))
            .await;
        if !found.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let teacher_id = node_id(&teacher.key);
    let info: &ProviderInfo = found
        .iter()
        .find(|p| p.node_id == teacher_id)
        .expect("the teacher is found as a provider");
    assert_eq!(info.addrs, vec![SocketAddr::from(([127, 0, 0, 1], 4002))]);
    assert_eq!(info.control_port, Some(teacher.control.tcp_port()));
    // A root nobody holds finds nobody.
    let none = pupil
        .control
        .find_providers([7u8; 32], Duration::from_secs(5))
        .await;
    assert!(none.is_empty(), "{none:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_reach_followers_late_joiners_catch_up_and_replays_are_ignored() {
    let author = AuthorSecret::generate();
    let lesson = LessonId([1; 16]);
    let mut seed = start(vec![], vec![author.public()], 4011).await;
    let boot = seed.control.listen_addrs().await;
    let teacher = start(boot.clone(), vec![], 4012).await;

    // Gossip (retried until the seed's subscription is seen) or the
    // catch-up record, whichever comes first.
    teacher
        .control
        .announce(announcement(&author, lesson, 1))
        .await;
    let got = next_announced(&mut seed.events)
        .await
        .expect("seed hears v1");
    assert_eq!(got.announcement().version, 1);
    teacher
        .control
        .announce(announcement(&author, lesson, 2))
        .await;
    let got = next_announced(&mut seed.events)
        .await
        .expect("seed hears v2");
    assert_eq!(got.announcement().version, 2);

    // A follower that was not there for either catches up to v2.
    let mut late = start(boot.clone(), vec![author.public()], 4013).await;
    let got = next_announced(&mut late.events)
        .await
        .expect("late follower catches up");
    assert_eq!(got.announcement().version, 2);

    // v1 again, validly signed, is a replay: ignored by both.
    teacher
        .control
        .announce(announcement(&author, lesson, 1))
        .await;
    assert!(
        tokio::time::timeout(Duration::from_secs(3), next_announced(&mut late.events))
            .await
            .ok()
            .flatten()
            .is_none(),
        "an older version was accepted"
    );
    let book = late.control.book().await;
    assert_eq!(book.len(), 1);
    assert_eq!(book[0].announcement().version, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_by_another_key_are_refused() {
    let teacher_key = AuthorSecret::generate();
    let forger = AuthorSecret::generate();
    let mut seed = start(vec![], vec![teacher_key.public()], 4021).await;
    let boot = seed.control.listen_addrs().await;
    let attacker = start(boot, vec![], 4022).await;
    // The forger publishes under its own key (not followed): nothing.
    attacker
        .control
        .announce(announcement(&forger, LessonId([2; 16]), 5))
        .await;
    assert!(
        tokio::time::timeout(Duration::from_secs(4), next_announced(&mut seed.events))
            .await
            .ok()
            .flatten()
            .is_none()
    );
    // On the teacher's topic: the forger's announcement claiming the
    // teacher's key (bad signature), and raw garbage.
    let mut claimed = announcement(&forger, LessonId([2; 16]), 6).to_bytes();
    let author_at = 1; // after the one-byte format tag
    claimed[author_at..author_at + 32].copy_from_slice(teacher_key.public().as_bytes());
    attacker
        .control
        .publish_raw(teacher_key.public(), claimed)
        .await;
    attacker
        .control
        .publish_raw(teacher_key.public(), vec![0xff; 100])
        .await;
    let mut refused = 0;
    for _ in 0..80 {
        refused = seed.control.stats().await.bad_announcements;
        if refused >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(refused, 2, "both forgeries are counted");
    assert!(
        next_announced_within(&mut seed.events, Duration::from_secs(1))
            .await
            .is_none()
    );
    assert!(seed.control.book().await.is_empty());
}

async fn next_announced_within(
    events: &mut mpsc::Receiver<ControlEvent>,
    limit: Duration,
) -> Option<SignedAnnouncement> {
    tokio::time::timeout(limit, next_announced(events))
        .await
        .ok()
        .flatten()
}
