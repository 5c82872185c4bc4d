//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/*`)
//! through the same parsing and property code as the fuzz targets
//! (`classe_bundle::fuzzing`), with a plain `cargo test`: an input that
//! once crashed a parser or broke a property fails here if the bug comes
//! back.
//!
//! The seed part of the corpus (files named `seed-*`) is made from real
//! encodings by the ignored test below; after a format change, rerun it:
//!
//! ```text
//! cargo test -p classe-bundle --test fuzz_corpus -- --ignored write_seed_corpus
//! ```
//!
//! Files with other names (`regress-*`: inputs that reproduced a bug;
//! `found-*`: inputs the fuzzer found interesting) are kept as they are.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    fs,
    panic::{catch_unwind, AssertUnwindSafe},
    path::{Path, PathBuf},
};

use classe_bundle::{
    announce::{encode_record, Announcement, SignedAnnouncement},
    fuzzing::{self, TARGETS},
    manifest::{FileEntry, LessonId, Manifest, SignedManifest},
    swarm_wire::{self, ClientMsg, Have, ServerMsg},
    AuthorKey, AuthorSecret, ProviderInfo, Ticket,
};
use serde::Serialize;

/// The allocator the swarm property bounds, as the fuzz target does.
#[global_allocator]
static ALLOC: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

fn limit(n: Option<usize>) {
    let _ = match n {
        Some(n) => ALLOC.set_limit(ALLOC.allocated().saturating_add(n)),
        None => ALLOC.set_limit(usize::MAX),
    };
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus")
}

#[test]
fn every_corpus_file_replays_without_breaking_a_property() {
    let root = corpus_dir();
    let mut failures = Vec::new();
    let mut count = 0;
    for (name, check) in TARGETS {
        let target = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/fuzz_targets")
            .join(format!("{name}.rs"));
        assert!(target.is_file(), "no fuzz target {}", target.display());
        let dir = root.join(name);
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(
            files.len() >= 5,
            "corpus of {name} has {} files",
            files.len()
        );
        let started = std::time::Instant::now();
        let in_dir = files.len();
        for file in files {
            let data = fs::read(&file).unwrap();
            count += 1;
            let run = catch_unwind(AssertUnwindSafe(|| {
                if *name == "swarm_frame" {
                    fuzzing::swarm_frame_limited(&data, &limit);
                } else {
                    check(&data);
                }
            }));
            if run.is_err() {
                failures.push(file.display().to_string());
            }
        }
        println!("{name}: {in_dir} files in {:?}", started.elapsed());
    }
    assert!(failures.is_empty(), "properties broken by {failures:?}");
    assert!(count > 100, "only {count} corpus files");
}

// ---------------------------------------------------------------------
// The seed corpus.

fn teacher() -> AuthorSecret {
    AuthorSecret::from_bytes(&[0x11; 32])
}

fn provider(n: u8, relay: Option<&str>, port: Option<u16>) -> ProviderInfo {
    ProviderInfo {
        node_id: [n; 32],
        addrs: vec![
            format!("192.0.2.{n}:4433").parse().unwrap(),
            format!("[2001:db8::{n}]:4433").parse().unwrap(),
        ],
        relay_url: relay.map(str::to_string),
        control_port: port,
    }
}

fn base32(bytes: &[u8]) -> String {
    data_encoding::BASE32_NOPAD
        .encode(bytes)
        .to_ascii_lowercase()
}

fn unbase32(text: &str) -> Vec<u8> {
    data_encoding::BASE32_NOPAD
        .decode(text.to_ascii_uppercase().as_bytes())
        .unwrap()
}

/// Postcard mirrors of the wire envelopes, to make inputs the real
/// encoders refuse to make (old formats, unsafe content).
#[derive(Serialize)]
enum TicketWire {
    V1 {
        root: [u8; 32],
        author: AuthorKey,
        providers: Vec<(
            /* node_id */ [u8; 32],
            Vec<std::net::SocketAddr>,
            Option<String>,
        )>,
    },
}

#[derive(Serialize)]
enum SignedWire<T> {
    V1 {
        content: T,
        signature: [[u8; 32]; 2],
    },
}

fn signed_wire<T: Serialize>(content: T, signature: [u8; 64]) -> Vec<u8> {
    let mut halves = [[0u8; 32]; 2];
    halves[0].copy_from_slice(&signature[..32]);
    halves[1].copy_from_slice(&signature[32..]);
    postcard::to_stdvec(&SignedWire::V1 {
        content,
        signature: halves,
    })
    .unwrap()
}

/// Damaged copies of a valid input: truncated, extended, bits flipped.
fn damaged(good: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![
        ("truncated".to_string(), good[..good.len() / 2].to_vec()),
        ("last-byte-cut".to_string(), good[..good.len() - 1].to_vec()),
        ("trailing-byte".to_string(), [good, &[0]].concat()),
    ];
    for at in [0, 1, good.len() / 3, good.len() - 1] {
        let mut bad = good.to_vec();
        bad[at] ^= 0x80;
        out.push((format!("flip-{at}"), bad));
    }
    out
}

fn sample_manifest(author: AuthorKey, files: &[(&str, u64)]) -> Manifest {
    Manifest {
        lesson_id: LessonId([7; 16]),
        version: 3,
        title: "Les fractions — CM2".into(),
        author,
        created_unix_secs: 1_584_316_800,
        files: files
            .iter()
            .enumerate()
            .map(|(i, (path, size))| FileEntry {
                path: path.to_string(),
                size: *size,
                hash: [i as u8; 32],
            })
            .collect(),
        dirs: Vec::new(),
        credentials: None,
    }
}

fn sample_announcement(
    secret: &AuthorSecret,
    lesson: u8,
    version: u64,
    providers: Vec<ProviderInfo>,
) -> SignedAnnouncement {
    SignedAnnouncement::sign(
        Announcement {
            author: secret.public(),
            lesson_id: LessonId([lesson; 16]),
            version,
            root: [version as u8; 32],
            title: format!("Leçon {lesson}"),
            unix_secs: 1_700_000_000 + version,
            providers,
        },
        secret,
    )
    .unwrap()
}

type Seeds = Vec<(String, Vec<u8>)>;

fn ticket_seeds() -> Seeds {
    let author = teacher().public();
    let mut seeds: Seeds = Vec::new();
    let one = Ticket {
        root: [9; 32],
        author,
        providers: vec![provider(10, None, Some(4100))],
    };
    let relay = Ticket {
        root: [8; 32],
        author,
        providers: vec![
            provider(1, Some("https://relay.ecole.example:4443"), Some(4100)),
            provider(2, Some("http://[fd00::1]:3340"), None),
        ],
    };
    let none = Ticket {
        root: [7; 32],
        author,
        providers: vec![],
    };
    let full = Ticket {
        root: [6; 32],
        author,
        providers: (0..8).map(|n| provider(n, None, Some(4100))).collect(),
    };
    let mut too_many = full.clone();
    too_many.providers.push(provider(9, None, None));
    for (name, t) in [
        ("one", &one),
        ("relay", &relay),
        ("none", &none),
        ("full", &full),
        ("too-many-providers", &too_many),
    ] {
        seeds.push((name.into(), t.to_string().into_bytes()));
    }
    let text = one.to_string();
    seeds.push(("upper".into(), text.to_uppercase().into_bytes()));
    seeds.push(("blanks".into(), format!("  {text}\r\n").into_bytes()));
    seeds.push(("bang".into(), format!("{text}!").into_bytes()));
    seeds.push(("prefix-only".into(), b"classe".to_vec()));
    seeds.push(("other-prefix".into(), b"blobabcdef".to_vec()));
    seeds.push(("empty".into(), Vec::new()));
    seeds.push((
        "too-long".into(),
        format!("classe{}", "a".repeat(8200)).into_bytes(),
    ));
    let body = unbase32(&text[6..]);
    for (name, bad) in damaged(&body) {
        seeds.push((name, format!("classe{}", base32(&bad)).into_bytes()));
    }
    let v1 = postcard::to_stdvec(&TicketWire::V1 {
        root: [5; 32],
        author,
        providers: vec![([3; 32], provider(3, None, None).addrs, None)],
    })
    .unwrap();
    seeds.push((
        "format-1".into(),
        format!("classe{}", base32(&v1)).into_bytes(),
    ));
    // Format 1, just under the old 4096-character limit: printed as format
    // 2 it was just over it, and did not parse again.
    let addr: std::net::SocketAddr = "[2001:db8::1]:4433".parse().unwrap();
    let v1 = postcard::to_stdvec(&TicketWire::V1 {
        root: [4; 32],
        author,
        providers: (0..8u8)
            .map(|n| ([n; 32], vec![addr; 14], (n == 0).then(|| "x".repeat(85))))
            .collect(),
    })
    .unwrap();
    let text = format!("classe{}", base32(&v1));
    assert_eq!(text.len(), 4090);
    seeds.push(("format-1-near-4096".into(), text.into_bytes()));
    seeds
}

fn manifest_seeds() -> Seeds {
    let secret = fuzzing::test_secret();
    let mut seeds: Seeds = Vec::new();
    let cases: &[(&str, &[(&str, u64)])] = &[
        (
            "two-files",
            &[("cours.pdf", 1234), ("exercices/série 1.txt", 0)],
        ),
        ("empty", &[]),
        (
            "nested",
            &[
                ("a/b/c/d.txt", 1),
                ("a/b/e.txt", 2),
                ("Élève/résumé — été.md", 3),
                ("数学/第一课.txt", 4),
                (".hidden", 5),
            ],
        ),
    ];
    for (name, files) in cases {
        let m = sample_manifest(secret.public(), files);
        let signed = SignedManifest::sign(m, &secret).unwrap();
        seeds.push(((*name).into(), signed.to_bytes()));
    }
    // Format 2: empty folders.
    let mut m = sample_manifest(secret.public(), &[("cours/a.txt", 1)]);
    m.dirs = vec!["à rendre".into(), "cours/vide/plus".into()];
    let signed = SignedManifest::sign(m, &secret).unwrap();
    seeds.push(("empty-folders".into(), signed.to_bytes()));
    // By another key: verifies, but not against the fuzzing key.
    let other = teacher();
    let m = sample_manifest(other.public(), &[("cours.pdf", 1)]);
    let good = SignedManifest::sign(m, &other).unwrap().to_bytes();
    seeds.push(("other-author".into(), good.clone()));
    for (name, bad) in damaged(&good) {
        seeds.push((name, bad));
    }
    // Signed, but unsafe: what a malicious author could send.
    let unsafe_lists: &[(&str, &[(&str, u64)])] = &[
        ("traversal", &[("../escape", 1)]),
        ("absolute", &[("/etc/passwd", 1)]),
        ("drive", &[("C:/Windows/x", 1)]),
        ("device", &[("dir/nul.txt", 1)]),
        ("duplicate-case", &[("A.txt", 1), ("a.TXT", 1)]),
        ("file-is-folder", &[("a", 1), ("a/b", 1)]),
        ("total-overflow", &[("a", u64::MAX), ("b", 2)]),
        ("backslash", &[("a\\..\\b", 1)]),
    ];
    for (name, files) in unsafe_lists {
        let m = sample_manifest(secret.public(), files);
        let sig = secret.sign(&m.signing_message());
        seeds.push(((*name).into(), signed_wire(&m, sig)));
    }
    let mut m = sample_manifest(secret.public(), &[("a", 1)]);
    m.title = "titre\u{1b}[2J".into();
    let sig = secret.sign(&m.signing_message());
    seeds.push(("title-control".into(), signed_wire(&m, sig)));
    seeds
}

fn path_list_seeds() -> Seeds {
    let lists: &[(&str, &[&str])] = &[
        (
            "safe",
            &[
                "a.txt",
                "cours/chapitre 1/exercice.pdf",
                "Élève/résumé — été.md",
            ],
        ),
        (
            "unicode",
            &["数学/第一课.txt", ".hidden", "a..b", "con-tent.txt"],
        ),
        ("traversal", &["ok", "../bad"]),
        ("dot", &["./a", "a/./b"]),
        ("empty-component", &["a//b", "a/"]),
        ("absolute", &["/etc/passwd", "C:/Windows", "c:x"]),
        (
            "chars",
            &["a\\b", "a\0b", "a\nb", "file:stream", "what?", "a|b"],
        ),
        (
            "devices",
            &["CON", "dir/nul.txt", "com1", "LPT9.log", "conout$"],
        ),
        ("trailing", &["trailing.", "trailing "]),
        ("duplicate", &["A.txt", "a.TXT"]),
        ("file-is-folder", &["x/y/z", "X/Y"]),
        ("empty", &[""]),
    ];
    let mut seeds: Seeds = lists
        .iter()
        .map(|(name, paths)| ((*name).into(), paths.join("\n").into_bytes()))
        .collect();
    seeds.push(("deep".into(), ["d"; 40].join("/").into_bytes()));
    seeds.push(("long-component".into(), "x".repeat(256).into_bytes()));
    seeds
}

fn announce_seeds() -> Seeds {
    let secret = fuzzing::test_secret();
    let mut seeds: Seeds = Vec::new();
    let plain = sample_announcement(&secret, 1, 1, vec![provider(1, None, Some(4100))]);
    let relay = sample_announcement(
        &secret,
        2,
        5,
        (1..=4)
            .map(|n| provider(n, Some("https://relay.ecole.example"), None))
            .collect(),
    );
    let bare = sample_announcement(&secret, 3, 2, vec![]);
    seeds.push(("plain".into(), plain.to_bytes()));
    seeds.push(("relay".into(), relay.to_bytes()));
    seeds.push(("no-provider".into(), bare.to_bytes()));
    seeds.push(("text".into(), plain.to_text().into_bytes()));
    let other = sample_announcement(&teacher(), 1, 1, vec![]);
    seeds.push(("other-author".into(), other.to_bytes()));
    for (name, bad) in damaged(&plain.to_bytes()) {
        seeds.push((name, bad));
    }
    let mut a = bare.announcement().clone();
    a.title = "Leçon\u{1b}[2J".into();
    let sig = secret.sign(&announce_message(&a));
    seeds.push(("title-control".into(), signed_wire(&a, sig)));
    let mut a = bare.announcement().clone();
    a.providers = (0..5).map(|n| provider(n, None, None)).collect();
    let sig = secret.sign(&announce_message(&a));
    seeds.push(("too-many-providers".into(), signed_wire(&a, sig)));
    seeds
}

fn announce_message(a: &Announcement) -> Vec<u8> {
    let mut m = classe_bundle::announce::ANNOUNCE_DOMAIN.to_vec();
    m.extend(postcard::to_stdvec(a).unwrap());
    m
}

fn record_seeds() -> Seeds {
    let secret = fuzzing::test_secret();
    let entries: Vec<SignedAnnouncement> = (0..18)
        .map(|i| sample_announcement(&secret, i, u64::from(i) + 1, vec![provider(i, None, None)]))
        .collect();
    let mut seeds: Seeds = vec![
        ("one".into(), encode_record(&entries[..1])),
        ("three".into(), encode_record(&entries[..3])),
        ("full".into(), encode_record(&entries)),
        ("empty".into(), encode_record(&[])),
        (
            "other-author".into(),
            encode_record(&[sample_announcement(&teacher(), 1, 1, vec![])]),
        ),
    ];
    let too_many: Vec<Vec<u8>> = entries.iter().map(SignedAnnouncement::to_bytes).collect();
    seeds.push((
        "seventeen".into(),
        postcard::to_stdvec(&too_many[..17]).unwrap(),
    ));
    let good = encode_record(&entries[..3]);
    for (name, bad) in damaged(&good) {
        seeds.push((name, bad));
    }
    seeds
}

fn swarm_seeds() -> Seeds {
    let client = [
        ClientMsg::Hello {
            root: [7; 32],
            me: None,
            leaves_when_done: true,
        },
        ClientMsg::Hello {
            root: [7; 32],
            me: Some(provider(3, Some("https://relay.ecole.example"), Some(4100))),
            leaves_when_done: false,
        },
    ];
    let server = [
        ServerMsg::Welcome {
            pieces: 0,
            have: Have::None,
            peers: vec![],
        },
        ServerMsg::Welcome {
            pieces: 300,
            have: Have::All,
            peers: vec![provider(1, None, Some(4100)), provider(2, None, None)],
        },
        ServerMsg::Welcome {
            pieces: 130,
            have: Have::Some(vec![u64::MAX, 0x55, 3]),
            peers: vec![],
        },
        ServerMsg::Update {
            pieces: vec![0, 1, 2, 129, 70_000],
            peers: vec![provider(4, None, None)],
        },
    ];
    let mut seeds: Seeds = Vec::new();
    let frames: Vec<Vec<u8>> = client
        .iter()
        .map(|m| swarm_wire::encode(m).unwrap())
        .chain(server.iter().map(|m| swarm_wire::encode(m).unwrap()))
        .collect();
    for (i, frame) in frames.iter().enumerate() {
        seeds.push((format!("body-{i}"), frame[4..].to_vec()));
        seeds.push((format!("frame-{i}"), frame.clone()));
    }
    for (name, bad) in damaged(&frames[1][4..]) {
        seeds.push((name, bad));
    }
    // Lists that announce far more elements than the frame holds.
    seeds.push((
        "huge-have".into(),
        vec![0, 0xac, 0x02, 2, 0xff, 0xff, 0xff, 0xff, 0x0f, 1],
    ));
    seeds.push((
        "huge-update".into(),
        vec![1, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2],
    ));
    seeds.push(("huge-prefix".into(), vec![0xff, 0xff, 0xff, 0xff]));
    seeds
}

fn author_key_seeds() -> Seeds {
    let key = teacher().public().to_string();
    let mut seeds: Seeds = vec![
        ("key".into(), key.clone().into_bytes()),
        ("upper".into(), key.to_uppercase().into_bytes()),
        ("blanks".into(), format!(" {key}\n").into_bytes()),
        ("short".into(), key.as_bytes()[..51].to_vec()),
        ("long".into(), format!("{key}a").into_bytes()),
        ("padded".into(), format!("{key}====").into_bytes()),
        ("hello".into(), b"hello".to_vec()),
        ("empty".into(), Vec::new()),
    ];
    // Non-zero trailing bits: the last character carries 4 unused bits.
    let mut trailing = key.clone().into_bytes();
    trailing[51] = if trailing[51] == b'b' { b'c' } else { b'b' };
    seeds.push(("trailing-bits".into(), trailing));
    // 32 bytes that are not a point on the curve.
    let off_curve = (0u8..=255)
        .map(|n| [n; 32])
        .find(|b| AuthorKey::from_bytes(*b).is_err())
        .unwrap();
    seeds.push(("off-curve".into(), base32(&off_curve).into_bytes()));
    seeds
}

fn secret_key_file_seeds() -> Seeds {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("author.key");
    teacher().save(&path).unwrap();
    let good = fs::read_to_string(&path).unwrap();
    let (header, body) = good.trim_end().split_once('\n').unwrap();
    vec![
        ("saved".into(), good.clone().into_bytes()),
        ("crlf".into(), good.replace('\n', "\r\n").into_bytes()),
        ("no-newline".into(), good.trim_end().as_bytes().to_vec()),
        (
            "extra-lines".into(),
            format!("{good}more\nlines\n").into_bytes(),
        ),
        (
            "upper".into(),
            format!("{header}\n{}\n", body.to_uppercase()).into_bytes(),
        ),
        ("no-body".into(), format!("{header}\n").into_bytes()),
        (
            "bad-base32".into(),
            format!("{header}\nnot base32!\n").into_bytes(),
        ),
        (
            "short-body".into(),
            format!("{header}\n{}\n", &body[..40]).into_bytes(),
        ),
        (
            "wrong-header".into(),
            format!("classe-secret-key-v2\n{body}\n").into_bytes(),
        ),
        ("empty".into(), Vec::new()),
    ]
}

fn key_seeds() -> Seeds {
    let keys = author_key_seeds()
        .into_iter()
        .map(|(n, d)| (format!("key-{n}"), d));
    let files = secret_key_file_seeds()
        .into_iter()
        .map(|(n, d)| (format!("file-{n}"), d));
    keys.chain(files).collect()
}

fn trust_file_seeds() -> Seeds {
    let a = teacher().public();
    let b = fuzzing::test_secret().public();
    vec![
        (
            "saved".into(),
            format!(
                "# Authors whose lessons classe accepts: key, then a name.\n{a} Mme Dupont\n{b} \n"
            )
            .into_bytes(),
        ),
        (
            "comments".into(),
            format!("# école\n\n   # indented\n{a}\n").into_bytes(),
        ),
        (
            "crlf".into(),
            format!("{a} M. Martin\r\n{b}\r\n").into_bytes(),
        ),
        (
            "tabs".into(),
            format!("\t{a}\tMme\tDurand  \n").into_bytes(),
        ),
        (
            "duplicate".into(),
            format!("{a} un\n{a} deux\n").into_bytes(),
        ),
        (
            "bad-line".into(),
            format!("{a}\nnot-a-key someone\n").into_bytes(),
        ),
        (
            "upper".into(),
            format!("{} MAJ\n", a.to_string().to_uppercase()).into_bytes(),
        ),
        ("empty".into(), Vec::new()),
    ]
}

/// Rewrites every `seed-*` file of the corpus from real encodings. Not a
/// check: run it by hand (see the top of this file) after a format change.
#[test]
#[ignore = "writes the seed corpus; run by hand after a format change"]
fn write_seed_corpus() {
    let all: Vec<(&str, Seeds)> = vec![
        ("ticket", ticket_seeds()),
        ("manifest", manifest_seeds()),
        ("path_list", path_list_seeds()),
        ("announce", announce_seeds()),
        ("record", record_seeds()),
        ("swarm_frame", swarm_seeds()),
        ("keys", key_seeds()),
        ("trust_file", trust_file_seeds()),
    ];
    assert_eq!(all.len(), TARGETS.len());
    for (target, seeds) in all {
        let dir = corpus_dir().join(target);
        fs::create_dir_all(&dir).unwrap();
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("seed-") {
                fs::remove_file(&path).unwrap();
            }
        }
        for (name, data) in seeds {
            fs::write(dir.join(format!("seed-{name}")), data).unwrap();
        }
    }
}
