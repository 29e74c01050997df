use std::fs::File;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;

use crate::format::Encoder;
use crate::store::FileSource;

#[derive(Args)]
pub struct FidArgs {
    /// The file to describe.
    file: PathBuf,
    /// Describe the plaintext layout (what other CESS clients produce) instead of the encrypted one.
    #[arg(long, conflicts_with = "key_file")]
    plain: bool,
    /// The encryption key file (64 hex characters or 32 raw bytes) [default: the key mounts use
    /// by default, $XDG_CONFIG_HOME/cessfs/key].
    #[arg(long, value_name = "K")]
    key_file: Option<PathBuf>,
    /// The territory the file is stored in: each has its own keys.
    #[arg(long, value_name = "NAME", default_value = "cessfs")]
    territory: String,
}

pub fn run(args: FidArgs) -> anyhow::Result<()> {
    let key = if args.plain {
        None
    } else {
        // The key a mount would use: the one given, else the default one the first mount made.
        let settings = crate::config::Settings { key_file: args.key_file.clone(), ..Default::default() };
        let (path, given) = settings.key_path();
        if !given && !path.exists() {
            bail!("no encryption key at {}: pass --key-file K, or --plain for the unencrypted layout", path.display());
        }
        let key = crate::config::load_key(&path)?;
        eprintln!("key {} ({}), territory {}", path.display(), key.fingerprint(), args.territory);
        Some(key.for_territory(args.territory.as_bytes()))
    };
    let file = File::open(&args.file).with_context(|| format!("opening {}", args.file.display()))?;
    let size = file.metadata()?.len();
    // A mount packs small files (encrypted mode): such a file is stored as a blob in a pack,
    // under the pack's FID, and never as the FID below.
    let pack_below = crate::config::Settings::default().pack_below()?;
    if let Some(blobs) = key.as_ref().and_then(|k| k.blobs()).filter(|_| size > 0 && size < pack_below) {
        let id = blobs.id(&std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?);
        eprintln!(
            "{} is under {} MiB: a mount stores it as blob {id} in a pack, under the pack's FID, not the FID below \
             (which it would have on its own, with --pack-below 0)",
            args.file.display(),
            pack_below >> 20
        );
        if let Some(pack) = xattr(&args.file, c"user.cess.pack") {
            let fid = xattr(&args.file, c"user.cess.fid").unwrap_or_else(|| "not stored yet".into());
            eprintln!("in its mount, it is in pack {fid}: {pack}");
        }
    }
    // A sparse file stores its data ranges only (encrypted mode; docs/FORMAT.md).
    let extents = match &key {
        Some(_) if size >= pack_below => crate::store::sparse_extents(&file, size, crate::format::Mode::Blocks)?,
        _ => None,
    };
    if let Some(e) = &extents {
        eprintln!(
            "{} is sparse: only its data is stored ({} bytes in {}, end to end; the holes are kept in the \
             tree), and the manifest below, its size too, is of those bytes",
            args.file.display(),
            e.data_len(),
            crate::words::count(e.ranges().len() as u64, "range")
        );
    }
    let object_size = extents.as_ref().map_or(size, |e| e.data_len());
    let manifest = Encoder::default()
        .encode(&FileSource::<anyhow::Error>::new(file, extents), object_size, key.as_ref(), |_| Ok(()))
        .with_context(|| format!("encoding {}", args.file.display()))?;
    println!("{}", serde_json::to_string_pretty(&manifest)?);
    Ok(())
}

/// Extended attribute `name` of `path`, as text, if it has one.
fn xattr(path: &std::path::Path, name: &std::ffi::CStr) -> Option<String> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: a NUL-terminated path and name, and a buffer of the given length.
    let n = unsafe { libc::getxattr(c.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    Some(String::from_utf8_lossy(buf.get(..usize::try_from(n).ok()?)?).into_owned())
}
