//! CESS call payloads and storage values as dynamic SCALE values, checked against whatever
//! metadata the node serves: no pallet or call index and no type layout is compiled in. Names
//! are the runtime's own (FileBank, StorageHandler, Sminer; PROTOCOL.md §3).
//!
//! Decoding works on `scale_value::Value`, by field name, unwrapping the single-field wrappers
//! runtimes put around bytes (`Hash([u8; 64])`, `AccountId32([u8; 32])`, bounded vectors), so
//! the same code reads runtimes that add, drop or rename fields it does not use (spec 100's
//! `MinerInfo` has `peer_id` where spec 137 has `endpoint`).

use scale_value::{Composite, Primitive, Value, ValueDef};
use subxt::Metadata;
use subxt::dynamic;
use subxt::tx::DynamicPayload;

use crate::format::{FRAGMENTS, Hash, SegmentManifest};
use crate::protocol::{
    AccountId, ChainError, CompleteInfo, DealInfo, FileInfo, FragmentInfo, HeldFile, MinerInfo, SegmentInfo,
    TerritoryInfo, TerritoryState, UserBrief,
};

/// A dynamic call: (pallet, call, fields).
pub type Call = DynamicPayload<Composite<()>>;

/// The on-chain form of a hash: 64 lowercase hex characters, no length prefix.
fn hash_value(h: &Hash) -> Value {
    Value::from_bytes(h.to_hex().into_bytes())
}

fn account_value(a: &AccountId) -> Value {
    Value::from_bytes(a.0)
}

/// The bucket name older runtimes require: the territory name if the runtime's name check takes
/// it (3 to 63 of `[a-ik-zA-IK-Z0-9._-]`: spec 100's table lacks `j`), else `cessfs`.
fn bucket_name(territory: &[u8]) -> &[u8] {
    let allowed = |b: &u8| (b.is_ascii_alphanumeric() && !b"jJ".contains(b)) || b"._-".contains(b);
    if (3..=63).contains(&territory.len()) && territory.iter().all(allowed) { territory } else { b"cessfs" }
}

/// A `UserBrief` with the fields the runtime's type has: older runtimes (the testnet's genesis
/// spec 100) also take a `bucket_name`.
fn user_brief_value(u: &UserBrief, fields: &[String]) -> Value {
    let mut values = vec![
        ("user", account_value(&u.user)),
        ("file_name", Value::from_bytes(&u.file_name)),
        ("territory_name", Value::from_bytes(&u.territory_name)),
    ];
    if fields.iter().any(|f| f == "bucket_name") {
        values.push(("bucket_name", Value::from_bytes(bucket_name(&u.territory_name))));
    }
    Value::named_composite(values)
}

/// The field names of the struct that argument `arg` of `pallet.call` takes, from the metadata.
fn argument_fields(md: &Metadata, pallet: &str, call: &str, arg: &str) -> Vec<String> {
    let ty = md
        .pallet_by_name(pallet)
        .and_then(|p| p.call_variant_by_name(call))
        .and_then(|v| v.fields.iter().find(|f| f.name.as_deref() == Some(arg)))
        .and_then(|f| md.types().resolve(f.ty.id));
    match ty.map(|t| &t.type_def) {
        Some(scale_info::TypeDef::Composite(c)) => c.fields.iter().filter_map(|f| f.name.clone()).collect(),
        _ => Vec::new(),
    }
}

/// `FileBank.upload_declaration(file_hash, deal_info, user_brief, file_size)`, shaped for the
/// runtime `md` describes.
pub fn upload_declaration(
    md: &Metadata,
    fid: &Hash,
    segments: &[SegmentManifest],
    user: &UserBrief,
    file_size: u64,
) -> Call {
    let brief_fields = argument_fields(md, "FileBank", "upload_declaration", "user_brief");
    let deal_info = segments.iter().map(|s| {
        Value::named_composite([
            ("hash", hash_value(&s.hash)),
            ("fragment_list", Value::unnamed_composite(s.fragments.iter().map(hash_value))),
        ])
    });
    dynamic::tx(
        "FileBank",
        "upload_declaration",
        Composite::named([
            ("file_hash".to_string(), hash_value(fid)),
            ("deal_info".to_string(), Value::unnamed_composite(deal_info)),
            ("user_brief".to_string(), user_brief_value(user, &brief_fields)),
            ("file_size".to_string(), Value::u128(file_size as u128)),
        ]),
    )
}

/// `Utility.force_batch` of `FileBank.delete_file(owner, file_hash)` for each of `fids`: each
/// dispatched on its own, one refused not stopping the others (`batch` would stop at the first
/// and still report success); the events `ItemCompleted` and `ItemFailed` say, in order.
pub fn delete_files(owner: &AccountId, fids: &[Hash]) -> Call {
    let calls = fids.iter().map(|fid| {
        let fields = [("owner", account_value(owner)), ("file_hash", hash_value(fid))];
        Value::unnamed_variant("FileBank", [Value::named_variant("delete_file", fields)])
    });
    dynamic::tx("Utility", "force_batch", Composite::named([("calls".to_string(), Value::unnamed_composite(calls))]))
}

/// `StorageHandler.mint_territory(gib_count, territory_name, days)`.
/// A territory purchase, as the chain prices it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purchase {
    /// `mint_territory`.
    Mint,
    /// `expanding_territory`.
    Expand,
    /// `renewal_territory`.
    Renew,
    /// `reactivate_territory`.
    Reactivate,
}

/// The first runtime whose mint, expand and renew charge `UnitPrice` per GiB-day
/// (CESSProject/cess PR #399); the ones before charged `UnitPrice / 30`.
pub const FULL_UNIT_PRICE_FROM_SPEC: u32 = 121;

/// What one GiB for one day costs on runtime `spec_version`, given `StorageHandler.UnitPrice`:
/// reactivation always divides it by 30, the others only before
/// [`FULL_UNIT_PRICE_FROM_SPEC`] (spec 120 is counted with the older ones).
pub fn price_per_gib_day(unit_price: u128, spec_version: u32, purchase: Purchase) -> u128 {
    if purchase == Purchase::Reactivate || spec_version < FULL_UNIT_PRICE_FROM_SPEC {
        unit_price / 30
    } else {
        unit_price
    }
}

/// `reactivate_territory(territory_name, days)`: an expired territory, active again.
pub fn reactivate_territory(name: &[u8], days: u32) -> Call {
    territory_days("reactivate_territory", name, days)
}

pub fn mint_territory(name: &[u8], gib: u32, days: u32) -> Call {
    dynamic::tx(
        "StorageHandler",
        "mint_territory",
        Composite::named([
            ("gib_count".to_string(), Value::u128(gib as u128)),
            ("territory_name".to_string(), Value::from_bytes(name)),
            ("days".to_string(), Value::u128(days as u128)),
        ]),
    )
}

/// `StorageHandler.expanding_territory(territory_name, gib_count)`.
pub fn expand_territory(name: &[u8], gib: u32) -> Call {
    dynamic::tx(
        "StorageHandler",
        "expanding_territory",
        Composite::named([
            ("territory_name".to_string(), Value::from_bytes(name)),
            ("gib_count".to_string(), Value::u128(gib as u128)),
        ]),
    )
}

/// `StorageHandler.renewal_territory(territory_name, days)`.
pub fn renew_territory(name: &[u8], days: u32) -> Call {
    territory_days("renewal_territory", name, days)
}

/// A StorageHandler call of `(territory_name, days)`.
fn territory_days(call: &str, name: &[u8], days: u32) -> Call {
    dynamic::tx(
        "StorageHandler",
        call,
        Composite::named([
            ("territory_name".to_string(), Value::from_bytes(name)),
            ("days".to_string(), Value::u128(days as u128)),
        ]),
    )
}

/// Storage key arguments, as the metadata's key types take them.
pub mod keys {
    use super::*;

    /// A FileBank map key (`File`, `DealMap`).
    pub fn fid(h: &Hash) -> Vec<Value> {
        vec![hash_value(h)]
    }

    /// An account key (`Sminer.MinerItems`, `System.Account`).
    pub fn account(a: &AccountId) -> Vec<Value> {
        vec![account_value(a)]
    }

    /// The `StorageHandler.Territory` double-map key.
    pub fn territory(owner: &AccountId, name: &[u8]) -> Vec<Value> {
        vec![account_value(owner), Value::from_bytes(name)]
    }
}

fn bad(what: &str, v: &Value) -> ChainError {
    ChainError::Decode(format!("{what}: unexpected {v}"))
}

/// The inner value of single-field wrappers (`Hash(..)`, `AccountId32(..)`, `BoundedVec(..)`).
fn unwrap(v: &Value) -> &Value {
    match &v.value {
        ValueDef::Composite(Composite::Named(f)) if f.len() == 1 => unwrap(&f[0].1),
        ValueDef::Composite(Composite::Unnamed(f)) if f.len() == 1 && !matches!(f[0].value, ValueDef::Primitive(_)) => {
            unwrap(&f[0])
        }
        _ => v,
    }
}

/// Field `name` of a struct value.
pub fn field<'a>(v: &'a Value, name: &str) -> Result<&'a Value, ChainError> {
    match &v.value {
        ValueDef::Composite(Composite::Named(fields)) => {
            fields.iter().find(|(n, _)| n == name).map(|(_, v)| v).ok_or_else(|| bad(&format!("no field {name}"), v))
        }
        _ => Err(bad(&format!("field {name} of a non-struct"), v)),
    }
}

/// The items of a sequence value whose items satisfy `is_item`. Sequences may come wrapped in
/// single-field composites (bounded vectors); a one-item sequence looks like such a wrapper, so
/// the item's shape tells them apart.
fn items_where(v: &Value, is_item: fn(&Value) -> bool) -> Result<Vec<&Value>, ChainError> {
    let mut cur = v;
    loop {
        match &cur.value {
            ValueDef::Composite(Composite::Unnamed(f)) if f.len() == 1 && !is_item(&f[0]) => cur = &f[0],
            ValueDef::Composite(Composite::Named(f)) if f.len() == 1 => cur = &f[0].1,
            ValueDef::Composite(c) => return Ok(c.values().collect()),
            _ => return Err(bad("a list", v)),
        }
    }
}

fn is_struct(v: &Value) -> bool {
    matches!(&v.value, ValueDef::Composite(Composite::Named(f)) if f.len() > 1)
}

fn is_bytes(v: &Value) -> bool {
    bytes(v).is_ok_and(|b| b.len() >= 32)
}

/// The items of a list of structs.
pub fn structs(v: &Value) -> Result<Vec<&Value>, ChainError> {
    items_where(v, is_struct)
}

/// The items of a list of hashes or accounts.
pub fn byte_items(v: &Value) -> Result<Vec<&Value>, ChainError> {
    items_where(v, is_bytes)
}

/// A byte string.
pub fn bytes(v: &Value) -> Result<Vec<u8>, ChainError> {
    let v = unwrap(v);
    match &v.value {
        ValueDef::Composite(c) => c
            .values()
            .map(|b| match b.value {
                ValueDef::Primitive(Primitive::U128(n)) if n < 256 => Ok(n as u8),
                _ => Err(bad("a byte", b)),
            })
            .collect(),
        _ => Err(bad("bytes", v)),
    }
}

/// An unsigned integer.
pub fn uint(v: &Value) -> Result<u128, ChainError> {
    match &unwrap(v).value {
        ValueDef::Primitive(Primitive::U128(n)) => Ok(*n),
        ValueDef::Composite(Composite::Unnamed(f)) if f.len() == 1 => uint(&f[0]),
        _ => Err(bad("a number", v)),
    }
}

fn boolean(v: &Value) -> Result<bool, ChainError> {
    match &unwrap(v).value {
        ValueDef::Primitive(Primitive::Bool(b)) => Ok(*b),
        _ => Err(bad("a bool", v)),
    }
}

/// The variant name of an enum value.
pub fn variant(v: &Value) -> Result<&str, ChainError> {
    match &unwrap(v).value {
        ValueDef::Variant(var) => Ok(&var.name),
        _ => Err(bad("an enum", v)),
    }
}

/// A FileBank `Hash`: 64 hex characters.
pub fn hash(v: &Value) -> Result<Hash, ChainError> {
    let raw = bytes(v)?;
    std::str::from_utf8(&raw).ok().and_then(|s| s.parse().ok()).ok_or_else(|| bad("a 64-hex-character hash", v))
}

/// An `AccountId32`.
pub fn account(v: &Value) -> Result<AccountId, ChainError> {
    let raw = bytes(v)?;
    Ok(AccountId(raw.try_into().map_err(|_| bad("a 32-byte account", v))?))
}

fn u32_of(v: &Value) -> Result<u32, ChainError> {
    u32::try_from(uint(v)?).map_err(|_| bad("a u32", v))
}

fn user_brief(v: &Value) -> Result<UserBrief, ChainError> {
    Ok(UserBrief {
        user: account(field(v, "user")?)?,
        file_name: bytes(field(v, "file_name")?)?,
        territory_name: bytes(field(v, "territory_name")?)?,
    })
}

/// `StorageHandler.Territory` value.
pub fn territory_info(v: &Value) -> Result<TerritoryInfo, ChainError> {
    let state = match variant(field(v, "state")?)? {
        "Active" => TerritoryState::Active,
        "Frozen" => TerritoryState::Frozen,
        "Expired" => TerritoryState::Expired,
        "OnConsignment" => TerritoryState::OnConsignment,
        other => return Err(ChainError::Decode(format!("unknown territory state {other}"))),
    };
    Ok(TerritoryInfo {
        total_space: uint(field(v, "total_space")?)?,
        used_space: uint(field(v, "used_space")?)?,
        locked_space: uint(field(v, "locked_space")?)?,
        remaining_space: uint(field(v, "remaining_space")?)?,
        deadline: u32_of(field(v, "deadline")?)?,
        state,
    })
}

/// `FileBank.DealMap` value.
pub fn deal_info(v: &Value) -> Result<DealInfo, ChainError> {
    let segments = structs(field(v, "segment_list")?)?
        .into_iter()
        .map(|s| {
            let frags = byte_items(field(s, "fragment_list")?)?.into_iter().map(hash).collect::<Result<Vec<_>, _>>()?;
            let fragments: [Hash; FRAGMENTS] = frags.try_into().map_err(|_| bad("12 fragments per segment", s))?;
            Ok(SegmentManifest { hash: hash(field(s, "hash")?)?, fragments })
        })
        .collect::<Result<_, ChainError>>()?;
    let complete_list = structs(field(v, "complete_list")?)?
        .into_iter()
        .map(|c| {
            let index = u8::try_from(uint(field(c, "index")?)?).map_err(|_| bad("a fragment index", c))?;
            Ok(CompleteInfo { index, miner: account(field(c, "miner")?)? })
        })
        .collect::<Result<_, ChainError>>()?;
    Ok(DealInfo {
        file_size: uint(field(v, "file_size")?)?,
        segments,
        user: user_brief(field(v, "user")?)?,
        complete_list,
    })
}

/// `FileBank.File` value.
pub fn file_info(v: &Value) -> Result<FileInfo, ChainError> {
    let segments = structs(field(v, "segment_list")?)?
        .into_iter()
        .map(|s| {
            let fragments = structs(field(s, "fragment_list")?)?
                .into_iter()
                .map(|f| {
                    Ok(FragmentInfo {
                        hash: hash(field(f, "hash")?)?,
                        avail: boolean(field(f, "avail")?)?,
                        miner: account(field(f, "miner")?)?,
                    })
                })
                .collect::<Result<Vec<_>, ChainError>>()?;
            if fragments.len() != FRAGMENTS {
                return Err(bad("12 fragments per segment", s));
            }
            Ok(SegmentInfo { hash: hash(field(s, "hash")?)?, fragments })
        })
        .collect::<Result<_, ChainError>>()?;
    let owners = structs(field(v, "owner")?)?.into_iter().map(user_brief).collect::<Result<_, _>>()?;
    Ok(FileInfo {
        segments,
        owners,
        file_size: uint(field(v, "file_size")?)?,
        completion: u32_of(field(v, "completion")?)?,
        active: variant(field(v, "stat")?)? == "Active",
    })
}

/// `FileBank.UserHoldFileList` value: the files an account holds.
pub fn held_files(v: &Value) -> Result<Vec<HeldFile>, ChainError> {
    structs(v)?
        .into_iter()
        .map(|f| {
            Ok(HeldFile {
                fid: hash(field(f, "file_hash")?)?,
                territory: bytes(field(f, "territory_name")?)?,
                charged: uint(field(f, "file_size")?)?,
            })
        })
        .collect()
}

/// `Sminer.MinerItems` value of `account`. Runtimes without an `endpoint` field give `None`
/// (such miners need a pinned endpoint from the config).
pub fn miner_info(account: AccountId, v: &Value) -> Result<MinerInfo, ChainError> {
    let endpoint = match field(v, "endpoint") {
        Ok(e) => crate::protocol::miner::endpoint_url(&bytes(e)?),
        Err(_) => None,
    };
    Ok(MinerInfo {
        account,
        endpoint,
        state: String::from_utf8_lossy(&bytes(field(v, "state")?)?).into_owned(),
        idle_space: uint(field(v, "idle_space")?)?,
    })
}

/// `System.Account` value: the free balance.
pub fn free_balance(v: &Value) -> Result<u128, ChainError> {
    uint(field(field(v, "data")?, "free")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_avoid_the_spec_100_trap() {
        assert_eq!(bucket_name(b"rig"), b"rig");
        assert_eq!(bucket_name(b"project"), b"cessfs");
        assert_eq!(bucket_name(b"ab"), b"cessfs");
    }

    mod arbitrary {
        use proptest::prelude::*;
        use scale_value::Value;

        use super::super::*;

        const NAMES: &[&str] = &[
            "segment_list",
            "fragment_list",
            "hash",
            "avail",
            "miner",
            "owner",
            "user",
            "file_name",
            "territory_name",
            "file_size",
            "completion",
            "stat",
            "file_hash",
            "complete_list",
            "index",
            "state",
            "total_space",
            "used_space",
            "locked_space",
            "remaining_space",
            "deadline",
            "endpoint",
            "idle_space",
            "data",
            "free",
            "other",
        ];

        fn name() -> impl Strategy<Value = String> {
            proptest::sample::select(NAMES).prop_map(str::to_string)
        }

        fn hash_bytes() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::from_bytes(crate::format::Hash::default().to_hex())),
                proptest::collection::vec(any::<u8>(), 0..70).prop_map(Value::from_bytes),
            ]
        }

        /// Any value of the shapes runtimes use, with the field names the decoders look for.
        fn value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                any::<u128>().prop_map(Value::u128),
                any::<bool>().prop_map(Value::bool),
                "[A-Za-z]{0,8}".prop_map(Value::string),
                hash_bytes(),
            ];
            leaf.prop_recursive(5, 96, 14, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..14).prop_map(Value::unnamed_composite),
                    proptest::collection::vec((name(), inner.clone()), 0..8).prop_map(Value::named_composite),
                    (
                        proptest::sample::select(&["Active", "Frozen", "Other"][..]),
                        proptest::collection::vec(inner, 0..3)
                    )
                        .prop_map(|(n, v)| Value::unnamed_variant(n, v)),
                ]
            })
        }

        /// A `File` value that is right but for its fragment counts and hash lengths.
        fn near_file() -> impl Strategy<Value = Value> {
            let fragment = (hash_bytes(), any::<bool>()).prop_map(|(h, avail)| {
                Value::named_composite([
                    ("hash", h),
                    ("avail", Value::bool(avail)),
                    ("miner", Value::from_bytes([7u8; 32])),
                ])
            });
            let segment = (hash_bytes(), proptest::collection::vec(fragment, 0..16)).prop_map(|(h, f)| {
                Value::named_composite([("hash", h), ("fragment_list", Value::unnamed_composite(f))])
            });
            proptest::collection::vec(segment, 0..4).prop_map(|segments| {
                Value::named_composite([
                    ("segment_list", Value::unnamed_composite(segments)),
                    ("owner", Value::unnamed_composite(Vec::<Value>::new())),
                    ("file_size", Value::u128(5)),
                    ("completion", Value::u128(9)),
                    ("stat", Value::unnamed_variant("Active", Vec::<Value>::new())),
                ])
            })
        }

        proptest! {
            /// Whatever a node serves, decoding gives a value or an error, never a panic.
            #[test]
            fn decoders_never_panic(v in value()) {
                let _ = file_info(&v);
                let _ = deal_info(&v);
                let _ = territory_info(&v);
                let _ = miner_info(AccountId([1; 32]), &v);
                let _ = free_balance(&v);
                let _ = held_files(&v);
                let _ = structs(&v);
                let _ = byte_items(&v);
            }

            /// A decoded `File` has 12 fragments in every segment: other counts are errors.
            #[test]
            fn files_decode_only_with_twelve_fragments(v in near_file()) {
                if let Ok(file) = file_info(&v) {
                    prop_assert!(file.segments.iter().all(|s| s.fragments.len() == FRAGMENTS));
                }
            }
        }
    }
}
