//! Choosing miners: distinct, `positive`, with an endpoint and enough idle space for a whole
//! column, in random order so that files spread over the network.

use std::collections::HashSet;

use crate::format::FRAGMENT_SIZE;
use crate::protocol::{AccountId, MinerInfo};

/// Miners that can take a column of `segments` fragments, shuffled, leaving out `exclude`.
pub fn candidates(miners: Vec<MinerInfo>, segments: usize, exclude: &HashSet<AccountId>) -> Vec<MinerInfo> {
    let space = (FRAGMENT_SIZE * segments) as u128;
    let mut usable: Vec<MinerInfo> = miners
        .into_iter()
        .filter(|m| m.state == "positive" && m.endpoint.is_some() && m.idle_space >= space)
        .filter(|m| !exclude.contains(&m.account))
        .collect();
    use rand::seq::SliceRandom;
    usable.shuffle(&mut rand::rng());
    usable
}

#[cfg(test)]
mod tests {
    use super::*;

    fn miner(i: u8, state: &str, endpoint: bool, idle: u128) -> MinerInfo {
        MinerInfo {
            account: AccountId([i; 32]),
            endpoint: endpoint.then(|| format!("http://127.0.0.1:{i}")),
            state: state.into(),
            idle_space: idle,
        }
    }

    #[test]
    fn only_usable_miners() {
        let col = FRAGMENT_SIZE as u128 * 2;
        let miners = vec![
            miner(1, "positive", true, col),
            miner(2, "frozen", true, col),
            miner(3, "positive", false, col),
            miner(4, "positive", true, col - 1),
            miner(5, "positive", true, col),
        ];
        let exclude = HashSet::from([AccountId([5; 32])]);
        let got = candidates(miners, 2, &exclude);
        assert_eq!(got.iter().map(|m| m.account.0[0]).collect::<Vec<_>>(), vec![1]);
    }
}
