//! What the store's test files share.

#![allow(dead_code, clippy::unwrap_used)]

use classe_bundle::FileEntry;
use classe_store::{
    iroh_blobs::{api::blobs::AddBytesOptions, BlobFormat, Hash},
    Store,
};

/// Adds `manifest_bytes` (a signed manifest's wire form) and the hash
/// sequence `[manifest, files...]` to `store`, without the files and
/// without any check, and pins the root: as a fetch leaves a bundle
/// before its content arrives, or as a malicious author could.
pub async fn pin_header(store: &Store, manifest_bytes: Vec<u8>, files: &[FileEntry]) -> Hash {
    let blobs = store.blobs();
    let manifest_hash = blobs.add_bytes(manifest_bytes).await.unwrap().hash;
    let mut seq = manifest_hash.as_bytes().to_vec();
    for f in files {
        seq.extend_from_slice(&f.hash);
    }
    let root = blobs
        .add_bytes_with_opts(AddBytesOptions {
            data: seq.into(),
            format: BlobFormat::HashSeq,
        })
        .await
        .unwrap()
        .hash;
    store.pin(root).await.unwrap();
    root
}
