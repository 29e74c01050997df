//! Which encryption key a mount uses, and the checks that keep a data dir and a territory to
//! one key. A data dir records the fingerprint of its key (never the key) once it is mounted;
//! a mount with another key is refused once anything was stored with the first, naming both.
//! The default key file is created only where nothing was stored yet: not when the data dir
//! holds stored files, nor when the territory on the chain holds files of the account (a fresh
//! machine): then the key that stored them is needed, and the mount says where it is expected.

use anyhow::bail;

use crate::config::Settings;
use crate::format::MasterKey;
use crate::protocol::Chain;
use crate::store::Store;

/// The record of the key's fingerprint in the data dir.
const FINGERPRINT: &[u8] = b"key";
/// The fingerprint a plaintext mount records.
const PLAIN: &str = "none (plain)";

/// Whether this data dir was mounted before (it recorded a key's fingerprint).
pub fn mounted_before(store: &Store) -> anyhow::Result<bool> {
    Ok(store.meta(FINGERPRINT)?.is_some())
}

/// The key of a mount (`None`: plaintext), checked against the data dir and the territory.
/// What a person should know (a key created) is added to `notices`.
pub async fn resolve(
    settings: &Settings,
    store: &Store,
    chain: &dyn Chain,
    notices: &mut Vec<String>,
) -> anyhow::Result<Option<MasterKey>> {
    let key = if settings.plain() { None } else { Some(load_or_create(settings, store, chain, notices).await?) };
    let fingerprint = key.as_ref().map_or(PLAIN.to_string(), |k| k.fingerprint());
    let recorded = store.meta(FINGERPRINT)?.map(|v| String::from_utf8_lossy(&v).into_owned());
    match recorded {
        Some(old) if old == fingerprint => {}
        Some(old) if store.stored_anything()? => bail!(
            "the data dir {} holds files stored with key {old}, and this mount has key {fingerprint} ({}): \
             mount it with the key its files were stored with, or use another --data-dir",
            settings.data_dir().display(),
            describe(settings)
        ),
        _ => store.set_meta(FINGERPRINT, fingerprint.as_bytes())?,
    }
    Ok(key)
}

/// Where the key comes from, for messages.
fn describe(settings: &Settings) -> String {
    match (settings.plain(), settings.key_path()) {
        (true, _) => "--plain true".to_string(),
        (false, (path, _)) => format!("key file {}", path.display()),
    }
}

async fn load_or_create(
    settings: &Settings,
    store: &Store,
    chain: &dyn Chain,
    notices: &mut Vec<String>,
) -> anyhow::Result<MasterKey> {
    let (path, given) = settings.key_path();
    if path.exists() || given {
        return crate::config::load_key(&path);
    }
    if let Some(recorded) = store.meta(FINGERPRINT)?.filter(|_| store.stored_anything().unwrap_or(true)) {
        bail!(
            "the encryption key {} is missing, and the data dir {} holds files stored with key {}: \
             put that key back at {} or give it with --key-file",
            path.display(),
            settings.data_dir().display(),
            String::from_utf8_lossy(&recorded),
            path.display()
        );
    }
    let territory = settings.territory();
    let account = chain.account();
    let held = chain.held_files(&account).await?.into_iter().filter(|f| f.territory == territory).count();
    if held > 0 {
        bail!(
            "the encryption key {} is missing, and territory {:?} holds {held} files of account {account}: \
             put the key they were stored with at {} or give it with --key-file",
            path.display(),
            String::from_utf8_lossy(&territory),
            path.display()
        );
    }
    crate::config::write_new_key(&path)?;
    notices.push(format!(
        "created the encryption key {}: back it up somewhere safe; without it your files cannot be read",
        path.display()
    ));
    crate::config::load_key(&path)
}
