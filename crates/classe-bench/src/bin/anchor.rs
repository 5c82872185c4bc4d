//! What the school chain check costs a fetch, against what every fetch
//! already pays: decoding and verifying the signed manifest.
//!
//! Both run in this process, in the same run, on the same manifest (a
//! certified lesson of 200 files, a school key rotated twice, a full
//! revocation list of 256 entries and a full statement of 128 lessons):
//! the ratio is what to read, not the microseconds.
//!
//! `cargo run --release -p classe-bench --bin anchor -- [--iterations N]`

use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use classe_bundle::{
    anchor::{decide, Decision, SchoolBook},
    registry::SchoolKeys,
    school::{Bulletin, Revoked, Seen, ROLE_MIRROR, ROLE_PUBLISH},
    AuthorSecret, FileEntry, LessonId, Manifest, SignedManifest,
};

#[derive(Parser)]
struct Args {
    /// Decisions timed (each side).
    #[arg(long, default_value_t = 2000)]
    iterations: u32,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let now = 1_800_000_000;
    let mut school = SchoolKeys::init(&dir.path().join("school"), "Collège Jean Moulin")?;
    school.rotate(now - 100)?;
    school.rotate(now - 50)?;
    let teacher = AuthorSecret::generate();
    let seed = AuthorSecret::generate();
    let creds = school.certify(
        teacher.public(),
        "Mme Martin",
        ROLE_PUBLISH,
        now - 10,
        now + 1000,
    )?;
    let seed_creds = school.certify(seed.public(), "Serveur", ROLE_MIRROR, now - 10, now + 1000)?;
    for i in 0..256u64 {
        let gone = AuthorSecret::generate().public();
        let _ = i;
        school.revoke(Revoked::Key(gone), now - 5, "départ", now - 5, now + 1000)?;
    }
    let manifest = Manifest {
        lesson_id: LessonId([7; 16]),
        version: 3,
        title: "Les fractions".into(),
        author: teacher.public(),
        created_unix_secs: now - 1,
        files: (0..200)
            .map(|i| FileEntry {
                path: format!("chapitre {}/exercice {i}.pdf", i / 20),
                size: 100_000 + i,
                hash: [i as u8; 32],
            })
            .collect(),
        dirs: Vec::new(),
        credentials: Some(creds),
    };
    let bytes = SignedManifest::sign(manifest, &teacher)?.to_bytes();
    let root = [9u8; 32];

    let mut book = SchoolBook::load(dir.path().join("schools"))?;
    book.add(school.identity(), "Collège Jean Moulin")?;
    book.absorb(school.identity(), school.bulletin().clone())?;
    for i in 0..128u8 {
        book.countersign(
            &school.identity(),
            Seen {
                author: teacher.public(),
                lesson_id: LessonId([i; 16]),
                version: 1,
                root: [i; 32],
                first_seen: now - 2,
            },
        )?;
    }
    let signed = book.sign_statement(&school.identity(), &seed_creds.cert, &seed, now)?;
    let bulletin: Bulletin = signed.unwrap_or_default();
    println!(
        "bulletin: {} bytes ({} rotations, {} revocations, {} lessons in the statement)",
        bulletin.to_bytes().len(),
        bulletin.chain.len(),
        bulletin
            .revocations
            .as_ref()
            .map_or(0, |r| r.list.entries.len()),
        bulletin
            .statement
            .as_ref()
            .map_or(0, |s| s.statement.lessons.len()),
    );
    println!("manifest: {} bytes", bytes.len());

    // Baseline: what every fetch does with a manifest.
    let started = Instant::now();
    for _ in 0..args.iterations {
        let m = SignedManifest::decode_verified(&bytes)?;
        std::hint::black_box(m);
    }
    let base = started.elapsed().as_secs_f64() / f64::from(args.iterations);

    // The chain check on top (the manifest decoded once per decision too).
    let m = SignedManifest::decode_verified(&bytes)?;
    let started = Instant::now();
    for _ in 0..args.iterations {
        let d = decide(&book, false, m.manifest(), root, now, 48 * 3600);
        assert!(matches!(d, Decision::Certified(_)), "{d:?}");
        std::hint::black_box(d);
    }
    let chain = started.elapsed().as_secs_f64() / f64::from(args.iterations);

    // What a node does with each bulletin that arrives.
    let started = Instant::now();
    for _ in 0..args.iterations {
        bulletin.verify(school.identity())?;
    }
    let verify_bulletin = started.elapsed().as_secs_f64() / f64::from(args.iterations);

    println!("manifest decode+verify (baseline): {:.1} µs", base * 1e6);
    println!(
        "school chain check:                {:.1} µs  ({:.2}× the baseline)",
        chain * 1e6,
        chain / base
    );
    println!(
        "bulletin verify:                   {:.1} µs  ({:.2}× the baseline)",
        verify_bulletin * 1e6,
        verify_bulletin / base
    );
    Ok(())
}
