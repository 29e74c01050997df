use std::fs::File;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;

use crate::format::{Encoder, MasterKey};
use crate::store::FileSource;

#[derive(Args)]
pub struct FidArgs {
    /// The file to describe.
    file: PathBuf,
    /// Describe the plaintext layout (what other CESS clients produce) instead of the encrypted one.
    #[arg(long, conflicts_with = "key_file")]
    plain: bool,
    /// The encryption key file (64 hex characters or 32 raw bytes).
    #[arg(long, value_name = "K")]
    key_file: Option<PathBuf>,
    /// The territory the file is stored in: each has its own keys.
    #[arg(long, value_name = "NAME", default_value = "cessfs")]
    territory: String,
}

pub fn run(args: FidArgs) -> anyhow::Result<()> {
    let key = match (&args.key_file, args.plain) {
        (_, true) => None,
        (Some(path), false) => {
            let bytes = std::fs::read(path).with_context(|| format!("reading key file {}", path.display()))?;
            Some(MasterKey::parse(&bytes).map_err(anyhow::Error::msg)?.for_territory(args.territory.as_bytes()))
        }
        (None, false) => bail!("no encryption key: pass --key-file K, or --plain for the unencrypted layout"),
    };
    let file = File::open(&args.file).with_context(|| format!("opening {}", args.file.display()))?;
    let size = file.metadata()?.len();
    let manifest = Encoder::default()
        .encode(&FileSource::<anyhow::Error>::new(file), size, key.as_ref(), |_| Ok(()))
        .with_context(|| format!("encoding {}", args.file.display()))?;
    println!("{}", serde_json::to_string_pretty(&manifest)?);
    Ok(())
}
