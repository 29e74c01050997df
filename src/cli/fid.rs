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
    let manifest = Encoder::default()
        .encode(&FileSource::<anyhow::Error>::new(file), size, key.as_ref(), |_| Ok(()))
        .with_context(|| format!("encoding {}", args.file.display()))?;
    println!("{}", serde_json::to_string_pretty(&manifest)?);
    Ok(())
}
