//! The chain client against real CESS runtime metadata, offline, for both versions in
//! ../shared/cess/metadata (spec 100, V14, with the extra CheckMqSequence extension and miners
//! without endpoints; spec 137, V15): every call the client sends is built by the client's own
//! code, encoded and signed with subxt's offline client and decoded back through the metadata;
//! every storage value it reads is encoded from the metadata's own type description and decoded
//! by the client's code.

use std::path::PathBuf;

use cessfs::chain::codec;
use cessfs::format::{FRAGMENTS, Hash, SegmentManifest};
use cessfs::protocol::{AccountId, Signer, TerritoryState, UserBrief};
use scale_info::{PortableRegistry, TypeDef, TypeDefPrimitive};
use scale_value::{Composite, Value};
use subxt::config::substrate::SpecVersionForRange;
use subxt::{Metadata, OfflineClient, SubstrateConfig};

const METADATA: [(&str, u32); 2] = [("cess-testnet-genesis-spec100.scale", 100), ("cess-testnet-spec137.scale", 137)];

fn metadata(file: &str) -> subxt::metadata::ArcMetadata {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/cess/metadata").join(file);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{} must be present: {e}", path.display()));
    Metadata::decode_from(&bytes).expect("runtime metadata decodes").arc()
}

fn offline(md: &subxt::metadata::ArcMetadata, spec: u32) -> OfflineClient<SubstrateConfig> {
    let config = SubstrateConfig::builder()
        .set_genesis_hash(Default::default())
        .set_spec_version_for_block_ranges([SpecVersionForRange {
            block_range: 0..u64::MAX,
            spec_version: spec,
            transaction_version: 1,
        }])
        .set_metadata_for_spec_versions([(spec, md.clone())])
        .build();
    OfflineClient::new_with_config(config)
}

fn fid(n: u8) -> Hash {
    Hash([n; 32])
}

/// Every call, encoded and signed offline, then decoded back through the metadata to the
/// values the client meant.
#[test]
fn every_call_encodes_signs_and_decodes_against_both_runtimes() {
    let alice = Signer::from_uri("//Alice").unwrap();
    let user = UserBrief { user: alice.account(), file_name: b"report.pdf".to_vec(), territory_name: b"home".to_vec() };
    let segments: Vec<SegmentManifest> = (0..3)
        .map(|i| SegmentManifest { hash: fid(10 + i), fragments: std::array::from_fn(|j| fid(20 + j as u8)) })
        .collect();
    for (file, spec) in METADATA {
        let md = metadata(file);
        let calls = [
            ("upload_declaration", codec::upload_declaration(&md, &fid(1), &segments, &user, 70 << 20)),
            ("force_batch", codec::delete_files(&alice.account(), &[fid(1), fid(2)])),
            ("mint_territory", codec::mint_territory(b"home", 10, 30)),
            ("expanding_territory", codec::expand_territory(b"home", 5)),
            ("renewal_territory", codec::renew_territory(b"home", 60)),
            ("reactivate_territory", codec::reactivate_territory(b"home", 30)),
        ];
        let client = offline(&md, spec);
        let at = client.at_block(0u64).expect("client at block 0");
        for (name, call) in &calls {
            let data = at.transactions().call_data(call).unwrap_or_else(|e| panic!("spec {spec} {name}: {e}"));
            // Decode the call data back: outer call enum → pallet → call → fields.
            let decoded =
                scale_value::scale::decode_as_type(&mut &data[..], md.outer_enums().call_enum_ty(), md.types())
                    .unwrap_or_else(|e| panic!("spec {spec} {name} decodes: {e}"))
                    .remove_context();
            let inner = match &decoded.value {
                scale_value::ValueDef::Variant(pallet) => pallet.values.values().next().expect("call").clone(),
                other => panic!("{other:?}"),
            };
            assert_eq!(codec::variant(&inner).unwrap(), *name, "spec {spec}");
            let fields = match inner.value {
                scale_value::ValueDef::Variant(v) => {
                    Value { value: scale_value::ValueDef::Composite(v.values), context: () }
                }
                _ => unreachable!(),
            };
            match *name {
                "upload_declaration" => {
                    assert_eq!(codec::hash(codec::field(&fields, "file_hash").unwrap()).unwrap(), fid(1));
                    let deal = codec::structs(codec::field(&fields, "deal_info").unwrap()).unwrap();
                    assert_eq!(deal.len(), 3);
                    let frags = codec::byte_items(codec::field(deal[2], "fragment_list").unwrap()).unwrap();
                    assert_eq!(codec::hash(frags[11]).unwrap(), fid(31));
                    let brief = codec::field(&fields, "user_brief").unwrap();
                    assert_eq!(codec::account(codec::field(brief, "user").unwrap()).unwrap(), alice.account());
                    assert_eq!(codec::bytes(codec::field(brief, "file_name").unwrap()).unwrap(), b"report.pdf");
                    assert_eq!(codec::uint(codec::field(&fields, "file_size").unwrap()).unwrap(), 70 << 20);
                }
                "force_batch" => {
                    // Utility.force_batch { calls: [FileBank(delete_file { owner, file_hash })] }
                    let calls = match &codec::field(&fields, "calls").unwrap().value {
                        scale_value::ValueDef::Composite(c) => c.values().cloned().collect::<Vec<_>>(),
                        other => panic!("{other:?}"),
                    };
                    assert_eq!(calls.len(), 2, "spec {spec}");
                    for (call, want) in calls.into_iter().zip([fid(1), fid(2)]) {
                        let scale_value::ValueDef::Variant(pallet) = call.value else { panic!("a call") };
                        assert_eq!(pallet.name, "FileBank");
                        let inner = pallet.values.values().next().expect("the pallet's call").clone();
                        assert_eq!(codec::variant(&inner).unwrap(), "delete_file");
                        let scale_value::ValueDef::Variant(v) = inner.value else { unreachable!() };
                        let args = Value { value: scale_value::ValueDef::Composite(v.values), context: () };
                        assert_eq!(codec::account(codec::field(&args, "owner").unwrap()).unwrap(), alice.account());
                        assert_eq!(codec::hash(codec::field(&args, "file_hash").unwrap()).unwrap(), want);
                    }
                }
                _ => assert_eq!(codec::bytes(codec::field(&fields, "territory_name").unwrap()).unwrap(), b"home"),
            }
            // A whole signed extrinsic, with the runtime's transaction extensions (spec 100 has
            // CheckMqSequence, which encodes to nothing).
            let params = subxt::config::DefaultExtrinsicParamsBuilder::<SubstrateConfig>::new().nonce(7).build();
            let mut signable = at
                .transactions()
                .create_signable_offline(call, params)
                .unwrap_or_else(|e| panic!("spec {spec} {name}: {e}"));
            let signed = signable.sign(alice.keypair()).unwrap_or_else(|e| panic!("spec {spec} {name}: {e}"));
            assert!(signed.encoded().len() > data.len() + 64 + 32, "signature and signer in the extrinsic");
        }
    }
}

/// A value of type `id` with every field filled: bytes are `a` (so 64-byte hashes are valid
/// hex), numbers 7, lists `list_len` long, enums take the `prefer`red variant if they have it.
fn sample(id: u32, types: &PortableRegistry, prefer: &[&str], list_len: usize) -> Value {
    let ty = types.resolve(id).expect("type in registry");
    match &ty.type_def {
        TypeDef::Composite(c) => {
            let named = c.fields.first().is_some_and(|f| f.name.is_some());
            let values =
                c.fields.iter().map(|f| (f.name.clone().unwrap_or_default(), sample(f.ty.id, types, prefer, list_len)));
            if named { Value::named_composite(values) } else { Value::unnamed_composite(values.map(|(_, v)| v)) }
        }
        TypeDef::Variant(v) => {
            let var = v.variants.iter().find(|var| prefer.contains(&var.name.as_str())).unwrap_or(&v.variants[0]);
            let values: Vec<Value> = var.fields.iter().map(|f| sample(f.ty.id, types, prefer, list_len)).collect();
            Value::variant(var.name.clone(), Composite::unnamed(values))
        }
        TypeDef::Sequence(s) => {
            Value::unnamed_composite((0..list_len).map(|_| sample(s.type_param.id, types, prefer, list_len)))
        }
        TypeDef::Array(a) => {
            Value::unnamed_composite((0..a.len).map(|_| sample(a.type_param.id, types, prefer, list_len)))
        }
        TypeDef::Tuple(t) => Value::unnamed_composite(t.fields.iter().map(|f| sample(f.id, types, prefer, list_len))),
        TypeDef::Primitive(p) => match p {
            TypeDefPrimitive::Bool => Value::bool(true),
            TypeDefPrimitive::Str => Value::string("a"),
            TypeDefPrimitive::U8 => Value::u128(b'a' as u128),
            TypeDefPrimitive::I8 | TypeDefPrimitive::I16 | TypeDefPrimitive::I32 | TypeDefPrimitive::I64 => {
                Value::i128(7)
            }
            TypeDefPrimitive::I128 | TypeDefPrimitive::I256 => Value::i128(7),
            _ => Value::u128(7),
        },
        TypeDef::Compact(c) => sample(c.type_param.id, types, prefer, list_len),
        TypeDef::BitSequence(_) => Value::bit_sequence(Default::default()),
    }
}

/// Encodes a sample of storage entry `pallet.entry`'s value type with the metadata and gives
/// back what the node would serve, decoded as the client decodes it.
fn served(md: &Metadata, pallet: &str, entry: &str, prefer: &[&str]) -> Value {
    served_with(md, pallet, entry, prefer, FRAGMENTS)
}

/// [`served`] with lists `list_len` long.
fn served_with(md: &Metadata, pallet: &str, entry: &str, prefer: &[&str], list_len: usize) -> Value {
    let ty = md.pallet_by_name(pallet).unwrap().storage().unwrap().entry_by_name(entry).unwrap().value_ty();
    let value = sample(ty, md.types(), prefer, list_len);
    let bytes = scale_encode::EncodeAsType::encode_as_type(&value, ty, md.types())
        .unwrap_or_else(|e| panic!("{pallet}.{entry}: {e}"));
    scale_value::scale::decode_as_type(&mut &bytes[..], ty, md.types()).unwrap().remove_context()
}

#[test]
fn every_storage_value_decodes_from_both_runtimes() {
    let hash_a: Hash = "a".repeat(64).parse().unwrap();
    let account_a = AccountId([b'a'; 32]);
    for (file, spec) in METADATA {
        let md = metadata(file);
        let t = codec::territory_info(&served(&md, "StorageHandler", "Territory", &["Active"])).unwrap();
        assert_eq!(
            (t.total_space, t.remaining_space, t.deadline, t.state),
            (7, 7, 7, TerritoryState::Active),
            "spec {spec}"
        );

        let d = codec::deal_info(&served(&md, "FileBank", "DealMap", &[])).unwrap();
        assert_eq!((d.file_size, d.segments.len(), d.complete_list.len()), (7, FRAGMENTS, FRAGMENTS), "spec {spec}");
        assert_eq!(d.segments[0].fragments[11], hash_a);
        assert_eq!((d.user.user, d.complete_list[0].index, d.complete_list[0].miner), (account_a, b'a', account_a));

        let f = codec::file_info(&served(&md, "FileBank", "File", &["Active", "Some"])).unwrap();
        assert!(f.active, "spec {spec}");
        assert_eq!((f.file_size, f.completion, f.segments.len(), f.owners.len()), (7, 7, FRAGMENTS, FRAGMENTS));
        assert_eq!((f.segments[3].fragments[5].hash, f.segments[3].fragments[5].miner), (hash_a, account_a));
        let f = codec::file_info(&served(&md, "FileBank", "File", &["Missing"])).unwrap();
        assert!(!f.active, "spec {spec}: a file that is not Active");

        let m = codec::miner_info(account_a, &served(&md, "Sminer", "MinerItems", &[])).unwrap();
        assert_eq!((m.state.as_str(), m.idle_space), ("a".repeat(FRAGMENTS).as_str(), 7), "spec {spec}");
        match spec {
            100 => assert_eq!(m.endpoint, None, "spec 100 miners have a peer id, no endpoint"),
            _ => assert_eq!(m.endpoint, Some(format!("http://{}", "a".repeat(FRAGMENTS)))),
        }

        let all = served(&md, "Sminer", "AllMiner", &[]);
        assert_eq!(
            codec::byte_items(&all)
                .unwrap()
                .into_iter()
                .map(codec::account)
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
                .len(),
            FRAGMENTS
        );
        assert_eq!(codec::free_balance(&served(&md, "System", "Account", &[])).unwrap(), 7);
        assert_eq!(codec::uint(&served(&md, "StorageHandler", "UnitPrice", &[])).unwrap(), 7);

        // One-item lists look like the single-field wrappers around lists: a file with one
        // segment, one owner (what the rig's runtime serves), one miner.
        // A segment with one fragment is no CESS file: refused, never indexed past its end.
        let one = served_with(&md, "FileBank", "File", &["Active"], 1);
        let segments = codec::structs(codec::field(&one, "segment_list").unwrap()).unwrap();
        let fragments = codec::structs(codec::field(segments[0], "fragment_list").unwrap()).unwrap();
        let owners = codec::structs(codec::field(&one, "owner").unwrap()).unwrap();
        assert_eq!((segments.len(), fragments.len(), owners.len()), (1, 1, 1), "spec {spec}");
        assert_eq!(codec::account(codec::field(owners[0], "user").unwrap()).unwrap(), account_a);
        assert_eq!(codec::hash(codec::field(fragments[0], "hash").unwrap()).unwrap(), hash_a);
        let refused = codec::file_info(&one).unwrap_err();
        assert!(refused.to_string().contains("12 fragments"), "spec {spec}: {refused}");
        let all = served_with(&md, "Sminer", "AllMiner", &[], 1);
        let miners: Vec<_> = codec::byte_items(&all).unwrap().into_iter().map(codec::account).collect();
        assert_eq!(miners, vec![Ok(account_a)], "spec {spec}");
    }
}

/// A key argument of the right shape for every map the client reads.
#[test]
fn storage_keys_encode_against_both_runtimes() {
    let alice = Signer::from_uri("//Alice").unwrap().account();
    for (file, spec) in METADATA {
        let md = metadata(file);
        let client = offline(&md, spec);
        let at = client.at_block(0u64).unwrap();
        for (pallet, entry, keys) in [
            ("FileBank", "File", codec::keys::fid(&fid(1))),
            ("FileBank", "DealMap", codec::keys::fid(&fid(1))),
            ("Sminer", "MinerItems", codec::keys::account(&alice)),
            ("System", "Account", codec::keys::account(&alice)),
            ("StorageHandler", "Territory", codec::keys::territory(&alice, b"home")),
        ] {
            let addr = subxt::dynamic::storage::<Vec<Value>, Value>(pallet, entry);
            let key = at
                .storage()
                .entry(addr)
                .unwrap()
                .fetch_key(keys)
                .unwrap_or_else(|e| panic!("spec {spec} {pallet}.{entry}: {e}"));
            // twox128(pallet) ++ twox128(entry) ++ blake2_128(key) ++ key
            assert!(key.len() > 32 + 16, "spec {spec} {pallet}.{entry}");
        }
    }
}

/// Spec 100 charges UnitPrice / 30 per GiB-day for mint, expand and renew (30 CESS for 1 GiB
/// for 30 days at the testnet's 30 CESS UnitPrice, as paid on the rig); spec 137 charges
/// UnitPrice; reactivation divides by 30 on both.
#[test]
fn prices_follow_the_runtime_spec() {
    use codec::Purchase::*;
    let unit = 30 * 10u128.pow(18);
    for (_, spec) in METADATA {
        for purchase in [Mint, Expand, Renew, Reactivate] {
            let per_day = codec::price_per_gib_day(unit, spec, purchase);
            let want = if spec < 121 || purchase == Reactivate { 10u128.pow(18) } else { unit };
            assert_eq!(per_day, want, "spec {spec} {purchase:?}");
        }
    }
    assert_eq!(codec::price_per_gib_day(unit, 100, Mint) * 30, 30 * 10u128.pow(18));
}
