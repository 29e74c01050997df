//! Counted nouns for what people read: "1 segment", "2 segments".

/// `n` and `noun`, plural unless `n` is 1 (a noun that takes an "s").
pub fn count(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    count_as(n, noun, &format!("{noun}s"))
}

/// `n` and `one` if `n` is 1, else `n` and `many`.
pub fn count_as(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    if n == 1 { format!("1 {one}") } else { format!("{n} {many}") }
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_is_singular_and_the_rest_plural() {
        assert_eq!(super::count(1u32, "segment"), "1 segment");
        assert_eq!(super::count(0u32, "file"), "0 files");
        assert_eq!(super::count(12u8, "miner"), "12 miners");
        assert_eq!(super::count_as(2u8, "directory", "directories"), "2 directories");
    }
}
